"""Where a preprocess run writes while it runs, how it resumes, and how it publishes.

Nothing is written under the final names until the end.  A run works in a hidden directory
next to the output, ``DIR/.NAME.preprocess/``:

```
lock                   flock'ed by the running process (a second run on the same output is refused)
state.json             settings, input files, files done, output sizes and counts so far
train.bin  train.lengths      tokens and int32 document lengths appended so far (and valid.*)
parts/                 the workers' part files of pieces not yet appended
```

After every input file whose documents are all appended, ``state.json`` is replaced
atomically.  ``--resume`` truncates ``*.bin`` / ``*.lengths`` to the sizes recorded there and
continues with the next file, so the result is byte-identical to an uninterrupted run (the
data was written with ``write()`` before the state named it, so a killed process loses
nothing the state claims).  At the end each output's ``.idx`` is written from the lengths
file in chunks (memory does not grow with the number of documents), everything is fsynced,
and ``.bin``, ``.idx`` and finally ``.meta.json`` are renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

import numpy as np

from data_tools._errors import DataToolError
from data_tools._meta import meta_path, meta_text
from megaproc.data.indexed import bin_path, idx_path, write_index
from megaproc.files import atomic_write_json, atomic_write_text, fsync_dir

STATE_VERSION = 1
_COPY_CHUNK = 8 * 1024 * 1024
_LENGTH_CHUNK = 1 << 20  # documents per chunk when writing the index


class SplitOutput:
    """One output (train or valid) under construction: tokens and lengths appended in order."""

    def __init__(self, directory: str, name: str, dtype, saved: dict | None = None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.bin_file = os.path.join(directory, f"{name}.bin")
        self.lengths_file = os.path.join(directory, f"{name}.lengths")
        self.idx_file = os.path.join(directory, f"{name}.idx")
        saved = saved or {"bin_bytes": 0, "documents": 0, "tokens": 0}
        self.documents, self.tokens = int(saved["documents"]), int(saved["tokens"])
        expected = {self.bin_file: int(saved["bin_bytes"]), self.lengths_file: 4 * self.documents}
        for path, size in expected.items():
            if not os.path.exists(path):
                open(path, "wb").close()
            if os.path.getsize(path) < size:
                raise DataToolError(f"{path}: shorter than recorded in state.json (lost after a crash?); "
                                    "delete the partial directory to start over")
            os.truncate(path, size)
        self._bin = open(self.bin_file, "ab")
        self._lengths = open(self.lengths_file, "ab")

    def append(self, part_file: str, nbytes: int, lengths: np.ndarray) -> None:
        """Append the first ``nbytes`` of ``part_file`` (the tokens of ``lengths``)."""
        if len(lengths):
            with open(part_file, "rb") as source:
                remaining = nbytes
                while remaining:
                    block = source.read(min(_COPY_CHUNK, remaining))
                    if not block:
                        raise DataToolError(f"{part_file}: part file shorter than its documents")
                    self._bin.write(block)
                    remaining -= len(block)
            self._lengths.write(np.ascontiguousarray(lengths, dtype=np.int32).data)
        self.documents += len(lengths)
        self.tokens += int(lengths.sum(dtype=np.int64))

    def state(self) -> dict:
        """Flush to the OS and return the sizes a resume truncates to."""
        self._bin.flush()
        self._lengths.flush()
        return {"bin_bytes": self.tokens * self.dtype.itemsize, "documents": self.documents, "tokens": self.tokens}

    def _length_chunks(self):
        with open(self.lengths_file, "rb") as handle:
            while True:
                block = handle.read(4 * _LENGTH_CHUNK)
                if not block:
                    return
                yield np.frombuffer(block, dtype=np.int32)

    def _document_index_chunks(self):
        for start in range(0, self.documents + 1, _LENGTH_CHUNK):
            yield np.arange(start, min(start + _LENGTH_CHUNK, self.documents + 1), dtype=np.int64)

    def write_index(self) -> None:
        """Close the data files and write (and fsync) this output's ``.idx`` in the work directory."""
        self.state()
        for handle in (self._bin, self._lengths):
            os.fsync(handle.fileno())
            handle.close()
        with open(self.idx_file, "wb") as handle:
            # One sequence per document: document_indices is 0..N.
            write_index(handle, self.dtype, self.documents, self._length_chunks,
                        self.documents + 1, self._document_index_chunks())
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Close the data files (when the run stops without publishing)."""
        for handle in (self._bin, self._lengths):
            if not handle.closed:
                handle.close()


class Workspace:
    """The hidden work directory of one output prefix (see the module docstring)."""

    def __init__(self, output_prefix: str):
        self.output_prefix = output_prefix
        parent, base = os.path.split(os.path.abspath(output_prefix))
        self.parent = parent
        self.directory = os.path.join(parent, f".{base}.preprocess")
        self.parts = os.path.join(self.directory, "parts")
        self.state_file = os.path.join(self.directory, "state.json")
        self._lock = None

    def exists(self) -> bool:
        """True when an interrupted run left its directory."""
        return os.path.isdir(self.directory)

    def read_state(self) -> dict | None:
        """The last saved state, or None (nothing saved yet)."""
        if not os.path.isfile(self.state_file):
            return None
        try:
            with open(self.state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise DataToolError(f"{self.state_file}: unreadable ({exc}); delete {self.directory} to start over") from None
        if state.get("version") != STATE_VERSION:
            raise DataToolError(f"{self.state_file}: state version {state.get('version')} is not {STATE_VERSION}; "
                                f"delete {self.directory} to start over")
        return state

    def lock(self) -> None:
        """Create the directory if needed and take its lock (refused while another run holds it)."""
        os.makedirs(self.directory, exist_ok=True)
        self._lock = open(os.path.join(self.directory, "lock"), "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DataToolError(f"{self.output_prefix}: another preprocess is writing this output "
                                f"({self.directory} is locked)") from None

    def reset(self, keep_data: bool) -> None:
        """Clear old part files; unless ``keep_data``, also the data and state of an earlier run."""
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name == "parts":
                shutil.rmtree(path)
            elif name != "lock" and not keep_data:
                os.remove(path)
        os.makedirs(self.parts)

    def save_state(self, state: dict) -> None:
        """Replace ``state.json`` atomically."""
        atomic_write_json(self.state_file, {"version": STATE_VERSION, **state})

    def publish(self, outputs: dict[str, SplitOutput], metas: dict[str, dict]) -> None:
        """Rename every output's ``.bin`` and ``.idx`` into place, then the meta files, then clean up.

        ``outputs`` and ``metas`` map final prefixes to their output and meta.
        """
        for prefix, output in outputs.items():
            os.replace(output.bin_file, bin_path(prefix))
        for prefix, output in outputs.items():
            os.replace(output.idx_file, idx_path(prefix))
        for prefix, meta in metas.items():
            atomic_write_text(meta_path(prefix), meta_text(meta), fsync=True)
        fsync_dir(self.parent)
        self.remove()

    def release(self) -> None:
        """Drop the lock (the directory stays, for --resume)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def remove(self) -> None:
        """Delete the work directory."""
        self.release()
        shutil.rmtree(self.directory, ignore_errors=True)
