"""The ``[megaproc] ...`` console log: python ``logging`` with a rank-0 filter.

Every module logs through ``get_logger(__name__)``; :func:`setup_console_log` (called once by the
entry point) sends INFO and above to stdout, from rank 0 only, while warnings and errors of
other ranks still appear, prefixed with their rank.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "megaproc"


class _RankFilter(logging.Filter):
    """Drop records below WARNING on ranks other than 0; tag other ranks' warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = int(os.environ.get("RANK", "0"))
        record.rank_tag = "" if rank == 0 else f"rank {rank}: "
        return rank == 0 or record.levelno >= logging.WARNING


def setup_console_log(level: int = logging.INFO, stream=None) -> logging.Logger:
    """Install the console handler on the ``megaproc`` logger: stdout, or ``stream`` (e.g. stderr
    for a command whose stdout is data, such as ``--dry-run``); calling again moves it."""
    logger = logging.getLogger(ROOT)
    stream = stream or sys.stdout
    handlers = [h for h in logger.handlers if getattr(h, "_megaproc", False)]
    if handlers and handlers[0].stream is not stream:
        logger.removeHandler(handlers[0])
        handlers = []
    if not handlers:
        handler = logging.StreamHandler(stream)
        handler._megaproc = True
        handler.addFilter(_RankFilter())
        handler.setFormatter(logging.Formatter("[megaproc] %(rank_tag)s%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the ``megaproc`` logger (``name`` is usually ``__name__``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    if not logging.getLogger(ROOT).handlers:
        setup_console_log()
    return logging.getLogger(name)
