"""The model inside a megaproc checkpoint: for export, evaluation and ``model.init_from``.

Every ZeRO stage is supported: ZeRO-1/2/3 checkpoints are consolidated from the fp32 master
weights with DeepSpeed's ``zero_to_fp32``; ZeRO-0 checkpoints hold the full module in
``ds/mp_rank_00_model_states.pt``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from megaproc.checkpoint.layout import COMPLETE_MARKER, DS_TAG
from megaproc.checkpoint.manifest import ManifestError, check_files, read_manifest
from megaproc.errors import UserError

ZERO0_MODEL_FILE = "mp_rank_00_model_states.pt"
# Wrappers that add a prefix to every parameter name: DeepSpeed/DDP and torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint's model cannot be read; the message is one line saying why."""


def check_checkpoint_dir(ckpt_dir: str | Path) -> Path:
    """Return ``ckpt_dir`` as a Path after checking it is a complete megaproc checkpoint.

    Raises :class:`CheckpointError` when the directory, its ``COMPLETE`` marker, its DeepSpeed
    ``ds`` directory or its ``hf_config/config.json`` is missing, or a file's size differs
    from the manifest's.
    """
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not (path / COMPLETE_MARKER).is_file():
        if (path / "checkpoints").is_dir():
            raise CheckpointError(f"{path} is a run directory; pass one of its checkpoints, "
                              f"e.g. {path / 'checkpoints' / 'step_XXXXXXXX'}")
        raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker; "
                          "it may still be being written or its save was interrupted)")
    if not (path / DS_TAG).is_dir():
        raise CheckpointError(f"{path} has no DeepSpeed state directory {DS_TAG}/")
    if not (path / "hf_config" / "config.json").is_file():
        raise CheckpointError(f"{path} has no hf_config/config.json")
    try:  # sizes only (cheap); `python -m megaproc.checkpoint verify` also checks the hashes
        entries = read_manifest(path)
    except ManifestError as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}") from None
    problems = check_files(path, entries.items(), hashes=False) if entries else []
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: {problems[0]}")
    return path


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) from every key."""
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _KEY_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        stripped[key] = value
    return stripped


def _zero_stage_of(optim_file: Path) -> int | None:
    """The ZeRO stage recorded in a DeepSpeed optimizer-state file, or None if absent.

    DeepSpeed's bf16 optimizer (used with ZeRO-0 and bf16) writes the same kind of file
    without a stage; its checkpoint is read from the module states instead.
    """
    state = torch.load(optim_file, map_location="cpu", mmap=True, weights_only=False)
    stage = state.get("optimizer_state_dict", {}).get("zero_stage")
    return int(stage) if stage is not None else None


def load_checkpoint_state_dict(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint as one CPU state dict (keys without ``module.``).

    ZeRO-1/2/3: fp32 master weights consolidated by
    ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``.
    ZeRO-0: the ``"module"`` entry of ``ds/mp_rank_00_model_states.pt`` (in the training
    dtype).  Tied weights may appear under both names.
    """
    path = check_checkpoint_dir(ckpt_dir)
    ds_dir = path / DS_TAG
    optim_files = sorted(ds_dir.glob("*zero_pp_rank_*_optim_states.pt"))
    if optim_files and _zero_stage_of(optim_files[0]) is not None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 reports progress with print(); keep stdout for our own output.
        with contextlib.redirect_stdout(sys.stderr):
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
        return _strip_prefixes(state_dict)
    model_file = ds_dir / ZERO0_MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"{ds_dir} holds neither ZeRO optimizer shards nor {ZERO0_MODEL_FILE}")
    states = torch.load(model_file, map_location="cpu", mmap=True, weights_only=False)
    module = states.get("module")
    if not module:
        raise CheckpointError(f"{model_file} has no 'module' weights")
    return _strip_prefixes(dict(module))


def _tied_parameter_names(model) -> set[str]:
    """Names of parameters that are tied to another one (e.g. ``lm_head.weight``)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    tied = getattr(model, "all_tied_weights_keys", None) or \
        getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)


def load_state_dict_strict(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model``, failing unless every key matches.

    A tied parameter (``lm_head.weight`` when embeddings are tied) may be missing from the
    state dict; any other missing or unexpected key is an :class:`CheckpointError` naming them.
    """
    result = model.load_state_dict(state_dict, strict=False)
    missing = sorted(set(result.missing_keys) - _tied_parameter_names(model))
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise CheckpointError("checkpoint weights do not match hf_config: " + "; ".join(parts))
    if _tied_parameter_names(model):
        model.tie_weights()


def load_checkpoint_model(ckpt_dir: str | Path, dtype: torch.dtype = torch.float32):
    """The checkpoint's model as a HF ``PreTrainedModel`` on CPU, in eval mode.

    The architecture comes from ``hf_config/`` and the weights from the DeepSpeed state of
    any ZeRO stage (see :func:`load_checkpoint_state_dict`); all keys must match.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = check_checkpoint_dir(ckpt_dir)
    config = AutoConfig.from_pretrained(str(path / "hf_config"), local_files_only=True)
    state_dict = load_checkpoint_state_dict(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    load_state_dict_strict(model, state_dict)
    del state_dict
    if (path / "hf_config" / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path / "hf_config"))
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def load_checkpoint_tokenizer(ckpt_dir: str | Path):
    """The tokenizer saved with a checkpoint, or None if it has no ``tokenizer/`` directory."""
    from transformers import AutoTokenizer

    tok_dir = Path(ckpt_dir) / "tokenizer"
    if not tok_dir.is_dir():
        return None
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
