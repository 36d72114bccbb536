"""The manifest a save writes, and ``python -m megaproc.checkpoint verify``.

Hashes are checked against xxhash computed here from the bytes on disk, sizes against
``os.path.getsize``; the listing against the files actually in the directory.
"""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
import xxhash

from megaproc.checkpoint import Checkpointer
from megaproc.checkpoint.__main__ import PROG, main
from megaproc.checkpoint.manifest import (HASH, MANIFEST_FILE, HashingWriter, read_manifest,
                                          share)
from megaproc.errors import run_cli
from tests.checkpoint import flip_byte, save, truncate


@pytest.fixture
def run_dir(tmp_path):
    checkpointer = Checkpointer(tmp_path / "run", keep_last_k=0)
    save(checkpointer, 4)
    save(checkpointer, 8)
    return tmp_path / "run"


def test_manifest_lists_every_file_with_its_size_and_hash(run_dir):
    ckpt = run_dir / "checkpoints" / "step_00000008"
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    entries = read_manifest(ckpt)
    assert set(entries) == on_disk - {MANIFEST_FILE, "COMPLETE"}
    assert {"ds/mp_rank_00_model_states.pt", "rng/rank_00000.pt", "trainer_state.json",
            "zero_to_fp32.py", "latest", "hf_config/config.json"} <= set(entries)
    for rel, entry in entries.items():
        data = (ckpt / rel).read_bytes()
        assert entry == {"size": len(data), HASH: xxhash.xxh3_128(data).hexdigest()}, rel
    body = json.loads((ckpt / MANIFEST_FILE).read_text())
    assert body["version"] == 1 and body["hash"] == "xxh3_128"


def test_hashing_writer_hashes_what_torch_saves_and_the_file_loads(tmp_path):
    state = {"w": torch.randn(1000), "step": 3}
    path = tmp_path / "state.pt"
    with open(path, "wb") as fh:
        writer = HashingWriter(fh)
        torch.save(state, writer)
    data = path.read_bytes()
    assert writer.entry() == {"size": len(data), HASH: xxhash.xxh3_128(data).hexdigest()}
    loaded = torch.load(io.BytesIO(data))
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_share_splits_the_files_over_ranks_by_bytes():
    entries = {f"f{i}": {"size": size} for i, size in enumerate([100, 90, 10, 10, 5, 1])}
    parts = [share(entries, rank, 2) for rank in range(2)]
    names = [rel for part in parts for rel, _ in part]
    assert sorted(names) == sorted(entries)  # every file once
    loads = [sum(e["size"] for _, e in part) for part in parts]
    assert abs(loads[0] - loads[1]) <= 20


def verify(capsys, *argv):
    code = run_cli(main, ["verify", *map(str, argv)], prog=PROG)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_cli_ok_truncated_and_changed(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "step_00000008"
    code, out, _ = verify(capsys, run_dir)
    assert code == 0 and out.count("OK: ") == 2
    shard = ckpt / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    full = shard.stat().st_size
    half = truncate(shard)
    code, out, _ = verify(capsys, ckpt)
    assert code == 1
    assert (f"ds/zero_pp_rank_0_mp_rank_00_optim_states.pt has {half} bytes, the manifest says "
            f"{full}") in out
    code, out, _ = verify(capsys, run_dir)  # the older one still verifies
    assert code == 1 and "OK: " in out and "FAILED: " in out


def test_verify_cli_hashes_catch_what_sizes_miss(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "step_00000004"
    flip_byte(ckpt / "ds" / "mp_rank_00_model_states.pt")
    code, out, _ = verify(capsys, ckpt)
    assert code == 1 and "ds/mp_rank_00_model_states.pt does not match its xxh3_128 hash" in out
    code, out, _ = verify(capsys, ckpt, "--sizes")
    assert code == 0 and "sizes match" in out


def test_verify_cli_garbage_manifest_missing_manifest_and_not_a_checkpoint(run_dir, capsys,
                                                                            tmp_path):
    ckpt = run_dir / "checkpoints" / "step_00000004"
    (ckpt / MANIFEST_FILE).write_text("{garbage")
    code, out, _ = verify(capsys, ckpt)
    assert code == 1 and "manifest.json is unreadable" in out
    os.remove(ckpt / MANIFEST_FILE)
    code, out, _ = verify(capsys, ckpt)
    assert code == 1 and "no manifest.json" in out
    code, out, err = verify(capsys, tmp_path / "nothing")
    assert code == 2 and err.strip().splitlines() == [
        f"{PROG}: error: {tmp_path / 'nothing'} is not a complete checkpoint (no COMPLETE) and "
        "holds none"]
