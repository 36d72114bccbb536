"""Export a megaproc checkpoint to a HuggingFace ``save_pretrained`` directory.

    python -m megaproc.export RUN_DIR/checkpoints/step_XXXXXXXX OUT_DIR [--overwrite]

A checkpoint directory written by the trainer looks like::

    step_XXXXXXXX/
      ds/                  DeepSpeed engine.save_checkpoint(CKPT_DIR, tag="ds")
      latest               DeepSpeed's pointer to the "ds" tag
      hf_config/           model.config.save_pretrained(...)
      tokenizer/           tokenizer.save_pretrained(...)
      trainer_state.json
      COMPLETE             written last

Every ZeRO stage is supported: ZeRO-1/2/3 checkpoints are consolidated from the fp32 master
weights with DeepSpeed's ``zero_to_fp32``; ZeRO-0 checkpoints hold the full module in
``ds/mp_rank_00_model_states.pt``.  The result (safetensors weights, config, generation
config, tokenizer) loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and is ready
for lm-evaluation-harness.  The output is written to a temporary sibling directory and renamed
into place, so OUT_DIR is never left half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

DS_TAG = "ds"
COMPLETE_MARKER = "COMPLETE"
ZERO0_MODEL_FILE = "mp_rank_00_model_states.pt"
EXPORT_INFO_FILE = "megaproc_export.json"
# Wrappers that add a prefix to every parameter name: DeepSpeed/DDP and torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message is one line saying why."""


def check_checkpoint_dir(ckpt_dir: str | Path) -> Path:
    """Return ``ckpt_dir`` as a Path after checking it is a complete megaproc checkpoint.

    Raises :class:`ExportError` when the directory, its ``COMPLETE`` marker, its DeepSpeed
    ``ds`` directory or its ``hf_config/config.json`` is missing.
    """
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise ExportError(f"checkpoint directory {path} does not exist")
    if not (path / COMPLETE_MARKER).is_file():
        if (path / "checkpoints").is_dir():
            raise ExportError(f"{path} is a run directory; pass one of its checkpoints, "
                              f"e.g. {path / 'checkpoints' / 'step_XXXXXXXX'}")
        raise ExportError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker; "
                          "it may still be being written or its save was interrupted)")
    if not (path / DS_TAG).is_dir():
        raise ExportError(f"{path} has no DeepSpeed state directory {DS_TAG}/")
    if not (path / "hf_config" / "config.json").is_file():
        raise ExportError(f"{path} has no hf_config/config.json")
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
        raise ExportError(f"{ds_dir} holds neither ZeRO optimizer shards nor {ZERO0_MODEL_FILE}")
    states = torch.load(model_file, map_location="cpu", mmap=True, weights_only=False)
    module = states.get("module")
    if not module:
        raise ExportError(f"{model_file} has no 'module' weights")
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
    state dict; any other missing or unexpected key is an :class:`ExportError` naming them.
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
        raise ExportError("checkpoint weights do not match hf_config: " + "; ".join(parts))
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


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite``; refuse a file in its place."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"output directory {out_dir} is not empty (use --overwrite to "
                          "replace it)")


def _export_info(ckpt_dir: Path) -> dict:
    """Provenance written next to the exported model."""
    info = {"source_checkpoint": str(ckpt_dir.resolve())}
    state_file = ckpt_dir / "trainer_state.json"
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            info["step"] = state.get("step")
        except (json.JSONDecodeError, AttributeError):
            pass
    return info


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, overwrite: bool = False,
                      dtype: torch.dtype = torch.float32) -> Path:
    """Write the checkpoint as a HF ``save_pretrained`` directory (safetensors) plus tokenizer.

    The directory is assembled in a temporary sibling of ``out_dir`` and renamed into place.
    A non-empty ``out_dir`` is refused unless ``overwrite``.  Returns ``out_dir``.
    """
    ckpt = check_checkpoint_dir(ckpt_dir)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    model = load_checkpoint_model(ckpt, dtype=dtype)
    tokenizer = load_checkpoint_tokenizer(ckpt)
    if tokenizer is None:
        print(f"warning: {ckpt} has no tokenizer/ directory; exporting the model only",
              file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(_export_info(ckpt), indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m megaproc.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m megaproc.export",
        description="Export a megaproc checkpoint (any ZeRO stage) to a HuggingFace "
                    "save_pretrained directory with the run's tokenizer.")
    parser.add_argument("ckpt_dir", help="RUN_DIR/checkpoints/step_XXXXXXXX")
    parser.add_argument("out_dir", help="directory to write (must be empty or absent)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUT_DIR")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                        help="dtype of the exported weights (default float32)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success and 1 (after a one-line error) on failure."""
    args = build_parser().parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt_dir, args.out_dir, overwrite=args.overwrite,
                                dtype=_DTYPES[args.dtype])
    except (ExportError, OSError, ValueError, RuntimeError) as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
