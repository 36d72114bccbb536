"""--hf-dataset: datasets.load_dataset from a local dataset directory or the local HF cache, offline.

Every test points HF_HOME at its own directory (the ``hf_home`` fixture), so the prepared copies
and the fake cache never touch (or read) the machine's real cache.
"""

from __future__ import annotations

import shutil

import pytest

from data_tools._errors import DataToolError

from .conftest import error_line, preprocess_main, run_tool
from .corpora import write_fineweb_edu


def same_bytes(a, b) -> bool:
    return all(open(f"{a}{s}", "rb").read() == open(f"{b}{s}", "rb").read() for s in (".bin", ".idx"))


def test_local_dataset_repository_with_config_equals_its_parquet_files(tmp_path, hf_home, tokenizer_dir):
    write_fineweb_edu(tmp_path / "fineweb-edu", files=3, per_file=20)
    common = ["--tokenizer", tokenizer_dir, "--append-eod", "--workers", 0]
    preprocess_main("--input", tmp_path / "fineweb-edu" / "sample" / "10BT", "--output-prefix", tmp_path / "files",
                    *common)
    for streaming in ([], ["--streaming"]):
        out = tmp_path / f"hf{'_stream' if streaming else ''}"
        preprocess_main("--hf-dataset", tmp_path / "fineweb-edu", "--hf-config", "sample-10BT", *streaming,
                        "--output-prefix", out, *common)
        assert same_bytes(out, tmp_path / "files"), streaming
    # the prepared copy went to this test's HF_HOME only
    assert any((hf_home / "datasets").iterdir())


def test_hub_name_is_read_from_the_local_cache_only(tmp_path, hf_home, tokenizer_dir):
    import datasets

    from data_tools._hf_dataset import force_offline

    force_offline()
    # Prepare a dataset named like the hub one in this cache: load a local directory called
    # fineweb-edu, then file its prepared copy under the cache name of HuggingFaceFW/fineweb-edu.
    write_fineweb_edu(tmp_path / "fineweb-edu", files=2, per_file=10)
    loaded = datasets.load_dataset(str(tmp_path / "fineweb-edu"), "sample-10BT", split="train")
    cache = hf_home / "datasets"
    shutil.copytree(cache / "fineweb-edu", cache / "HuggingFaceFW___fineweb-edu")
    common = ["--tokenizer", tokenizer_dir, "--workers", 0]
    preprocess_main("--hf-dataset", "HuggingFaceFW/fineweb-edu", "--hf-config", "sample-10BT",
                    "--output-prefix", tmp_path / "cached", *common)
    preprocess_main("--input", *[entry["filename"] for entry in loaded.cache_files],
                    "--output-prefix", tmp_path / "arrow", *common)
    assert same_bytes(tmp_path / "cached", tmp_path / "arrow")


def test_missing_dataset_config_or_column_is_one_line(tmp_path, hf_home, tokenizer_dir):
    common = ["--tokenizer", tokenizer_dir, "--output-prefix", tmp_path / "out", "--workers", 0]
    proc = run_tool("preprocess", "--hf-dataset", "someone/not-downloaded", *common)
    assert proc.returncode == 2
    assert "not in the local HF datasets cache" in error_line(proc) and "someone/not-downloaded" in error_line(proc)
    write_fineweb_edu(tmp_path / "fineweb-edu", files=1, per_file=4)
    with pytest.raises(DataToolError, match="cannot load the dataset.*sample-1000BT"):
        preprocess_main("--hf-dataset", tmp_path / "fineweb-edu", "--hf-config", "sample-1000BT", *common)
    with pytest.raises(DataToolError, match="missing column 'body'"):
        preprocess_main("--hf-dataset", tmp_path / "fineweb-edu", "--hf-config", "sample-10BT", "--json-key", "body",
                        *common)
