"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd on loopback.

Everything lives under one temporary directory: the munge key and socket, ``slurm.conf``,
the controller's state, slurmd's spool, pid and log files.  Clients (``sbatch``, ``squeue``,
``scontrol``, ``scancel``) find the cluster through ``SLURM_CONF``, so nothing under ``/etc``
is touched and a SLURM already configured on the machine is not disturbed.

The daemons run in the foreground as children of the test process (``-D`` / ``-F``), so
:meth:`SlurmCluster.stop` knows exactly which processes it started and ends only those.
slurmctld and slurmd have to run as root (slurmd starts jobs as the submitting user);
:func:`unavailable_reason` says why a cluster cannot be started here.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def unavailable_reason() -> str | None:
    """Why a local cluster cannot run on this machine, or ``None`` when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS)
               if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}); "
                "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as the submitting user)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback that are free right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def node_resources() -> dict[str, str]:
    """This machine as slurmd sees it (``slurmd -C``): CPUs, sockets, cores, threads, memory.

    Using slurmd's own detection for the node line avoids the node being drained for
    "low RealMemory" or a CPU count mismatch when it registers.
    """
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in out.split())
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {key: fields[key] for key in keep if key in fields}


class SlurmCluster:
    """One node, one partition (``debug``), all state under ``root``.

    Use as a context manager or call :meth:`start` / :meth:`stop`.  ``env`` is the
    environment for client commands and for jobs' own ``scontrol`` calls.
    """

    partition = "debug"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]  # what `hostname -s` prints
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        # A job inherits the submitting environment (sbatch --export=ALL), so the test's
        # own SLURM_* variables must not leak in from an outer allocation.
        for key in list(self.env):
            if key.startswith(("SLURM_", "SBATCH_", "SRUN_")) and key != "SLURM_CONF":
                del self.env[key]

    # ----------------------------------------------------------------- set-up
    def _write_munge_key(self) -> Path:
        munge_dir = self.root / "munge"
        munge_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o700)  # munged refuses keys and sockets in group/world-writable dirs
        key = munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        return key

    def _write_conf(self, ports: list[int]) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        node = " ".join(f"{k}={v}" for k, v in node_resources().items())
        lines = [
            "ClusterName=megaproc-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # Both the auth and the credential plugin talk to *our* munged, not /run/munge.
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups in containers: track processes through /proc, no task affinity.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            "JobRequeue=1",
            "MailProg=/bin/true",  # jobs ask for mail (--mail-type); there is no MTA here
            "KillWait=10",
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmdTimeout=120",
            f"NodeName={self.host} NodeAddr=127.0.0.1 NodeHostname={self.host} {node} "
            "State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE "
            "State=UP",
        ]
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs[name] = subprocess.Popen([_binary(name), *args], stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Start munged, slurmctld and slurmd; return once the node is idle in ``sinfo``."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = self._write_munge_key()
        self._write_conf(_free_ports(2))
        try:
            m = self.root / "munge"
            self._spawn("munged", ["-F", "--force", f"--key-file={key}",
                                   f"--socket={self.munge_socket}",
                                   f"--pid-file={m / 'munged.pid'}",
                                   f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'seed'}"])
            self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
            # -i: ignore state left by an earlier slurmctld (there is none; a fresh dir).
            self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld")
            self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.host])
            self._wait(self.node_idle, timeout, f"node {self.host} idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _ok(self, cmd: list[str], needle: str) -> bool:
        proc = self.run(cmd, check=False)
        return proc.returncode == 0 and needle in proc.stdout

    def node_idle(self) -> bool:
        """True when sinfo reports this cluster's node as idle."""
        proc = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
        return proc.returncode == 0 and f"{self.host} idle" in proc.stdout

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n"
                                   + self.logs())
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}:\n" + self.logs())

    # --------------------------------------------------------------- tear-down
    def stop(self) -> None:
        """End every job, then the daemons this object started (SIGTERM, SIGKILL after 20 s).

        Jobs first: slurmd exits without ending the job steps it started (by design, so that
        a restart of slurmd does not kill jobs), so their slurmstepd and processes would
        outlive the cluster.  Whatever survives is found by this cluster's ``SLURM_CONF`` in
        the process environment (jobs and slurmstepd inherit it) and killed.
        """
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.cancel_all()
            except Exception:  # noqa: BLE001 - tear down the daemons regardless
                pass
        # slurmd first, then the controller; munge last (the others authenticate through it).
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of this cluster and wait until the controller reports none."""
        jobs = self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
        if jobs:
            self.run(["scancel", "--full", *jobs], check=False)
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = self.run(["squeue", "-h", "-o", "%i %T"], check=False).stdout.split("\n")
            if not any(line.strip() for line in queue):
                return
            time.sleep(0.5)

    def leftover_pids(self) -> list[int]:
        """Processes (other than this one) whose environment names this cluster's slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
            except OSError:
                continue
        return out

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- clients
    def run(self, cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        proc = subprocess.run(cmd, env=kwargs.pop("env", self.env), capture_output=True,
                              text=True, timeout=kwargs.pop("timeout", 60), **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, args: list[str], cwd: Path, env: dict | None = None) -> int:
        """Submit a batch job; returns its job id."""
        proc = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env or self.env)
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` fields of a job (``{}`` once the controller forgot it)."""
        proc = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if proc.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))

    def wait_job(self, job_id: int, states: tuple[str, ...], timeout: float = 300,
                 predicate=None) -> dict[str, str]:
        """Poll until the job is in one of ``states`` (and ``predicate(fields)`` holds)."""
        deadline = time.time() + timeout
        fields: dict[str, str] = {}
        while time.time() < deadline:
            fields = self.job(job_id)
            if fields.get("JobState") in states and (predicate is None or predicate(fields)):
                return fields
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {fields}\n"
                           + self.logs())

    def logs(self, tail: int = 40) -> str:
        """The last lines of every daemon log (for failure messages)."""
        out = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)
