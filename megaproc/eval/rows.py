"""Reading evaluation files: JSON lines with errors that name the file and line."""

from __future__ import annotations

import json
from typing import Iterable, Iterator

import torch

from megaproc.errors import UserError


class EvalInputError(UserError, ValueError):
    """Bad evaluation input (a missing file, a malformed row, a wrong password, ...): one line
    naming the file and line where there is one.  A ``ValueError`` too, for older callers."""


def json_rows(lines: Iterable[str], label: str) -> Iterator[tuple[int, str, object]]:
    """``(line_no, where, record)`` for every non-blank line (``where`` is ``label:line_no``);
    invalid JSON raises :class:`EvalInputError` naming the line."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{label}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{where}: invalid JSON ({exc.msg})") from None
        yield line_no, where, record


def require_fields(record, where: str, fields) -> dict:
    """``record`` as a dict holding every key of ``fields``, else :class:`EvalInputError` at
    ``where``."""
    if not isinstance(record, dict):
        raise EvalInputError(f"{where}: expected a JSON object")
    missing = [key for key in fields if key not in record]
    if missing:
        raise EvalInputError(f"{where}: missing field{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(k) for k in missing)}")
    return record


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, T] of token lists padded on the right to the longest."""
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids, mask
