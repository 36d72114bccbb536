"""A failed save is one line, a distinct exit code, no partial directory, older ones untouched.

One process with the DeepSpeed-like :class:`~tests.checkpoint.SavingEngine`; the 2-rank runs
(a real full disk, a failure on rank 1 inside DeepSpeed's save) are in
``tests/launch/test_checkpoint_recovery.py``.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from megaproc.checkpoint import Checkpointer, CheckpointSaveError, layout
from megaproc.checkpoint.writes import FAULT_ENOSPC_ENV, SAVE_FAILED_EXIT_CODE, io_reason
from megaproc.errors import UserError, run_cli
from tests.checkpoint import SavesPretrained, SavingEngine, save


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def checkpointer(tmp_path):
    checkpointer = Checkpointer(tmp_path / "run", keep_last_k=0)
    save(checkpointer, 4)
    return checkpointer


def test_enospc_inside_the_engine_save_is_one_line_and_leaves_no_partial_directory(
        checkpointer, monkeypatch):
    before = snapshot(checkpointer.root)
    monkeypatch.setenv(FAULT_ENOSPC_ENV, "8:0")
    with pytest.raises(CheckpointSaveError) as info:
        save(checkpointer, 8)
    tmp = checkpointer.root / ".tmp_step_00000008"
    assert str(info.value) == (
        f"checkpoint save at step 8 failed: no space left on device "
        f"({tmp / 'ds' / 'mp_rank_00_model_states.pt'}); last good checkpoint: "
        f"{checkpointer.root / 'step_00000004'}")
    assert info.value.exit_code == SAVE_FAILED_EXIT_CODE == 74 and info.value.every_rank
    assert sorted(p.name for p in checkpointer.root.iterdir()) == ["step_00000004"]
    assert snapshot(checkpointer.root) == before
    monkeypatch.delenv(FAULT_ENOSPC_ENV)
    assert save(checkpointer, 8) == checkpointer.root / "step_00000008"  # the disk has room again


def test_a_tokenizer_that_reports_a_rust_io_error_names_the_reason(checkpointer):
    class FullDiskTokenizer(SavesPretrained):
        def save_pretrained(self, directory):
            os.makedirs(directory, exist_ok=True)
            raise Exception("No space left on device (os error 28)")  # how tokenizers says it

    with pytest.raises(CheckpointSaveError, match=r"failed: no space left on device \(.*"
                                                  r"\.tmp_step_00000008/tokenizer\); last good"):
        checkpointer.save(8, SavingEngine(), {"geometry": {}}, SavesPretrained("config"),
                          FullDiskTokenizer("tokenizer"))
    assert [s for s, _ in checkpointer.existing()] == [4]


def test_a_bug_in_a_writer_keeps_its_traceback_and_still_ends_in_one_line(checkpointer, capsys):
    class BrokenConfig(SavesPretrained):
        def save_pretrained(self, directory):
            raise ValueError("config cannot be serialised")

    with pytest.raises(CheckpointSaveError,
                       match="failed: ValueError: config cannot be serialised"):
        checkpointer.save(8, SavingEngine(), {}, BrokenConfig("c"), SavesPretrained("t"))
    assert "Traceback" in capsys.readouterr().err


def test_a_failed_resave_puts_the_old_copy_back(checkpointer, monkeypatch):
    before = snapshot(checkpointer.root)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if calls.count("step_00000004") == 1 and Path(dst).name == "step_00000004":
            # the new copy cannot move in (once: the clean-up's rename back works)
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(layout.os, "replace", replace)
    with pytest.raises(CheckpointSaveError, match="failed: input/output error"):
        save(Checkpointer(checkpointer.run_dir, keep_last_k=0), 4)
    monkeypatch.setattr(layout.os, "replace", real_replace)
    assert ".old_step_00000004" in calls
    assert snapshot(checkpointer.root) == before


def test_io_reason_reads_the_chain_and_a_full_filesystem(tmp_path, monkeypatch):
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    except RuntimeError as exc:
        assert io_reason(exc, tmp_path / "x.pt") == ("disk quota exceeded", tmp_path / "x.pt")
    silent = RuntimeError("basic_ios::clear: iostream error")  # torch.save to a path: no errno
    assert io_reason(silent, tmp_path / "a" / "b.pt") is None
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    assert io_reason(silent, tmp_path / "a" / "b.pt") == ("no space left on device",
                                                          tmp_path / "a" / "b.pt")


def test_run_cli_prints_an_every_rank_error_on_every_rank(monkeypatch, capsys):
    def fails(error):
        raise error

    monkeypatch.setenv("RANK", "1")
    assert run_cli(fails, UserError("only rank 0 says this")) == 2
    assert capsys.readouterr().err == ""
    assert run_cli(fails, CheckpointSaveError("checkpoint save at step 8 failed: x")) == 74
    assert capsys.readouterr().err == "error: checkpoint save at step 8 failed: x\n"


def test_every_file_and_directory_of_a_save_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save(Checkpointer(tmp_path / "run"), 2)
    tmp_names = {str(p.resolve()).replace("step_00000002", ".tmp_step_00000002"): p.name
                 for p in [path, *path.rglob("*")]}
    # Everything is fsynced under the temporary directory's name, before the rename; the
    # manifest and COMPLETE (atomic writes) under their own temporary file names.
    for name, base in tmp_names.items():
        atomic = os.path.join(os.path.dirname(name), f".{base}.tmp-")
        assert name in synced or any(s.startswith(atomic) for s in synced), name
    assert str(path.parent.resolve()) in synced  # the rename itself
