"""Checkpoint directories on disk: discovery and crash-safe publication.

Layout of ``RUN_DIR/checkpoints/step_XXXXXXXX/``::

    ds/                       DeepSpeed engine state (tag "ds"), any ZeRO stage
    latest                    DeepSpeed's tag file
    zero_to_fp32.py ...       DeepSpeed's recovery scripts
    hf_config/                model config (save_pretrained)
    tokenizer/                the run's tokenizer
    rng/rank_00000.pt         python, numpy and torch RNG states of each rank
    trainer_state.json        step, data position, hook states, batch geometry, config
    manifest.json             every file above with its size and hash (:mod:`.manifest`)
    COMPLETE                  written last; a directory without it is never resumed from

Crash safety (a ``kill -9`` at any instant leaves a resumable run):

* a checkpoint is written into ``.tmp_step_X``; every file in it is fsynced by the rank that
  wrote it and every directory by rank 0, the manifest and ``COMPLETE`` are written and
  fsynced, then the directory is renamed to ``step_X`` and the parent directory fsynced;
* re-saving an existing step renames the old ``step_X`` aside to ``.old_step_X`` first, renames
  the new one in, and only then deletes the old one;
* pruning renames ``step_X`` to ``.deleting_step_X`` (atomic) before deleting it, so a kill
  mid-delete never leaves a ``step_X`` marked complete with missing shards;
* :func:`recover` (run at start-up, and after a failed save) deletes temporaries and puts back
  an ``.old_step_X`` whose replacement never arrived.

Damage after ``COMPLETE`` (a truncated copy, a full disk during a later rewrite, bit rot) is
what the manifest catches: see :meth:`megaproc.checkpoint.checkpointer.Checkpointer.find_resume`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from megaproc.errors import ResumeError
from megaproc.files import fsync_dir

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMPLETE_MARKER = "COMPLETE"
DS_TAG = "ds"  # the DeepSpeed tag every megaproc checkpoint is saved under
TMP_PREFIX, OLD_PREFIX, DELETING_PREFIX = ".tmp_", ".old_", ".deleting_"


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:08d}"


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (a run dir or its checkpoints dir)."""
    root = Path(root)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint_ref(ref: str) -> Path:
    """``latest:RUN_DIR`` or a run/checkpoints dir → its newest checkpoint; a path → itself."""
    if ref.startswith("latest:"):
        path = latest_checkpoint(ref[len("latest:"):])
        if path is None:
            raise ResumeError(f"no complete checkpoint under {ref[len('latest:'):]}")
        return path
    path = Path(ref)
    if (path / COMPLETE_MARKER).is_file():
        return path
    newest = latest_checkpoint(path) if path.is_dir() else None
    if newest is None:
        raise ResumeError(f"{ref} is not a complete checkpoint (no {COMPLETE_MARKER} marker) "
                          "and holds none")
    return newest


def read_trainer_state(ckpt_dir: str | Path) -> dict:
    """The trainer state of a complete checkpoint."""
    path = Path(ckpt_dir) / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"checkpoint {ckpt_dir} has no readable trainer_state.json: {exc}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ResumeError(f"checkpoint {ckpt_dir} has no readable trainer_state.json: "
                          "it holds no step")
    return state


# ----------------------------------------------------------------------------- durability
def fsync_directories(path: str | Path) -> None:
    """fsync ``path`` and every directory below it, deepest first (their entries: the files
    themselves are fsynced by the rank that wrote them, see :mod:`.writes`)."""
    for dirpath, _, _ in sorted(os.walk(path), key=lambda walked: -walked[0].count(os.sep)):
        fsync_dir(dirpath)


def publish(tmp: Path, final: Path) -> None:
    """Move a complete ``tmp`` directory to ``final`` without a moment where ``final`` is a
    partial checkpoint: an existing ``final`` is renamed aside first and deleted last."""
    parent = final.parent
    old = parent / f"{OLD_PREFIX}{final.name}"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        fsync_dir(parent)
    os.replace(tmp, final)
    fsync_dir(parent)
    if old.exists():
        shutil.rmtree(old)


def retire(path: Path) -> None:
    """Delete a checkpoint directory: rename it out of the ``step_*`` namespace, then delete."""
    doomed = path.parent / f"{DELETING_PREFIX}{path.name}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(root: Path, keep_last_k: int, keep: Path | None = None) -> list[Path]:
    """Retire all but the newest ``keep_last_k`` complete checkpoints (0 keeps all), never
    ``keep`` (the checkpoint just written: after a resume fell back past damaged newer
    checkpoints it is older than them, and it is the newest one known to verify)."""
    if keep_last_k <= 0:
        return []
    doomed = [path for _, path in complete_checkpoints(root)[:-keep_last_k]
              if keep is None or path != Path(keep)]
    for path in doomed:
        retire(path)
    return doomed


def recover(root: Path) -> list[str]:
    """Clean up after a kill during a save or prune; returns what was done (for the log)."""
    root = Path(root)
    if not root.is_dir():
        return []
    actions = []
    for child in sorted(root.iterdir()):
        name = child.name
        if name.startswith(OLD_PREFIX):
            final = root / name[len(OLD_PREFIX):]
            if not final.exists() and (child / COMPLETE_MARKER).is_file():
                os.replace(child, final)  # the replacement never arrived: keep the old one
                actions.append(f"restored {final.name}")
            else:
                shutil.rmtree(child, ignore_errors=True)
        elif name.startswith((TMP_PREFIX, DELETING_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)
            actions.append(f"removed {name}")
    if actions:
        fsync_dir(root)
    return actions
