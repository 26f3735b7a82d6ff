"""A real Dask cluster on 127.0.0.1 for the tests: one scheduler, N workers.

Every process binds to 127.0.0.1, its HTTP (dashboard) port too: `--no-dashboard` alone
still opens one on all interfaces. Each worker runs
in its own directory and in a private mount namespace (`unshare -m`) where a tmpfs covers the
folder that holds the project: a worker can reach the git remote and the DVC remote (another
folder) but never the project's files. Started and stopped by pid; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port, wait_port

BIN = Path(sys.executable).parent


def can_hide() -> bool:
    """Root with mount namespaces: the workers can be denied the project directory."""
    if os.geteuid() != 0:
        return False
    cp = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return cp.returncode == 0


class Cluster:
    def __init__(self, root: Path, hidden: Path, n_workers: int = 2, nthreads: int = 2,
                 resources: str | None = None, env: dict | None = None):
        self.root, self.hidden = root, hidden
        self.n, self.nthreads, self.resources = n_workers, nthreads, resources
        self.env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
                    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "3", **(env or {})}
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}
        self.logs = root / "logs"

    def _log(self, name: str):
        self.logs.mkdir(parents=True, exist_ok=True)
        return open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it

    def start(self) -> Cluster:
        with self._log("scheduler") as log:
            self.scheduler = subprocess.Popen(
                [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                 str(self.port), "--dashboard-address", "127.0.0.1:0"],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=30)
        for i in range(self.n):
            self.start_worker(i)
        self.wait_workers(self.n)
        return self

    def worker_dir(self, i: int) -> Path:
        d = self.root / f"worker-{i}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start_worker(self, i: int) -> None:
        d = self.worker_dir(i)
        cmd = [str(BIN / "dask"), "worker", self.address, "--host", "127.0.0.1",
               "--dashboard-address", "127.0.0.1:0", "--no-nanny", "--nthreads", str(self.nthreads),
               "--name", f"w{i}", "--local-directory", str(d / "dask"), "--death-timeout", "60"]
        if self.resources:
            cmd += ["--resources", self.resources]
        # the project's folder is a tmpfs (empty) in the worker's own mount namespace;
        # exec keeps the pid, so the pid we hold is the worker's.
        script = 'mount -t tmpfs -o size=1m ev-hidden "$1" && shift && exec "$@"'
        wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                   str(self.hidden), *cmd]
        env = {**self.env, "EV_DASK_DIR": str(d)}
        with self._log(f"worker-{i}") as log:
            self.workers[i] = subprocess.Popen(wrapped, cwd=d, env=env, stdout=log,
                                               stderr=subprocess.STDOUT)

    def n_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=10) as c:
            return len(c.scheduler_info()["workers"])

    def addresses(self) -> set[str]:
        from distributed import Client

        with Client(self.address, timeout=10) as c:
            return set(c.scheduler_info()["workers"])

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.n_workers() >= n:
                return
            for i, p in self.workers.items():
                if p.poll() is not None:
                    raise RuntimeError(f"worker {i} exited {p.returncode}: see "
                                       f"{self.logs / f'worker-{i}.log'}")
            time.sleep(0.3)
        raise RuntimeError(f"fewer than {n} Dask workers after {timeout}s")

    def kill_worker(self, i: int) -> None:
        p = self.workers[i]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def restart_worker(self, i: int) -> None:
        if self.workers[i].poll() is None:
            self.kill_worker(i)
        self.start_worker(i)
        self.wait_workers(self.n)

    def pid_of(self, pid: int) -> int | None:
        """Which worker (index) has this pid."""
        return next((i for i, p in self.workers.items() if p.pid == pid), None)

    def stop(self) -> None:
        for p in [*self.workers.values(), self.scheduler]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [*self.workers.values(), self.scheduler]:
            if p is None:
                continue
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def rehash_cache(root: Path) -> list[str]:
    """Objects under a DVC cache or local remote whose bytes do not match their name."""
    import hashlib

    bad = []
    base = root / "files" / "md5"
    if not base.is_dir():
        return bad
    for f in base.rglob("*"):
        if f.is_file() and not f.name.endswith((".tmp", ".lock")):
            want = f.parent.name + f.name.removesuffix(".dir")
            if hashlib.md5(f.read_bytes()).hexdigest() != want:  # noqa: S324
                bad.append(str(f))
    return bad


def listening(pid: int) -> list[str]:
    """The local addresses (host:port) process pid listens on (TCP)."""
    cp = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    return [line.split()[3] for line in cp.stdout.splitlines() if f"pid={pid}," in line]
