"""A one-node Slurm cluster on localhost for tests/test_slurm.py, or a real one.

The `slurm_cluster` fixture starts munged, slurmctld and slurmd from the installed Debian
packages (`.ci/run` installs them) in a temporary folder, once per test session, and stops
them at its end. It is a fixture rather than a step of `.ci/run` so that the daemons live
exactly as long as the tests that use them, are torn down even when a test fails, and
start on a developer's machine too. When they cannot start (not root, packages missing)
the tests skip, saying why.

Set HARNESS_TEST_SLURM_PARTITION to a partition of a real cluster to run the same tests
there instead (from a login node, with pytest's --basetemp on a shared file system); the
tests that drain a node skip there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PARTITION_ENV = "HARNESS_TEST_SLURM_PARTITION"
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODE = "localhost"
START_TIMEOUT_S = 30


@dataclass(frozen=True)
class SlurmCluster:
    partition: str
    node: str | None  # a node the tests may drain and resume: only on the cluster started here


class LocalCluster:
    """munged, slurmctld and slurmd in the foreground, their files under one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        folder = self.folder
        folder.chmod(0o755)  # munged insists that everyone may reach its socket
        (folder / "state").mkdir()
        (folder / "spool").mkdir()
        subprocess.run(["mungekey", "--create", f"--keyfile={folder / 'munge.key'}"], check=True, capture_output=True)
        munge_socket = folder / "munge.socket"
        self._spawn("munged", ["munged", "--foreground", f"--key-file={folder / 'munge.key'}", f"--socket={munge_socket}",
                               f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
                               f"--log-file={folder / 'munged.log'}"])
        self._until(munge_socket.exists, "munged did not create its socket")
        self.conf.write_text(self._config(munge_socket))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._until(lambda: self._ask(["scontrol", "ping"]).returncode == 0, "slurmctld does not answer")
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._until(lambda: self._ask(["sinfo", "--noheader", "--format=%T"]).stdout.strip() == "idle", "the node never became idle")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons in the reverse order of their start."""
        if any(p.poll() is None for p in self.processes[1:]):
            self._ask(["scancel", "--partition=debug"])
            deadline = time.monotonic() + 15
            while self._ask(["squeue", "--noheader"]).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in sorted(self.folder.glob("*.log"))
        )

    def _config(self, munge_socket: Path) -> str:
        hardware = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout.splitlines()[0]
        node_line = " ".join(field for field in hardware.split() if not field.startswith("NodeName="))
        controller_port, node_port = _free_ports(2)
        folder = self.folder
        # KillWait: seconds between scancel's SIGTERM, which submitit's jobs ignore, and SIGKILL
        return f"""\
ClusterName=harness-test
SlurmctldHost=localhost
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={NODE} NodeAddr=127.0.0.1 {node_line} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.folder / f"{name}.out", "w") as output:
            self.processes.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=self._env()))

    def _ask(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self._env(), timeout=30)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _until(self, ready, failure: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{failure}{' (' + ', '.join(dead) + ' exited)' if dead else ''}")
            time.sleep(0.2)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A Slurm partition to submit to: the one named by HARNESS_TEST_SLURM_PARTITION, else
    a one-node cluster started here for the session."""
    if os.environ.get(PARTITION_ENV):
        if not shutil.which("sbatch"):
            pytest.skip(f"{PARTITION_ENV} is set but sbatch is not on PATH")
        yield SlurmCluster(partition=os.environ[PARTITION_ENV], node=None)
        return
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): .ci/run installs Debian's slurmctld, slurmd and munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    folder = Path(tempfile.mkdtemp(prefix="harness-slurm-"))
    cluster = LocalCluster(folder)
    started = time.monotonic()
    try:
        cluster.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        cluster.stop()
        logs = cluster.logs()
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"the Slurm daemons did not start: {exc}\n{logs}")
    print(f"one-node Slurm cluster up in {time.monotonic() - started:.1f} s")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for sbatch and squeue, here and in `harness run`
    try:
        yield SlurmCluster(partition="debug", node=NODE)
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)
