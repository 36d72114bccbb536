"""data_tools.preprocess over many inputs: directories, globs, formats, sorted order, workers.

The reference for "one command" is the documented by-hand route it replaces: each file
preprocessed alone, then ``data_tools.merge`` in sorted path order; and the expected token ids
computed here from the records the fake corpus wrote.
"""

from __future__ import annotations

import json
import re

import pytest

from data_tools._errors import DataToolError

from .conftest import dataset_documents, expected_ids, merge_main, preprocess_main, write_jsonl
from .corpora import texts, write_c4, write_fineweb_edu


def preprocess(tokenizer, out, *inputs_and_options):
    """Run data_tools.preprocess (in this process; workers > 0 still start their processes)."""
    preprocess_main("--tokenizer", tokenizer, "--output-prefix", out, *inputs_and_options)


def same_bytes(a, b) -> bool:
    return all(open(f"{a}{s}", "rb").read() == open(f"{b}{s}", "rb").read() for s in (".bin", ".idx"))


def test_directory_equals_per_file_runs_merged_for_any_workers(tmp_path, tokenizer_dir, reference_tokenizer):
    shards = write_c4(tmp_path / "c4", shards=5, per_shard=30)
    files = sorted((tmp_path / "c4" / "en").glob("c4-train.*.json.gz"))
    parts = []
    for k, path in enumerate(files):
        parts.append(tmp_path / f"part{k}")
        preprocess(tokenizer_dir, parts[-1], "--input", path, "--append-eod", "--workers", 0)
    merge_main(parts, tmp_path / "merged")
    pattern = str(tmp_path / "c4" / "en" / "c4-train.*-of-01024.json.gz")
    for workers in (1, 2):
        out = tmp_path / f"one_command_w{workers}"
        preprocess(tokenizer_dir, out, "--input", pattern, "--append-eod", "--workers", workers)
        assert same_bytes(out, tmp_path / "merged"), f"--workers {workers}"
    records = [r for shard in shards for r in shard]
    assert dataset_documents(tmp_path / "one_command_w1") == expected_ids(
        reference_tokenizer, [r["text"] for r in records], eod=True)
    meta = json.loads((tmp_path / "one_command_w2.meta.json").read_text())
    assert meta["input"]["files"] == 5 and meta["input"]["format"] == "jsonl.gz"
    assert [f["path"] for f in meta["files"]] == [str(p) for p in files]


def test_inputs_are_sorted_and_deduplicated_across_files_dirs_and_globs(tmp_path, tokenizer_dir, reference_tokenizer,
                                                                         capsys):
    corpus = {name: texts(4, seed=k) for k, name in enumerate(["b.jsonl", "a.jsonl", "sub/c.jsonl", "sub/a.jsonl.gz"])}
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name, docs in corpus.items():
        write_jsonl(tmp_path / "in" / name, [{"text": t} for t in docs], "gz" if name.endswith(".gz") else None)
    (tmp_path / "in" / "sub" / "notes.md").write_text("ignored: not an input format")
    (tmp_path / "in" / "sub" / "meta.json").write_text('{"text": "metadata, not a document"}\n')
    (tmp_path / "in" / ".hidden.jsonl").write_text('{"text": "hidden files are skipped"}\n')
    # the directory, a glob and a file all name b.jsonl; it is read once, in sorted position
    preprocess(tokenizer_dir, tmp_path / "out", "--input", tmp_path / "in" / "b.jsonl", tmp_path / "in",
               str(tmp_path / "in" / "*.jsonl"), "--workers", 0)
    assert "read once" in capsys.readouterr().err
    order = sorted(corpus, key=lambda name: str(tmp_path / "in" / name))
    assert order == ["a.jsonl", "b.jsonl", "sub/a.jsonl.gz", "sub/c.jsonl"]
    expected = [t for name in order for t in corpus[name]]
    assert dataset_documents(tmp_path / "out") == expected_ids(reference_tokenizer, expected)


def test_byte_ranges_of_one_large_jsonl_match_a_whole_file_run(tmp_path, tokenizer_dir, reference_tokenizer):
    docs = texts(120, seed=5)
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in docs]
    lines.insert(40, b"\n")  # a blank line inside a piece
    source = write_jsonl(tmp_path / "big.jsonl", lines)
    whole = tmp_path / "whole"
    preprocess(tokenizer_dir, whole, "--input", source, "--workers", 0)
    for workers, piece_bytes in ((2, 3000), (0, 333)):  # pieces start mid-line
        out = tmp_path / f"pieces_{workers}_{piece_bytes}"
        preprocess(tokenizer_dir, out, "--input", source, "--workers", workers, "--piece-bytes", piece_bytes)
        assert same_bytes(out, whole), (workers, piece_bytes)
        meta = json.loads((tmp_path / f"{out.name}.meta.json").read_text())
        assert meta["counts"]["read"] == 120 and meta["counts"]["blank_lines"] == 1
    assert dataset_documents(whole) == expected_ids(reference_tokenizer, docs)


def test_bad_record_in_a_later_byte_range_names_its_absolute_line(tmp_path, tokenizer_dir):
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in texts(50, seed=6)]
    lines[37] = b'{"text": broken\n'
    source = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataToolError, match=f"^{source}:38: line is not valid JSON"):
        preprocess(tokenizer_dir, tmp_path / "out", "--input", source, "--workers", 2, "--piece-bytes", 500)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_parquet_row_groups_and_arrow_files(tmp_path, tokenizer_dir, reference_tokenizer):
    import pyarrow as pa

    shards = write_fineweb_edu(tmp_path / "fw", files=3, per_file=40, row_group_size=7)
    arrow_dir = tmp_path / "arrow"
    arrow_dir.mkdir()
    arrow_docs = texts(25, seed=44)
    table = pa.table({"text": arrow_docs, "n": list(range(25))})
    with pa.OSFile(str(arrow_dir / "data-00000-of-00001.arrow"), "wb") as sink:  # datasets' IPC stream format
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=10):
                writer.write_batch(batch)
    whole = tmp_path / "whole"
    preprocess(tokenizer_dir, whole, "--input", tmp_path / "fw", arrow_dir, "--workers", 0)
    split = tmp_path / "split"
    preprocess(tokenizer_dir, split, "--input", tmp_path / "fw", arrow_dir, "--workers", 2, "--piece-bytes", 2000)
    assert same_bytes(whole, split)
    fineweb = [r["text"] for shard in shards for r in shard]
    assert dataset_documents(whole) == expected_ids(reference_tokenizer, arrow_docs + fineweb)  # /arrow < /fw
    assert json.loads((tmp_path / "whole.meta.json").read_text())["input"]["format"] == "arrow+parquet"


@pytest.mark.parametrize("case", ["glob_matches_nothing", "directory_without_inputs", "filter_column_missing"])
def test_bad_input_specs_are_one_line(tmp_path, tokenizer_dir, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no inputs here")
    extra = []
    if case == "glob_matches_nothing":
        spec, expected = str(tmp_path / "nothing*.json.gz"), "no file matches"
    elif case == "directory_without_inputs":
        spec, expected = tmp_path / "empty", "no supported input files"
    else:
        write_fineweb_edu(tmp_path / "fw", files=1, per_file=3)
        spec, expected = tmp_path / "fw", "--filter names column 'meta'"
        extra = ["--filter", "meta.lang=en"]
    with pytest.raises(DataToolError, match=re.escape(expected)):
        preprocess(tokenizer_dir, tmp_path / "out", "--input", spec, "--workers", 0, *extra)
