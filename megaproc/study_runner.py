"""Running a study's nodes: their status, one node start to finish, and the local scheduler.

A node's directory holds the markers of :mod:`megaproc.sweep_jobs` (``RUNNING``, ``DONE``,
``FAILED``), its ``stdout.log``, ``study_node.json`` (what the node is) and, once evaluated,
``eval.json`` (``EVAL_FAILED`` when the evaluation failed; ``eval.log`` has its stderr).
Statuses:

``done``         trained (``DONE``) and finished: evaluated, or the splits moved into place
``trained``      ``DONE`` but not finished (the evaluation failed or was interrupted): a rerun
                 only evaluates
``failed``       training failed (``FAILED``); a rerun trains again (resuming its checkpoint)
``interrupted``  started, never ended (the study was killed): a rerun resumes its checkpoint
``pending``      never started

Locally, nodes run in dependency order, at most ``parallel`` at a time, each as one
subprocess in the repository root (as the SLURM jobs run): ``megaproc/train.py`` on one
process or the deepspeed launcher on ``nproc`` CPU ranks, then ``python -m megaproc.evaluate
--checkpoint latest:RUN_DIR <flags>``.  A node that fails is reported and every node waiting
for it is skipped; the others go on.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from megaproc.files import REPO_ROOT, atomic_write_json
from megaproc.pipeline import train_command
from megaproc.study_graph import SPLITS_BUILD, Node, StudyGraph
from megaproc.study_spec import StudyError
from megaproc import sweep_jobs as sj

NODE_FILE = "study_node.json"
EVAL_FILE = "eval.json"
EVAL_FAILED = "EVAL_FAILED"
FINISHED_STATES = ("done",)
# Set by a launcher for its workers: a study started inside one must not hand them on.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "CROSS_RANK", "CROSS_SIZE")


def say(message: str) -> None:
    """One study progress line (through tqdm, so it does not break a progress bar)."""
    tqdm.write(f"[study] {message}", file=sys.stdout)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- status
def finished(node: Node) -> bool:
    """The node's result is in place: its eval.json (if it is evaluated) or its splits."""
    if node.kind == "splits":
        return (node.output / "meta.json").is_file()
    return not node.evaluate or (node.directory / EVAL_FILE).is_file()


def node_status(node: Node) -> str:
    """``done``, ``trained``, ``failed``, ``interrupted`` or ``pending`` (module docstring)."""
    status = sj.job_status(node)        # the sweep's markers (a Node has its .directory)
    if status == "done":
        return "done" if finished(node) else "trained"
    return status


def settings_changed(node: Node) -> bool:
    """True when the node's study_node.json (written when it last ran) describes other
    settings than the spec gives it now."""
    path = node.directory / NODE_FILE
    if not path.is_file():
        return False
    try:
        before = json.loads(path.read_text())
    except ValueError:
        return True
    now = node.to_json()
    keys = ("kind", "recipe", "overrides", "evaluate", "splits", "nproc")
    return any(before.get(k) != now[k] for k in keys)


def with_skipped(graph: StudyGraph, status: dict) -> dict:
    """``status`` with every unfinished node below a failed one marked ``skipped``."""
    out = dict(status)
    for node in graph.nodes:
        if out[node.node_id] not in ("done", "trained") and any(
                out.get(p) in ("failed", "skipped") for p in node.parents):
            out[node.node_id] = "skipped"
    return out


# ----------------------------------------------------------------------------- one node
def child_env(threads: int | None = None) -> dict:
    """Environment of a node's processes: this one without launcher variables, unbuffered
    output, ``OMP_NUM_THREADS=threads`` unless set (SLURM jobs: left to launch/slurm_job.sh,
    which uses the job's CPUs per task), and ``PYTHON``/``MEGAPROC_ROOT`` for the job scripts."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    env.update(PYTHONUNBUFFERED="1", PYTHON=sys.executable, MEGAPROC_ROOT=str(REPO_ROOT))
    return env


def node_command(node: Node) -> list[str]:
    """What the node runs: the trainer (1 process, or the deepspeed launcher on ``nproc``
    CPU ranks) or build_splits."""
    if node.kind == "splits":
        return node.splits_command()
    return train_command(node.nproc, str(node.recipe), list(node.overrides))


def write_node_file(node: Node) -> None:
    """``study_node.json``: what the node is (read back by ``--finish-run`` in a SLURM job)."""
    atomic_write_json(node.directory / NODE_FILE, node.to_json())


def read_node_file(directory: str | Path) -> Node:
    """The node described in ``DIR/study_node.json``."""
    path = Path(directory) / NODE_FILE
    try:
        return Node.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StudyError(f"{path}: not a study node ({exc})".splitlines()[0]) from None


def _evaluate_once(node: Node, flags: list, env: dict) -> dict | None:
    """One ``python -m megaproc.evaluate`` of the node's newest checkpoint: its JSON, or None
    when it failed (stderr goes to ``RUN_DIR/eval.log``)."""
    d = node.directory
    cmd = [sys.executable, "-m", "megaproc.evaluate", "--checkpoint", f"latest:{d}", *flags,
           "--no-progress"]
    with open(d / "eval.log", "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=log, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or "{" not in proc.stdout:
        return None
    try:   # the command prints one JSON object (library chatter goes to stderr)
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def evaluate_node(node: Node, env: dict | None = None) -> bool:
    """Run the node's evaluation(s) and store the command's JSON as ``RUN_DIR/eval.json``
    (several named evaluations: ``{name: JSON, ...}``).  Returns True on success; on failure
    ``EVAL_FAILED`` holds the tail of ``eval.log``."""
    d = node.directory
    (d / EVAL_FAILED).unlink(missing_ok=True)
    env = env or child_env()
    results = {}
    for name, flags in node.evaluate.items():
        results[name] = _evaluate_once(node, flags, env)
        if results[name] is None:
            tail = (d / "eval.log").read_text(errors="replace").splitlines()[-3:]
            atomic_write_json(d / EVAL_FAILED, {"evaluation": name, "log_tail": tail})
            return False
    atomic_write_json(d / EVAL_FILE, results[""] if list(results) == [""] else results)
    return True


def move_splits(node: Node) -> bool:
    """Move the split directory build_splits wrote under ``build/`` to the node's output."""
    built = [p for p in (node.directory / SPLITS_BUILD).glob("*") if (p / "meta.json").is_file()]
    if len(built) != 1:
        return False
    if node.output.exists():
        shutil.rmtree(node.output)
    os.replace(built[0], node.output)
    return True


def complete_node(node: Node, env: dict | None = None) -> str:
    """After a successful run: evaluate it, or put its splits in place; ``done``/``failed``."""
    if finished(node):
        return "done"
    ok = move_splits(node) if node.kind == "splits" else evaluate_node(node, env)
    return "done" if ok else "failed"


def finish_run(directory: str | Path, exit_code: int, log_path: str | Path | None = None) -> int:
    """What a SLURM job does once its command ended with ``exit_code``: write the marker,
    evaluate (or move the splits); returns the job's exit code."""
    node = read_node_file(directory)
    result = sj.record_exit(node.directory, exit_code, 0.0,
                            Path(log_path) if log_path else node.directory / "stdout.log")
    if result["status"] != "done":
        return exit_code
    return 0 if complete_node(node) == "done" else 1


def run_node(node: Node, status: str, threads: int) -> str:
    """Train (unless already trained) and finish one node; returns its new status."""
    env = child_env(threads)
    write_node_file(node)
    if status != "trained":
        job = sj.Job(0, node.node_id, node.point, {}, list(node.overrides), node.directory,
                     node_command(node))
        result = sj.run_job(job, env=env, cwd=REPO_ROOT)
        if result["status"] != "done":
            where = node.directory / "stdout.log"
            say(f"{node.node_id}: {result['status']} (exit code {result['exit_code']}); "
                f"see {where}")
            return result["status"]
    state = complete_node(node, env)
    if state != "done":
        say(f"{node.node_id}: evaluation failed; see {node.directory / 'eval.log'}")
    return state


# ----------------------------------------------------------------------------- scheduler
@contextmanager
def study_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``OUT_DIR/.study.lock`` (two studies writing one folder would collide)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".study.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another study is running in {out_dir}") from None
        yield


def run_local(graph: StudyGraph, parallel: int = 1, progress: bool = True) -> dict:
    """Run every unfinished node (dependency order, ``parallel`` at a time); returns the
    status of every node after this invocation (``skipped`` below a failure)."""
    status = {n.node_id: node_status(n) for n in graph.nodes}
    todo = [n for n in graph.nodes if status[n.node_id] not in FINISHED_STATES]
    say(f"{graph.spec.name}: {len(todo)} of {len(graph.nodes)} nodes to run, "
        f"{len(graph.nodes) - len(todo)} already done, {parallel} at a time")
    bar = tqdm(total=len(todo), unit="run", desc="study", disable=not progress or not todo)
    threads_per_process = max(1, (os.cpu_count() or 1) // parallel)
    running: dict = {}
    stop = False
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while todo or running:
            for node in list(todo):
                blocked = [p for p in node.parents
                           if status[p] in ("failed", "skipped", "interrupted")]
                if stop or blocked:
                    todo.remove(node)
                    if not stop:
                        status[node.node_id] = "skipped"
                        say(f"{node.node_id}: skipped ({', '.join(blocked)} did not finish)")
                        bar.update(1)
                elif len(running) < parallel and all(status[p] == "done" for p in node.parents):
                    todo.remove(node)
                    verb = "evaluating" if status[node.node_id] == "trained" else "starting"
                    say(f"{node.node_id}: {verb} ({node.nproc} process(es), log "
                        f"{node.directory / 'stdout.log'})")
                    threads = max(1, threads_per_process // node.nproc)
                    running[pool.submit(run_node, node, status[node.node_id], threads)] = node
            if not running:
                continue
            try:
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:       # Ctrl-C reached the runs too: let them end
                stop = True
                continue
            for future in finished_now:
                node = running.pop(future)
                status[node.node_id] = future.result()
                stop = stop or status[node.node_id] == "interrupted"
                if status[node.node_id] == "done":
                    say(f"{node.node_id}: done")
                bar.update(1)
    bar.close()
    if stop:
        raise KeyboardInterrupt
    return with_skipped(graph, status)
