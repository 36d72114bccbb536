"""The :class:`Checkpointer`: what a checkpoint holds, how it is written, found, checked and loaded.

What is saved (``step_XXXXXXXX/``, see :mod:`megaproc.checkpoint.layout`):

* the DeepSpeed engine (module, optimizer and ZeRO partitions, LR-scheduler step) under tag ``ds``;
* every rank's python/numpy/torch RNG state (``rng/rank_XXXXX.pt``) — dropout draws continue
  exactly, which is what makes resumes bitwise identical;
* ``trainer_state.json``: step, the batch source's position (consumed samples, per source),
  token count, every hook's ``state_dict``, the batch *geometry* a resume must keep and the
  experiment *settings* and plan it was written with;
* the model config and tokenizer (so export and evaluation need nothing else).

Resume rules (:meth:`Checkpointer.check_resume`): a change of micro batch, gradient
accumulation, sequence length, world size or data is refused with a message naming what
changed, before anything is written (``checkpoint.allow_world_size_change`` admits another world
size, and the gradient accumulation that keeps the global batch; :mod:`.reshard`); any other
change (``train.max_steps``, ``optim.lr``, the schedule, ...) is a changed *plan*: it is applied
from the resume step and reported.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from megaproc import distributed as dist_utils
from megaproc.checkpoint import layout, reshard
from megaproc.checkpoint.layout import ResumeError
from megaproc.console_log import get_logger

STATE_VERSION = 2
DS_TAG = "ds"
# Geometry keys whose change makes a resume invalid (the run would silently become another
# experiment, or the saved partitions would not fit).
RESUME_CRITICAL = ("train.micro_batch", "train.grad_accum", "world_size", "train.seq_len",
                   "data_fingerprint")

log = get_logger(__name__)


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


def _fault_pause(step: int) -> None:
    """Test hook: ``MEGAPROC_FAULT_PAUSE_IN_SAVE=STEP:SECONDS`` sleeps mid-write at STEP.

    Lets tests kill a job while a checkpoint is half written; unset in normal runs.
    """
    spec = os.environ.get("MEGAPROC_FAULT_PAUSE_IN_SAVE")
    if spec:
        at, seconds = spec.split(":")
        if int(at) == step:
            time.sleep(float(seconds))


def diff_settings(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (sorted by key)."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


class Checkpointer:
    """Writes, finds, checks and loads the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last_k: int = 3, resume: str = "auto",
                 allow_world_size_change: bool = False):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last_k = int(keep_last_k)
        self.resume = resume
        self.allow_world_size_change = bool(allow_world_size_change)
        self.last_saved_step: int | None = None

    @classmethod
    def from_config(cls, run_dir: str | Path, ckpt_cfg) -> "Checkpointer":
        """The checkpointer configured by a ``checkpoint:`` section."""
        return cls(run_dir, ckpt_cfg.keep_last_k, ckpt_cfg.resume,
                   ckpt_cfg.allow_world_size_change)

    # ------------------------------------------------------------------ discovery
    def existing(self) -> list[tuple[int, Path]]:
        """Complete checkpoints of this run, oldest first."""
        return layout.complete_checkpoints(self.root)

    def find_resume(self) -> Path | None:
        """The checkpoint ``checkpoint.resume`` names: newest (``auto``), none, or a reference."""
        if self.resume == "none":
            return None
        if self.resume == "auto":
            return layout.latest_checkpoint(self.root)
        return layout.resolve_checkpoint_ref(self.resume)

    def recover(self) -> None:
        """Rank 0: clean up after a job killed during a save or prune."""
        if dist_utils.is_main():
            for action in layout.recover(self.root):
                log.info(f"checkpoints: {action} (left by an interrupted save or prune)")

    # ------------------------------------------------------------------ resume checks
    def check_resume(self, path: Path, geometry: dict, settings: dict) -> list[str]:
        """Refuse a resume whose geometry changed; return the changed plan (``key: old -> new``).

        ``geometry`` holds the :data:`RESUME_CRITICAL` keys; ``settings`` the flattened
        experiment config plus ``train.max_steps``.
        """
        state = layout.read_trainer_state(path)
        saved = state.get("geometry", {})
        critical, extra = list(RESUME_CRITICAL), []
        if self.allow_world_size_change:
            # Another world size: grad_accum may change with it if the global batch stays;
            # graph-search task runs are refused (the rules live in checkpoint/reshard.py).
            critical, extra = reshard.relaxed_geometry(path, saved, geometry, settings,
                                                       RESUME_CRITICAL)
        changed = [f"{k}: {saved.get(k)} -> {geometry.get(k)}" for k in critical
                   if saved.get(k) != geometry.get(k)] + extra
        if changed:
            hint = (" (checkpoint.allow_world_size_change=true re-shards onto another world size)"
                    if any(c.startswith("world_size") for c in changed) else "")
            raise ResumeError(f"cannot resume from {path}: batch settings or data changed since "
                              f"the checkpoint ({'; '.join(changed)}); use the original settings "
                              f"or a new run.out_dir{hint}")
        return diff_settings(state.get("settings", {}), settings)

    # ------------------------------------------------------------------ save
    def save(self, step: int, engine, trainer_state: dict, hf_config, tokenizer) -> Path | None:
        """Write the checkpoint after ``step`` atomically (collective: every rank calls it).

        Returns the checkpoint directory, or None when this step is already saved.
        """
        if self.last_saved_step == step:
            return None
        final = self.root / layout.step_dir_name(step)
        tmp = self.root / f"{layout.TMP_PREFIX}{final.name}"
        if dist_utils.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        dist_utils.barrier()
        engine.save_checkpoint(str(tmp), tag=DS_TAG)
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank_{dist_utils.rank():05d}.pt")
        if dist_utils.is_main():
            hf_config.save_pretrained(str(tmp / "hf_config"))
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        dist_utils.barrier()
        # Every node flushes what its ranks wrote (local rank 0 fsyncs the whole tree: an fsync
        # of a file another local process wrote flushes the same page cache).
        if dist_utils.local_rank() == 0:
            layout.fsync_tree(tmp)
        dist_utils.barrier()
        _fault_pause(step)
        if dist_utils.is_main():
            state = dict(trainer_state, version=STATE_VERSION, step=step)
            layout.write_synced(tmp / "trainer_state.json", json.dumps(state, indent=2, default=str))
            layout.write_synced(tmp / layout.COMPLETE_MARKER, "ok\n")
            layout.fsync_dir(tmp)
            layout.publish(tmp, final)
            layout.prune(self.root, self.keep_last_k)
        dist_utils.barrier()
        self.last_saved_step = step
        return final

    # ------------------------------------------------------------------ load
    def load(self, path: Path, engine) -> dict:
        """Load the engine and this rank's RNG from ``path``; returns the trainer state."""
        state = layout.read_trainer_state(path)
        if int(state.get("version", 1)) > STATE_VERSION:
            raise ResumeError(f"checkpoint {path} was written by a newer megaproc "
                              f"(state version {state['version']} > {STATE_VERSION})")
        change = reshard.world_size_change(path, dist_utils.world_size(),
                                           self.allow_world_size_change)
        if change is not None:
            # Written by another number of ranks: re-shard the ZeRO partitions through a
            # universal checkpoint (checkpoint/reshard.py); the trainer set load_universal.
            how = reshard.load_resharded(engine, Path(path), self.root, DS_TAG)
            log.info(reshard.describe(*change, engine.zero_optimization_stage(), how))
            log.info(reshard.rng_plan(Path(path), change[1]))
        else:
            load_path, _ = engine.load_checkpoint(str(path), tag=DS_TAG)
            if load_path is None:
                raise ResumeError(f"DeepSpeed could not load the engine state in {path}")
        rng_file = Path(path) / "rng" / f"rank_{dist_utils.rank():05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        elif change is None:  # a rank that did not exist keeps its seeded RNG (rng_plan above)
            raise ResumeError(f"checkpoint {path} has no RNG state for rank {dist_utils.rank()}")
        self.last_saved_step = int(state["step"])
        return state
