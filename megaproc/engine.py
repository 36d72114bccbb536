"""Build the DeepSpeed engine from the megaproc config (one source of truth).

The JSON in ``deepspeed.config`` chooses the ZeRO stage, offload and communication knobs.
Batch geometry, clipping, precision, optimizer and schedule come from the megaproc config and
are filled in here; a value given in both places that disagrees is an error.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from megaproc.config import Config, ConfigError
from megaproc.files import REPO_ROOT
from megaproc.schedules import ConfigSchedule


def resolve_ds_config_path(path: str) -> Path:
    """A DeepSpeed JSON path as given, or relative to the repository root when it does not
    exist here (recipes name ``ds_configs/zero2.json`` whatever the working directory)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def resolve_precision(requested: str) -> str:
    """``auto`` → bf16 on CUDA with bf16 support, else fp32.  Half precision needs CUDA."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if requested in ("bf16", "fp16") and not cuda:
        warnings.warn(f"train.precision={requested} needs CUDA; training in fp32 on CPU")
        return "fp32"
    return requested


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_checked(ds: dict, key: str, value, source: str, ds_path: Path) -> None:
    """Set ``ds[key]`` unless the JSON already holds a different (non-"auto") value."""
    have = ds.get(key, "auto")
    if have != "auto" and have != value:
        raise ConfigError(
            f"{ds_path} sets {key}={have!r} but the megaproc config gives {value!r} "
            f"(from {source}); set it in one place"
        )
    ds[key] = value


def build_ds_config(cfg: Config, world_size: int) -> dict:
    """The complete DeepSpeed config dict for this run."""
    ds_path = resolve_ds_config_path(cfg.deepspeed.config)
    if not ds_path.is_file():
        raise ConfigError(f"deepspeed.config file not found: {cfg.deepspeed.config}")
    try:
        ds = json.loads(ds_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deepspeed.config {ds_path} is not valid JSON: {exc}") from None
    ds = _merge(ds, cfg.deepspeed.overrides)
    t = cfg.train
    _set_checked(ds, "train_micro_batch_size_per_gpu", t.micro_batch, "train.micro_batch", ds_path)
    _set_checked(ds, "gradient_accumulation_steps", t.grad_accum, "train.grad_accum", ds_path)
    _set_checked(ds, "train_batch_size", t.micro_batch * t.grad_accum * world_size,
                 "train.micro_batch * train.grad_accum * world size", ds_path)
    _set_checked(ds, "gradient_clipping", float(t.grad_clip), "train.grad_clip", ds_path)
    precision = resolve_precision(t.precision)
    for name in ("bf16", "fp16"):
        section = dict(ds.get(name, {}))
        want = precision == name
        if section.get("enabled", "auto") not in ("auto", want):
            raise ConfigError(f"{ds_path} sets {name}.enabled={section['enabled']} but "
                              f"train.precision resolves to {precision}; set it in one place")
        section["enabled"] = want
        ds[name] = section
    for owned, keys in (("optimizer", "optim.*"), ("scheduler", "schedule.*")):
        if owned in ds:
            raise ConfigError(f"{ds_path} has an '{owned}' section; megaproc sets it from {keys}")
    o = cfg.optim
    params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    if not torch.cuda.is_available():
        params["torch_adam"] = True  # FusedAdam is CUDA-only
    ds["optimizer"] = {"type": "AdamW", "params": params}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(ds_config: dict) -> int:
    """ZeRO stage of a DeepSpeed config (0 when absent)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_engine(cfg: Config, model: torch.nn.Module, ds_config: dict):
    """``deepspeed.initialize`` with the megaproc optimizer groups and LR schedule.

    Returns ``(engine, schedule)``.  Only trainable parameters reach the optimizer, so frozen
    weights get no gradient and no optimizer state under any ZeRO stage.
    """
    import deepspeed

    schedules = []

    def make_scheduler(optimizer):
        # DeepSpeed calls this with its base optimizer; ZeRO keeps that optimizer's param_groups
        # (it swaps the params inside them), so the LR set on them is the one that steps.
        schedules.append(ConfigSchedule.from_config(optimizer, cfg))
        return schedules[-1]

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optim.weight_decay),
        config=ds_config,
        lr_scheduler=make_scheduler,
    )
    return engine, schedules[0]
