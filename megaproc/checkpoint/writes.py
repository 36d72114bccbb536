"""What one rank writes during a checkpoint save, and how a failed write becomes one line.

A save is collective, and DeepSpeed's ``engine.save_checkpoint`` (0.19.8) has collectives of
its own between its writes: a barrier after rank 0 creates the directory, two all-reduces
validating the tag, gathers inside ``module_state_dict`` / ``optimizer.state_dict`` for
ZeRO-3, and a final barrier.  If one rank raised out of a write (a full disk, a quota, an I/O
error) while the others went on, they would wait for it in the next collective and die with a
communication traceback.  So every write of a save goes through the rank's
:class:`SaveWrites`, which *records* the first failure instead of raising (and skips the rank's
later writes); every rank reaches the same collectives, and the
:class:`~megaproc.checkpoint.checkpointer.Checkpointer` exchanges the records after each write
phase, so all ranks raise the same :class:`CheckpointSaveError` together.

Inside ``engine.save_checkpoint`` the writes are routed through
:class:`RecordingCheckpointEngine`, which stands in for ``engine.checkpoint_engine`` (the
object DeepSpeed calls for ``makedirs`` and ``save`` of every state file), and rank 0's copy of
the ``zero_to_fp32.py`` recovery scripts is guarded the same way (see :func:`recording`).

Each rank hashes the files it writes while writing them (:meth:`SaveWrites.torch_file`) and
fsyncs them when all are written (:meth:`SaveWrites.sync`), so hashing and flushing run in
parallel over the ranks; the entries go to rank 0 for the manifest.

The exit code of a failed save is :data:`SAVE_FAILED_EXIT_CODE` (74, ``EX_IOERR``), next to 75
for preemption: a job script must not requeue it (the disk stays full until someone acts).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from megaproc.checkpoint.manifest import HashingWriter, hash_file
from megaproc.errors import UserError, one_line

SAVE_FAILED_EXIT_CODE = 74  # EX_IOERR in sysexits.h; 75 (EX_TEMPFAIL) is preemption
# Test hook: "STEP:RANK" makes RANK's first torch file of the save at STEP fail with ENOSPC.
FAULT_ENOSPC_ENV = "MEGAPROC_FAULT_ENOSPC_IN_SAVE"
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust (tokenizers) prints an io::Error
_NEARLY_FULL = 1 << 20  # bytes free below which a writer's unexplained failure is a full disk


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint could not be written; every rank prints the same line and exits 74."""

    exit_code = SAVE_FAILED_EXIT_CODE
    every_rank = True


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _filesystem_full(path: Path) -> bool:
    """True when the filesystem holding ``path`` (or its nearest existing parent) is full."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free < _NEARLY_FULL
            except OSError:
                return False
    return False


def io_reason(exc: BaseException, path: Path) -> tuple[str, Path] | None:
    """``(reason, path)`` when ``exc`` is an I/O failure, else None (a bug).

    The reason is the OS's text for the errno of the first ``OSError`` in the exception's
    chain (``torch.save`` wraps it in a ``RuntimeError``), or of an ``(os error N)`` in the
    message (the tokenizers library), or "no space left on device" when the writer said
    nothing usable but the filesystem is full.
    """
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno:
            return os.strerror(link.errno).lower(), Path(link.filename or path)
    match = _OS_ERROR_TEXT.search(str(exc))
    if match:
        return os.strerror(int(match.group(1))).lower(), path
    if _filesystem_full(path):
        return os.strerror(errno.ENOSPC).lower(), path
    return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:  # fsync through any descriptor flushes the file's pages
        os.fsync(handle.fileno())


def _injected_fault(step: int, rank: int) -> bool:
    spec = os.environ.get(FAULT_ENOSPC_ENV)
    if not spec:
        return False
    at, _, who = spec.partition(":")
    return int(at) == step and int(who or 0) == rank


class SaveWrites:
    """The writes of one rank during one save: entries for the manifest, the first failure.

    Every method catches what the write raises and records it (:attr:`failure`); after a
    failure the rank's later writes are skipped.  Nothing here is collective.
    """

    def __init__(self, ckpt_dir: Path, step: int, rank: int):
        self.dir = Path(ckpt_dir)
        self.entries: dict[str, dict] = {}
        self.failure: tuple[str, str] | None = None  # (path, reason)
        self._inject = _injected_fault(step, rank)
        self._unsynced: list[Path] = []

    def run(self, path: Path, write: Callable[..., Any], *args, **kwargs) -> Any:
        """Call ``write(*args, **kwargs)`` (which writes ``path``); None after a failure."""
        if self.failure is not None:
            return None
        try:
            return write(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded, raised by every rank together
            self.fail(Path(path), exc)
            return None

    def fail(self, path: Path, exc: BaseException | str) -> None:
        """Record a failure (the first one counts): an exception, or a reason as text."""
        if self.failure is not None:
            return
        if isinstance(exc, str):
            self.failure = (str(path), exc)
            return
        found = io_reason(exc, path)
        if found is None:  # not an I/O error: a bug, so keep its traceback on this rank
            traceback.print_exception(exc, file=sys.stderr)
            found = (f"{type(exc).__name__}: {one_line(exc)}", path)
        self.failure = (str(found[1]), found[0])

    def torch_file(self, obj: Any, path: Path, zipfile: bool = True) -> None:
        """``torch.save`` ``obj`` to ``path`` (parents created), hashed while written; fsynced
        by :meth:`sync`."""
        self.run(path, self._write_torch, obj, Path(path), zipfile)

    def _write_torch(self, obj: Any, path: Path, zipfile: bool) -> None:
        if self._inject:
            self._inject = False
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            writer = HashingWriter(handle)
            torch.save(obj, writer, _use_new_zipfile_serialization=zipfile)
        self.entries[self.relative(path)] = writer.entry()
        self._unsynced.append(path)

    def sync(self) -> None:
        """fsync every file written so far (after all of them: the kernel writes the first
        back while the later ones are written).  A deferred write error surfaces here."""
        while self._unsynced and self.failure is None:
            path = self._unsynced.pop(0)
            self.run(path, _fsync_file, path)

    def record(self, path: Path) -> None:
        """Hash and fsync a file something else wrote."""
        entry = self.run(path, hash_file, path, sync=True)
        if entry is not None:
            self.entries[self.relative(path)] = entry

    def relative(self, path: Path) -> str:
        """``path`` relative to the checkpoint directory, as a manifest key."""
        return Path(path).relative_to(self.dir).as_posix()


class RecordingCheckpointEngine:
    """Stands in for a DeepSpeed engine's ``checkpoint_engine`` during one save.

    ``makedirs`` and ``save`` go through :class:`SaveWrites`; everything else (``create``,
    ``commit``, ``is_decoupled``, ...) is the real engine's.  DeepSpeed's default
    ``TorchCheckpointEngine.save`` is ``torch.save(state_dict, path)``: it is done here with
    the same serialization flag through :meth:`SaveWrites.torch_file` (hashed while written,
    errno kept); another checkpoint engine saves as usual, and rank 0 hashes its files with
    the others it did not get entries for.  (A *decoupled* engine, which commits later, is
    not supported: megaproc's checkpoints are complete when ``save`` returns.)
    """

    def __init__(self, inner, writes: SaveWrites):
        self.inner = inner
        self.writes = writes

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def makedirs(self, path, exist_ok: bool = False) -> None:
        """Create a directory of the checkpoint (a failure is recorded)."""
        self.writes.run(Path(path), self.inner.makedirs, path, exist_ok=exist_ok)

    def save(self, state_dict, path) -> None:
        """Write one state file of the checkpoint (a failure is recorded)."""
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        if type(self.inner) is TorchCheckpointEngine:
            self.writes.torch_file(state_dict, Path(path), self.inner.zipfile_serialization)
        else:  # rank 0 hashes the file with the other unlisted ones before the manifest
            self.writes.run(Path(path), self.inner.save, state_dict, path)


@contextlib.contextmanager
def recording(engine, writes: SaveWrites) -> Iterator[None]:
    """Route the writes of ``engine.save_checkpoint`` through ``writes`` while inside.

    Besides ``checkpoint_engine``, DeepSpeed 0.19.8 writes one thing itself: global rank 0
    copies ``zero_to_fp32.py`` / ``zero_to_torch.py`` with ``shutil.copyfile`` in
    ``_copy_recovery_script``, after the ZeRO state and before the final barrier; it is
    shadowed by a guarded call on the engine instance (removed again on exit).  Pass
    ``save_latest=False``: the ``latest`` file is written by an unguarded ``open`` (the
    Checkpointer writes it itself).
    """
    inner = engine.checkpoint_engine
    engine.checkpoint_engine = RecordingCheckpointEngine(inner, writes)
    copy_scripts = getattr(engine, "_copy_recovery_script", None)
    if copy_scripts is not None:
        engine._copy_recovery_script = lambda save_path: writes.run(
            Path(save_path), copy_scripts, save_path)
    try:
        yield
    finally:
        engine.checkpoint_engine = inner
        if copy_scripts is not None:
            del engine._copy_recovery_script
