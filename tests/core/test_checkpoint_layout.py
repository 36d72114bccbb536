"""Crash safety of checkpoint directories: a kill at any instant leaves a resumable run.

Kills are simulated by making the filesystem operation after the one under test raise, then
checking what a restarted job (``recover`` + discovery) sees.  That a save fsyncs every file
and directory is checked in ``tests/checkpoint/test_save_failure.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megaproc.checkpoint import layout


def make_checkpoint(root: Path, step: int, payload: str = "x", complete: bool = True) -> Path:
    path = root / layout.step_dir_name(step)
    (path / "ds").mkdir(parents=True)
    (path / "ds" / "shard.pt").write_text(payload)
    if complete:
        (path / layout.COMPLETE_MARKER).write_text("ok\n")
    return path


def test_resave_of_a_step_killed_between_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    make_checkpoint(tmp_path, 8, "old")
    tmp = make_checkpoint(tmp_path, 99, "new")
    tmp = tmp.rename(tmp_path / ".tmp_step_00000008")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # killed after the old one moved aside, before the new one moved in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(layout.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        layout.publish(tmp, tmp_path / "step_00000008")
    monkeypatch.setattr(layout.os, "replace", real_replace)
    assert calls[0] == ("step_00000008", ".old_step_00000008")
    assert layout.complete_checkpoints(tmp_path) == []  # nothing complete-looking is partial
    assert "restored step_00000008" in layout.recover(tmp_path)
    (step, path), = layout.complete_checkpoints(tmp_path)
    assert step == 8 and (path / "ds" / "shard.pt").read_text() == "old"
    assert not (tmp_path / ".tmp_step_00000008").exists()


def test_resave_replaces_and_deletes_the_old_one_last(tmp_path):
    make_checkpoint(tmp_path, 8, "old")
    tmp = make_checkpoint(tmp_path, 99, "new").rename(tmp_path / ".tmp_step_00000008")
    layout.publish(tmp, tmp_path / "step_00000008")
    assert (tmp_path / "step_00000008" / "ds" / "shard.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000008"]


def test_prune_killed_mid_delete_never_leaves_a_complete_partial_checkpoint(tmp_path, monkeypatch):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    real_rmtree = layout.shutil.rmtree

    def rmtree(path, ignore_errors=False):
        if Path(path).name.startswith(layout.DELETING_PREFIX) and Path(path).exists():
            os.remove(Path(path) / "ds" / "shard.pt")  # half deleted ...
            raise KeyboardInterrupt                    # ... when the kill arrives
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(layout.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        layout.prune(tmp_path, keep_last_k=1)
    monkeypatch.setattr(layout.shutil, "rmtree", real_rmtree)
    complete = layout.complete_checkpoints(tmp_path)
    assert [s for s, _ in complete] == [4, 6]
    assert all((p / "ds" / "shard.pt").is_file() for _, p in complete)
    layout.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]


def test_recover_removes_temporaries_and_incomplete_old_copies(tmp_path):
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 6, complete=False).rename(tmp_path / ".tmp_step_00000006")
    make_checkpoint(tmp_path, 8).rename(tmp_path / ".deleting_step_00000008")
    old = make_checkpoint(tmp_path, 10).rename(tmp_path / ".old_step_00000010")
    make_checkpoint(tmp_path, 10, "newer")  # replacement arrived: the old copy is garbage
    layout.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000010"]
    assert not old.exists()
    assert (tmp_path / "step_00000010" / "ds" / "shard.pt").read_text() == "newer"


def test_resolve_reference_forms(tmp_path):
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoints", 2)
    newest = make_checkpoint(run / "checkpoints", 4)
    make_checkpoint(run / "checkpoints", 6, complete=False)
    assert layout.resolve_checkpoint_ref(f"latest:{run}") == newest
    assert layout.resolve_checkpoint_ref(str(run)) == newest
    assert layout.resolve_checkpoint_ref(str(newest)) == newest
    with pytest.raises(layout.ResumeError, match="no complete checkpoint"):
        layout.resolve_checkpoint_ref(f"latest:{tmp_path / 'missing'}")
