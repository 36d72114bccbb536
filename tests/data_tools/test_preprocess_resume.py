"""A preprocess killed with SIGKILL leaves nothing under the final names; --resume finishes it
with the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools._errors import DataToolError

from .conftest import REPO_ROOT, error_line, preprocess_main, run_tool, write_jsonl
from .corpora import texts, write_c4

FINAL_SUFFIXES = (".bin", ".idx", ".meta.json")


def final_files(prefix) -> list[str]:
    names = [f"{prefix}{kind}{suffix}" for kind in ("_train", "_valid") for suffix in FINAL_SUFFIXES]
    return [n for n in names if os.path.exists(n)]


def progress(work_dir) -> tuple[int, int, int]:
    """(files done, train bytes the state records, train bytes written so far) of a running preprocess."""
    try:
        state = json.loads((work_dir / "state.json").read_text())
        written = os.path.getsize(work_dir / "train.bin")
        return state["files_done"], state["outputs"]["train"]["bin_bytes"], written
    except (OSError, ValueError, KeyError):
        return 0, 0, 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_identical_bytes(tmp_path, tokenizer_dir):
    (tmp_path / "shards").mkdir()
    for k in range(12):
        write_jsonl(tmp_path / "shards" / f"shard-{k:02d}.jsonl", [{"text": t} for t in texts(300, seed=k)])
    options = ["--input", str(tmp_path / "shards" / "shard-*.jsonl"), "--tokenizer", tokenizer_dir, "--append-eod",
               "--valid-fraction", 0.05, "--max-docs", 100000, "--workers", 1, "--piece-bytes", 60000]
    reference = tmp_path / "reference"
    preprocess_main(*options, "--output-prefix", reference)

    out = tmp_path / "killed"
    work_dir = tmp_path / ".killed.preprocess"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # its own session, so the kill takes the worker process with it (as a job scheduler would)
    process = subprocess.Popen([sys.executable, "-m", "data_tools.preprocess", *map(str, options),
                                "--output-prefix", str(out)], cwd=REPO_ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill in the middle of a file: some files recorded as done, and more tokens already
    # written than the state records (they must be cut off on resume).
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        done, recorded, written = progress(work_dir)
        if done >= 2 and written > recorded:
            break
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done, recorded, written = progress(work_dir)
    assert process.returncode == -signal.SIGKILL and 2 <= done < 12, (process.returncode, done)
    assert written > recorded, "killed between files: nothing to cut off"
    assert final_files(out) == []  # nothing under the final names

    # the same command without --resume refuses (the partial run is not silently discarded)
    refused = run_tool("preprocess", *options, "--output-prefix", out)
    assert refused.returncode == 2 and "rerun with --resume" in error_line(refused)
    # other settings cannot resume it
    with pytest.raises(DataToolError, match="setting max_docs was 100000 and is now 50"):
        preprocess_main(*[o if o != 100000 else 50 for o in options], "--output-prefix", out, "--resume")

    resumed = run_tool("preprocess", *options, "--output-prefix", out, "--resume", check=True)
    assert f"resuming after {done}/12 input files" in resumed.stderr
    for kind in ("_train", "_valid"):
        for suffix in (".bin", ".idx"):
            assert open(f"{out}{kind}{suffix}", "rb").read() == open(f"{reference}{kind}{suffix}", "rb").read()
        ours, theirs = (json.loads(open(f"{p}{kind}.meta.json").read()) for p in (out, reference))
        assert ours["counts"] == theirs["counts"] and ours["settings_fingerprint"] == theirs["settings_fingerprint"]
    assert not (tmp_path / ".killed.preprocess").exists()

    # a rerun with --resume (e.g. a requeued job) finds the output complete and leaves it alone
    before = os.stat(f"{out}_train.bin").st_mtime_ns
    again = run_tool("preprocess", *options, "--output-prefix", out, "--resume", check=True)
    assert "already complete" in again.stderr and os.stat(f"{out}_train.bin").st_mtime_ns == before


def test_a_changed_finished_file_refuses_the_resume(tmp_path, tokenizer_dir):
    from data_tools._output import Workspace
    from data_tools.preprocess import Run, build_parser

    write_c4(tmp_path / "c4", shards=3, per_shard=5)
    argv = ["--input", str(tmp_path / "c4" / "en"), "--tokenizer", str(tokenizer_dir), "--output-prefix",
            str(tmp_path / "out"), "--workers", "0"]
    job = Run(build_parser().parse_args(argv))
    job.start()
    job.workspace.save_state({"settings": job.settings, "files": job.identities, "files_done": 2,
                              "outputs": {}, "totals": {}})
    job.workspace.release()
    first = sorted((tmp_path / "c4" / "en").glob("c4-train.*"))[0]
    os.utime(first, ns=(0, 0))
    with pytest.raises(DataToolError, match="changed since the interrupted run wrote it"):
        preprocess_main(*argv, "--resume")
    assert Workspace(str(tmp_path / "out")).exists()
