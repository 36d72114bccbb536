"""Typed configuration tree for megaproc.

A run is described by one YAML recipe (which may ``extends:`` another recipe) plus dotted
command-line overrides such as ``train.max_steps=20``.  Everything is validated against the
dataclasses below: unknown keys and wrong types are errors that name the offending key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


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
    # Load model weights only (fresh optimizer) from a megaproc checkpoint directory, or
    # "latest:RUN_DIR" for the newest complete checkpoint of another run.
    init_from: Optional[str] = None
    dropout: Optional[float] = None
    # ZeRO-3 only: build under deepspeed.zero.Init so no rank ever holds the whole model.
    # "auto" does so when the fp32 model of every local rank would not fit in a quarter of host
    # memory; "always"/"never" force it.  (Construction under zero.Init draws the random init
    # in another order, so the same seed gives other initial weights than a plain build.)
    zero3_init: str = "auto"


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
    # "samples" (default) or "tokens": what the blend weights count.
    blend_by: str = "samples"
    # Synthetic mixin: a .jsonl of prompt/answer examples or an indexed prefix.
    mixin: Optional[str] = None
    mixin_percent: float = 0.0
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
    seq_len: int = 256
    # "auto" = bf16 on CUDA with bf16 support, else fp32; or "bf16", "fp16", "fp32".
    precision: str = "auto"
    grad_clip: float = 1.0
    # "mean" (token-mean cross entropy) or "weighted" (answer tokens up-weighted).
    loss: str = "mean"


@dataclass
class OptimConfig:
    """AdamW hyper-parameters."""

    lr: float = 5e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.1


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: "constant", "warmup_constant" or "cosine"."""

    kind: str = "cosine"
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


@dataclass
class LogConfig:
    """Logging destinations."""

    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_mode: str = "offline"
    wandb_project: str = "megaproc"


@dataclass
class EvalConfig:
    """Validation-loss evaluation."""

    every: int = 0
    max_batches: int = 10
    at_end: bool = True


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
    # Sections added by later workflows (curriculum, synthetic task, ...) register themselves here.
    extra: dict = field(default_factory=dict)


# Sections that later modules add.  Each maps a top-level key to a dataclass type; the value
# is validated like a built-in section and stored in ``Config.extra[key]``.
EXTRA_SECTIONS: dict[str, type] = {}

CHOICES: dict[str, tuple] = {
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "model.zero3_init": ("auto", "always", "never"),
    "train.loss": ("mean", "weighted"),
    "schedule.kind": ("constant", "warmup_constant", "cosine"),
    "data.blend_by": ("samples", "tokens"),
    "log.wandb_mode": ("offline", "online", "disabled"),
}


def register_section(name: str, cls: type) -> None:
    """Register an additional top-level config section (a dataclass)."""
    EXTRA_SECTIONS[name] = cls


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
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


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names and not (cls is Config and key in EXTRA_SECTIONS):
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"unknown config key '{where}' (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or f.name == "extra":
            continue
        where = f"{path}.{f.name}" if path else f.name
        value = data[f.name]
        ann = hints[f.name]
        if dataclasses.is_dataclass(ann):
            kwargs[f.name] = _build(ann, value, where)
            continue
        if ann is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, str) and ann is float:
            try:
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, ann):
            raise ConfigError(
                f"config key '{where}' has wrong type: expected {_type_name(ann)}, "
                f"got {type(value).__name__} ({value!r})"
            )
        choices = CHOICES.get(where)
        if choices and value not in choices:
            raise ConfigError(f"config key '{where}' must be one of {list(choices)}, got {value!r}")
        kwargs[f.name] = value
    obj = cls(**kwargs)
    if cls is Config:
        for name, section_cls in EXTRA_SECTIONS.items():
            obj.extra[name] = _build(section_cls, data.get(name), name)
    return obj


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


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


def validate(cfg: Config) -> Config:
    """Cross-field checks that a type system cannot express."""
    positive = {
        "train.max_steps": cfg.train.max_steps,
        "train.micro_batch": cfg.train.micro_batch,
        "train.grad_accum": cfg.train.grad_accum,
        "train.seq_len": cfg.train.seq_len,
        "log.log_every": cfg.log.log_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    for key, value in {"checkpoint.save_every": cfg.checkpoint.save_every,
                       "eval.every": cfg.eval.every,
                       "schedule.warmup_steps": cfg.schedule.warmup_steps,
                       "checkpoint.keep_last_k": cfg.checkpoint.keep_last_k}.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
    if not 0.0 <= cfg.data.mixin_percent < 1.0:
        raise ConfigError(f"config key 'data.mixin_percent' must be in [0, 1), got {cfg.data.mixin_percent}")
    if cfg.data.mixin_percent > 0 and not cfg.data.mixin:
        raise ConfigError("config key 'data.mixin' must be set when data.mixin_percent > 0")
    if not 0.0 <= cfg.schedule.min_lr_ratio <= 1.0:
        raise ConfigError("config key 'schedule.min_lr_ratio' must be in [0, 1]")
    if len(cfg.optim.betas) != 2:
        raise ConfigError("config key 'optim.betas' must be a list of two floats")
    if not (isinstance(cfg.checkpoint.resume, str) and cfg.checkpoint.resume):
        raise ConfigError("config key 'checkpoint.resume' must be 'auto', 'none' or a path")
    for i, src in enumerate(cfg.data.train + cfg.data.valid):
        if not isinstance(src, (str, dict)):
            raise ConfigError(f"config key 'data.train[{i}]' must be a prefix or {{prefix, weight}}")
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
    import megaproc.workflows  # noqa: F401  (registers the workflow sections)

    data = load_yaml_recipe(path) if path else {}
    for item in overrides:
        apply_override(data, item)
    return validate(_build(Config, data, ""))


def to_dict(cfg: Config) -> dict:
    """Plain-mapping form of a config (extra sections flattened to the top level)."""
    out = dataclasses.asdict(cfg)
    extra = out.pop("extra")
    for name, section in cfg.extra.items():
        out[name] = dataclasses.asdict(section)
    del extra
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def fingerprint(cfg: Config) -> str:
    """Hash of the config fields that define the experiment (not paths or logging)."""
    d = to_dict(cfg)
    for volatile in ("run", "log", "checkpoint", "eval"):
        d.pop(volatile, None)
    d["train"] = {k: v for k, v in d["train"].items() if k != "max_steps"}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
