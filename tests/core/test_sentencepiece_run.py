"""A sentencepiece ``.model`` tokenizer end to end: data_tools.preprocess writes the ids the
trainer's tokenizer produces, a training run on them works, and its checkpoint carries a tokenizer
that encodes the same way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megaproc.data.default_corpus import read_documents, stdlib_source_files
from megaproc.data.indexed import IndexedDataset
from megaproc.tokenizer import load_tokenizer
from tests.launch import FAST, REPO, losses, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A small BPE sentencepiece model (byte fallback, as Llama-2's) trained on stdlib sources."""
    import sentencepiece

    root = tmp_path_factory.mktemp("spm")
    docs = read_documents(stdlib_source_files()[:40])
    text = root / "train.txt"
    text.write_text("\n".join(line for doc in docs for line in doc.splitlines() if line.strip()))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(root / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        minloglevel=2)
    return root / "sp.model", docs


def test_preprocess_and_trainer_agree_and_a_run_trains(sentencepiece_model, tmp_path):
    model, docs = sentencepiece_model
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:30]))
    prefix = tmp_path / "corpus"
    proc = subprocess.run([sys.executable, "-m", "data_tools.preprocess", "--input", str(corpus),
                           "--tokenizer", str(model), "--output-prefix", str(prefix),
                           "--append-eod", "--workers", "0"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    tokenizer = load_tokenizer(model)
    written = IndexedDataset(str(prefix))
    for k in (0, 7, 29):  # the ids on disk are what the run's tokenizer makes of the text
        ids = tokenizer(docs[k], add_special_tokens=False)["input_ids"]
        assert list(written[k]) == ids + [tokenizer.eos_token_id]

    out = tmp_path / "run"
    proc = run(1, FAST + [f"run.out_dir={out}", f"data.tokenizer={model}",
                          f"data.train=[{prefix}]", "train.max_steps=6", "log.log_every=1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    curve = losses(out)
    assert sorted(curve) == list(range(1, 7)) and curve[6] < curve[1]
    saved = load_tokenizer(out / "checkpoints" / "step_00000006" / "tokenizer")
    assert saved(docs[3], add_special_tokens=False)["input_ids"] == \
        tokenizer(docs[3], add_special_tokens=False)["input_ids"]
