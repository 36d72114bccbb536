"""Atomic checkpoints: DeepSpeed state, trainer state, per-rank RNG, model config, tokenizer.

Layout of ``RUN_DIR/checkpoints/step_XXXXXXXX/``::

    ds/                       DeepSpeed engine state (tag "ds"), any ZeRO stage
    latest                    DeepSpeed's tag file
    hf_config/                model config (save_pretrained)
    tokenizer/                the run's tokenizer
    rng/rank_00000.pt         python, numpy and torch RNG states of each rank
    trainer_state.json        step, consumed samples, hook states, batch geometry, config
    COMPLETE                  written last; a directory without it is never resumed from

Everything is written into ``.tmp_step_XXXXXXXX`` first and renamed when complete, so a job
killed during a write leaves the previous checkpoint intact and usable.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from megaproc import distributed as dist_utils

STATE_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d{8})$")
# Keys whose change makes a resume invalid (the run would silently become another experiment).
RESUME_CRITICAL = ("train.micro_batch", "train.grad_accum", "world_size", "train.seq_len",
                   "data_fingerprint")


class ResumeError(RuntimeError):
    """A checkpoint cannot be resumed with the current settings."""


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
        if match and (child / "COMPLETE").is_file():
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
    if (path / "COMPLETE").is_file():
        return path
    newest = latest_checkpoint(path) if path.is_dir() else None
    if newest is None:
        raise ResumeError(f"{ref} is not a complete checkpoint (no COMPLETE marker) "
                          "and holds none")
    return newest


def rng_state() -> dict:
    """This process's RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, ckpt_root: Path, step: int, trainer_state: dict, hf_config,
                    tokenizer, keep_last_k: int) -> Path:
    """Write the checkpoint after ``step`` atomically (collective: every rank calls it)."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp_{step_dir_name(step)}"
    if dist_utils.is_main():
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist_utils.barrier()
    engine.save_checkpoint(str(tmp), tag="ds")
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{dist_utils.rank():05d}.pt")
    dist_utils.barrier()
    _fault_pause(step)
    if dist_utils.is_main():
        hf_config.save_pretrained(str(tmp / "hf_config"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        state = dict(trainer_state, version=STATE_VERSION, step=step)
        _write_synced(tmp / "trainer_state.json", json.dumps(state, indent=2, default=str))
        _write_synced(tmp / "COMPLETE", "ok\n")
        if final.exists():  # same step saved again (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        prune_checkpoints(ckpt_root, keep_last_k)
    dist_utils.barrier()
    return final


def _fault_pause(step: int) -> None:
    """Test hook: ``MEGAPROC_FAULT_PAUSE_IN_SAVE=STEP:SECONDS`` sleeps mid-write at STEP.

    Lets tests kill a job while a checkpoint is half written; unset in normal runs.
    """
    spec = os.environ.get("MEGAPROC_FAULT_PAUSE_IN_SAVE")
    if spec:
        at, seconds = spec.split(":")
        if int(at) == step:
            time.sleep(float(seconds))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_checkpoints(ckpt_root: Path, keep_last_k: int) -> None:
    """Delete all but the newest ``keep_last_k`` complete checkpoints (0 keeps all)."""
    if keep_last_k <= 0:
        return
    for _, path in complete_checkpoints(ckpt_root)[:-keep_last_k]:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(ckpt_root: Path) -> None:
    """Delete ``.tmp_step_*`` left by a job killed during a checkpoint write (rank 0)."""
    if dist_utils.is_main() and Path(ckpt_root).is_dir():
        for child in Path(ckpt_root).iterdir():
            if child.name.startswith(".tmp_step_"):
                shutil.rmtree(child, ignore_errors=True)


def read_trainer_state(ckpt_dir: Path) -> dict:
    """The trainer state of a complete checkpoint."""
    path = Path(ckpt_dir) / "trainer_state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"checkpoint {ckpt_dir} has no readable trainer_state.json: {exc}") from None


def check_resume_compatible(saved: dict, current: dict) -> list[str]:
    """Refuse a resume whose batch geometry changed; return names of other changed settings.

    ``saved`` and ``current`` hold ``geometry`` (micro batch, grad accum, world size, seq len)
    and ``config`` (the flattened experiment config).
    """
    changed = [f"{key}: {saved['geometry'].get(key)} -> {current['geometry'].get(key)}"
               for key in RESUME_CRITICAL
               if saved["geometry"].get(key) != current["geometry"].get(key)]
    if changed:
        raise ResumeError("cannot resume: batch settings or data changed since the checkpoint ("
                          + "; ".join(changed) + "); use the original settings or a new run.out_dir")
    old, new = saved.get("config", {}), current.get("config", {})
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def load_rng(ckpt_dir: Path) -> None:
    """Restore this rank's RNG states from a checkpoint."""
    path = Path(ckpt_dir) / "rng" / f"rank_{dist_utils.rank():05d}.pt"
    if not path.is_file():
        raise ResumeError(f"checkpoint {ckpt_dir} has no RNG state for rank {dist_utils.rank()}")
    set_rng_state(torch.load(path, weights_only=False))
