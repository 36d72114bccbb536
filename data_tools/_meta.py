"""The ``PREFIX.meta.json`` side file written next to ``PREFIX.bin``/``PREFIX.idx``."""

from __future__ import annotations

import json
import os

from data_tools._errors import DataToolError
from megaproc.files import atomic_output


def meta_path(path_prefix: str) -> str:
    """File name of the meta file of ``path_prefix``."""
    return f"{path_prefix}.meta.json"


def read_meta(path_prefix: str) -> dict | None:
    """The parsed meta file of ``path_prefix``, or None when there is none."""
    path = meta_path(path_prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataToolError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataToolError(f"{path}: expected a JSON object")
    return meta


def meta_text(meta: dict) -> str:
    """How a meta file is serialised (sorted keys, indented, trailing newline)."""
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def finalize_with_meta(builder, path_prefix: str, meta: dict) -> None:
    """Finalize an indexed builder and publish ``meta`` beside it, meta last.

    The meta file is written under a temporary name first and only moved into place once the
    ``.bin``/``.idx`` pair is complete, so a crash never leaves a meta describing missing data.
    """
    with atomic_output(meta_path(path_prefix)) as temp:
        temp.write_text(meta_text(meta), encoding="utf-8")
        builder.finalize()
