"""Turn expected user errors into one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import sys

USER_ERROR_EXIT_CODE = 2


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def user_error_types() -> tuple:
    """Exception types that describe bad input rather than a bug."""
    from megaproc.checkpoint import ResumeError
    from megaproc.tokenizer import TokenizerError

    types = [ConfigError, ResumeError, TokenizerError, FileNotFoundError]
    from megaproc.data.indexed import IndexedDatasetError
    from megaproc.synthetic.boolean import BooleanDataError

    types += [IndexedDatasetError, BooleanDataError]
    return tuple(types)


def run_with_clear_errors(fn, *args) -> int:
    """Call ``fn``; on a user error print ``error: ...`` once (rank 0) and return 2."""
    try:
        return int(fn(*args) or 0)
    except user_error_types() as exc:
        if os.environ.get("RANK", "0") == "0":
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE
