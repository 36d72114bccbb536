"""The model and tokenizer ``python -m megaproc.evaluate`` evaluates, on a device and dtype.

Checked before anything heavy loads, each a one-line :class:`ModelLoadError` (exit code 2):

* ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and it must exist here (``cuda`` on a
  machine without CUDA is an error, not a silent CPU run).  Default: CUDA when available
  (``cuda:LOCAL_RANK`` under a launcher), else the CPU.
* ``--dtype``: ``float32``, ``bfloat16`` or ``float16``; default bfloat16 on CUDA (float16 where
  the GPU has no bfloat16), float32 elsewhere.
* the architecture: the config must be a causal LM, and a checkpoint's weight names and shapes
  (read from its DeepSpeed model-states file, which ZeRO-1/2/3 keep small) must be those of
  that config - a sequence-classification run's checkpoint, or weights of another model, is
  refused before the consolidation of the ZeRO shards starts.

A checkpoint of any ZeRO stage is consolidated in memory
(:func:`megaproc.checkpoint.load_checkpoint_model`: DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint`` returns the state dict; nothing is written).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from megaproc.checkpoint import (
    check_checkpoint_dir,
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    resolve_checkpoint_ref,
)
from megaproc.checkpoint.model import DS_TAG, _strip_prefixes
from megaproc.errors import UserError
from megaproc.tokenizer import load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda", "mps")
_EXAMPLES = 2  # names quoted in a mismatch message


class ModelLoadError(UserError, ValueError):
    """The device, dtype, model directory or checkpoint cannot be used; one line says why."""


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The device to evaluate on (see the module docstring)."""
    if name is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else \
            torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ModelLoadError(f"--device {name}: expected cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {name}: CUDA is not available on this machine "
                                 "(torch.cuda.is_available() is False); use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {name}: no CUDA device {index} (this machine has "
                                 f"{torch.cuda.device_count()})")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {name}: MPS is not available on this machine")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The parameter dtype: ``name``, else bfloat16 on CUDA (float16 without bf16), else
    float32."""
    if name is not None:
        if name not in DTYPES:
            raise ModelLoadError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32`` etc."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def causal_lm_config(config_dir: Path, what: str):
    """The HF config in ``config_dir``, refused unless it describes a causal LM."""
    try:
        config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{what}: unreadable model config ({first})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{what}: a {config.model_type!r} model is not a causal language "
                             "model (AutoModelForCausalLM cannot load it)")
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise ModelLoadError(f"{what}: its architecture {', '.join(architectures)} is not a "
                             "causal language model")
    return config


def _checkpoint_shapes(ckpt: Path) -> dict[str, tuple[int, ...]]:
    """Parameter names and full shapes recorded in a checkpoint's DeepSpeed model states."""
    files = sorted((ckpt / DS_TAG).glob("*model_states.pt"))
    if not files:
        raise ModelLoadError(f"{ckpt / DS_TAG} holds no DeepSpeed model-states file")
    states = torch.load(files[0], map_location="cpu", mmap=True, weights_only=False)
    recorded = [states.get("param_shapes"), states.get("frozen_param_shapes")]
    shapes: dict[str, tuple[int, ...]] = {}
    if recorded[0]:  # ZeRO-1/2/3: the full shapes of the (partitioned) parameters
        for groups in recorded:
            for group in (groups if isinstance(groups, list) else [groups or {}]):
                shapes.update({name: tuple(shape) for name, shape in group.items()})
    else:  # ZeRO-0: the module itself
        shapes = {name: tuple(t.shape) for name, t in (states.get("module") or {}).items()}
    return {name: shapes[key] for name, key in zip(_strip_prefixes(dict.fromkeys(shapes)),
                                                   shapes)}


def check_checkpoint_architecture(ckpt: Path, config) -> None:
    """Refuse a checkpoint whose weights are not those of ``config``'s causal LM (names and
    shapes), before any weight is read."""
    with torch.device("meta"):
        expected_model = AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(p.shape)
                for name, p in expected_model.named_parameters(remove_duplicate=False)}
    tied = set(getattr(expected_model, "all_tied_weights_keys", None) or {})
    buffers = {name for name, _ in expected_model.named_buffers()}
    found = _checkpoint_shapes(ckpt)
    missing = sorted(set(expected) - set(found) - tied)
    unexpected = sorted(set(found) - set(expected) - buffers)
    wrong = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
    if not (missing or unexpected or wrong):
        return
    kind = type(expected_model).__name__
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights of {kind} missing (e.g. "
                     f"{', '.join(missing[:_EXAMPLES])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:_EXAMPLES])})")
    if wrong:
        name = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {name}: {list(found[name])} vs "
                     f"{list(expected[name])})")
    raise ModelLoadError(f"checkpoint {ckpt} holds another architecture than its hf_config "
                         f"({'; '.join(parts)}): not a causal LM checkpoint of that model "
                         "(a sequence-classification run?)")


def check_model_source(checkpoint: str | None, model_dir: str | None) -> tuple[Path, object]:
    """Resolve and check ``--checkpoint`` / ``--model`` without loading weights; returns the
    path and the model config."""
    if checkpoint:
        path = check_checkpoint_dir(resolve_checkpoint_ref(checkpoint))
        config = causal_lm_config(path / "hf_config", f"checkpoint {path}")
        check_checkpoint_architecture(path, config)
        return path, config
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"--model {path}: not a HuggingFace model directory (no config.json)")
    return path, causal_lm_config(path, f"--model {path}")


def load_eval_tokenizer(path: Path, is_checkpoint: bool, tokenizer_dir: str | None):
    """``--tokenizer``, else the checkpoint's or model directory's own tokenizer."""
    if tokenizer_dir:
        return load_tokenizer(tokenizer_dir)
    if is_checkpoint:
        tokenizer = load_checkpoint_tokenizer(path)
    elif any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = None
    if tokenizer is None:
        raise ModelLoadError(f"{path} has no tokenizer; pass --tokenizer DIR")
    return tokenizer


def load_eval_model(path: Path, is_checkpoint: bool, device: torch.device, dtype: torch.dtype):
    """The model in eval mode on ``device`` with ``dtype`` parameters."""
    if is_checkpoint:
        model = load_checkpoint_model(path, dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                         local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"--model {path}: cannot load the weights ({first})") from None
    return model.to(device).eval()
