"""Each Python environment keeps its own JIT-compiled DeepSpeed CPU comm op: torch builds it
under TORCH_EXTENSIONS_DIR, which megaproc.distributed derives from the environment's prefix
(two environments sharing torch's default folder overwrite each other's build and recompile)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from torch.utils.cpp_extension import _get_build_directory

from megaproc import distributed as dist_utils


def test_build_directory_follows_the_environment_and_a_users_setting_wins(monkeypatch, tmp_path):
    # torch creates the folder it names: under a home of the test's own, not the user's cache.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # Set before deleting: monkeypatch undoes only what it recorded, and a delenv of an absent
    # variable records nothing, so the value use_interpreter_extensions_dir() writes below would
    # outlive the test (and every later run of this process would compile the op for venv_a).
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "recorded")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv_a"))
    dist_utils.use_interpreter_extensions_dir()
    first = _get_build_directory("deepspeed_shm_comm", verbose=False)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv_b"))
    dist_utils.use_interpreter_extensions_dir()
    second = _get_build_directory("deepspeed_shm_comm", verbose=False)
    assert first != second                       # where torch builds it: per environment
    assert first.startswith(str(tmp_path / "home" / ".cache" / "torch_extensions" / "env-"))
    assert Path(first).name == Path(second).name == "deepspeed_shm_comm"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    dist_utils.use_interpreter_extensions_dir()
    assert _get_build_directory("x", verbose=False).startswith(str(tmp_path / "mine"))


def test_set_up_builds_the_op_where_a_run_loads_it():
    # A fresh interpreter: the op set-up built is the one init_distributed loads, not rebuilt.
    code = textwrap.dedent("""
        import os, sys
        from torch.utils.cpp_extension import _get_build_directory
        from megaproc import distributed as d
        if not d.build_cpu_comm_op():
            print("nothing-to-build"); sys.exit(0)
        so = os.path.join(_get_build_directory("deepspeed_shm_comm", False), "deepspeed_shm_comm.so")
        built = os.stat(so).st_mtime_ns
        d.init_distributed()
        print(so, built, os.stat(so).st_mtime_ns)
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                        "TORCH_EXTENSIONS_DIR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    if words[-1] != "nothing-to-build":          # a CPU machine: DeepSpeed builds the op
        so, built, loaded = words[-3:]
        assert so.startswith(str(Path.home() / ".cache" / "torch_extensions" / "env-"))
        assert built == loaded, "init_distributed recompiled the op set-up had built"
