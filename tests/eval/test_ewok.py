"""EWoK: hand-computed scores (with a tie), sources (directory, zip, encrypted zip), bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile

import pytest

from megaproc.eval.ewok import evaluate_ewok, load_ewok, resolve_source
from megaproc.eval.loglik import LoglikScorer, hf_logits_fn
from tests.eval.conftest import EWOK_ROWS, continuation_logprob, write_jsonl


def _ewok_dir(root):
    write_jsonl(root / "b_physical.jsonl", [EWOK_ROWS[1], EWOK_ROWS[3], EWOK_ROWS[4]])
    write_jsonl(root / "a_agents.jsonl", [EWOK_ROWS[0], "", EWOK_ROWS[2]])
    return root


def _verdict(better: float, worse: float) -> float:
    if abs(better - worse) < 1e-9:
        return 0.5
    return 1.0 if better > worse else 0.0


def test_scores_match_a_hand_computation_with_a_tie(tmp_path, model, tokenizer):
    items = load_ewok(_ewok_dir(tmp_path / "ewok"))
    # files in name order, rows in file order
    assert [i["ConceptA"] for i in items] == ["on", "taller", "melt", "tie", "fall"]
    assert [(i.file.rsplit("/", 1)[-1], i.line) for i in items][:2] == [("a_agents.jsonl", 1),
                                                                      ("a_agents.jsonl", 3)]
    summary, rows = evaluate_ewok(LoglikScorer(tokenizer, 128, batch_size=3), hf_logits_fn(model),
                                  items)
    expected = {"sum": [], "mean": []}
    for item, row in zip(items, rows):
        lp = {(t, c): continuation_logprob(model, tokenizer, item[f"Context{c}"],
                                           " " + item[f"Target{t}"])
              for t in (1, 2) for c in (1, 2)}
        for (t, c), (value, _) in lp.items():
            assert row[f"logp_t{t}_c{c}"] == pytest.approx(value, rel=1e-5, abs=1e-4)
        assert row["ConceptA"] == item["ConceptA"] and row["task"] == "ewok"
        for reduction in ("sum", "mean"):
            score = {k: v if reduction == "sum" else v / n for k, (v, n) in lp.items()}
            if item["ConceptA"] != "tie":  # no accidental near-tie decides a verdict
                assert abs(score[1, 1] - score[1, 2]) > 1e-3 and abs(score[2, 2] - score[2, 1]) > 1e-3
            t1, t2 = _verdict(score[1, 1], score[1, 2]), _verdict(score[2, 2], score[2, 1])
            assert (row[f"{reduction}_t1_correct"], row[f"{reduction}_t2_correct"]) == (t1, t2)
            expected[reduction].append((item["Domain"], t1, t2))
    tie = rows[3]
    assert tie["logp_t1_c1"] == tie["logp_t1_c2"] and tie["logp_t2_c1"] == tie["logp_t2_c2"]
    assert (tie["sum_t1_correct"], tie["sum_t2_correct"], tie["sum_score"]) == (0.5, 0.5, 0.5)
    assert summary["num_items"] == 5
    for reduction, verdicts in expected.items():
        got = summary[reduction]
        assert got["accuracy"] == pytest.approx(sum((a + b) / 2 for _, a, b in verdicts) / 5)
        assert got["accuracy_t1"] == pytest.approx(sum(a for _, a, _ in verdicts) / 5)
        assert got["accuracy_t2"] == pytest.approx(sum(b for _, _, b in verdicts) / 5)
        domains = sorted({d for d, _, _ in verdicts})
        assert list(got["by_domain"]) == domains
        for domain in domains:
            mine = [(a + b) / 2 for d, a, b in verdicts if d == domain]
            assert got["by_domain"][domain] == pytest.approx(sum(mine) / len(mine))


def test_zip_reads_like_the_directory(tmp_path):
    source = _ewok_dir(tmp_path / "ewok")
    archive = tmp_path / "ewok.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.glob("*.jsonl")):
            zf.write(path, f"ewok_fast/{path.name}")
        zf.writestr("__MACOSX/ewok_fast/._a_agents.jsonl", "junk")
        zf.writestr("ewok_fast/README.txt", "not data")
    from_dir, from_zip = load_ewok(source), load_ewok(archive)
    assert [i.fields for i in from_zip] == [i.fields for i in from_dir]
    assert from_zip[0].file == f"{archive}:ewok_fast/a_agents.jsonl"
    assert not any(tmp_path.glob("ewok_fast"))  # nothing extracted


def test_source_order_env_and_seed_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("EWOK_SRC", raising=False)
    with pytest.raises(ValueError, match="no EWoK source.*EWOK_SRC"):
        resolve_source(None)
    source = _ewok_dir(tmp_path / "data")
    monkeypatch.setenv("EWOK_SRC", str(source))
    assert resolve_source(None) == source and len(load_ewok()) == 5
    # A directory without jsonl files of its own: the seed's zip first, then ewok_fast/.
    checkout = tmp_path / "moonshotGPT"
    shutil.copytree(source, checkout / "ewok_fast")
    assert resolve_source(checkout) == checkout / "ewok_fast"
    with zipfile.ZipFile(checkout / "ewok_fast_jsonl.zip", "w") as zf:
        zf.write(source / "a_agents.jsonl", "a_agents.jsonl")
    assert resolve_source(checkout) == checkout / "ewok_fast_jsonl.zip"
    assert len(load_ewok(checkout)) == 2
    with pytest.raises(ValueError, match="not found"):
        resolve_source(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.jsonl files"):
        resolve_source(tmp_path / "empty")


@pytest.mark.skipif(shutil.which("zip") is None,
                    reason="needs the `zip` command (apt-get install -y zip) to write a "
                           "ZipCrypto archive; Python's zipfile cannot encrypt")
def test_encrypted_zip_password_from_the_environment(tmp_path, monkeypatch):
    source = _ewok_dir(tmp_path / "ewok")
    archive = tmp_path / "ewok_fast_jsonl.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "ew-secret", str(archive),
                    *sorted(str(p) for p in source.glob("*.jsonl"))], check=True)
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "ew-secret")
    assert [i.fields for i in load_ewok(archive)] == [i.fields for i in load_ewok(source)]
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "wrong")
    with pytest.raises(ValueError, match=r"ewok_fast_jsonl.zip:a_agents.jsonl: wrong zip password"):
        load_ewok(archive)
    monkeypatch.delenv("EWOK_ZIP_PASSWORD")
    with pytest.raises(ValueError, match="encrypted zip member; set EWOK_ZIP_PASSWORD"):
        load_ewok(archive)


def test_aes_members_are_reported_not_misread(tmp_path):
    archive = tmp_path / "aes.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("items.jsonl", "{}\n")
    data = bytearray(archive.read_bytes())
    # Mark the member as WinZip-AES: compression method 99 and the encryption flag, in both the
    # local header (PK\3\4: flags at +6, method at +8) and the central directory (PK\1\2: +8, +10).
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        flags, = struct.unpack_from("<H", data, at + flags_at)
        struct.pack_into("<HH", data, at + flags_at, flags | 1, 99)
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="AES/strong-encrypted zip member.*zip -P"):
        load_ewok(archive, password="x")


def test_malformed_rows_name_the_member_and_line(tmp_path):
    bad = dict(EWOK_ROWS[0])
    del bad["Target2"]
    archive = tmp_path / "ewok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("part.jsonl", f"{json.dumps(EWOK_ROWS[1])}\n{json.dumps(bad)}\n")
    with pytest.raises(ValueError, match=rf"^{archive}:part.jsonl:2: missing field 'Target2'$"):
        load_ewok(archive)
    path = write_jsonl(tmp_path / "d" / "x.jsonl", [EWOK_ROWS[0], "[1, 2"])
    with pytest.raises(ValueError, match=r"x.jsonl:2: invalid JSON"):
        load_ewok(path.parent)
    path = write_jsonl(tmp_path / "e" / "x.jsonl", [dict(EWOK_ROWS[0], Target1="")])
    with pytest.raises(ValueError, match=r"x.jsonl:1: 'Target1' must be a non-empty string"):
        load_ewok(path.parent)
