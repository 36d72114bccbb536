"""data_tools.preprocess: round trips for every input format, options, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megaproc.data.indexed import IndexedDataset

from .conftest import dataset_documents, error_line, expected_ids, output_files, run_tool, write_jsonl


def preprocess(tokenizer, source, out, *extra, workers=0):
    """Run the CLI; workers=0 tokenizes in the main process (faster to start), >0 uses the pool."""
    return run_tool("preprocess", "--input", source, "--tokenizer", tokenizer, "--output-prefix", out,
                    "--workers", workers, "--chunk-size", 7, *extra)


def make_input(fmt, tmp_path, texts):
    """Write ``texts`` in input format ``fmt`` under tmp_path; return the --input path."""
    records = [{"text": t, "id": i} for i, t in enumerate(texts)]
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "docs.jsonl", records)
    if fmt == "jsonl.gz":
        return write_jsonl(tmp_path / "docs.jsonl.gz", records, "gz")
    if fmt == "jsonl.zst":
        return write_jsonl(tmp_path / "docs.jsonl.zst", records, "zst")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=9)
        return path
    if fmt == "txt_dir":
        directory = tmp_path / "txt"
        for i, text in enumerate(texts):  # nested dirs and zero-padded names keep the sorted order
            sub = directory / f"part{i // 20}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"doc{i:04d}.txt").write_text(text, encoding="utf-8")
        (directory / "README.md").write_text("not a .txt file, ignored")
        return directory
    if fmt == "hf_disk":
        import datasets

        directory = tmp_path / "hf"
        datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))}).save_to_disk(str(directory))
        return directory
    raise AssertionError(fmt)


@pytest.mark.parametrize(
    "fmt,workers", [("jsonl", 2), ("jsonl.gz", 0), ("jsonl.zst", 0), ("parquet", 1), ("txt_dir", 0), ("hf_disk", 0)]
)
def test_round_trip_every_input_format(tmp_path, fmt, workers, corpus, tokenizer_dir, reference_tokenizer):
    source = make_input(fmt, tmp_path, corpus)
    out = tmp_path / "out"
    preprocess(tokenizer_dir, source, out, "--append-eod", workers=workers).check_returncode()
    assert dataset_documents(out) == expected_ids(reference_tokenizer, corpus, eod=True)
    meta = json.loads((tmp_path / "out.meta.json").read_text())
    # a directory of .txt files is read as the .txt documents below it (format "txt")
    assert meta["input"]["format"] == {"txt_dir": "txt"}.get(fmt, fmt)
    assert meta["documents"] == len(corpus) and meta["vocab_size"] == reference_tokenizer.get_vocab_size()
    assert meta["tokens"] == IndexedDataset(str(out)).num_tokens
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == str(tokenizer_dir)
    assert len(meta["input"]["fingerprint"]) == 32
    assert run_tool("verify", out).returncode == 0


def test_two_workers_match_in_process_bytes(tmp_path, corpus, tokenizer_dir):
    source = make_input("jsonl", tmp_path, corpus * 3)
    preprocess(tokenizer_dir, source, tmp_path / "a", "--prepend-bos", workers=2).check_returncode()
    preprocess(tokenizer_dir, source, tmp_path / "b", "--prepend-bos", workers=0).check_returncode()
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_bos_and_eod_and_custom_key(tmp_path, corpus, tokenizer_dir, reference_tokenizer):
    source = write_jsonl(tmp_path / "c.jsonl", [{"content": t} for t in corpus[:5]])
    out = tmp_path / "out"
    preprocess(tokenizer_dir, source, out, "--json-key", "content", "--prepend-bos", "--append-eod").check_returncode()
    assert dataset_documents(out) == expected_ids(reference_tokenizer, corpus[:5], bos=True, eod=True)
    meta = json.loads((tmp_path / "out.meta.json").read_text())
    assert meta["prepend_bos"] and meta["append_eod"]


def test_sentencepiece_model(tmp_path, corpus):
    import sentencepiece

    model_prefix = tmp_path / "sp"
    lines = [line for text in corpus for line in text.splitlines() if line.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(model_prefix), vocab_size=300, model_type="bpe",
        minloglevel=2, hard_vocab_limit=False,
    )
    model = f"{model_prefix}.model"
    processor = sentencepiece.SentencePieceProcessor(model_file=model)
    source = make_input("jsonl", tmp_path, corpus[:10])
    out = tmp_path / "sp_out"
    preprocess(model, source, out, "--append-eod", workers=1).check_returncode()
    expected = [ids + [processor.eos_id()] for ids in processor.encode(corpus[:10])]
    assert dataset_documents(out) == expected
    assert json.loads((tmp_path / "sp_out.meta.json").read_text())["tokenizer_type"] == "sentencepiece"


# ---- bad inputs: one clear line, non-zero exit where it stops, nothing that looks complete ----


def assert_no_output(tmp_path, stem="out"):
    assert output_files(tmp_path, stem) == [], output_files(tmp_path, stem)


def lines_with_bad_json(corpus):
    good = [json.dumps({"text": t}).encode() + b"\n" for t in corpus[:6]]
    return good[:3] + [b'{"text": "unterminated\n'] + good[3:]


def test_invalid_json_stops_with_line_number(tmp_path, corpus, tokenizer_dir):
    source = write_jsonl(tmp_path / "bad.jsonl", lines_with_bad_json(corpus))
    proc = preprocess(tokenizer_dir, source, tmp_path / "out", workers=1)  # error crosses the process pool
    assert proc.returncode != 0
    line = error_line(proc)
    assert f"{source}:4" in line and "not valid JSON" in line and "--skip-bad" in line
    assert_no_output(tmp_path)


def test_invalid_json_skipped_and_counted_with_skip_bad(tmp_path, corpus, tokenizer_dir, reference_tokenizer):
    source = write_jsonl(tmp_path / "bad.jsonl", lines_with_bad_json(corpus))
    proc = preprocess(tokenizer_dir, source, tmp_path / "out", "--skip-bad", workers=1)
    assert proc.returncode == 0, proc.stderr
    assert "1 invalid_json" in proc.stderr and f"{source}:4" in proc.stderr
    meta = json.loads((tmp_path / "out.meta.json").read_text())
    assert meta["skipped"]["invalid_json"] == 1 and meta["documents"] == 6
    assert dataset_documents(tmp_path / "out") == expected_ids(reference_tokenizer, corpus[:6])


def test_missing_key_names_key_and_line(tmp_path, corpus, tokenizer_dir):
    source = write_jsonl(tmp_path / "nokey.jsonl", [{"text": corpus[0]}, {"text": corpus[1]}, {"body": "x"}])
    proc = preprocess(tokenizer_dir, source, tmp_path / "out")
    assert proc.returncode != 0
    line = error_line(proc)
    assert f"{source}:3" in line and "'text'" in line
    assert_no_output(tmp_path)


def test_missing_parquet_column_names_it(tmp_path, corpus, tokenizer_dir):
    source = make_input("parquet", tmp_path, corpus[:3])
    proc = preprocess(tokenizer_dir, source, tmp_path / "out", "--json-key", "body")
    assert proc.returncode != 0
    assert "'body'" in error_line(proc)
    assert_no_output(tmp_path)


def test_non_utf8_bytes_name_the_line(tmp_path, corpus, tokenizer_dir):
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in corpus[:4]]
    lines.insert(2, b'{"text": "caf\xe9 latin-1"}\n')
    source = write_jsonl(tmp_path / "latin1.jsonl", lines)
    proc = preprocess(tokenizer_dir, source, tmp_path / "out")
    assert proc.returncode != 0
    line = error_line(proc)
    assert f"{source}:3" in line and "UTF-8" in line
    assert_no_output(tmp_path)
    proc = preprocess(tokenizer_dir, source, tmp_path / "out", "--skip-bad")
    assert proc.returncode == 0
    assert json.loads((tmp_path / "out.meta.json").read_text())["skipped"]["non_utf8"] == 1


def test_non_utf8_txt_file_named(tmp_path, tokenizer_dir):
    directory = tmp_path / "txt"
    directory.mkdir()
    (directory / "a.txt").write_text("fine text")
    (directory / "b.txt").write_bytes(b"caf\xe9")
    proc = preprocess(tokenizer_dir, directory, tmp_path / "out")
    assert proc.returncode != 0
    assert "b.txt" in error_line(proc)
    assert_no_output(tmp_path)


def test_empty_documents_skipped_with_warning(tmp_path, corpus, tokenizer_dir, reference_tokenizer):
    records = [{"text": corpus[0]}, {"text": ""}, {"text": corpus[1]}, {"text": "  \n\t"}, {"text": corpus[2]}]
    source = write_jsonl(tmp_path / "empty.jsonl", records)
    proc = preprocess(tokenizer_dir, source, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "empty" in line]
    assert len(warnings) == 1 and "skipped 2 empty documents" in warnings[0] and f"{source}:2" in warnings[0]
    assert json.loads((tmp_path / "out.meta.json").read_text())["skipped"]["empty"] == 2
    assert dataset_documents(tmp_path / "out") == expected_ids(reference_tokenizer, corpus[:3])


def test_failure_keeps_previous_complete_output_intact(tmp_path, corpus, tokenizer_dir):
    good = make_input("jsonl", tmp_path, corpus[:3])
    preprocess(tokenizer_dir, good, tmp_path / "out").check_returncode()
    before = {name: (tmp_path / name).read_bytes() for name in output_files(tmp_path, "out")}
    bad = write_jsonl(tmp_path / "bad.jsonl", lines_with_bad_json(corpus))
    assert preprocess(tokenizer_dir, bad, tmp_path / "out").returncode != 0
    assert {name: (tmp_path / name).read_bytes() for name in output_files(tmp_path, "out")} == before


@pytest.mark.parametrize("case", ["unknown_suffix", "missing_input", "missing_tokenizer", "gzip_truncated"])
def test_other_bad_inputs_one_line(tmp_path, corpus, tokenizer_dir, case):
    source, tokenizer = make_input("jsonl", tmp_path, corpus[:3]), tokenizer_dir
    if case == "unknown_suffix":
        source = tmp_path / "docs.csv"
        source.write_text("a,b\n")
    elif case == "missing_input":
        source = tmp_path / "nope.jsonl"
    elif case == "missing_tokenizer":
        tokenizer = tmp_path / "no_tokenizer_here"
    else:
        payload = (tmp_path / "docs.jsonl").read_bytes() * 50
        source = tmp_path / "cut.jsonl.gz"
        import gzip

        source.write_bytes(gzip.compress(payload)[:-40])
    proc = preprocess(tokenizer, source, tmp_path / "out")
    assert proc.returncode != 0
    assert str(source if case != "missing_tokenizer" else tokenizer) in error_line(proc)
    assert_no_output(tmp_path)


def test_dtype_int32_option(tmp_path, corpus, tokenizer_dir, reference_tokenizer):
    source = make_input("jsonl", tmp_path, corpus[:4])
    preprocess(tokenizer_dir, source, tmp_path / "out", "--dtype", "int32").check_returncode()
    dataset = IndexedDataset(str(tmp_path / "out"))
    assert dataset.dtype == np.int32
    assert dataset_documents(tmp_path / "out") == expected_ids(reference_tokenizer, corpus[:4])


def test_only_empty_documents_is_an_error(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": " "}])
    proc = preprocess(tokenizer_dir, source, tmp_path / "out")
    assert proc.returncode != 0
    assert "no documents to write" in error_line(proc) and "empty=2" in error_line(proc)
    assert_no_output(tmp_path)


def test_corrupt_tokenizer_one_line(tmp_path, corpus):
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    source = make_input("jsonl", tmp_path, corpus[:2])
    proc = preprocess(bad, source, tmp_path / "out")
    assert proc.returncode != 0 and "cannot load tokenizer" in error_line(proc)
    assert_no_output(tmp_path)
