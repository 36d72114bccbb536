"""The running account of a preprocess run: counts, per-output sizes, limits, warnings.

Pieces are accounted strictly in input order.  :meth:`Totals.take` decides how much of a
piece's result goes into the output: all of it, or, when ``--max-docs``/``--max-tokens`` is
reached inside it, the prefix up to the document that reaches the limit (records after it were
never "read" as far as the counts are concerned, exactly as in a sequential run).  Counts are
therefore identical for any number of workers or piece size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from data_tools._errors import DataToolError
from data_tools._inputs import Piece
from data_tools._records import unit_location
from data_tools._tokenize_worker import BAD_RECORD_KINDS, MAX_EXAMPLES, STATUS_NAMES, TRAIN, VALID, PieceResult

SKIP_BAD_HINT = "use --skip-bad to skip and count such records"


@dataclass(frozen=True)
class Limits:
    """``--max-docs`` / ``--max-tokens`` on the documents of the (train) output; None = no limit."""

    max_docs: int | None = None
    max_tokens: int | None = None

    def __bool__(self) -> bool:
        return self.max_docs is not None or self.max_tokens is not None


class Totals:
    """Counts by record status, documents and tokens per output, first locations per kind."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.counts = Counter(state.get("counts", {}))
        self.documents = Counter(state.get("documents", {}))
        self.tokens = Counter(state.get("tokens", {}))
        self.examples: dict[str, list[str]] = {k: list(v) for k, v in state.get("examples", {}).items()}
        self.reached = bool(state.get("reached", False))

    def to_state(self) -> dict:
        """What a resumed run starts from."""
        return {"counts": dict(self.counts), "documents": dict(self.documents), "tokens": dict(self.tokens),
                "examples": self.examples, "reached": self.reached}

    @property
    def read(self) -> int:
        """Records read (lines that are not blank, rows, .txt files)."""
        return sum(n for kind, n in self.counts.items() if kind != "blank_lines")

    @property
    def kept(self) -> int:
        """Documents written, over all outputs."""
        return self.counts["train"] + self.counts["valid"]

    @property
    def bad_records(self) -> int:
        """Records skipped with --skip-bad."""
        return sum(self.counts[kind] for kind in BAD_RECORD_KINDS)

    def summary(self) -> dict:
        """The counts written to every meta file."""
        return {"read": self.read, "kept": self.kept, "filtered": self.counts["filtered"],
                "empty": self.counts["empty"], "bad_records": self.bad_records,
                **{kind: self.counts[kind] for kind in BAD_RECORD_KINDS},
                "blank_lines": self.counts["blank_lines"], "train": self.counts["train"],
                "valid": self.counts["valid"]}

    def _limit_cut(self, train_lengths: np.ndarray, limits: Limits) -> int | None:
        """How many train documents of this piece to take when a limit is reached in it."""
        take = None
        if limits.max_docs is not None:
            remaining = limits.max_docs - self.documents["train"]
            if remaining <= len(train_lengths):
                take = remaining
        if limits.max_tokens is not None:
            remaining = limits.max_tokens - self.tokens["train"]
            reached_at = int(np.searchsorted(np.cumsum(train_lengths, dtype=np.int64), remaining, side="left"))
            if reached_at < len(train_lengths):
                take = reached_at + 1 if take is None else min(take, reached_at + 1)
        return take

    def take(self, piece: Piece, result: PieceResult, base: int, limits: Limits) -> dict[str, int]:
        """Account ``result``; returns how many leading documents of each split to append.

        ``base``: units of the same file in earlier pieces (for absolute line/row numbers).
        Raises the piece's bad-record error when the output reaches it.
        """
        status = result.status
        cut = len(status)
        counts = {"train": len(result.lengths["train"]), "valid": len(result.lengths["valid"])}
        take = self._limit_cut(result.lengths["train"], limits) if limits else None
        if take is not None:
            self.reached = True
            cut = int(np.flatnonzero(status == TRAIN)[take - 1]) + 1 if take > 0 else 0
            counts = {"train": take, "valid": int(np.count_nonzero(status[:cut] == VALID))}
        elif result.error is not None:
            unit, message = result.error
            raise DataToolError(f"{unit_location(piece, unit, base)}: {message} ({SKIP_BAD_HINT})")
        for code, number in enumerate(np.bincount(status[:cut], minlength=len(STATUS_NAMES))):
            if number:
                self.counts[STATUS_NAMES[code]] += int(number)
        for kind, units in result.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(unit_location(piece, u, base) for u in units[: MAX_EXAMPLES - len(kept)] if u < cut)
        for split, number in counts.items():
            self.documents[split] += number
            self.tokens[split] += int(result.lengths[split][:number].sum(dtype=np.int64))
        return counts
