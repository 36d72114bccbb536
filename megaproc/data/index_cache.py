"""On-disk cache of precomputed index arrays (``.npy``), shared by GPT and blended datasets.

A cache entry is a set of named numpy arrays stored as ``<stem>_<name>.npy`` plus a
``<stem>.json`` description that is written last and therefore marks the entry complete.
``stem`` is ``<label>-<hash>`` where the hash covers every input that determines the arrays
(see :func:`cache_key`), so changing any input - including the fingerprint of the ``.idx``
file - selects a different entry instead of reusing a stale one.

Building is coordinated across processes: when ``torch.distributed`` is initialised, the
local rank 0 of every node builds (``LOCAL_RANK`` from the environment, falling back to the
global rank) while the other ranks wait at a barrier, then every rank memory-maps the files.
A rank that still finds no entry after the barrier (node-local disks) builds it itself, so
the result never depends on the file system layout.  Files are written to a temporary name
and renamed, so concurrent writers of the same entry cannot corrupt it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_ENV = "MEGAPROC_CACHE"


def cache_key(description: dict) -> str:
    """Stable short hash of a JSON-serialisable ``description`` of every build input."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def default_cache_root() -> Path:
    """Fallback cache directory: ``$MEGAPROC_CACHE/index`` (default ``~/.cache/megaproc/index``)."""
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "megaproc"))
    return root / "index"


def cache_dir_for_prefix(prefix: str, cache_dir: str | None = None) -> Path:
    """Where index caches of ``prefix`` go.

    ``cache_dir`` when given; else ``<prefix>_cache/`` next to the data when that directory is
    writable; else a per-prefix folder under :func:`default_cache_root`.
    """
    if cache_dir:
        return Path(cache_dir)
    prefix_path = Path(prefix).absolute()
    beside = prefix_path.parent / f"{prefix_path.name}_cache"
    if beside.is_dir() and os.access(beside, os.W_OK) or os.access(prefix_path.parent, os.W_OK):
        return beside
    tag = hashlib.sha256(str(prefix_path).encode()).hexdigest()[:12]
    return default_cache_root() / f"{prefix_path.name}-{tag}"


def _dist():
    """``torch.distributed`` when it is available and initialised, else None."""
    if "torch" not in sys.modules:  # no process group without torch; skip its import cost
        return None
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; else the global rank; else 0)."""
    value = os.environ.get("LOCAL_RANK")
    if value is not None:
        return int(value)
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


class IndexCache:
    """One cache entry: ``names`` arrays under ``directory`` identified by ``description``."""

    def __init__(self, directory: str | Path, label: str, description: dict, names: tuple[str, ...]):
        self.directory = Path(directory)
        self.description = dict(description)
        self.key = cache_key(self.description)
        self.stem = f"{label}-{self.key}"
        self.names = tuple(names)

    def path(self, name: str) -> Path:
        """File holding array ``name``."""
        return self.directory / f"{self.stem}_{name}.npy"

    @property
    def marker(self) -> Path:
        """Description file written last; its presence means the entry is complete."""
        return self.directory / f"{self.stem}.json"

    def complete(self) -> bool:
        """True when the marker and every array file exist."""
        return self.marker.is_file() and all(self.path(n).is_file() for n in self.names)

    def load(self) -> dict[str, np.ndarray]:
        """Memory-map every array of a complete entry (read-only)."""
        return {name: np.load(self.path(name), mmap_mode="r", allow_pickle=False) for name in self.names}

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        """Write ``arrays`` atomically (temporary name, then rename), the marker last."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for name in self.names:
            final = self.path(name)
            tmp = final.with_name(final.name + tag + ".npy")
            np.save(tmp, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            os.replace(tmp, final)
        tmp_marker = self.marker.with_name(self.marker.name + tag)
        tmp_marker.write_text(json.dumps(self.description, sort_keys=True, indent=1, default=str))
        os.replace(tmp_marker, self.marker)

    def get_or_build(self, build: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
        """Load the entry, building it first if needed; returns ``(arrays, built_here)``.

        With ``torch.distributed`` initialised, local rank 0 builds and all ranks meet at a
        barrier before loading.  Without it, the calling process builds when needed.
        """
        built = False
        dist = _dist()
        if dist is not None:
            failure = None
            if local_rank() == 0 and not self.complete():
                try:
                    self.save(build())
                    built = True
                except BaseException as exc:  # reach the barrier anyway so peers do not hang
                    failure = exc
            dist.barrier()
            if failure is not None:
                raise failure
        if not self.complete():
            self.save(build())
            built = True
        return self.load(), built
