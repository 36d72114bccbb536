"""Sequence classifiers for the boolean-function track: one logit per sequence.

From scratch (``model.name``)
    ``qwen0.6B``, ``qwen1.7B`` (Qwen3 shapes), ``llama3`` (Llama-3.2-1B shape) and ``deepseek``
    (deepseek-coder-1.3b-base shape, a Llama architecture) plus the CPU-sized ``*-cpu`` variant
    of each family.  The configs are the hard-coded presets of :mod:`megaproc.models.presets`
    with shape overrides (nothing is fetched).  The vocabulary is the task's symbols plus BOS:
    ids ``0``, ``1`` and BOS ``2`` for the binary functions, digits ``0``..``9`` and BOS ``10``
    for the prime tasks fn_i/fn_k (``classify.vocab_size`` may ask for more, unused, rows); a
    sequence ``"0110"`` is encoded as ``[BOS, 0, 1, 1, 0]`` and ``max_position_embeddings`` is
    ``L + 2`` (or ``model.max_position_embeddings`` when that is larger).

Finetune wrappers (``model.name``)
    ``qwen3_finetune``, ``llama3_finetune`` and ``deepseek_finetune`` load the backbone of the
    local HF directory ``model.pretrained_path`` (never the hub), freeze it except the top
    ``classify.num_layers_to_finetune`` transformer blocks, and add the trainable head.  The
    symbols reach the pretrained tokenizer as text, one symbol per word (``"0 1 1 0"``, as the
    seed's collator did, so BPE merges of digit runs never hide the length).

Both are a :class:`SequenceClassifier`: the backbone (the HF base model without its LM head),
then ``Linear(hidden, 1)`` on the hidden state of the last non-pad token; ``forward`` returns
:class:`ClassifierOutput` whose ``logits`` have shape ``[B]``, trained with BCE-with-logits
(:func:`megaproc.loss.classification_loss`).

Run entry points: :func:`build_run_classifier` (the model of a run) and
:func:`classifier_encoder` (the ids its batch source feeds), both from the run's config.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from megaproc.models.factory import DEFAULT_ATTN_IMPLEMENTATION, model_config, zero3_construction
from megaproc.models.overrides import parse_overrides
from megaproc.synthetic.boolean import get_function
from megaproc.tokenizer import load_tokenizer


@dataclass(frozen=True)
class ClassifierPreset:
    """A from-scratch classifier: a base preset of ``presets.py`` plus shape overrides."""

    name: str
    base: str
    shape: dict
    description: str


_DEEPSEEK_CODER_1_3B = {
    # deepseek-coder-1.3b-base config.json (a LlamaForCausalLM).
    "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 16, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
    "tie_word_embeddings": False,
}


def _cpu(hidden: int, intermediate: int, heads: int = 4, kv_heads: int = 2,
         layers: int = 2, **extra: Any) -> dict:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, **extra}


CLASSIFIER_PRESETS: dict[str, ClassifierPreset] = {p.name: p for p in [
    ClassifierPreset("qwen0.6B", "qwen3-0.6b", {}, "Qwen3-0.6B shape"),
    ClassifierPreset("qwen1.7B", "qwen3-1.7b", {}, "Qwen3-1.7B shape"),
    ClassifierPreset("llama3", "llama3-1b", {}, "Llama-3.2-1B shape"),
    ClassifierPreset("deepseek", "llama3-1b", _DEEPSEEK_CODER_1_3B, "deepseek-coder-1.3b shape"),
    # CPU-sized members of each family (widths keep the families' ratios: Qwen3 MLP 3x with
    # head_dim set apart from the width, Llama 4x with grouped KV, DeepSeek ~2.7x without).
    ClassifierPreset("qwen0.6B-cpu", "qwen3-0.6b",
                     _cpu(64, 192, head_dim=16, max_window_layers=2), "Qwen3, 2 x 64, CPU"),
    ClassifierPreset("qwen1.7B-cpu", "qwen3-1.7b",
                     _cpu(128, 384, head_dim=32, max_window_layers=2), "Qwen3, 2 x 128, CPU"),
    ClassifierPreset("llama3-cpu", "llama3-1b", _cpu(64, 256), "Llama 3.2, 2 x 64, CPU"),
    ClassifierPreset("deepseek-cpu", "llama3-1b",
                     {**_DEEPSEEK_CODER_1_3B, **_cpu(64, 172, kv_heads=4)},
                     "deepseek-coder, 2 x 64, CPU"),
]}

# Finetune wrapper -> HF model types its pretrained directory may hold.
FINETUNE_WRAPPERS: dict[str, tuple[str, ...]] = {
    "qwen3_finetune": ("qwen3", "qwen2"),
    "llama3_finetune": ("llama",),
    "deepseek_finetune": ("llama",),          # deepseek-coder is a Llama architecture
}
CLASSIFIER_NAMES: tuple[str, ...] = (*CLASSIFIER_PRESETS, *FINETUNE_WRAPPERS)
DECIMAL_FUNCTIONS = ("fn_i", "fn_k")


def is_classifier_name(name: str) -> bool:
    """Whether ``model.name`` names a sequence classifier (from scratch or finetune)."""
    return name in CLASSIFIER_NAMES


# ----------------------------------------------------------------------------- the module
@dataclass
class ClassifierOutput(ModelOutput):
    """What :class:`SequenceClassifier` returns: ``logits`` [B], one per sequence."""

    logits: Optional[torch.Tensor] = None


class SequenceClassifier(nn.Module):
    """An HF base model plus ``Linear(hidden, 1)`` on the last non-pad token."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        config = backbone.config
        self.head = nn.Linear(config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> PretrainedConfig:
        """The backbone's HF config (saved with checkpoints)."""
        return self.backbone.config

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Activation checkpointing of the backbone (HF's switch)."""
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> ClassifierOutput:
        """Logits [B] of ``input_ids`` [B, T]; padding (mask 0) may sit on either side."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        if attention_mask is None:
            last = torch.full((input_ids.size(0),), input_ids.size(1) - 1,
                              device=input_ids.device)
        else:
            # Index of the last position whose mask is 1 (right or left padding alike).
            positions = torch.arange(input_ids.size(1), device=input_ids.device)
            last = (attention_mask.to(positions.dtype) * positions).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return ClassifierOutput(logits=self.head(pooled).squeeze(-1))


# ----------------------------------------------------------------------------- encoders
class SymbolEncoder:
    """From-scratch encoding: ``[BOS] + [symbol ids]`` (``"0110"`` -> ``[2, 0, 1, 1, 0]``)."""

    def __init__(self, alphabet: str, vocab_size: Optional[int] = None):
        self.alphabet = alphabet
        self.ids = {symbol: i for i, symbol in enumerate(alphabet)}
        self.bos_id = len(alphabet)
        self.vocab_size = max(self.bos_id + 1, vocab_size or 0)
        self.pad_id = self.bos_id         # never attended to (mask 0); any valid id works

    def __call__(self, sequence: str) -> list[int]:
        try:
            return [self.bos_id] + [self.ids[symbol] for symbol in sequence]
        except KeyError as exc:
            raise ValueError(f"symbol {exc.args[0]!r} is not in {self.alphabet!r}") from None


class TextEncoder:
    """Finetune encoding: the tokenizer's ids of the symbols written as space-separated text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def __call__(self, sequence: str) -> list[int]:
        return list(self.tokenizer(" ".join(sequence))["input_ids"])


# ----------------------------------------------------------------------------- building
def _fields(cfg: Any, names: tuple[str, ...]) -> dict:
    """The named fields of a config section (a dataclass, any object, or a dict)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda key, default=None:
                                                 getattr(cfg, key, default))
    return {name: get(name) for name in names}


def _alphabet(target_func: Optional[str]) -> str:
    if target_func is None:
        raise ValueError("a sequence classifier needs classify.target_func")
    return get_function(target_func).alphabet


def _quiet_transformers():
    """Silence transformers' config warnings while building a from-scratch config.

    The llama3 RoPE of Llama-3.2 carries ``original_max_position_embeddings = 8192``, and
    transformers warns whenever that is not below ``max_position_embeddings`` (here ``L + 2``);
    the frequencies are still the published ones, so the warning says nothing about us.
    """
    class _Quiet:
        def __enter__(self):
            self.level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc):
            hf_logging.set_verbosity(self.level)

    return _Quiet()


def _symbol_encoder(target_func: Optional[str], vocab_size: Optional[int]) -> SymbolEncoder:
    encoder = SymbolEncoder(_alphabet(target_func), vocab_size)
    if vocab_size is not None and vocab_size < encoder.bos_id + 1:
        raise ValueError(f"classify.vocab_size {vocab_size} is too small for {target_func}: "
                         f"it needs {encoder.bos_id + 1} ids (symbols + BOS)")
    return encoder


def classifier_config(name: str, target_func: str, sequence_length: int,
                      overrides: str | dict = "", max_position_embeddings: Optional[int] = None,
                      dropout: Optional[float] = None,
                      vocab_size: Optional[int] = None) -> tuple[PretrainedConfig, SymbolEncoder]:
    """The HF config of from-scratch classifier ``name`` and its symbol encoder.

    ``overrides`` (``model.config_overrides``) apply on top of the preset's shape.
    """
    if name not in CLASSIFIER_PRESETS:
        raise ValueError(f"unknown from-scratch classifier {name!r}; valid: "
                         f"{', '.join(CLASSIFIER_PRESETS)}")
    preset = CLASSIFIER_PRESETS[name]
    encoder = _symbol_encoder(target_func, vocab_size)
    shape = copy.deepcopy(preset.shape)
    shape.update(parse_overrides(overrides))
    positions = max(sequence_length + 2, max_position_embeddings or 0)
    with _quiet_transformers():
        config = model_config(preset.base, encoder.vocab_size, shape, positions, dropout,
                              bos_token_id=encoder.bos_id)
    config.use_cache = False
    return config, encoder


def _pretrained_config(name: str, path: Optional[str]) -> PretrainedConfig:
    """The config of finetune wrapper ``name``'s local directory (checked before any loading)."""
    if not path:
        raise ValueError(f"model {name!r} finetunes a pretrained model: set model.pretrained_path "
                         "to a local HF model directory")
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"model.pretrained_path {path} is not a local HF model directory "
                         "(no config.json); nothing is downloaded at run time")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in FINETUNE_WRAPPERS[name]:
        raise ValueError(f"model {name!r} expects a {' or '.join(FINETUNE_WRAPPERS[name])} model, "
                         f"but {path} holds model_type {config.model_type!r}")
    return config


def _finetune_backbone(path: str, config: PretrainedConfig, num_layers: int,
                       overrides: str | dict, dropout: Optional[float]) -> PreTrainedModel:
    for key, value in parse_overrides(overrides).items():
        setattr(config, key, value)
    if dropout is not None:
        config.attention_dropout = float(dropout)
    config.use_cache = False
    # AutoModel on a *ForCausalLM directory loads the base model and drops the LM head.
    backbone = AutoModel.from_pretrained(path, config=config, local_files_only=True,
                                         dtype=torch.float32,
                                         attn_implementation=DEFAULT_ATTN_IMPLEMENTATION)
    blocks = backbone.layers
    if not 0 <= num_layers <= len(blocks):
        raise ValueError(f"classify.num_layers_to_finetune must be in [0, {len(blocks)}] for "
                         f"{path}, got {num_layers}")
    backbone.requires_grad_(False)
    for block in blocks[len(blocks) - num_layers:]:
        block.requires_grad_(True)
    return backbone


_MODEL_FIELDS = ("name", "config_overrides", "pretrained_path", "max_position_embeddings",
                 "dropout", "gradient_checkpointing")
_TASK_FIELDS = ("target_func", "sequence_length", "num_layers_to_finetune", "vocab_size")


def _sections(model_cfg: Any, classify_cfg: Any) -> tuple[dict, dict]:
    model, task = _fields(model_cfg, _MODEL_FIELDS), _fields(classify_cfg, _TASK_FIELDS)
    if model["name"] not in CLASSIFIER_NAMES:
        raise ValueError(f"model {model['name']!r} is not a sequence classifier; valid: "
                         f"{', '.join(CLASSIFIER_NAMES)}")
    return model, task


def classifier_encoder(model_cfg: Any, classify_cfg: Any, tokenizer=None) -> Callable:
    """The ``encode_fn`` of the classifier the sections describe (without building it).

    ``encode_fn("0110...")`` gives the input ids of one sequence and carries ``pad_id`` and
    ``vocab_size``.  From-scratch names ignore ``tokenizer``; finetune wrappers use it
    (default: the tokenizer saved in ``model.pretrained_path``).
    """
    model, task = _sections(model_cfg, classify_cfg)
    if model["name"] not in FINETUNE_WRAPPERS:
        return _symbol_encoder(task["target_func"], task["vocab_size"])
    _alphabet(task["target_func"])                # a valid function, checked before loading
    _pretrained_config(model["name"], model["pretrained_path"])
    if tokenizer is None:
        tokenizer = load_tokenizer(model["pretrained_path"])
    return TextEncoder(tokenizer)


def build_classifier(model_cfg: Any, classify_cfg: Any, tokenizer=None, *,
                     zero3_init: bool = False,
                     ds_config: dict | str | None = None) -> tuple[SequenceClassifier, Callable]:
    """``(model, encode_fn)`` for the run's ``model`` and ``classify`` sections.

    See :func:`classifier_encoder` for ``encode_fn`` and ``tokenizer``.  With ``zero3_init``
    the backbone is built under ``deepspeed.zero.Init`` (see ``factory.zero3_construction``).
    Seed torch first for a reproducible initialisation.
    """
    model, task = _sections(model_cfg, classify_cfg)
    name = model["name"]
    encoder = classifier_encoder(model_cfg, classify_cfg, tokenizer)
    context = zero3_construction(ds_config) if zero3_init else nullcontext()
    if name in FINETUNE_WRAPPERS:
        config = _pretrained_config(name, model["pretrained_path"])
        with context:
            backbone = _finetune_backbone(model["pretrained_path"], config,
                                          int(task["num_layers_to_finetune"] or 0),
                                          model["config_overrides"] or "", model["dropout"])
    else:
        if model["pretrained_path"]:
            raise ValueError(f"model.pretrained_path is for the finetune wrappers "
                             f"({', '.join(FINETUNE_WRAPPERS)}), not {name!r}")
        config, _ = classifier_config(name, task["target_func"], int(task["sequence_length"]),
                                      model["config_overrides"] or "",
                                      model["max_position_embeddings"], model["dropout"],
                                      task["vocab_size"])
        with context:
            backbone = AutoModel.from_config(config,
                                             attn_implementation=config._attn_implementation)
    classifier = SequenceClassifier(backbone)
    if model["gradient_checkpointing"]:
        classifier.gradient_checkpointing_enable()
    return classifier, encoder


def run_tokenizer(cfg: Any, tokenizer=None):
    """The tokenizer a classification run encodes with: none for from-scratch models; for the
    finetune wrappers the run's tokenizer when ``data.tokenizer`` names one, else ``None``
    (the one saved in ``model.pretrained_path`` is loaded)."""
    if cfg.model.name not in FINETUNE_WRAPPERS:
        return None
    return tokenizer if getattr(cfg.data, "tokenizer", None) else None


def build_run_classifier(cfg: Any, tokenizer=None, ds_config: dict | None = None,
                         zero_stage: int = 0) -> SequenceClassifier:
    """The classifier of a run (``classify.target_func`` set): :func:`build_classifier` on the
    run's sections, under ``zero.Init`` when the DeepSpeed config is ZeRO-3 and
    ``model.zero3_init`` is ``always`` (the classifiers are small enough to build whole
    otherwise)."""
    zero3 = zero_stage == 3 and getattr(cfg.model, "zero3_init", "never") == "always"
    model, _ = build_classifier(cfg.model, cfg.classify, run_tokenizer(cfg, tokenizer),
                                zero3_init=zero3, ds_config=ds_config)
    return model


def count_classifier_parameters(name: str, target_func: str = "fn_a",
                                sequence_length: int = 20) -> int:
    """Parameters of from-scratch classifier ``name``, counted on the meta device (no memory)."""
    config, _ = classifier_config(name, target_func, sequence_length)
    with torch.device("meta"):
        model = SequenceClassifier(AutoModel.from_config(config))
    return sum(p.numel() for p in model.parameters())
