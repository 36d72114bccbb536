"""Small file helpers used everywhere: the repository and cache roots, atomic writes, and the
tolerant JSON-lines reader.  One copy of each.

Atomic writes go to a temporary name in the same directory and are renamed over the target
(``os.replace`` is atomic on POSIX within one filesystem), so a reader never sees a half
written file and a kill leaves either the old or the new content.  With ``fsync=True`` the data
is flushed before the rename and the directory after it (checkpoints need that; logs do not).

This module imports nothing of megaproc.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "MEGAPROC_CACHE"


def cache_root() -> Path:
    """Where megaproc caches built-in data (``$MEGAPROC_CACHE``, default ``~/.cache/megaproc``)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "megaproc"))


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so renames and new entries in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike) -> Path:
    """A unique hidden temporary name next to ``path`` (same directory, so renames are atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """``with atomic_output(p) as tmp:`` write ``tmp`` any way you like; on success it replaces
    ``p`` (created with its parents if needed), on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2,
                      fsync: bool = False, **dumps_kwargs) -> Path:
    """Write ``obj`` as JSON (a trailing newline) to ``path`` atomically."""
    dumps_kwargs.setdefault("default", str)
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n",
                             fsync=fsync)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The JSON objects of a JSON-lines log, in order.

    A missing file yields nothing; lines that do not parse (a line torn by a kill during the
    write, usually the last) and non-object lines are skipped.  For input files where a bad
    line is an error, parse strictly instead (:func:`megaproc.eval.rows.json_rows`).
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """:func:`iter_jsonl` as a list."""
    return list(iter_jsonl(path))


def last_jsonl(path: str | os.PathLike) -> dict | None:
    """The last readable record of a JSON-lines log, or None."""
    record = None
    for record in iter_jsonl(path):
        pass
    return record
