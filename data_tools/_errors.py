"""Error type and command-line error handling shared by the data tools."""

from __future__ import annotations

import sys
from typing import Callable

EXIT_ERROR = 1


class DataToolError(Exception):
    """A user-facing failure; its message is one line naming the file (and line) at fault."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str = "") -> int:
    """Run ``main(argv)``; print known failures as one ``error:`` line and return a non-zero code."""
    from megaproc.data.indexed import IndexedDatasetError  # not imported by tokenizer workers

    try:
        return main(argv)
    except (DataToolError, IndexedDatasetError, OSError) as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"{prog or 'data_tools'}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog or 'data_tools'}: interrupted", file=sys.stderr)
        return 130
