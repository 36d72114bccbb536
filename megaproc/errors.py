"""User errors: one base class, and the one command-line wrapper that prints them as one line.

Every subsystem's bad-input error (a config key, a resume with changed settings, a missing
tokenizer, a corrupt indexed file, a malformed evaluation row, ...) subclasses
:class:`UserError`.  Commands run their ``main`` through :func:`run_cli`, which turns a user
error into ``error: <first line of the message>`` on stderr (rank 0 only under a launcher, unless
the class sets ``every_rank``) and the error's exit code (2 unless the class says otherwise);
anything else is a bug and keeps its traceback.

This module is a leaf: it imports nothing of megaproc.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, ClassVar

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """Bad input to megaproc; the message says what and where in one line."""

    exit_code: ClassVar[int] = USER_ERROR_EXIT_CODE
    # True when every rank of a launched job should print the line (the ranks agreed on the
    # error, e.g. a failed checkpoint save, and each rank's log should say why it stopped).
    every_rank: ClassVar[bool] = False


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key."""


class ResumeError(UserError, RuntimeError):
    """A checkpoint cannot be found or resumed with the current settings (raised by the
    checkpointer and by batch sources whose saved position does not fit the run)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` folded onto one line (its class name when empty)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_cli(main: Callable[..., int | None], *args, prog: str = "",
            also: tuple[type[BaseException], ...] = (FileNotFoundError,)) -> int:
    """Call ``main(*args)`` and return its exit code; a :class:`UserError` (or one of ``also``,
    e.g. ``OSError`` for file tools) becomes one ``error:`` line and the error's exit code.

    Under a launcher only global rank 0 prints (every rank raises the same error), unless the
    error's class sets ``every_rank``.
    """
    try:
        return int(main(*args) or 0)
    except (UserError, *also) as exc:
        if os.environ.get("RANK", "0") == "0" or getattr(exc, "every_rank", False):
            head = f"{prog}: error" if prog else "error"
            # One write per line: ranks that print together must not interleave their lines.
            sys.stderr.write(f"{head}: {one_line(exc)}\n")
            sys.stderr.flush()
        return int(getattr(exc, "exit_code", USER_ERROR_EXIT_CODE))
    except KeyboardInterrupt:
        print(f"{prog or 'megaproc'}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE
