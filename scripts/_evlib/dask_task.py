"""The worker side of a Dask sweep: one run of the command on a machine that shares nothing
with the project but its git remote and its DVC remote.

The driver uploads this library (``_evlib``, zipped) to every worker with
``Client.upload_file``, so a worker needs python, git, dvc and the training command's own
dependencies, never a copy of the bundle or of the project.

Layout under the worker's directory (``$EV_DASK_DIR``, else beside Dask's scratch space):

    ev-sweep/<hash of git url>/repo/          one clone per git remote, fetched on a new commit
    ev-sweep/<hash of git url>/<commit>/      a checkout per commit, its DVC inputs pulled into
                                              it; reused by every later run at that commit
    ev-sweep/<hash of git url>/<commit>/.ev/runs/<uuid>/
                                              one run's sandbox (runner.execute): the checkout
                                              mirrored, the run's outputs private
    ev-sweep/stage/<uuid>/                    a big result on its way to the DVC remote

git and dvc calls on one checkout are serialised by an flock (the kernel drops it when a
worker dies); the commands themselves run in parallel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

TAIL = 64 * 1024  # stdout/stderr bytes a run sends back (the end, where errors are)
PULLED = ".ev/pulled.json"  # inputs pulled into a checkout (inside its ignored .ev/)


class TaskError(RuntimeError):
    """A step of the worker's set-up failed (clone, checkout, pull, push): one line."""


def _run(cmd, cwd, what, env=None):
    cp = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        lines = [ln.strip() for ln in (cp.stderr + cp.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith(("ERROR", "error:", "fatal:"))),
                     lines[-1] if lines else f"exit {cp.returncode}")
        raise TaskError(f"{what} failed on {socket.gethostname()}: {first}")
    return cp.stdout


def _dvc() -> list[str]:
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return [str(beside)]
    return [shutil.which("dvc") or "dvc"]


def _env(extra=None):
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1"})
    env.update(extra or {})
    return env


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel drops it if this worker dies
        yield
    finally:
        os.close(fd)


def _base(spec) -> Path:
    root = os.environ.get("EV_DASK_DIR")
    if not root:
        try:
            from distributed import get_worker

            root = str(Path(get_worker().local_directory).parent)
        except (ImportError, ValueError):
            root = os.path.join(os.getcwd(), "ev-dask")
    url_hash = hashlib.sha256(spec["git_url"].encode()).hexdigest()[:12]
    return Path(root) / "ev-sweep" / url_hash


def _write_dvc_remote(dvc_dir: Path, remote) -> None:
    """The sweep's DVC remote as this checkout's default (config.local: never committed)."""
    text = remote_config(remote)
    path = dvc_dir / "config.local"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".config.local.{uuid.uuid4().hex}")
        tmp.write_text(text)
        os.replace(tmp, path)


def checkout(spec, base: Path) -> tuple[Path, bool]:
    """The commit's checkout with the inputs pulled (made once, then reused); and whether it
    was reused as it was."""
    commit, url = spec["commit"], spec["git_url"]
    mirror, co = base / "repo", base / commit
    reused = True
    ready = co / ".ev" / "checkout.ok"  # written last: a killed worker's half checkout is redone
    if not ready.exists():
        reused = False
        if not (mirror / ".git").exists():
            tmp = base / f".clone-{uuid.uuid4().hex}"
            _run(["git", "clone", "-q", "--no-checkout", url, str(tmp)], base, "git clone",
                 _env())
            os.replace(tmp, mirror)
        if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=mirror,
                          capture_output=True).returncode != 0:
            _run(["git", "fetch", "-q", "origin"], mirror, "git fetch", _env())
        _run(["git", "worktree", "prune"], mirror, "git worktree prune", _env())
        if co.exists():  # a checkout a killed worker left half-made
            shutil.rmtree(co)
        _run(["git", "worktree", "add", "-q", "--detach", str(co), commit], mirror,
             f"git checkout of {commit[:10]}", _env())
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(commit + "\n")
    if spec.get("dvc_remote") and (co / ".dvc").is_dir():
        _write_dvc_remote(co / ".dvc", spec["dvc_remote"])
    pulled_file = co / PULLED
    pulled = set(json.loads(pulled_file.read_text())) if pulled_file.exists() else set()
    want = [t for t in spec["inputs"] if t not in pulled]
    if want:
        reused = False
        _run([*_dvc(), "pull", "-q", *want], co, f"dvc pull {' '.join(want)}", _env())
        pulled_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = pulled_file.with_name(f".pulled.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(sorted(pulled | set(want))))
        os.replace(tmp, pulled_file)
    return co, reused


def _gpu_slots(base: Path, n: int):
    """n of this worker's GPUs, each held by an flock for the run's lifetime.

    Dask's resource accounting (GPU=k on the worker) already keeps the sum at or below k;
    the locks make it impossible, even for two workers on one host, to hand a device out
    twice. The devices are the worker's CUDA_VISIBLE_DEVICES, else 0..k-1.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        total = 0
        with contextlib.suppress(Exception):
            from distributed import get_worker

            total = int(get_worker().state.total_resources.get("GPU", 0))
        devices = [str(i) for i in range(total)]
    if len(devices) < n:
        raise TaskError(f"run needs {n} GPU(s), worker {socket.gethostname()} has "
                        f"{len(devices)}")
    lockdir = base.parent / "gpu-locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 3600
    while True:
        held = []
        for d in devices:
            fd = os.open(lockdir / f"gpu-{d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append((d, fd))
            except BlockingIOError:
                os.close(fd)
            if len(held) == n:
                return held
        for _, fd in held:
            os.close(fd)
        if time.time() > deadline:
            raise TaskError(f"no {n} free GPU(s) on {socket.gethostname()} within an hour")
        time.sleep(0.5)


def _consistent_copy(src: Path, dest: Path) -> None:
    """A SQLite DB (with its -wal/-journal) as one self-contained file."""
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    d = sqlite3.connect(dest)
    try:
        s.backup(d)
    finally:
        d.close()
        s.close()


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - DVC names objects by md5
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()




def remote_config(remote) -> str:
    """A DVC config making `remote` ({"name", "options"}) the default."""
    lines = ["[core]", f"    remote = {remote['name']}", f"['remote \"{remote['name']}\"']"]
    lines += [f"    {k} = {v}" for k, v in sorted(remote["options"].items())]
    return "\n".join(lines) + "\n"


def stage_repo(directory: Path, remote, cache_dir: Path | None = None) -> Path:
    """A throwaway DVC repository (no git) whose default remote is the sweep's: big results
    travel through it (`dvc add` + `dvc push` on the worker, `dvc pull` on the driver)."""
    directory.mkdir(parents=True, exist_ok=True)
    _run([*_dvc(), "init", "-q", "--no-scm", "--force"], directory, "dvc init", _env())
    # copies, never links into the cache: the file is moved on, and may be written later
    text = remote_config(remote).replace("[core]\n", "[core]\n    no_scm = True\n", 1)
    text += "[cache]\n    type = \"reflink,copy\"\n"
    if cache_dir is not None:
        text += f"    dir = {cache_dir}\n"
    (directory / ".dvc" / "config").write_text(text)
    return directory


def _pack_dir(path: Path) -> bytes:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def ship(path: Path, spec, base: Path) -> dict:
    """A result (file or folder): through Dask when at most spec["threshold"] bytes, else
    through the DVC remote (only its .dvc record crosses the scheduler)."""
    size = _size(path)
    kind = "dir" if path.is_dir() else "file"
    if size <= spec["threshold"] or not spec.get("dvc_remote"):
        data = _pack_dir(path) if kind == "dir" else path.read_bytes()
        return {"via": "dask", "kind": kind, "size": size,
                "md5": _md5(path) if kind == "file" else None, "data": data}
    stage = base.parent / "stage" / uuid.uuid4().hex
    try:
        stage_repo(stage, spec["dvc_remote"])
        staged = stage / "data"
        os.replace(path, staged)
        _run([*_dvc(), "add", "-q", "data"], stage, f"dvc add of {path.name}", _env())
        _run([*_dvc(), "push", "-q", "data.dvc"], stage, f"dvc push of {path.name}", _env())
        record = (stage / "data.dvc").read_text()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"via": "dvc", "kind": kind, "size": size, "dvc": record}


# A run's command lives in its own session (runner.execute), so it would outlive a worker
# that is SIGKILLed. This watchdog (a process of its own, polling once a second) ends the
# run's process group when the worker is gone, and itself when the run's marker is.
_WATCHDOG = """
import json, os, signal, sys, time
worker, marker, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.path.exists(marker):
    try:
        os.kill(worker, 0)
    except ProcessLookupError:
        try:
            with open(os.path.join(workdir, "state.json")) as fh:
                os.killpg(json.load(fh)["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
        break
    time.sleep(1)
"""


def _watchdog(marker: Path, workdir: Path) -> None:
    marker.write_text("")
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(marker),
                      str(workdir)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return socket.gethostname()


def run_task(spec: dict) -> dict:
    """One run: the commit's checkout (reused), the command in a sandbox (runner.execute),
    then its shard and model files back to the driver."""
    from . import runner

    t0 = time.time()
    base = _base(spec)
    base.mkdir(parents=True, exist_ok=True)
    with _flock(base / "git.lock"):
        co, reused = checkout(spec, base)
        runner.ensure_ignored(co)
        # held until this run ends: a collection (under git.lock, like this) skips co
        in_use = _hold_shared(co / ".ev" / "in-use.lock")
        os.utime(co / ".ev" / "checkout.ok")  # the last use, for the keep-newest rule
        removed = collect_checkouts(base, keep=spec.get("keep_checkouts", 3))
    try:
        return _run_in(spec, base, co, reused, removed, t0, runner)
    finally:
        os.close(in_use)


def _hold_shared(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def collect_checkouts(base: Path, keep: int) -> list[str]:
    """Remove this worker's commit checkouts beyond the `keep` most recently used, unless a
    run holds one (its shared in-use lock). Called holding base/git.lock. Returns the
    commits removed."""
    found = []
    with contextlib.suppress(OSError), os.scandir(base) as it:
        for e in it:
            if len(e.name) in (40, 64) and all(c in "0123456789abcdef" for c in e.name):
                ok = Path(e.path) / ".ev" / "checkout.ok"
                with contextlib.suppress(OSError):
                    found.append((ok.stat().st_mtime if ok.exists() else 0.0, e.name))
    removed = []
    for _used, name in sorted(found, reverse=True)[keep:]:
        co = base / name
        lock = co / ".ev" / "in-use.lock"
        fd = None
        if lock.exists():
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a run is using it
        try:
            (co / ".ev" / "checkout.ok").unlink(missing_ok=True)  # half-removed: redone
            shutil.rmtree(co, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        removed.append(name)
    if removed and (base / "repo" / ".git").exists():
        _run(["git", "worktree", "prune"], base / "repo", "git worktree prune", _env())
    return removed


def _run_in(spec: dict, base: Path, co: Path, reused: bool, removed: list[str], t0: float,
            runner) -> dict:
    t_setup = time.time()
    run = runner.RunSpec(**spec["run"])
    gpus = _gpu_slots(base, spec["gpus"]) if spec.get("gpus") else []
    workdir = co / ".ev" / "runs" / uuid.uuid4().hex
    marker = workdir.with_name(workdir.name + ".watch")
    try:
        if gpus:
            run.gpus = ",".join(d for d, _ in gpus)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        _watchdog(marker, workdir)
        res = runner.execute(co, run, workdir, lineage=spec["lineage"])
    finally:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        for _, fd in gpus:
            os.close(fd)
    t_done = time.time()
    out = {"exit_code": res.exit_code, "error": res.error, "error_code": res.error_code,
           "rows": res.rows, "track_ids": res.track_ids, "seconds": res.seconds,
           "log": runner.tail(Path(res.log)) if res.log else "", "gpus": run.gpus,
           "worker": _worker_name(), "host": socket.gethostname(),
           "checkout_reused": reused, "checkouts_removed": removed, "shard": None,
           "models": {}}
    try:
        if res.shard:
            whole = workdir / "shard-whole.db"
            _consistent_copy(Path(res.shard), whole)
            out["shard"] = ship(whole, spec, base)
        for rel, p in res.models.items():
            out["models"][rel] = ship(Path(p), spec, base)
        if res.ok:  # files written beside the outputs (a plot next to the model)
            tree = workdir / "tree"
            out["extras"] = {rel: ship(tree / rel, spec, base) for rel in runner.extras(res)
                             if (tree / rel).exists()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    t_end = time.time()
    out["timing"] = {"setup_s": round(t_setup - t0, 3), "command_s": round(res.seconds, 3),
                     "collect_s": round(t_end - t_done, 3), "total_s": round(t_end - t0, 3)}
    return out
