"""Which checkpoint a resume uses: the newest that verifies, or a refusal in one line.

One process (the collective steps are exchanges of one rank); the 2-rank runs with real
engines are in ``tests/launch/test_checkpoint_recovery.py``.
"""

from __future__ import annotations

import logging
import os

import pytest

from megaproc.checkpoint import (Checkpointer, CheckpointError, ResumeError,
                                 check_checkpoint_dir, layout)
from megaproc.checkpoint.manifest import MANIFEST_FILE
from megaproc.config import load_config
from megaproc.errors import ConfigError
from tests.checkpoint import flip_byte, save, truncate

SHARD = "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture
def log_lines():
    """Lines the ``megaproc`` logger emits during the test."""
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("megaproc")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def make_run(tmp_path, steps=(4, 8, 12), **kwargs) -> Checkpointer:
    writer = Checkpointer(tmp_path / "run", keep_last_k=0)
    for step in steps:
        save(writer, step)
    return Checkpointer(tmp_path / "run", **kwargs)


def ckpt(checkpointer: Checkpointer, step: int):
    return checkpointer.root / layout.step_dir_name(step)


def test_auto_falls_back_past_a_truncated_shard_and_a_garbage_trainer_state(tmp_path, log_lines):
    checkpointer = make_run(tmp_path)
    half = truncate(ckpt(checkpointer, 12) / SHARD)
    (ckpt(checkpointer, 8) / "trainer_state.json").write_text("garbage")
    assert checkpointer.find_resume() == ckpt(checkpointer, 4)
    failed = [line for line in log_lines if "fails verification" in line]
    assert len(failed) == 2
    assert f"step_00000012 fails verification ({SHARD} has {half} bytes" in failed[0]
    assert "step_00000008 fails verification (trainer_state.json has 7 bytes" in failed[1]
    assert checkpointer.last_good == ckpt(checkpointer, 4)


def test_sizes_mode_falls_back_only_on_a_garbage_trainer_state_that_does_not_parse(tmp_path):
    checkpointer = make_run(tmp_path, verify="sizes")
    state = ckpt(checkpointer, 12) / "trainer_state.json"
    state.write_text("x" * state.stat().st_size)  # same size: only parsing can tell
    flip_byte(ckpt(checkpointer, 8) / SHARD)       # same size: sizes mode cannot tell
    assert checkpointer.find_resume() == ckpt(checkpointer, 8)
    hashes = Checkpointer(checkpointer.run_dir)
    assert hashes.find_resume() == ckpt(checkpointer, 4)


def test_an_explicit_checkpoint_that_fails_is_refused_in_one_line(tmp_path):
    checkpointer = make_run(tmp_path, steps=(4, 8))
    flip_byte(ckpt(checkpointer, 8) / SHARD)
    for ref in (str(ckpt(checkpointer, 8)), f"latest:{checkpointer.run_dir}"):
        with pytest.raises(ResumeError) as info:
            Checkpointer(checkpointer.run_dir, resume=ref).find_resume()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"cannot resume from {ckpt(checkpointer, 8)}: it fails "
                                  f"verification ({SHARD} does not match its xxh3_128 hash")
    assert Checkpointer(checkpointer.run_dir, resume=str(ckpt(checkpointer, 4))).find_resume() \
        == ckpt(checkpointer, 4)


def test_no_checkpoint_verifies_is_refused(tmp_path):
    checkpointer = make_run(tmp_path, steps=(4, 8))
    for step in (4, 8):
        os.remove(ckpt(checkpointer, step) / "rng" / "rank_00000.pt")
    with pytest.raises(ResumeError, match=r"no checkpoint under .* verifies \(step_00000008: "
                                          r"rng/rank_00000.pt is missing; step_00000004: "):
        checkpointer.find_resume()


def test_a_checkpoint_without_manifest_still_resumes_with_one_notice(tmp_path, log_lines):
    checkpointer = make_run(tmp_path, steps=(4,))
    os.remove(ckpt(checkpointer, 4) / MANIFEST_FILE)  # as written before manifests existed
    assert checkpointer.find_resume() == ckpt(checkpointer, 4)
    assert [line for line in log_lines if "manifest" in line] == [
        f"checkpoint {ckpt(checkpointer, 4)} has no manifest.json (written before checkpoints "
        "were verified): size and hash check skipped"]


def test_pruning_after_a_fallback_keeps_the_checkpoint_that_verifies(tmp_path):
    checkpointer = make_run(tmp_path, steps=(4, 8), keep_last_k=1)
    truncate(ckpt(checkpointer, 8) / SHARD)
    assert checkpointer.find_resume() == ckpt(checkpointer, 4)
    save(checkpointer, 6)  # the resumed run saves again; step 8 is newer but damaged
    assert [s for s, _ in checkpointer.existing()] == [6, 8]
    assert Checkpointer(checkpointer.run_dir).find_resume() == ckpt(checkpointer, 6)


def test_export_refuses_a_checkpoint_whose_sizes_differ(tmp_path):
    checkpointer = make_run(tmp_path, steps=(4,))
    path = ckpt(checkpointer, 4)
    assert check_checkpoint_dir(path) == path
    truncate(path / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="is damaged: ds/mp_rank_00_model_states.pt has"):
        check_checkpoint_dir(path)


def test_checkpoint_verify_is_a_checked_config_key():
    assert load_config(None, []).checkpoint.verify == "hashes"
    assert load_config(None, ["checkpoint.verify=sizes"]).checkpoint.verify == "sizes"
    with pytest.raises(ConfigError, match="checkpoint.verify"):
        load_config(None, ["checkpoint.verify=md5"])
