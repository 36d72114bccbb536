"""Multi-node launch on one machine (launch/local_multinode.sh) and the per-node launcher.

- 2 "nodes" x 1 process over loopback train with per-step losses equal to the 1-node x
  2-process run; SIGUSR1 to the script reaches the trainers through both node launchers, the
  run saves and exits 75, and the rerun resumes and finishes on the same losses;
- launch/deepspeed_node.sh exports .deepspeed_env (which deepspeed ignores under --no_ssh),
  starts the launcher with SIGUSR1/SIGTERM ignored and returns its exit code;
- wait_all (launch/lib.sh) reports a node's failure over another's preemption code.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.launch import QUICKSTART, REPO, env, losses, read_jsonl, wait_for
from tests.launch.conftest import PREEMPT_STEPS, run_settings

LAUNCH = REPO / "launch"


def start_local_multinode(out: Path, log_path: Path) -> subprocess.Popen:
    """launch/local_multinode.sh with the shared launch-test run, in its own session."""
    log = open(log_path, "a")
    return subprocess.Popen([str(LAUNCH / "local_multinode.sh"), "--config", QUICKSTART,
                             *run_settings(out)], cwd=REPO, env=env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def steps_logged(out: Path) -> int:
    path = out / "logs" / "train.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_two_local_nodes_match_one_node_and_survive_preemption(tmp_path, reference_losses):
    out, log_path = tmp_path / "run", tmp_path / "local_multinode.log"
    proc = start_local_multinode(out, log_path)
    try:
        wait_for(lambda: steps_logged(out) >= 3, proc, what="step 3")
        proc.send_signal(signal.SIGUSR1)  # to the script only; it forwards to both nodes
        assert proc.wait(timeout=300) == 75, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            subprocess.run(["kill", "-KILL", f"-{proc.pid}"])
    text = log_path.read_text()
    assert "nnodes=2, num_local_procs=1, node_rank=0" in text
    assert "nnodes=2, num_local_procs=1, node_rank=1" in text
    checkpoints = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(checkpoints) == 1 and int(checkpoints[0].removeprefix("step_")) < PREEMPT_STEPS

    rerun = start_local_multinode(out, log_path)
    assert rerun.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == \
        list(range(1, PREEMPT_STEPS + 1))
    assert losses(out) == reference_losses
    ports = re.findall(r"master 127\.0\.0\.1:(\d+)", log_path.read_text())
    assert len(ports) == 2  # both runs removed DeepSpeed's shared-memory buffers
    for port in ports:
        assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))


def test_deepspeed_node_exports_deepspeed_env_and_ignores_preemption_signals(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / ".deepspeed_env").write_text("FROM_HOME=home\nOVERRIDDEN=home\n")
    (work / ".deepspeed_env").write_text("# a comment\n\nOVERRIDDEN=local value \n"
                                         " SPACED = kept=inner \nNO_EQUALS_SIGN\n")
    dump = tmp_path / "launcher_env.txt"
    # Stands in for the interpreter that would run deepspeed's launcher: records what the
    # launcher process would inherit, then exits like a preempted run.
    fake = tmp_path / "fake_python"
    fake.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        {{ env; grep '^SigIgn:' /proc/$$/status; echo "ARGS=$*"; }} > {dump}
        exit 75
        """))
    fake.chmod(0o755)
    proc = subprocess.run([str(LAUNCH / "deepspeed_node.sh"), "--no_ssh", "script.py", "a=1"],
                          cwd=work, env=dict(env(), HOME=str(home), PYTHON=str(fake)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    lines = dump.read_text().splitlines()
    assert "FROM_HOME=home" in lines
    assert "OVERRIDDEN=local value" in lines  # ./.deepspeed_env wins, ends stripped
    assert "SPACED=kept=inner" in lines
    assert not any(line.startswith("NO_EQUALS_SIGN") for line in lines)
    assert "ARGS=-m deepspeed.launcher.runner --no_ssh script.py a=1" in lines
    ignored = int(next(line for line in lines if line.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        assert ignored >> (sig - 1) & 1, f"{sig.name} not ignored in the launcher"


def test_preemptible_starts_python_with_the_preemption_signals_ignored():
    code = ("import signal; print(signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN, "
            "signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)")
    proc = subprocess.run([str(LAUNCH / "preemptible.sh"), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def wait_all(children: str, grace: int = 60) -> tuple[int, list[bool]]:
    """lib.sh's wait_all over background children given as ``sleep:exit_code`` specs: its
    exit code, and for each child whether it is still alive once wait_all has returned."""
    script = f"""
        source {LAUNCH / 'lib.sh'}
        pids=()
        for spec in {children}; do
          (sleep "${{spec%:*}}"; exit "${{spec#*:}}") & pids+=($!)
        done
        wait_all "${{pids[@]}}"; rc=$?
        alive=""
        for pid in "${{pids[@]}}"; do
          if kill -0 "$pid" 2>/dev/null; then alive="$alive 1"; else alive="$alive 0"; fi
        done
        echo "$rc$alive"
    """
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(env(), FAIL_GRACE=str(grace)))
    rc, *alive = proc.stdout.split()
    return int(rc), [flag == "1" for flag in alive]


def test_wait_all_returns_the_first_failure_then_preemption_then_success():
    assert wait_all("0:0 0.2:0")[0] == 0
    assert wait_all("0:0 0.2:75")[0] == 75
    assert wait_all("0:75 0.2:3 0.4:75")[0] == 3       # a crash is never masked by a 75
    assert wait_all("0:4 0.3:5")[0] == 4               # the first failure is the cause
    # A node still running after another failed is killed once the grace period is over.
    assert wait_all("0:6 300:0", grace=1) == (6, [False, False])
