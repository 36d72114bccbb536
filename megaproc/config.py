"""Typed configuration tree for megaproc.

A run is described by one YAML recipe (which may ``extends:`` another recipe) plus dotted
command-line overrides such as ``train.max_steps=20``.  Every section is a dataclass below with a
``validate()`` beside its fields; :func:`load_config` builds the tree (unknown keys, also unknown
top-level sections, wrong types and values outside a ``Literal`` choice are errors that name the
key, :mod:`megaproc.config_parsing`) and validates it.  What depends on the run's *kind* and the
world size (derived values, files that must exist, the model name) is checked by
:func:`megaproc.runs.resolve`, which ``--dry-run`` and training both call, so ``--dry-run``
refuses exactly what training refuses.

This module imports nothing of megaproc but :mod:`megaproc.errors` and
:mod:`megaproc.config_parsing`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from megaproc.config_parsing import (apply_override, build_dataclass, dotted_keys, load_yaml_recipe,
                                     require, require_signs)
from megaproc.errors import ConfigError

__all__ = ["Config", "ConfigError", "DataSourceConfig", "load_config", "to_dict", "to_yaml",
           "fingerprint", "data_sources", "apply_override", "load_yaml_recipe",
           "experiment_settings", "data_config", "RUN_KINDS"]

WeightGroup = Literal["attn", "ffn", "ln", "embed", "everything"]
RunKindName = Literal["lm", "graph_search", "classify"]
RUN_KINDS = typing.get_args(RunKindName)
LossKind = Literal["mean", "weighted", "answer_only", "answer_word"]


def _check_groups(key: str, groups: list) -> None:
    valid = typing.get_args(WeightGroup)
    require(bool(groups), key, "must name at least one weight group")
    for group in groups:
        require(group in valid, key, f"entries must be among {list(valid)}", group)


@dataclass
class RunConfig:
    """Where the run writes, how it is seeded, and which workflow it is."""

    out_dir: str = "runs/default"
    seed: int = 1234
    name: Optional[str] = None
    # The workflow (megaproc/runs/): "lm" (indexed LM data, the default), "graph_search" (live
    # graph-search stream, = task.kind: graph_search) or "classify" (boolean classification,
    # = classify.target_func set).  Null: inferred from those keys.
    kind: Optional[RunKindName] = None

    def validate(self) -> None:
        """Nothing to check beyond the types."""


@dataclass
class ModelConfig:
    """Which HuggingFace causal LM to build (see ``megaproc.models``)."""

    name: str = "tiny"
    # "n_embd=512,n_layer=8,n_head=8" or a mapping; applied on top of the preset.
    config_overrides: Union[str, dict] = ""
    pretrained_path: Optional[str] = None
    max_position_embeddings: Optional[int] = None
    # Weights (fresh optimizer) from a megaproc checkpoint directory, "latest:RUN_DIR" (the
    # newest complete checkpoint of another run) or a local HF model directory.
    init_from: Optional[str] = None
    # Weight groups copied from init_from into the fresh model; the rest keep their fresh init.
    weights_to_transfer: list = field(default_factory=lambda: ["everything"])
    # Weight groups that train; the rest are frozen (no gradient, no optimizer state).
    weights_to_train: list = field(default_factory=lambda: ["everything"])
    # Embedding rows when the source vocabulary differs: "average" (every row the mean source
    # embedding), "retain" (keep the fresh rows) or "partial_matching" (copy shared tokens).
    embedding_strategy: Literal["average", "retain", "partial_matching"] = "retain"
    dropout: Optional[float] = None
    # Activation checkpointing (HF gradient_checkpointing_enable).
    gradient_checkpointing: bool = False
    # ZeRO-3 only: build under deepspeed.zero.Init so no rank ever holds the whole model.
    # "auto" does so when the fp32 model of every local rank would not fit in a quarter of host
    # memory; "always"/"never" force it.  (Construction under zero.Init draws the random init
    # in another order, so the same seed gives other initial weights than a plain build.)
    zero3_init: Literal["auto", "always", "never"] = "auto"

    def validate(self) -> None:
        """Weight groups are known ones; transfer and freezing choices need ``init_from``."""
        _check_groups("model.weights_to_transfer", self.weights_to_transfer)
        _check_groups("model.weights_to_train", self.weights_to_train)
        for key in ("weights_to_transfer", "weights_to_train"):
            require(self.init_from is not None or getattr(self, key) == ["everything"],
                    f"model.{key}", "needs model.init_from (there are no weights to transfer "
                    "or keep from a fresh model)", getattr(self, key))
        require(self.dropout is None or 0.0 <= self.dropout < 1.0, "model.dropout",
                "must be in [0, 1)", self.dropout)


@dataclass
class DataSourceConfig:
    """One training or validation source: an indexed prefix or a prompt/answer ``.jsonl``."""

    prefix: str = ""
    weight: float = 1.0
    # Name in logs (per-source losses, validation): default the prefix's basename.
    name: Optional[str] = None

    def validate(self, key: str) -> None:
        """A prefix is given and the weight is a non-negative number."""
        require(bool(self.prefix), f"{key}.prefix", "must be set")
        require(self.weight >= 0, f"{key}.weight", "must be >= 0", self.weight)


def data_sources(entries: list, key: str) -> list[DataSourceConfig]:
    """``data.train``/``data.valid`` entries (prefix strings, mappings or already typed
    sources) as validated :class:`DataSourceConfig` objects."""
    out = []
    for i, entry in enumerate(entries or []):
        where = f"{key}[{i}]"
        if isinstance(entry, str):
            entry = DataSourceConfig(prefix=entry)
        elif not isinstance(entry, (dict, DataSourceConfig)):
            raise ConfigError(f"config key '{where}' must be a prefix or {{prefix, weight}}")
        source = build_dataclass(DataSourceConfig, entry, where)
        source.validate(where)
        out.append(source)
    return out


@dataclass
class DataConfig:
    """Training and validation data."""

    # Local HF tokenizer directory, sentencepiece .model, or null for the built-in default.
    tokenizer: Optional[str] = None
    # Indexed prefixes (with weights) to train on; empty means the built-in default corpus.
    train: list = field(default_factory=list)
    # Indexed prefixes for validation; empty means a held-out document range of ``train``.
    valid: list = field(default_factory=list)
    # Fraction of documents held out for validation when ``valid`` is empty.
    valid_fraction: float = 0.02
    # What the blend weights count.
    blend_by: Literal["samples", "tokens"] = "samples"
    # Synthetic mixin: a .jsonl of prompt/answer examples or an indexed prefix.
    mixin: Optional[str] = None
    mixin_percent: float = 0.0
    # The loss of the mixin's samples (the corpus keeps train.loss; null: train.loss too):
    # "mean" (every token), "answer_word" (the answer's own tokens), "answer_only" (the answer
    # and its eos) or "weighted" (answer tokens up-weighted) - to separate forgetting from what
    # the mean loss trains besides the answer (the eos that contradicts longer paths).
    mixin_loss: Optional[LossKind] = None
    # Where GPTDataset index caches go (default: next to each prefix, or the megaproc cache).
    cache_dir: Optional[str] = None
    # Built-in default corpus settings.
    default_vocab_size: int = 2048
    # Document masking of packed samples, as Megatron-LM's switches of the same names
    # (megaproc/data/document_mask.py); documents end with the tokenizer's EOS (the EOD).
    # Positions restart at 0 after every EOD:
    reset_position_ids: bool = False
    # No attention across an EOD (a block-diagonal causal mask; lm runs of GPT-2, GPT-NeoX,
    # Llama and Qwen3 models with sdpa, eager or flash attention):
    reset_attention_mask: bool = False
    # No loss where the *input* is an EOD, i.e. on predicting the first token of the next
    # document (Megatron's loss_mask[tokens == eod] = 0); predicting the EOD itself still trains.
    eod_mask_loss: bool = False

    @property
    def document_masking(self) -> bool:
        """Whether any of the three document-masking switches is on."""
        return self.reset_position_ids or self.reset_attention_mask or self.eod_mask_loss

    def validate(self) -> None:
        """Ranges, the mixin pairing and the shape of the source entries."""
        require(0.0 <= self.mixin_percent < 1.0, "data.mixin_percent", "must be in [0, 1)",
                self.mixin_percent)
        require(self.mixin_percent == 0 or bool(self.mixin), "data.mixin",
                "must be set when data.mixin_percent > 0")
        require(self.mixin_loss is None or self.mixin_percent > 0, "data.mixin_loss",
                "needs a mixin (data.mixin and data.mixin_percent > 0)", self.mixin_loss)
        require(0.0 <= self.valid_fraction < 1.0, "data.valid_fraction", "must be in [0, 1)",
                self.valid_fraction)
        require_signs("data", self, positive=("default_vocab_size",))
        data_sources(self.train, "data.train")
        data_sources(self.valid, "data.valid")


def data_config(data: "DataConfig | dict") -> "DataConfig":
    """A validated :class:`DataConfig` from a ``data`` mapping (or the section itself)."""
    section = build_dataclass(DataConfig, data, "data")
    section.validate()
    return section


@dataclass
class TrainConfig:
    """Batch geometry and loop length.  Steps are optimizer steps."""

    max_steps: int = 100
    micro_batch: int = 2
    grad_accum: int = 1
    # Global token budget per optimizer step; when set, grad_accum is derived from it as
    # total_batch_tokens / (micro_batch * seq_len * data-parallel size), which must divide.
    total_batch_tokens: Optional[int] = None
    seq_len: int = 256
    # "auto" = bf16 on CUDA with bf16 support, else fp32.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    grad_clip: float = 1.0
    # "mean": token-mean cross entropy; "weighted": answer tokens up-weighted;
    # "answer_only": cross entropy on the answer tokens and their eos (prompt/answer data);
    # "answer_word": on the answer's own tokens only (the symbolic graph-search task).
    loss: LossKind = "mean"
    # The LM head only at the positions the loss and the correctness check read (for
    # weighted/answer_only/answer_word; "mean" computes every position either way); the losses,
    # gradients and metrics equal the full head's (megaproc/models/sliced_head.py).
    sliced_head: bool = True
    # Peak FLOP/s per device for the logged ``mfu`` (default: the GPU's known bf16 peak).
    peak_flops: Optional[float] = None

    def validate(self) -> None:
        """Positive geometry; optional budgets are positive when set."""
        require_signs("train", self, positive=("max_steps", "micro_batch", "grad_accum",
                                               "seq_len"), non_negative=("grad_clip",))
        require(self.peak_flops is None or self.peak_flops > 0, "train.peak_flops", "must be > 0",
                self.peak_flops)
        require(self.total_batch_tokens is None or self.total_batch_tokens > 0,
                "train.total_batch_tokens", "must be > 0", self.total_batch_tokens)


@dataclass
class OptimConfig:
    """AdamW hyper-parameters."""

    lr: float = 5e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.1

    def validate(self) -> None:
        """A positive LR and two betas."""
        require_signs("optim", self, positive=("lr",), non_negative=("eps", "weight_decay"))
        require(len(self.betas) == 2, "optim.betas", "must be a list of two floats")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, recomputed from this section at every step (also after a resume)."""

    # "constant", "warmup_constant", "cosine" (warmup then cosine to min_lr_ratio) or
    # "linear" (warmup then linear decay to min_lr_ratio, as the HF Trainer's default).
    kind: Literal["constant", "warmup_constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def validate(self) -> None:
        """Warmup and the floor ratio in range."""
        require_signs("schedule", self, non_negative=("warmup_steps",))
        require(0.0 <= self.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "must be in [0, 1]",
                self.min_lr_ratio)


@dataclass
class DeepSpeedSection:
    """The DeepSpeed JSON to start from; the trainer fills batch, optimizer and precision."""

    config: str = "ds_configs/zero2.json"
    # Extra DeepSpeed keys merged on top of the JSON file (nested mapping).
    overrides: dict = field(default_factory=dict)

    def validate(self) -> None:
        """The file is checked when the run is resolved (it may be relative to the repo)."""


@dataclass
class CheckpointConfig:
    """Checkpoint cadence and resume policy."""

    save_every: int = 0
    keep_last_k: int = 3
    # "auto" (newest complete checkpoint in run.out_dir that verifies, if any), "none", or a path.
    resume: str = "auto"
    save_final: bool = True
    # Resume a checkpoint written with another number of ranks (re-shards the ZeRO state).
    allow_world_size_change: bool = False
    # What a resume checks against a checkpoint's manifest before using it: file sizes and
    # content hashes ("hashes"), or sizes only ("sizes", no re-read of the files).
    verify: Literal["hashes", "sizes"] = "hashes"

    def validate(self) -> None:
        """Cadences are non-negative and ``resume`` names something."""
        require_signs("checkpoint", self, non_negative=("save_every", "keep_last_k"))
        require(bool(self.resume), "checkpoint.resume", "must be 'auto', 'none' or a path")


@dataclass
class LogConfig:
    """Logging destinations."""

    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "megaproc"
    # Write PNG plots of the run's logs (python -m megaproc.plot) when training ends.
    plot_at_end: bool = False

    def validate(self) -> None:
        """A positive log interval (the optional packages are checked when resolving)."""
        require_signs("log", self, positive=("log_every",))


@dataclass
class EvalConfig:
    """Evaluation during training (megaproc/hooks/evaluation.py: one hook runs every evaluator).

    Validation (``every``) evaluates ``max_batches`` global batches (``train.micro_batch`` rows
    per rank per forward) of the validation blend, or of each named ``data.valid`` source
    (``val_loss/<name>``, ...).  The benchmarks run the evaluators of ``python -m
    megaproc.evaluate`` (``--hellaswag``, ``--ewok``, ``--dm-math``) every N steps (0 = off)
    with ``batch_size`` rows per forward and the first ``max_examples`` items of each task
    (0 = all; DeepMind Mathematics: per split/module), as ``--batch-size``/``--max-examples``.
    """

    every: int = 0
    max_batches: int = 10
    # Validation and the benchmarks also run after the last step (unless it just ran them).
    at_end: bool = True
    # HellaSwag (jsonl), EWoK (directory or .zip of jsonl) and DeepMind Mathematics (converted
    # directory, one jsonl or the raw mathematics_dataset-v1.0 directory) every N steps; 0 = off.
    hellaswag_path: Optional[str] = None
    hellaswag_every: int = 0
    ewok_path: Optional[str] = None
    ewok_every: int = 0
    dm_math_path: Optional[str] = None
    dm_math_every: int = 0
    batch_size: int = 16
    max_examples: int = 0

    def validate(self) -> None:
        """Intervals are non-negative; a benchmark interval needs its file."""
        require_signs("eval", self, positive=("max_batches", "batch_size"),
                      non_negative=("every", "hellaswag_every", "ewok_every", "dm_math_every",
                                    "max_examples"))
        for name in BENCHMARKS:
            every, path = getattr(self, f"{name}_every"), getattr(self, f"{name}_path")
            require(not every or bool(path), f"eval.{name}_every", f"needs eval.{name}_path")


# The benchmarks of ``eval.<name>_every`` / ``eval.<name>_path`` (evaluator names).
BENCHMARKS = ("hellaswag", "ewok", "dm_math")


@dataclass
class TaskConfig:
    """The synthetic task trained on (``kind: graph_search``) or evaluated on (``splits_dir``).

    ``splits_dir`` is a directory written by ``python -m data_tools.build_splits``
    (``.../mis{n}_look{L}_seed{seed}``): the prompts of its ``eval/test/mixin.jsonl`` never
    appear in training, and its ``eval.jsonl`` feeds the held-out evaluation (also during
    pretraining when ``eval_every > 0``).
    """

    # "none": train on data.* (plain LM / pretraining); "graph_search": stream the task.
    kind: Literal["none", "graph_search"] = "none"
    # Generator settings (max_input_size is the symbolic input size n; 6x lookahead is ample).
    max_input_size: int = 384
    max_lookahead: int = 64
    natural_language: bool = True
    # The run's tokenizer: "data" (data.tokenizer or the built-in one) or "symbolic" (one token
    # per symbol of the symbolic task, built from max_input_size; megaproc/task_vocab.py).
    tokenizer: Literal["data", "symbolic"] = "data"
    seed: int = 12345
    splits_dir: Optional[str] = None
    # Held-out task eval every N steps in runs without a curriculum (e.g. pretraining); 0 = off.
    eval_every: int = 0
    # Random eval.jsonl examples (seeded, the same subset every time) in the held-out evaluation,
    # with or without a curriculum (the original pptrain.py's --eval_subset_size).
    eval_subset_size: int = 500
    # Examples per forward in the held-out evaluation (per rank).
    eval_batch_size: int = 16
    # Build the next micro-batches on a background thread while the model computes.
    prefetch: bool = True

    def validate(self) -> None:
        """Generator sizes are positive; periodic evaluation needs the splits."""
        require_signs("task", self, positive=("max_input_size", "max_lookahead", "eval_batch_size"),
                      non_negative=("seed", "eval_every", "eval_subset_size"))
        require(not self.eval_every or bool(self.splits_dir), "task.eval_every",
                "needs task.splits_dir (its eval.jsonl)")


@dataclass
class CurriculumConfig:
    """Accuracy-gated curriculum over lookahead stages 1..task.max_lookahead.

    Names and defaults follow the original ``pptrain.py`` (``curr_window`` 200,
    ``curr_threshold`` 0.98); the held-out subset size is ``task.eval_subset_size``.
    """

    enabled: bool = False
    # Training examples (gathered from all ranks) whose accuracy gates the next stage.
    curr_window: int = 200
    # Check the window every N optimizer steps.
    curr_check_every: int = 10
    # Window accuracy needed to advance.
    curr_threshold: float = 0.98
    # Stage the run starts at.
    start_stage: int = 1

    def validate(self) -> None:
        """Window, cadence and threshold in range."""
        require_signs("curriculum", self, positive=("curr_window", "curr_check_every",
                                                    "start_stage"))
        require(0.0 <= self.curr_threshold <= 1.0, "curriculum.curr_threshold",
                "must be in [0, 1]", self.curr_threshold)


@dataclass
class ClassifyConfig:
    """Binary sequence classification of boolean-function data (``target_func`` set = on).

    The model gets a Linear(hidden, 1) head on the last token and a BCE-with-logits loss;
    ``train.micro_batch`` is the batch size, ``optim.lr`` the start of a cosine annealing to
    ``eta_min`` over ``n_epochs`` epochs of ``train_set_size`` examples.
    """

    # fn_a ... fn_l (see megaproc.synthetic.boolean); null = not a classification run.
    target_func: Optional[str] = None
    sequence_length: int = 20
    train_set_size: int = 200
    test_set_size: int = 10000
    n_epochs: int = 200
    eta_min: float = 1e-6
    # Evaluate train and test loss/accuracy every N epochs (and after the last).
    eval_every_epochs: int = 1
    # Finetune wrappers (model.name *_finetune): top N transformer blocks train, the rest frozen.
    num_layers_to_finetune: int = 1
    # Where generated datasets are cached (default: the megaproc cache).
    cache_dir: Optional[str] = None
    # From-scratch embedding rows (null: the task's symbols + BOS; larger leaves rows unused).
    vocab_size: Optional[int] = None

    def validate(self) -> None:
        """Sizes and epochs in range (names and lengths: the classify run kind)."""
        require_signs("classify", self,
                      positive=("sequence_length", "train_set_size", "n_epochs",
                                "eval_every_epochs"),
                      non_negative=("test_set_size", "eta_min", "num_layers_to_finetune"))


@dataclass
class Config:
    """The whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)

    def validate(self) -> "Config":
        """Every section's own checks, then the ones that tie two sections together (what
        depends on the run's kind is checked by its :class:`~megaproc.runs.base.RunKind`)."""
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        task, curr = self.task, self.curriculum
        require(curr.start_stage <= task.max_lookahead, "curriculum.start_stage",
                f"must be <= task.max_lookahead ({task.max_lookahead})", curr.start_stage)
        return self

    @property
    def given_keys(self) -> frozenset[str]:
        """Dotted keys the recipe and overrides set explicitly (defaults excluded)."""
        return getattr(self, "_given_keys", frozenset())


# Sections that describe where and how a run reports, not which experiment it is.
VOLATILE_SECTIONS = ("run", "log", "checkpoint", "eval")
# Old key names still accepted (the value moves to the new key).
RENAMED_KEYS = {"curriculum.eval_subset_size": "task.eval_subset_size"}


def _apply_renames(data: dict) -> None:
    """Move values given under an old key name to the new one (the old name wins when both are
    given: it can only have been written on purpose)."""
    for old, new in RENAMED_KEYS.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        new_section, new_key = new.split(".")
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key '{new_section}' must be a mapping")
        target[new_key] = section.pop(old_key)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a recipe, apply dotted overrides and return a validated :class:`Config`.

    The result is not yet *resolved* (derived values, the run kind's checks, files):
    :func:`megaproc.runs.resolve` does that for a world size.
    """
    data = load_yaml_recipe(path) if path else {}
    for item in overrides:
        apply_override(data, item)
    _apply_renames(data)
    cfg = build_dataclass(Config, data, "")
    cfg._given_keys = frozenset(dotted_keys(data))
    return cfg.validate()


# ----------------------------------------------------------------------------- output
def to_dict(cfg: Config) -> dict:
    """Plain-mapping form of a config (typed data sources become mappings too)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def experiment_settings(cfg: Config) -> dict:
    """The experiment-defining config as ``{"a.b": value}``: everything but paths and logging,
    and without ``train.max_steps`` (extending a run keeps the experiment)."""
    out = {}
    for section, values in to_dict(cfg).items():
        if section in VOLATILE_SECTIONS:
            continue
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    out.pop("train.max_steps", None)
    out["run.seed"] = cfg.run.seed
    return out


def fingerprint(cfg: Config) -> str:
    """Hash of :func:`experiment_settings`."""
    text = json.dumps(experiment_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

