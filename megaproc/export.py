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

Every ZeRO stage is supported (the model is read by :mod:`megaproc.checkpoint.model`).  The result (safetensors weights, config, generation
config, tokenizer) loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and is ready
for lm-evaluation-harness.  The output is written to a temporary sibling directory and renamed
into place, so OUT_DIR is never left half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from megaproc.checkpoint.model import (CheckpointError, check_checkpoint_dir, load_checkpoint_model,
                                       load_checkpoint_tokenizer)
from megaproc.errors import run_cli

# Export errors are checkpoint errors (one line saying why); the old name stays importable.
ExportError = CheckpointError
EXPORT_INFO_FILE = "megaproc_export.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    """Entry point; prints the export directory, or one ``error:`` line and exits 2."""
    args = build_parser().parse_args(argv)

    def export() -> int:
        print(export_checkpoint(args.ckpt_dir, args.out_dir, overwrite=args.overwrite,
                                dtype=_DTYPES[args.dtype]))
        return 0

    return run_cli(export, also=(OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
