"""The manifest of a checkpoint: every file with its size and content hash, and the checks.

``step_XXXXXXXX/manifest.json`` is written after every other file and before ``COMPLETE``::

    {"version": 1, "hash": "xxh3_128",
     "files": {"ds/mp_rank_00_model_states.pt": {"size": 1195685, "xxh3_128": "9f0c..."}, ...}}

Paths are relative to the checkpoint directory (``/`` separated); every file is listed except
``manifest.json`` and ``COMPLETE``.  The hash is xxHash's XXH3-128 (the ``xxhash`` package):
it detects damage (a truncated or half-copied shard, bit rot, an edited file), not tampering,
and it runs at several GB/s on one core, so hashing stays a small fraction of a save
(``bench/checkpoint_hashing.py``).  Files written with :class:`HashingWriter` are hashed while
they are written (no second read); others are read back once (:func:`hash_file`).

Checks (:func:`check_files`): the size of every listed file always, its hash unless only sizes
are asked for.  A checkpoint written before manifests existed has no ``manifest.json``
(:func:`read_manifest` returns None): it cannot be checked, only trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import xxhash

from megaproc.errors import UserError
from megaproc.files import atomic_write_json

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
HASH = "xxh3_128"
_CHUNK = 8 << 20  # bytes per read while hashing a file
# Files a manifest never lists: itself, and the marker written after it.
UNLISTED = (MANIFEST_FILE, "COMPLETE")

Entries = dict[str, dict]  # relative path -> {"size": bytes, HASH: hex digest}


class ManifestError(UserError, ValueError):
    """A manifest that cannot be read (the checkpoint is damaged)."""


def new_hasher():
    """A fresh hash state of the manifest's algorithm."""
    return xxhash.xxh3_128()


class HashingWriter:
    """A binary file wrapper that hashes and counts what passes through ``write``.

    ``torch.save(obj, HashingWriter(fh))`` hashes a checkpoint file as it is written.  torch's
    zip writer calls only ``write`` (with a memoryview of its buffer: no copy) and ``flush``
    on a file-like target, and a failed ``write`` surfaces as the ``OSError`` (with its errno)
    in the chain of torch's ``RuntimeError`` -- unlike a path target, whose C++ stream reports
    only ``basic_ios::clear: iostream error``.
    """

    def __init__(self, handle):
        self.handle = handle
        self.size = 0
        self._hasher = new_hasher()

    def write(self, data) -> int:
        """Hash ``data`` and write it to the wrapped file."""
        self._hasher.update(data)
        written = self.handle.write(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        """Flush the wrapped file."""
        self.handle.flush()

    def entry(self) -> dict:
        """The manifest entry of what was written."""
        return {"size": self.size, HASH: self._hasher.hexdigest()}


def hash_file(path: str | os.PathLike, sync: bool = False,
              progress: Callable[[int], None] | None = None) -> dict:
    """The manifest entry of a file on disk (read once); ``sync=True`` also fsyncs it."""
    hasher, size = new_hasher(), 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            hasher.update(view[:count])
            size += count
            if progress is not None:
                progress(count)
        if sync:  # an fsync through a read-only descriptor flushes the file's dirty pages too
            os.fsync(handle.fileno())
    return {"size": size, HASH: hasher.hexdigest()}


def listed_files(ckpt_dir: str | os.PathLike) -> list[str]:
    """Relative paths of every file under ``ckpt_dir`` a manifest lists, sorted."""
    root = Path(ckpt_dir)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() not in UNLISTED)


def write_manifest(ckpt_dir: str | os.PathLike, entries: Entries) -> Path:
    """Write ``manifest.json`` (atomic, fsynced) listing ``entries``."""
    body = {"version": MANIFEST_VERSION, "hash": HASH, "files": dict(sorted(entries.items()))}
    return atomic_write_json(Path(ckpt_dir) / MANIFEST_FILE, body, fsync=True)


def read_manifest(ckpt_dir: str | os.PathLike) -> Entries | None:
    """The files a checkpoint's manifest lists; None when it has no manifest (older format).

    Raises :class:`ManifestError` when the manifest is unreadable or from a newer format.
    """
    path = Path(ckpt_dir) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        version, algorithm, files = body["version"], body["hash"], body["files"]
        sizes_ok = all(isinstance(e["size"], int) for e in files.values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as exc:
        raise ManifestError(f"{MANIFEST_FILE} is unreadable "
                            f"({type(exc).__name__}: {exc})") from None
    if not sizes_ok:
        raise ManifestError(f"{MANIFEST_FILE} lists a file without an integer size")
    if int(version) > MANIFEST_VERSION or algorithm != HASH:
        raise ManifestError(f"{MANIFEST_FILE} has version {version} / hash {algorithm!r}; this "
                            f"megaproc reads version {MANIFEST_VERSION} / {HASH!r}")
    return files


def file_problem(ckpt_dir: str | os.PathLike, rel: str, entry: dict, hashes: bool = True,
                 progress: Callable[[int], None] | None = None) -> str | None:
    """What is wrong with one listed file (None when it matches its entry)."""
    path = Path(ckpt_dir) / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{rel} is missing"
    if size != entry["size"]:
        return f"{rel} has {size} bytes, the manifest says {entry['size']}"
    if not hashes:
        return None
    actual = hash_file(path, progress=progress)
    if actual[HASH] != entry.get(HASH):
        return f"{rel} does not match its {HASH} hash in the manifest (same size, other content)"
    return None


def check_files(ckpt_dir: str | os.PathLike, entries: Iterable[tuple[str, dict]],
                hashes: bool = True, progress: Callable[[int], None] | None = None) -> list[str]:
    """Problems of the given ``(relative path, entry)`` pairs, in their order (empty: all match)."""
    problems = []
    for rel, entry in entries:
        try:
            problem = file_problem(ckpt_dir, rel, entry, hashes, progress)
        except OSError as exc:  # unreadable: permissions, I/O error
            problem = f"{rel} cannot be read ({exc.strerror or exc})"
        if problem is not None:
            problems.append(problem)
    return problems


def share(entries: Entries, rank: int, world_size: int) -> list[tuple[str, dict]]:
    """This rank's part of the files to check: largest first, each to the least loaded rank
    (the same split on every rank), so the ranks read about the same number of bytes."""
    loads = [0] * max(1, world_size)
    mine = []
    for rel, entry in sorted(entries.items(), key=lambda item: (-item[1]["size"], item[0])):
        target = loads.index(min(loads))
        loads[target] += entry["size"] + 1
        if target == rank:
            mine.append((rel, entry))
    return mine
