"""The ``PREFIX.meta.json`` side file written next to ``PREFIX.bin``/``PREFIX.idx``."""

from __future__ import annotations

import json
import os
import uuid

from data_tools._errors import DataToolError


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


def write_meta_temp(path_prefix: str, meta: dict) -> str:
    """Write ``meta`` under a temporary name; return it (move it with :func:`publish_meta`)."""
    temp = f"{meta_path(path_prefix)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return temp


def publish_meta(temp: str, path_prefix: str) -> None:
    """Atomically move a temporary meta file into place."""
    os.replace(temp, meta_path(path_prefix))


def finalize_with_meta(builder, path_prefix: str, meta: dict) -> None:
    """Finalize an indexed builder and publish ``meta`` beside it, meta last.

    The meta file is written under a temporary name first and only moved into place once the
    ``.bin``/``.idx`` pair is complete, so a crash never leaves a meta describing missing data.
    """
    temp = write_meta_temp(path_prefix, meta)
    try:
        builder.finalize()
    except BaseException:
        os.remove(temp)
        raise
    publish_meta(temp, path_prefix)
