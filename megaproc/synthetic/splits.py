"""Readers of the held-out split files written by ``python -m data_tools.build_splits``.

A split directory ``.../mis{n}_look{L}_seed{seed}/`` holds ``eval.jsonl``, ``test.jsonl`` and
``mixin.jsonl`` (one example object per line: ``prompt``, ``output_texts``, ...) and
``meta.json``.  Their prompts are *reserved*: the live training stream never produces them.
"""

from __future__ import annotations

import hashlib
import json
import os

SPLIT_NAMES = ("eval", "test", "mixin")


def split_dir_name(max_input_size: int, max_lookahead: int, seed: int, symbolic: bool) -> str:
    """``mis{n}_look{L}_seed{seed}``, with ``_symbolic`` appended for the symbolic form: the
    directory ``data_tools.build_splits`` writes under ``--out-dir`` for these settings."""
    return f"mis{max_input_size}_look{max_lookahead}_seed{seed}" + ("_symbolic" if symbolic else "")


def load_split(path: str | os.PathLike) -> list[dict]:
    """Read a split ``.jsonl`` file (one example dict per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class ReservedPrompts:
    """Membership test for the prompts of a split directory, kept as 16-byte digests.

    The prompts of a full-size split (57,000 examples of a few KB each) would take hundreds of
    MB per rank as strings; their BLAKE2b digests take a few MB.
    """

    def __init__(self, digests: set[bytes] | None = None):
        self.digests = digests or set()

    @staticmethod
    def digest(prompt: str) -> bytes:
        """The digest a prompt is stored under."""
        return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()

    @classmethod
    def from_split_dir(cls, split_dir: str | os.PathLike, splits=SPLIT_NAMES) -> "ReservedPrompts":
        """Digests of every prompt in ``split_dir/{eval,test,mixin}.jsonl`` (missing files skipped)."""
        digests = set()
        for split in splits:
            path = os.path.join(split_dir, f"{split}.jsonl")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        digests.add(cls.digest(json.loads(line)["prompt"]))
        return cls(digests)

    def __contains__(self, prompt: str) -> bool:
        return self.digest(prompt) in self.digests

    def __len__(self) -> int:
        return len(self.digests)

    def fingerprint(self) -> str:
        """Hash of the reserved set (a resume refuses a changed set: the stream would differ)."""
        return hashlib.sha256(b"".join(sorted(self.digests))).hexdigest()[:16]
