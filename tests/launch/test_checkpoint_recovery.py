"""Checkpoints that verify themselves, on 2 ranks with real engines (gloo).

The runs whose exit code is checked run under the deepspeed launcher, which passes the
trainer's code through (torchrun exits 1 with its own traceback); the others under torchrun.

The shared launch-test run (60 steps) with a checkpoint every 20 steps; every resumed run's
per-step losses are compared bitwise with the uninterrupted reference run's.

- Full disk: ``run.out_dir`` on a 7 MB tmpfs holds checkpoint 20 (5 MB) but not 40: every rank
  prints ``checkpoint save at step 40 failed: no space left on device (...); last good
  checkpoint: .../step_00000020`` once, the job exits 74, no partial directory is left and
  checkpoint 20 still verifies.  After the disk grows, the run resumes from step 20 and
  finishes with the reference losses.  (Without root, no tmpfs: ENOSPC is injected on rank 0.)
- Damage: in a copy of that finished run, a ZeRO shard of checkpoint 60 is cut to half and
  checkpoint 40's trainer state is garbage.  Naming checkpoint 60 explicitly is refused in one
  line (exit 2); ``resume=auto`` says in one line per checkpoint which file is bad and resumes
  from step 20 with the reference losses.  That run's re-save of step 40 then fails on rank 1
  only, inside DeepSpeed's save (injected ENOSPC): both ranks print the same line naming rank
  1's file, and the damaged checkpoints are left as they were.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from megaproc.checkpoint.checkpointer import checkpoint_problems
from megaproc.checkpoint.writes import FAULT_ENOSPC_ENV
from tests.checkpoint import truncate
from tests.launch import losses, run
from tests.launch.conftest import run_settings

pytestmark = pytest.mark.slow

DISK_SIZE = "7m"   # fits one checkpoint of the tiny model (~5 MB) and the logs, not two
SHARD = "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt"
SAVE_FAILED = re.compile(r"^error: checkpoint save at step (\d+) failed: no space left on device "
                         r"\((.+)\); last good checkpoint: (.+)$", re.M)


def settings(out: Path, extra: list[str] = ()) -> list[str]:
    return run_settings(out) + ["checkpoint.save_every=20", *extra]


def mount_tmpfs(path: Path, size: str, remount: bool = False) -> bool:
    """Mount (or resize) a tmpfs at ``path``; False when this machine does not allow it."""
    options = f"remount,size={size}" if remount else f"size={size}"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def save_failures(stderr: str) -> list[tuple[str, ...]]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return SAVE_FAILED.findall(stderr)


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A run on a small disk that fails to save step 40, then resumed after the disk grew."""
    disk = tmp_path_factory.mktemp("full_disk") / "disk"
    disk.mkdir()
    mounted = mount_tmpfs(disk, DISK_SIZE)
    out = disk / "run"
    try:
        failed = run(2, settings(out), launcher="deepspeed",
                     **({} if mounted else {FAULT_ENOSPC_ENV: "40:0"}))
        after_failure = checkpoints(out)
        step20_problems = checkpoint_problems(out / "checkpoints" / "step_00000020")[0]
        if mounted:
            assert mount_tmpfs(disk, "64m", remount=True)
        resumed = run(2, settings(out))
        kept = disk.parent / "finished_run"
        shutil.copytree(out, kept)
        yield SimpleNamespace(out=out, kept=kept, failed=failed, after_failure=after_failure,
                              step20_problems=step20_problems, resumed=resumed)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def test_full_disk_is_one_line_on_every_rank_and_the_run_resumes(full_disk, reference_losses):
    out, failed = full_disk.out, full_disk.failed
    assert failed.returncode == 74, failed.stdout[-3000:] + failed.stderr[-3000:]
    lines = save_failures(failed.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], failed.stderr[-3000:]  # one per rank
    step, path, last_good = lines[0]
    assert step == "40" and path.startswith(str(out / "checkpoints" / ".tmp_step_00000040") + "/")
    assert last_good == str(out / "checkpoints" / "step_00000020")
    assert "connection closed" not in failed.stderr.lower()
    assert full_disk.after_failure == ["step_00000020"]  # no partial directory
    assert full_disk.step20_problems == []               # untouched: matches its manifest

    resumed = full_disk.resumed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_00000020'} at step 20" in resumed.stdout
    assert losses(out) == reference_losses
    assert checkpoints(out) == ["step_00000020", "step_00000040", "step_00000060"]


def test_damaged_checkpoints_fall_back_to_the_newest_that_verifies(full_disk, reference_losses,
                                                                   tmp_path):
    out = tmp_path / "run"
    shutil.copytree(full_disk.kept, out)
    ckpts = out / "checkpoints"
    full = (ckpts / "step_00000060" / SHARD).stat().st_size
    half = truncate(ckpts / "step_00000060" / SHARD)
    (ckpts / "step_00000040" / "trainer_state.json").write_text("garbage")
    damaged = snapshot(out)

    explicit = run(1, settings(out, [f"checkpoint.resume={ckpts / 'step_00000060'}"]))
    errors = [line for line in explicit.stderr.splitlines() if line.startswith("error:")]
    assert explicit.returncode == 2 and errors == [
        f"error: cannot resume from {ckpts / 'step_00000060'}: it fails verification ({SHARD} "
        f"has {half} bytes, the manifest says {full}); see python -m megaproc.checkpoint verify "
        f"{ckpts / 'step_00000060'}"], explicit.stderr[-3000:]
    assert snapshot(out) == damaged

    auto = run(2, settings(out), launcher="deepspeed", **{FAULT_ENOSPC_ENV: "40:1"})
    fallbacks = [line for line in auto.stdout.splitlines() if "fails verification" in line]
    assert len(fallbacks) == 2, auto.stdout[-3000:]
    assert f"step_00000060 fails verification ({SHARD} has {half} bytes" in fallbacks[0]
    assert "step_00000040 fails verification (trainer_state.json has 7 bytes" in fallbacks[1]
    assert f"resumed from {ckpts / 'step_00000020'} at step 20" in auto.stdout
    assert losses(out) == {s: v for s, v in reference_losses.items() if s <= 40}

    assert auto.returncode == 74, auto.stderr[-3000:]
    lines = save_failures(auto.stderr)
    assert lines == [("40", str(ckpts / ".tmp_step_00000040" / SHARD),
                      str(ckpts / "step_00000020"))] * 2, auto.stderr[-3000:]
    assert checkpoints(out) == ["step_00000020", "step_00000040", "step_00000060"]
    assert {k: v for k, v in snapshot(out).items() if k.startswith("checkpoints/")} == \
        {k: v for k, v in damaged.items() if k.startswith("checkpoints/")}
