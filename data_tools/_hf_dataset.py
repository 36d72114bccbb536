"""``--hf-dataset NAME_OR_PATH``: a dataset through ``datasets.load_dataset``, never the network.

NAME_OR_PATH is a local dataset directory (a clone of a hub dataset repository, whose README
``configs:`` name the data files of each ``--hf-config``, or any directory of data files) or a
hub name whose prepared copy is already in the local HF datasets cache.  (Plain data files are
better read with ``--input``: no copy into the cache.)

The offline switches (``HF_DATASETS_OFFLINE``, ``HF_HUB_OFFLINE``) are set before ``datasets``
is imported, and flipped in the libraries' config if they were imported already, so nothing
is downloaded; a dataset that is not there is one clear line.

Without ``--streaming`` the prepared dataset's arrow files are read like ``--input`` arrow
files (in row order, split across workers, resumable per file); with ``--streaming`` each
shard of the iterable dataset (one data file) is a unit of work.
"""

from __future__ import annotations

import os
import sys

from data_tools._errors import DataToolError
from data_tools._inputs import InputFile, dataset_arrow_files

OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def force_offline() -> None:
    """Make ``datasets`` and ``huggingface_hub`` work from local files and caches only."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    # Both libraries read the variables once, at import: fix the constants already read.
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True


def describe(name: str, config: str | None, split: str) -> str:
    """``NAME[config/split]`` for messages and the meta file."""
    return f"{name}[{config + '/' if config else ''}{split}]"


def load_hf_dataset(name: str, config: str | None, split: str, streaming: bool):
    """``datasets.load_dataset(name, config, split=split, streaming=streaming)`` offline."""
    force_offline()
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except ConnectionError:  # offline mode: not local, not in the cache
        raise DataToolError(f"{name}: not a local dataset directory and not in the local HF datasets cache "
                            "(nothing is downloaded: prepare it on a machine with network access first)") from None
    except Exception as exc:  # datasets raises ValueError, FileNotFoundError, DatasetNotFoundError, ...
        message = " ".join(str(exc).split())[:300]
        raise DataToolError(f"{describe(name, config, split)}: cannot load the dataset "
                            f"({type(exc).__name__}: {message})") from None


def hf_dataset_files(name: str, config: str | None, split: str, streaming: bool,
                     json_key: str) -> list[InputFile]:
    """The units of work of a ``--hf-dataset``: its arrow files, or its stream shards."""
    where = describe(name, config, split)
    dataset = load_hf_dataset(name, config, split, streaming)
    columns = dataset.column_names
    if columns is not None and json_key not in columns:
        raise DataToolError(f"{where}: missing column '{json_key}' (columns: {', '.join(columns)}); set --json-key")
    if not streaming:
        return dataset_arrow_files(dataset, where, "hf_dataset")
    shards = dataset.num_shards
    return [InputFile(f"{where} shard {k + 1}/{shards}", "stream", label="hf_dataset",
                      stream=(name, config, split, k, shards))
            for k in range(shards)]
