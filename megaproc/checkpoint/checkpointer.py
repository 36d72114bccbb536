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

Verification (:meth:`Checkpointer.find_resume`): a checkpoint is used only when its files
match its manifest (:mod:`.manifest`: sizes always, content hashes unless
``checkpoint.verify: sizes``) and its trainer state parses.  ``checkpoint.resume=auto`` falls
back from a damaged newest checkpoint to the newest one that verifies, saying so in one line;
a checkpoint named explicitly that fails is refused.  Checkpoints written before manifests
existed are trusted (one line says the check was skipped).

A failed save (:meth:`Checkpointer.save`): every rank records its write failures instead of
raising (:mod:`.writes`), the ranks exchange them after each write phase, and all raise the
same :class:`~megaproc.checkpoint.writes.CheckpointSaveError` (exit code 74) naming the file and
the last good checkpoint, after rank 0 removed the partial directory.
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

import megaproc.checkpoint.layout as layout
import megaproc.checkpoint.manifest as manifest
import megaproc.checkpoint.reshard as reshard
from megaproc import distributed as dist_utils
from megaproc.checkpoint.layout import DS_TAG, ResumeError
from megaproc.checkpoint.writes import CheckpointSaveError, SaveWrites, recording
from megaproc.console_log import get_logger
from megaproc.files import atomic_write_text

STATE_VERSION = 2
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


def checkpoint_problems(path: Path, hashes: bool = True, rank: int = 0, world_size: int = 1,
                        progress=None) -> tuple[list[str], dict | None]:
    """This rank's share of what is wrong with checkpoint ``path``, and its manifest entries.

    Rank ``rank`` of ``world_size`` checks its :func:`~megaproc.checkpoint.manifest.share` of
    the files (sizes, and hashes when ``hashes``); rank 0 also checks that the manifest and
    the trainer state parse.  Entries are None when the checkpoint has no manifest.  Not
    collective; ``progress(bytes)`` is called while hashing.
    """
    problems: list[str] = []
    try:
        entries = manifest.read_manifest(path)
    except manifest.ManifestError as exc:  # every rank sees it; rank 0 reports it
        entries, problems = {}, [str(exc)] if rank == 0 else []
    mine = manifest.share(entries or {}, rank, world_size)
    problems += manifest.check_files(path, mine, hashes, progress)
    if rank == 0 and not problems:
        try:
            layout.read_trainer_state(path)
        except ResumeError as exc:
            problems.append(str(exc))
    return problems, entries


class Checkpointer:
    """Writes, finds, verifies, checks and loads the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last_k: int = 3, resume: str = "auto",
                 allow_world_size_change: bool = False, verify: str = "hashes"):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last_k = int(keep_last_k)
        self.resume = resume
        self.allow_world_size_change = bool(allow_world_size_change)
        if verify not in ("hashes", "sizes"):
            raise ValueError(f"checkpoint.verify must be 'hashes' or 'sizes', not {verify!r}")
        self.verify_hashes = verify == "hashes"
        self.last_saved_step: int | None = None
        # The newest checkpoint of this run known to verify (resumed from, or saved since).
        self.last_good: Path | None = None

    @classmethod
    def from_config(cls, run_dir: str | Path, ckpt_cfg) -> "Checkpointer":
        """The checkpointer configured by a ``checkpoint:`` section."""
        return cls(run_dir, ckpt_cfg.keep_last_k, ckpt_cfg.resume,
                   ckpt_cfg.allow_world_size_change, ckpt_cfg.verify)

    # ------------------------------------------------------------------ discovery
    def existing(self) -> list[tuple[int, Path]]:
        """Complete checkpoints of this run, oldest first."""
        return layout.complete_checkpoints(self.root)

    def find_resume(self) -> Path | None:
        """The checkpoint ``checkpoint.resume`` names, verified (collective: every rank calls it).

        ``auto``: the newest complete checkpoint of the run that verifies -- each one that does
        not is named in one line with its first bad file, and the next older one is tried; if
        none verifies, :class:`ResumeError`.  ``none``: None.  A reference (path,
        ``latest:RUN``): that checkpoint, refused with :class:`ResumeError` if it fails.
        """
        if self.resume == "none":
            return None
        if self.resume != "auto":
            path = layout.resolve_checkpoint_ref(self.resume)
            problem = self.verify(path)
            if problem is not None:
                raise ResumeError(f"cannot resume from {path}: it fails verification ({problem}); "
                                  f"see python -m megaproc.checkpoint verify {path}")
            self._note_good(path)
            return path
        failed = []
        for _, path in reversed(self.existing()):
            problem = self.verify(path)
            if problem is None:
                self._note_good(path)
                return path
            failed.append(f"{path.name}: {problem}")
            if dist_utils.is_main():
                log.warning(f"checkpoint {path} fails verification ({problem}); falling back to "
                            "the newest older checkpoint that verifies")
        if failed:
            raise ResumeError(f"no checkpoint under {self.root} verifies ({'; '.join(failed)}); "
                              "move the damaged ones away or choose a new run.out_dir")
        return None

    def verify(self, path: Path) -> str | None:
        """What is wrong with checkpoint ``path`` (None when it verifies); collective.

        The manifest's files are shared out over the ranks (each checks about the same number
        of bytes), the problems are gathered, the first is returned (``(+N more)`` counts the
        rest).  A checkpoint without a manifest (written before manifests existed) passes
        after a one-line notice.
        """
        path = Path(path)
        started = time.perf_counter()
        problems, entries = checkpoint_problems(path, self.verify_hashes, dist_utils.rank(),
                                                dist_utils.world_size())
        found = [p for rank_problems in dist_utils.all_gather_objects(problems)
                 for p in rank_problems]
        if found:
            more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
            return f"{found[0]}{more}"
        if dist_utils.is_main():
            if entries is None:
                log.info(f"checkpoint {path} has no {manifest.MANIFEST_FILE} (written before "
                         "checkpoints were verified): size and hash check skipped")
            else:
                what = "sizes and hashes" if self.verify_hashes else "sizes"
                size = sum(e["size"] for e in entries.values())
                log.info(f"checkpoint {path.name} verified: {len(entries)} files, "
                         f"{size / 1e6:.1f} MB ({what}, {time.perf_counter() - started:.1f} s)")
        return None

    def _note_good(self, path: Path) -> None:
        """Remember ``path`` as the last good checkpoint when it belongs to this run."""
        if Path(path).parent.resolve() == self.root.resolve():
            self.last_good = Path(path)

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

        Returns the checkpoint directory, or None when this step is already saved.  Raises
        :class:`~megaproc.checkpoint.writes.CheckpointSaveError` on every rank when any rank's
        write failed (the partial directory is removed, older checkpoints are untouched).
        """
        if self.last_saved_step == step:
            return None
        final = self.root / layout.step_dir_name(step)
        tmp = self.root / f"{layout.TMP_PREFIX}{final.name}"
        rank = dist_utils.rank()
        writes = SaveWrites(tmp, step, rank)
        if dist_utils.is_main():
            writes.run(tmp, self._fresh_directory, tmp)
        self._agree(writes, step)
        # Phase 1, every rank: the engine state, this rank's RNG; rank 0 the model config and
        # tokenizer.  DeepSpeed's own `latest` write is unguarded, so it is written below.
        with recording(engine, writes):
            engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
        writes.torch_file(rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
        if dist_utils.is_main():
            writes.run(tmp / "hf_config", hf_config.save_pretrained, str(tmp / "hf_config"))
            writes.run(tmp / "tokenizer", tokenizer.save_pretrained, str(tmp / "tokenizer"))
        writes.sync()
        entries = self._agree(writes, step, entries=True)
        _fault_pause(step)
        # Phase 2, rank 0: trainer state, manifest, COMPLETE, publish, prune.
        if dist_utils.is_main():
            state = dict(trainer_state, version=STATE_VERSION, step=step)
            self._finish(writes, entries, state, final)
        self._agree(writes, step)
        self.last_saved_step = step
        self.last_good = final
        return final

    @staticmethod
    def _fresh_directory(tmp: Path) -> None:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    def _finish(self, writes: SaveWrites, entries: dict, state: dict, final: Path) -> None:
        """Rank 0: complete, check and publish ``writes.dir`` as ``final`` (failures recorded)."""
        tmp = writes.dir
        writes.run(tmp / "trainer_state.json", atomic_write_text, tmp / "trainer_state.json",
                   json.dumps(state, indent=2, default=str))
        writes.run(tmp / "latest", atomic_write_text, tmp / "latest", DS_TAG)
        writes.entries = dict(entries)
        for rel in writes.run(tmp, manifest.listed_files, tmp) or []:
            if rel not in writes.entries:  # rank 0's own small files, DeepSpeed's scripts
                writes.record(tmp / rel)
        if writes.failure is None:  # every rank's file is where the manifest will say
            missing = manifest.check_files(tmp, writes.entries.items(), hashes=False)
            if missing:
                writes.fail(tmp, f"written file not found as expected: {missing[0]}")
        writes.run(tmp, manifest.write_manifest, tmp, writes.entries)
        writes.run(tmp, layout.fsync_directories, tmp)
        writes.run(tmp / layout.COMPLETE_MARKER, atomic_write_text,
                   tmp / layout.COMPLETE_MARKER, "ok\n", fsync=True)
        writes.run(final, layout.publish, tmp, final)
        if writes.failure is None:
            try:
                layout.prune(self.root, self.keep_last_k, keep=final)
            except OSError as exc:  # the new checkpoint is complete: report, do not fail
                log.warning(f"pruning old checkpoints failed: {exc}")

    def _agree(self, writes: SaveWrites, step: int, entries: bool = False) -> dict:
        """Exchange every rank's write record (collective); raise on all ranks if one failed.

        Returns the manifest entries of all ranks when ``entries``.  On a failure rank 0
        removes the partial directory (and puts back an old copy a re-save had moved aside)
        before any rank raises.
        """
        reports = dist_utils.all_gather_objects((writes.failure, writes.entries if entries else {}))
        failures = [failure for failure, _ in reports if failure is not None]
        if not failures:
            return {rel: entry for _, entries in reports for rel, entry in entries.items()}
        if dist_utils.is_main():
            try:
                layout.recover(self.root)
            except OSError as exc:
                log.warning(f"could not remove the partial checkpoint {writes.dir}: {exc}")
        dist_utils.barrier()  # the partial directory is gone before any rank exits
        path, reason = failures[0]
        raise CheckpointSaveError(f"checkpoint save at step {step} failed: {reason} ({path}); "
                                  f"last good checkpoint: {self.last_good or 'none'}")

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
