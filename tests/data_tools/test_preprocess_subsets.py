"""--filter, --max-docs, --max-tokens and --valid-fraction, against what the test computes itself.

Expected documents and counts are derived here from the records the fake corpora wrote; the
validation membership from ``hashlib.blake2b`` directly (the documented rule), never from the
code under test.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np

from .conftest import dataset_documents, expected_ids, preprocess_main, write_jsonl
from .corpora import texts, write_pile


def in_valid(text: str, fraction: float) -> bool:
    """The documented split rule, written out independently."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < round(fraction * 2**64)


def meta(prefix) -> dict:
    return json.loads(open(f"{prefix}.meta.json").read())


def test_filter_on_nested_key_with_bad_blank_and_empty_records(tmp_path, tokenizer_dir, reference_tokenizer):
    shards = write_pile(tmp_path / "pile", shards=3, per_shard=24)
    extra = [b"\n", b'{"text": "", "meta": {"pile_set_name": "PubMed Abstracts"}}\n', b"{not json}\n",
             b'{"meta": {"pile_set_name": "PubMed Abstracts"}}\n', b'{"text": "no meta at all"}\n']
    write_jsonl(tmp_path / "pile" / "train" / "03.jsonl", extra)  # plain jsonl sorts after 02.jsonl.zst
    out = tmp_path / "pubmed"
    preprocess_main("--input", tmp_path / "pile" / "train", "--tokenizer", tokenizer_dir, "--output-prefix", out,
                    "--filter", "meta.pile_set_name=PubMed Abstracts", "--skip-bad", "--append-eod", "--workers", 0)
    records = [r for shard in shards for r in shard]
    pubmed = [r["text"] for r in records if r["meta"]["pile_set_name"] == "PubMed Abstracts"]
    assert dataset_documents(out) == expected_ids(reference_tokenizer, pubmed, eod=True)
    counts = meta(out)["counts"]
    # read: every non-blank line; filtered: the other subsets and the record without meta;
    # empty: the PubMed record with empty text; bad: the invalid line and the PubMed record
    # without a text key (it passes the filter, then lacks --json-key)
    assert counts["read"] == len(records) + 4
    assert counts["filtered"] == len(records) - len(pubmed) + 1
    assert (counts["kept"], counts["empty"], counts["blank_lines"]) == (len(pubmed), 1, 1)
    assert (counts["bad_records"], counts["invalid_json"], counts["missing_key"]) == (2, 1, 1)
    assert meta(out)["filters"] == ["meta.pile_set_name=PubMed Abstracts"]


def test_two_filters_must_both_match_and_non_string_values_compare_as_json(tmp_path, tokenizer_dir,
                                                                           reference_tokenizer):
    docs = texts(30, seed=8)
    records = [{"text": t, "score": k % 3, "lang": "en" if k % 2 else "de", "flag": k % 5 == 0}
               for k, t in enumerate(docs)]
    source = write_jsonl(tmp_path / "docs.jsonl", records)
    out = tmp_path / "out"
    preprocess_main("--input", source, "--tokenizer", tokenizer_dir, "--output-prefix", out, "--workers", 0,
                    "--filter", "score=2", "--filter", "lang=en")
    expected = [r["text"] for r in records if r["score"] == 2 and r["lang"] == "en"]
    assert dataset_documents(out) == expected_ids(reference_tokenizer, expected)
    preprocess_main("--input", source, "--tokenizer", tokenizer_dir, "--output-prefix", tmp_path / "flag",
                    "--workers", 0, "--filter", "flag=true")
    assert dataset_documents(tmp_path / "flag") == expected_ids(reference_tokenizer, [r["text"] for r in records
                                                                                       if r["flag"]])


def test_max_docs_and_max_tokens_take_the_first_kept_documents_in_input_order(tmp_path, tokenizer_dir,
                                                                               reference_tokenizer):
    docs = texts(90, seed=9)
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in docs]
    lines[3] = b'{"text": "   "}\n'  # empty: read, not kept, does not count towards the limit
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_jsonl(tmp_path / "in" / f"part{k}.jsonl", lines[30 * k : 30 * (k + 1)])
    kept = [t for k, t in enumerate(docs) if k != 3]
    ids = expected_ids(reference_tokenizer, kept, eod=True)
    common = ["--input", tmp_path / "in", "--tokenizer", tokenizer_dir, "--append-eod"]
    outputs = []
    for workers, piece_bytes in ((0, 1 << 25), (2, 900)):  # limits cut inside a piece, mid-file
        out = tmp_path / f"docs_w{workers}"
        preprocess_main(*common, "--output-prefix", out, "--max-docs", 40, "--workers", workers,
                        "--piece-bytes", piece_bytes)
        outputs.append(out)
    assert dataset_documents(outputs[0]) == ids[:40]
    assert [open(f"{o}.bin", "rb").read() for o in outputs[1:]] == [open(f"{outputs[0]}.bin", "rb").read()]
    info = meta(outputs[0])
    assert info["limits"]["reached"] and info["counts"]["read"] == 41 and info["counts"]["empty"] == 1
    assert meta(outputs[1])["counts"] == info["counts"]
    budget = sum(len(x) for x in ids[:25]) - 3  # reached by the 25th document
    preprocess_main(*common, "--output-prefix", tmp_path / "tokens", "--max-tokens", budget, "--workers", 0)
    got = dataset_documents(tmp_path / "tokens")
    assert got == ids[:25] and sum(map(len, got)) >= budget > sum(map(len, got[:-1]))
    preprocess_main(*common, "--output-prefix", tmp_path / "both", "--max-tokens", budget, "--max-docs", 10,
                    "--workers", 0)
    assert dataset_documents(tmp_path / "both") == ids[:10]


def test_valid_split_depends_on_the_text_alone(tmp_path, tokenizer_dir, reference_tokenizer):
    fraction = 0.3
    shards = write_pile(tmp_path / "pile", shards=3, per_shard=30)
    duplicated = shards[0][5]["text"]
    with open(tmp_path / "pile" / "train" / "02.jsonl", "w") as handle:  # a verbatim duplicate in another file
        handle.write(json.dumps({"text": duplicated, "meta": shards[0][5]["meta"]}) + "\n")
    common = ["--tokenizer", tokenizer_dir, "--valid-fraction", fraction, "--workers", 0]
    preprocess_main("--input", tmp_path / "pile" / "train", "--output-prefix", tmp_path / "all", *common)
    records = [r for shard in shards for r in shard]
    records = records[:60] + [{"text": duplicated}] + records[60:]  # 02.jsonl sorts before 02.jsonl.zst
    texts_in_order = [r["text"] for r in records]
    valid = [t for t in texts_in_order if in_valid(t, fraction)]
    train = [t for t in texts_in_order if not in_valid(t, fraction)]
    assert 0 < len(valid) < len(train)
    assert dataset_documents(tmp_path / "all_train") == expected_ids(reference_tokenizer, train)
    assert dataset_documents(tmp_path / "all_valid") == expected_ids(reference_tokenizer, valid)
    assert (duplicated in valid) != (duplicated in train)
    split = meta(tmp_path / "all_valid")["split"]
    assert split["name"] == "valid" and split["documents"] == {"train": len(train), "valid": len(valid)}

    # Other file names (so another order), another filter, a cap: the same documents are valid.
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    for k, name in enumerate(["02.jsonl.zst", "01.jsonl.zst", "00.jsonl.zst"]):
        shutil.copy(tmp_path / "pile" / "train" / name, reordered / f"{k:02d}.jsonl.zst")
    preprocess_main("--input", reordered, "--output-prefix", tmp_path / "pubmed", *common,
                    "--filter", "meta.pile_set_name=PubMed Abstracts", "--max-docs", 15)
    valid_ids = {tuple(d) for d in dataset_documents(tmp_path / "all_valid")}
    train_ids = {tuple(d) for d in dataset_documents(tmp_path / "all_train")}
    sub_valid = [tuple(d) for d in dataset_documents(tmp_path / "pubmed_valid")]
    sub_train = [tuple(d) for d in dataset_documents(tmp_path / "pubmed_train")]
    assert sub_valid and set(sub_valid) <= valid_ids and set(sub_train) <= train_ids
    # exactly: --max-docs counts the train output; valid gets the held-out documents read before
    # the 15th train document (inside the last file, with held-out documents after it), none after
    expected_train, expected_valid = [], []
    for record in [r for shard in reversed(shards) for r in shard]:
        if record["meta"]["pile_set_name"] != "PubMed Abstracts":
            continue
        (expected_valid if in_valid(record["text"], fraction) else expected_train).append(record["text"])
        if len(expected_train) == 15:
            break
    assert sub_train == [tuple(d) for d in expected_ids(reference_tokenizer, expected_train)]
    assert sub_valid == [tuple(d) for d in expected_ids(reference_tokenizer, expected_valid)]


def test_empty_validation_output_is_still_a_valid_pair(tmp_path, tokenizer_dir):
    from megaproc.data.indexed import IndexedDataset

    source = write_jsonl(tmp_path / "few.jsonl", [{"text": t} for t in texts(3, seed=1)])
    fraction = 1e-9
    preprocess_main("--input", source, "--tokenizer", tokenizer_dir, "--output-prefix", tmp_path / "o",
                    "--valid-fraction", fraction, "--workers", 0)
    assert len(IndexedDataset(str(tmp_path / "o_valid"))) == 0
    assert np.array_equal(IndexedDataset(str(tmp_path / "o_train")).document_indices, np.arange(4))
