"""EWoK: hand-computed scores (with a tie), sources (directory, zip, encrypted zip), bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile

import pytest
import pyzipper

from megaproc.eval import ewok as ewok_module
from megaproc.eval.ewok import DEFAULT_PASSWORD, evaluate_ewok, load_ewok, resolve_source
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


def test_source_order_env_repository_copy_and_seed_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("EWOK_SRC", raising=False)
    repo_zip, repo_dir = tmp_path / "repo" / "ewok_fast_jsonl.zip", tmp_path / "repo" / "ewok_fast"
    monkeypatch.setattr(ewok_module, "REPOSITORY_SOURCES", (repo_zip, repo_dir))
    with pytest.raises(ValueError, match="no EWoK source.*EWOK_SRC.*ewok_fast_jsonl.zip"):
        resolve_source(None)
    # Without a path or $EWOK_SRC: the repository's copy, the zip before the directory.
    _ewok_dir(repo_dir)
    assert resolve_source(None) == repo_dir
    with zipfile.ZipFile(repo_zip, "w") as zf:
        zf.write(repo_dir / "a_agents.jsonl", "a_agents.jsonl")
    assert resolve_source(None) == repo_zip and len(load_ewok()) == 2
    source = _ewok_dir(tmp_path / "data")
    monkeypatch.setenv("EWOK_SRC", str(source))  # $EWOK_SRC comes first
    assert resolve_source(None) == source and len(load_ewok()) == 5
    assert resolve_source(repo_dir) == repo_dir  # and an explicit path before both
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
def test_zipcrypto_password_from_the_environment_else_the_seed_default(tmp_path, monkeypatch):
    source = _ewok_dir(tmp_path / "ewok")
    archive = tmp_path / "ewok_fast_jsonl.zip"
    files = sorted(str(p) for p in source.glob("*.jsonl"))
    subprocess.run(["zip", "-q", "-j", "-P", "ew-secret", str(archive), *files], check=True)
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "ew-secret")
    assert [i.fields for i in load_ewok(archive)] == [i.fields for i in load_ewok(source)]
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "wrong")
    with pytest.raises(ValueError, match=r"ewok_fast_jsonl.zip:a_agents.jsonl: wrong zip "
                                         r"password \(EWOK_ZIP_PASSWORD\)$"):
        load_ewok(archive)
    monkeypatch.delenv("EWOK_ZIP_PASSWORD")
    with pytest.raises(ValueError, match="wrong zip password .EWOK_ZIP_PASSWORD is unset, tried "
                                         "the default 'ew2026'"):
        load_ewok(archive)
    # The seed's archive is encrypted with its default password: no variable needed.
    seed_archive = tmp_path / "seed" / "ewok_fast_jsonl.zip"
    seed_archive.parent.mkdir()
    subprocess.run(["zip", "-q", "-j", "-P", DEFAULT_PASSWORD, str(seed_archive), *files],
                   check=True)
    assert [i.fields for i in load_ewok(seed_archive)] == [i.fields for i in load_ewok(source)]


def _aes_zip(path, source, password: str):
    """A WinZip-AES (AES-256) archive of ``source``'s jsonl files, written by pyzipper."""
    with pyzipper.AESZipFile(path, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode())
        for file in sorted(source.glob("*.jsonl")):
            zf.write(file, f"ewok_fast/{file.name}")
    return path


def test_aes_encrypted_zip_is_read(tmp_path, monkeypatch):
    source = _ewok_dir(tmp_path / "ewok")
    archive = _aes_zip(tmp_path / "aes.zip", source, "aes-secret")
    with pyzipper.AESZipFile(archive) as zf:  # really AES: the WinZip AES extra field is there
        assert all(i.flag_bits & 1 and b"\x01\x99" in i.extra for i in zf.infolist())
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "aes-secret")
    assert [i.fields for i in load_ewok(archive)] == [i.fields for i in load_ewok(source)]
    assert [i.fields for i in load_ewok(archive, password="aes-secret")] == \
        [i.fields for i in load_ewok(source)]
    with pytest.raises(ValueError, match=r"aes.zip:ewok_fast/a_agents.jsonl: wrong zip password "
                                         r"\(the password given\)$"):
        load_ewok(archive, password="nope")
    monkeypatch.delenv("EWOK_ZIP_PASSWORD")
    with pytest.raises(ValueError, match="wrong zip password .EWOK_ZIP_PASSWORD is unset"):
        load_ewok(archive)
    seed = _aes_zip(tmp_path / "seed.zip", source, DEFAULT_PASSWORD)
    assert len(load_ewok(seed)) == 5  # the seed's default password, nothing set


def test_strong_encryption_is_reported_not_misread(tmp_path):
    archive = tmp_path / "strong.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("items.jsonl", "{}\n")
    data = bytearray(archive.read_bytes())
    # Mark the member as PKWARE strong encryption: flag bits 0x41 in the local header (PK\3\4,
    # flags at +6) and the central directory (PK\1\2, flags at +8).
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        flags, = struct.unpack_from("<H", data, at + flags_at)
        struct.pack_into("<H", data, at + flags_at, flags | 0x41)
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="strong-encrypted zip member .unsupported.*zip -P"):
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
