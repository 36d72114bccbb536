"""Typed configuration tree for megaproc.

A run is described by one YAML recipe (which may ``extends:`` another recipe) plus dotted
command-line overrides such as ``train.max_steps=20``.  Every section is a dataclass below and
everything is checked in :func:`load_config`: unknown keys (also unknown top-level sections),
wrong types, values outside a ``Literal`` choice and cross-field constraints are errors that
name the offending key, so ``--dry-run`` rejects exactly what training would reject.

This module imports nothing of megaproc but :mod:`megaproc.errors`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from megaproc.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "to_dict", "to_yaml", "fingerprint",
           "data_sources", "apply_override", "load_yaml_recipe"]

WeightGroup = Literal["attn", "ffn", "ln", "embed", "everything"]


@dataclass
class RunConfig:
    """Where the run writes and how it is seeded."""

    out_dir: str = "runs/default"
    seed: int = 1234
    name: Optional[str] = None


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


@dataclass
class DataSourceConfig:
    """One indexed prefix in a blend."""

    prefix: str = ""
    weight: float = 1.0


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
    # Loss on the mixin's examples (the corpus keeps train.loss); names as in train.loss.
    mixin_loss: Literal["mean", "answer_word", "answer_only", "weighted"] = "mean"
    # Where GPTDataset index caches go (default: next to each prefix, or the megaproc cache).
    cache_dir: Optional[str] = None
    # Built-in default corpus settings.
    default_vocab_size: int = 2048


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
    loss: Literal["mean", "weighted", "answer_only", "answer_word"] = "mean"
    # Peak FLOP/s per device for the logged ``mfu`` (default: the GPU's known bf16 peak).
    peak_flops: Optional[float] = None


@dataclass
class OptimConfig:
    """AdamW hyper-parameters."""

    lr: float = 5e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.1


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, recomputed from this section at every step (also after a resume)."""

    # "constant", "warmup_constant", "cosine" (warmup then cosine to min_lr_ratio) or
    # "linear" (warmup then linear decay to min_lr_ratio, as the HF Trainer's default).
    kind: Literal["constant", "warmup_constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclass
class DeepSpeedSection:
    """The DeepSpeed JSON to start from; the trainer fills batch, optimizer and precision."""

    config: str = "ds_configs/zero2.json"
    # Extra DeepSpeed keys merged on top of the JSON file (nested mapping).
    overrides: dict = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    """Checkpoint cadence and resume policy."""

    save_every: int = 0
    keep_last_k: int = 3
    # "auto" (newest complete checkpoint in run.out_dir, if any), "none", or a path.
    resume: str = "auto"
    save_final: bool = True
    # Resume a checkpoint written with another number of ranks (re-shards the ZeRO state).
    allow_world_size_change: bool = False


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


@dataclass
class EvalConfig:
    """Evaluation during training (validation loss, benchmarks)."""

    every: int = 0
    max_batches: int = 10
    at_end: bool = True
    # HellaSwag (jsonl) and EWoK (directory or .zip of jsonl) evaluated every N steps; 0 = off.
    hellaswag_path: Optional[str] = None
    hellaswag_every: int = 0
    ewok_path: Optional[str] = None
    ewok_every: int = 0


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
    seed: int = 12345
    splits_dir: Optional[str] = None
    # Held-out task eval every N steps in runs without a curriculum (e.g. pretraining); 0 = off.
    eval_every: int = 0
    # Examples per forward in the held-out evaluation (per rank).
    eval_batch_size: int = 16
    # Build the next micro-batches on a background thread while the model computes.
    prefetch: bool = True


@dataclass
class CurriculumConfig:
    """Accuracy-gated curriculum over lookahead stages 1..task.max_lookahead.

    Names and defaults follow the original ``pptrain.py`` (``curr_window`` 200,
    ``curr_threshold`` 0.98, ``eval_subset_size`` 500).
    """

    enabled: bool = False
    # Training examples (gathered from all ranks) whose accuracy gates the next stage.
    curr_window: int = 200
    # Check the window every N optimizer steps.
    curr_check_every: int = 10
    # Window accuracy needed to advance.
    curr_threshold: float = 0.98
    # Random eval.jsonl examples (seeded, same subset every time) for the held-out eval.
    eval_subset_size: int = 500
    # Stage the run starts at.
    start_stage: int = 1


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


# Sections that describe where and how a run reports, not which experiment it is.
VOLATILE_SECTIONS = ("run", "log", "checkpoint", "eval")


# ----------------------------------------------------------------------------- building
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, annotation)


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is Literal:
        return "one of " + str(list(typing.get_args(ann)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _coerce(value: Any, ann: Any) -> Any:
    """YAML gives ``1e-5`` as a string and ``3`` as an int; accept both where a float is meant."""
    wants_float = ann is float or (typing.get_origin(ann) in (Union, types.UnionType)
                                   and float in typing.get_args(ann))
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if ann is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and choices."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            what = "section" if not path else "key"
            raise ConfigError(f"unknown config {what} '{where}' (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        where = f"{path}.{name}" if path else name
        ann = hints[name]
        if dataclasses.is_dataclass(ann):
            kwargs[name] = _build(ann, data[name], where)
            continue
        value = _coerce(data[name], ann)
        if not _type_ok(value, ann):
            if typing.get_origin(ann) is Literal:
                raise ConfigError(f"config key '{where}' must be one of "
                                  f"{list(typing.get_args(ann))}, got {value!r}")
            raise ConfigError(f"config key '{where}' has wrong type: expected {_type_name(ann)}, "
                              f"got {type(value).__name__} ({value!r})")
        kwargs[name] = value
    return cls(**kwargs)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML recipe, following ``extends:`` (relative to the recipe's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config 'extends' cycle at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    parent = data.pop("extends", None)
    if parent:
        base = load_yaml_recipe(path.parent / parent, _seen + (path.resolve(),))
        data = _deep_merge(base, data)
    return data


def apply_override(data: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw mapping."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{dotted}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- validation
def _require(condition: bool, key: str, message: str, value: Any = None) -> None:
    if not condition:
        got = "" if value is None else f", got {value!r}"
        raise ConfigError(f"config key '{key}' {message}{got}")


def _check_signs(positive: dict, non_negative: dict) -> None:
    for key, value in positive.items():
        _require(value > 0, key, "must be > 0", value)
    for key, value in non_negative.items():
        _require(value >= 0, key, "must be >= 0", value)


def _check_groups(key: str, groups: list) -> None:
    valid = typing.get_args(WeightGroup)
    _require(bool(groups), key, "must name at least one weight group")
    for group in groups:
        _require(group in valid, key, f"entries must be among {list(valid)}", group)


def validate(cfg: Config) -> Config:
    """Cross-field checks that the type system cannot express; errors name the key."""
    t, task, curr, cls = cfg.train, cfg.task, cfg.curriculum, cfg.classify
    _check_signs(
        positive={"train.max_steps": t.max_steps, "train.micro_batch": t.micro_batch,
                  "train.grad_accum": t.grad_accum, "train.seq_len": t.seq_len,
                  "log.log_every": cfg.log.log_every, "eval.max_batches": cfg.eval.max_batches,
                  "optim.lr": cfg.optim.lr,
                  "task.max_input_size": task.max_input_size,
                  "task.max_lookahead": task.max_lookahead,
                  "task.eval_batch_size": task.eval_batch_size,
                  "curriculum.curr_window": curr.curr_window,
                  "curriculum.curr_check_every": curr.curr_check_every,
                  "curriculum.start_stage": curr.start_stage,
                  "classify.sequence_length": cls.sequence_length,
                  "classify.train_set_size": cls.train_set_size,
                  "classify.n_epochs": cls.n_epochs,
                  "classify.eval_every_epochs": cls.eval_every_epochs},
        non_negative={"checkpoint.save_every": cfg.checkpoint.save_every,
                      "checkpoint.keep_last_k": cfg.checkpoint.keep_last_k,
                      "eval.every": cfg.eval.every,
                      "eval.hellaswag_every": cfg.eval.hellaswag_every,
                      "eval.ewok_every": cfg.eval.ewok_every,
                      "schedule.warmup_steps": cfg.schedule.warmup_steps,
                      "task.seed": task.seed, "task.eval_every": task.eval_every,
                      "curriculum.eval_subset_size": curr.eval_subset_size,
                      "classify.test_set_size": cls.test_set_size,
                      "classify.eta_min": cls.eta_min,
                      "classify.num_layers_to_finetune": cls.num_layers_to_finetune})
    _require(0.0 <= cfg.data.mixin_percent < 1.0, "data.mixin_percent", "must be in [0, 1)",
             cfg.data.mixin_percent)
    _require(cfg.data.mixin_percent == 0 or bool(cfg.data.mixin), "data.mixin",
             "must be set when data.mixin_percent > 0")
    _require(0.0 <= cfg.data.valid_fraction < 1.0, "data.valid_fraction", "must be in [0, 1)",
             cfg.data.valid_fraction)
    _require(0.0 <= cfg.schedule.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "must be in [0, 1]",
             cfg.schedule.min_lr_ratio)
    _require(len(cfg.optim.betas) == 2, "optim.betas", "must be a list of two floats")
    _require(isinstance(cfg.checkpoint.resume, str) and bool(cfg.checkpoint.resume),
             "checkpoint.resume", "must be 'auto', 'none' or a path")
    _require(t.peak_flops is None or t.peak_flops > 0, "train.peak_flops", "must be > 0",
             t.peak_flops)
    _require(t.total_batch_tokens is None or t.total_batch_tokens > 0, "train.total_batch_tokens",
             "must be > 0", t.total_batch_tokens)
    for key in ("train", "valid"):
        for i, src in enumerate(getattr(cfg.data, key)):
            _require(isinstance(src, (str, dict)), f"data.{key}[{i}]",
                     "must be a prefix or {prefix, weight}")
    _check_groups("model.weights_to_transfer", cfg.model.weights_to_transfer)
    _check_groups("model.weights_to_train", cfg.model.weights_to_train)
    _require(cfg.model.dropout is None or 0.0 <= cfg.model.dropout < 1.0, "model.dropout",
             "must be in [0, 1)", cfg.model.dropout)
    for name in ("hellaswag", "ewok"):
        every, path = getattr(cfg.eval, f"{name}_every"), getattr(cfg.eval, f"{name}_path")
        _require(not every or bool(path), f"eval.{name}_every", f"needs eval.{name}_path")
    # Workflow sections.
    _require(0.0 <= curr.curr_threshold <= 1.0, "curriculum.curr_threshold", "must be in [0, 1]",
             curr.curr_threshold)
    _require(curr.start_stage <= task.max_lookahead, "curriculum.start_stage",
             f"must be <= task.max_lookahead ({task.max_lookahead})", curr.start_stage)
    _require(not curr.enabled or task.kind == "graph_search", "curriculum.enabled",
             "needs task.kind: graph_search")
    _require(task.kind == "none" or not (cfg.data.train or cfg.data.mixin_percent > 0), "task.kind",
             "trains on the task stream only; leave data.train empty and data.mixin_percent at 0")
    _require(not task.eval_every or bool(task.splits_dir), "task.eval_every",
             "needs task.splits_dir (its eval.jsonl)")
    if cls.target_func is not None:
        _require(task.kind == "none", "classify.target_func", "cannot be combined with task.kind")
        _require(cls.test_set_size >= 0, "classify.test_set_size", "must be >= 0")
    return cfg


def data_sources(entries: list, key: str) -> list[DataSourceConfig]:
    """Normalise ``data.train``/``data.valid`` entries (strings or mappings) to sources."""
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            out.append(DataSourceConfig(prefix=entry))
        else:
            out.append(_build(DataSourceConfig, entry, f"{key}[{i}]"))
    return out


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a recipe, apply dotted overrides and return a validated :class:`Config`."""
    data = load_yaml_recipe(path) if path else {}
    for item in overrides:
        apply_override(data, item)
    cfg = validate(_build(Config, data, ""))
    for key in ("train", "valid"):
        data_sources(getattr(cfg.data, key), f"data.{key}")  # entries checked, naming the key
    return cfg


# ----------------------------------------------------------------------------- output
def to_dict(cfg: Config) -> dict:
    """Plain-mapping form of a config."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
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
