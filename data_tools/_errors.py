"""The data tools' error type (a :class:`megaproc.errors.UserError`) and their CLI wrapper."""

from __future__ import annotations

from typing import Callable

from megaproc.errors import UserError
from megaproc.errors import run_cli as _run_cli


class DataToolError(UserError):
    """A user-facing failure; its message is one line naming the file (and line) at fault."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
            prog: str = "") -> int:
    """Run ``main(argv)``: a user error or an ``OSError`` (missing, unreadable or corrupt files)
    is one ``PROG: error: ...`` line and exit code 2 (:func:`megaproc.errors.run_cli`)."""
    return _run_cli(main, argv, prog=prog or "data_tools", also=(OSError,))
