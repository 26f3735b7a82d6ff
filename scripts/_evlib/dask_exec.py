"""Sweeps on a Dask cluster: the driver side (`sweep.py --executor dask --scheduler ADDRESS`).

Workers share no file system with the project. Each run is one Dask task (dask_task.run_task)
that checks out the sweep's commit from the project's git remote, pulls the DVC-tracked inputs
from the DVC remote, runs the command in a sandbox (runner.execute, as a local sweep does) and
returns the run's shard DB and model files: their bytes through Dask when small, through the
DVC remote above a size threshold (only the .dvc record crosses the scheduler). The driver
lands them in a local run directory, so the rest of the sweep (candidates, ledger, merge,
ranking) is the local executor's code.

Before anything is submitted the sweep refuses (exit 4) while HEAD is not on the git remote,
the tree has uncommitted changes, or an input is not on the DVC remote: a worker could not
reproduce the run. A worker killed mid-run: Dask reruns the task on another worker; only the
attempt that finished returns files, so a run lands once. The driver killed: its finished runs
are in the ledger with their shards; the next sweep skips them and resubmits the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

from .atomic import pid_alive
from .errors import FAILED, REFUSED, USAGE, EVError

DEFAULT_THRESHOLD = 16 * 1024 * 1024  # bytes; a bigger result travels through the DVC remote
CONNECT_TIMEOUT = 10.0
# DVC remote options never shipped to workers (they bring their own credentials).
_SECRET = re.compile(r"secret|password|token|key_id|account_key|credential|connection_string|"
                     r"sas|keyfile|^key$|private", re.I)
_START_HINT = ("start one: `dask scheduler --host 127.0.0.1` and `dask worker "
               "tcp://127.0.0.1:8786` (see references/parallel-sweeps.md), or pass --scheduler "
               "with the address of yours")


def normalize_address(address: str) -> str:
    if not address or address.startswith("-"):
        raise EVError(f"bad scheduler address {address!r}", code=USAGE,
                      hint="give host:port, e.g. --scheduler tcp://127.0.0.1:8786")
    return address if "://" in address else f"tcp://{address}"


def bundle_zip(directory: Path) -> Path:
    """_evlib as a zip named by its content hash (workers import it; a changed bundle is a new
    name, never an old zip rewritten under a worker that has it open)"""
    lib = Path(__file__).resolve().parent
    files = sorted(p for p in lib.glob("*.py"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    # and a name of its own per sweep: Dask deletes an uploaded file from the workers when the
    # client that uploaded it leaves, so another sweep's copy must never share its path
    dest = directory / f"ev_evlib_{h.hexdigest()[:12]}_{uuid.uuid4().hex[:8]}.zip"
    if not dest.exists():
        tmp = directory / f".{dest.name}.{uuid.uuid4().hex}"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, f"_evlib/{p.name}")
        os.replace(tmp, dest)
    return dest


# Submitted by value (its module is not importable): makes the worker import _evlib from this
# sweep's zip even when an older sweep left another _evlib loaded in that worker.
_BOOTSTRAP = '''
def ev_bootstrap(zip_name, spec):
    import importlib
    import sys
    mod = sys.modules.get("_evlib")
    if mod is None or zip_name not in (getattr(mod, "__file__", None) or ""):
        for name in [n for n in sys.modules if n == "_evlib" or n.startswith("_evlib.")]:
            del sys.modules[name]
        for p in [p for p in sys.path if p.endswith(zip_name)]:
            sys.path.remove(p)
            sys.path.insert(0, p)
        importlib.invalidate_caches()
    from _evlib import dask_task
    return dask_task.run_task(spec)
'''


def _bootstrap():
    ns: dict = {"__name__": "ev_dask_bootstrap"}
    exec(compile(_BOOTSTRAP, "<ev_dask_bootstrap>", "exec"), ns)  # noqa: S102 - our own code
    return ns["ev_bootstrap"]


# --- pre-flight ---------------------------------------------------------------------------

def _git_remote(repo: Path, name: str | None) -> tuple[str, str]:
    from .proc import git, git_ok

    if not name:
        branch = git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False)
        name = (git(repo, "config", f"branch.{branch}.remote", check=False) if branch
                else "") or "origin"
    if not git_ok(repo, "remote", "get-url", name):
        raise EVError(f"no git remote {name!r}: Dask workers clone the sweep's commit from the "
                      f"project's git remote", code=REFUSED,
                      hint=f"add one the workers can reach: git remote add {name} URL, "
                           f"then git push {name} HEAD")
    url = git(repo, "remote", "get-url", name)
    if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):  # a local path
        p = Path(url).expanduser()
        url = str(p if p.is_absolute() else (repo / p).resolve())
    return name, url


def _check_pushed(repo: Path, name: str, commit: str) -> None:
    from .proc import git, git_ok, run

    cp = run(["git", "ls-remote", name], cwd=repo, check=False)
    if cp.returncode != 0:
        line = (cp.stderr.strip().splitlines() or [f"exit {cp.returncode}"])[-1]
        raise EVError(f"cannot read git remote {name}: {line}", code=FAILED,
                      hint="check that the remote is reachable from here and from the workers")
    for line in cp.stdout.splitlines():
        sha = line.split("\t", 1)[0].strip()
        if sha == commit or (git_ok(repo, "cat-file", "-e", f"{sha}^{{commit}}")
                             and git_ok(repo, "merge-base", "--is-ancestor", commit, sha)):
            return
    branch = git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False) or "HEAD"
    raise EVError(f"HEAD {commit[:10]} is not on git remote {name}: Dask workers could not "
                  f"check it out", code=REFUSED,
                  hint=f"push it first: git push {name} {branch}")


def _dvc_remote(repo: Path) -> dict | None:
    """The default DVC remote as {"name", "options"}: its URL absolute, no secrets."""
    from .proc import dvc

    conf: dict[str, str] = {}
    for line in dvc(repo, "config", "--list").splitlines():
        k, eq, v = line.partition("=")
        if eq:
            conf[k.strip()] = v.strip()
    name = conf.get("core.remote")
    if not name:
        return None
    prefix = f"remote.{name}."
    opts = {k[len(prefix):]: v for k, v in conf.items()
            if k.startswith(prefix) and not _SECRET.search(k[len(prefix):])}
    url = opts.get("url", "")
    if url and "://" not in url:  # a local directory; relative to .dvc/, as DVC reads it
        p = Path(url).expanduser()
        opts["url"] = str(p if p.is_absolute() else (repo / ".dvc" / p).resolve())
    return {"name": name, "options": opts}


def _inputs(repo: Path, lineage_outs: list, wanted: list[str] | None) -> list[str]:
    paths = sorted({o.path for o in lineage_outs})
    if wanted is None:
        return paths
    out = []
    for w in wanted:
        w = os.path.normpath(w).replace(os.sep, "/").removesuffix(".dvc")
        hits = [p for p in paths if p == w or p.startswith(w.rstrip("/") + "/")]
        if not hits:
            raise EVError(f"--dvc-input {w} is not a DVC-tracked path of this repository",
                          code=USAGE, hint=f"tracked: {', '.join(paths) or 'none'}")
        out += hits
    return sorted(set(out))


def _check_on_remote(repo: Path, inputs: list[str], remote: dict) -> None:
    from .proc import dvc_cloud_status

    status, cp = dvc_cloud_status(repo, *inputs)
    if status is None:
        # No answer we can read is not "nothing missing": the workers would fail to pull.
        line = ((cp.stderr or cp.stdout).strip().splitlines() or ["no JSON output"])[-1]
        raise EVError(f"dvc status --cloud failed: {line}", code=FAILED,
                      hint=f"check that DVC remote {remote['name']} is reachable")
    missing = sorted(p for p, what in status.items() if what in ("new", "missing"))
    if missing:
        raise EVError(f"DVC input(s) not on remote {remote['name']}: {', '.join(missing)}; "
                      f"Dask workers pull them from there", code=REFUSED,
                      hint=f"push them first: dvc push {' '.join(missing)}")


def _best(shard: Path, metric: str, mode: str):
    """The run's metric (max or min over its rows), or None if it logs none."""
    import sqlite3

    from . import EVENTS_TABLE
    from .sql import quote_ident, sqlite_columns, sqlite_connect

    if not shard.is_file():
        return None
    try:
        con = sqlite_connect(shard, readonly=True)
        try:
            if metric not in {c[0] for c in sqlite_columns(con, EVENTS_TABLE)}:
                return None
            agg = "max" if mode == "max" else "min"
            return con.execute(f"SELECT {agg}({quote_ident(metric)}) FROM "
                               f"{quote_ident(EVENTS_TABLE)}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


# --- the executor -------------------------------------------------------------------------

# Commit checkouts each worker keeps (the newest used; the one a run uses is never removed)
KEEP_CHECKOUTS = 3


def _remove_dead_stages(root: Path) -> list[str]:
    """Remove the pull stages (.ev/incoming/PID-HEX) of drivers that are gone: a killed
    sweep's, with whatever it had half pulled. Another live sweep's are kept."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as it:
        for e in it:
            pid, _, rest = e.name.partition("-")
            if not (pid.isdigit() and rest) or pid_alive(int(pid)):
                continue  # not a stage, or its driver (maybe this one) still runs
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.name)
    return removed


class DaskExecutor:
    """Runs a sweep's runs as Dask tasks; execute() has runner.execute's contract."""

    name = "dask"

    def __init__(self, repo: Path, scheduler: str, *, settings, gpus_per_run: int = 0,
                 threshold: int = DEFAULT_THRESHOLD, dvc_inputs: list[str] | None = None,
                 git_remote: str | None = None, timeout: float = CONNECT_TIMEOUT,
                 own_outputs: list[str] = (), max_in_flight: int | None = None,
                 ignore_dirty: list[str] = ()):
        if gpus_per_run < 0:
            raise EVError("--gpus-per-run must be 0 or more", code=USAGE)
        if threshold < 0:
            raise EVError("--transfer-threshold must be 0 or more bytes", code=USAGE)
        self.repo, self.settings = Path(repo), settings
        self.address = normalize_address(scheduler)
        self.gpus, self.threshold, self.timeout = gpus_per_run, threshold, timeout
        self.wanted_inputs, self.git_remote_name = dvc_inputs, git_remote
        self.own_outputs = list(own_outputs)
        self.ignore_dirty = set(ignore_dirty)  # the grid file: read here, never by a worker
        if max_in_flight is not None and max_in_flight < 1:
            raise EVError("--workers must be at least 1", code=USAGE)
        self.max_in_flight = max_in_flight or 64
        self.client = None
        self.info: dict[str, dict] = {}  # run key -> worker, timing, transfers
        self._lock = threading.Lock()
        self.plan: dict = {}
        self._swept = False  # .ev/incoming/ cleared of killed drivers' stages

    @property
    def concurrency(self) -> int:
        """Driver threads: one per run in flight (--workers caps it); Dask decides where and
        when each runs."""
        return self.max_in_flight

    def _remove_dead_stages(self) -> None:
        with self._lock:
            if not self._swept:
                _remove_dead_stages(self.repo / ".ev" / "incoming")
                self._swept = True

    # pre-flight: everything a worker needs is published; nothing is submitted otherwise
    def preflight(self, lineage: dict) -> dict:
        from .runner import dvc_outs

        self._remove_dead_stages()
        keep = os.environ.get("EV_DASK_KEEP_CHECKOUTS", str(KEEP_CHECKOUTS))
        if not keep.isdigit() or int(keep) < 1:
            raise EVError(f"EV_DASK_KEEP_CHECKOUTS must be a whole number of 1 or more, not "
                          f"{keep!r}", code=USAGE, hint="unset it (default "
                          f"{KEEP_CHECKOUTS}) or set e.g. EV_DASK_KEEP_CHECKOUTS=2")
        repo = self.repo
        dirty = [p for p in lineage.get("dirty_paths") or []
                 if p.strip('"') not in self.ignore_dirty]
        if dirty:
            shown = ", ".join(dirty[:5])
            more = len(dirty) - 5
            raise EVError(f"the tree has uncommitted changes ({shown}"
                          f"{f' and {more} more' if more > 0 else ''}): Dask workers run "
                          f"the committed code only", code=REFUSED,
                          hint="commit them (git add -A && git commit), push, and re-run")
        commit = lineage["ev_commit"]
        if not commit:
            raise EVError("the repository has no commit yet", code=REFUSED,
                          hint="commit the code and push it")
        name, url = _git_remote(repo, self.git_remote_name)
        _check_pushed(repo, name, commit)
        own = [self.settings.results_db, self.settings.candidates_dir, *self.own_outputs]
        outs = [o for o in dvc_outs(repo) if not any(
            o.path == p or o.path.startswith(p.rstrip("/") + "/") for p in own)]
        inputs = _inputs(repo, outs, self.wanted_inputs)
        remote = _dvc_remote(repo) if (repo / ".dvc").is_dir() else None
        if inputs and not remote:
            raise EVError(f"no default DVC remote, and the runs need {', '.join(inputs)}",
                          code=REFUSED, hint="add one the workers can reach: dvc remote add "
                                             "-d storage URL, then dvc push")
        if inputs:
            _check_on_remote(repo, inputs, remote)
        self.plan = {"commit": commit, "git_remote": name, "git_url": url,
                     "dvc_remote": remote, "inputs": inputs, "lineage": lineage,
                     "keep_checkouts": int(keep)}
        return self.plan

    def connect(self) -> None:
        try:
            from distributed import Client
        except ImportError as exc:
            raise EVError("dask.distributed is not installed", code=USAGE,
                          hint="pip install 'dask[distributed]' (the bundle's [dask] extra)"
                          ) from exc
        try:
            self.client = Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise EVError(f"cannot reach the Dask scheduler at {self.address} (no answer "
                          f"within {self.timeout:g} s)", code=FAILED, hint=_START_HINT
                          ) from exc
        if self.gpus:
            info = self.client.scheduler_info()
            best = max((w.get("resources", {}).get("GPU", 0)
                        for w in info.get("workers", {}).values()), default=0)
            if best < self.gpus:
                self.close()
                raise EVError(f"no worker of {self.address} offers {self.gpus} GPU(s) "
                              f"(largest: GPU={best:g}); the runs would wait forever",
                              code=REFUSED, hint=f"start workers with dask worker "
                                                 f"{self.address} --resources GPU={self.gpus}")
        tmp = Path(tempfile.mkdtemp(prefix="ev-dask-"))
        try:
            self.zip_name = bundle_zip(tmp).name
            self.client.upload_file(str(tmp / self.zip_name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception:  # noqa: BLE001 - closing is best effort, results are landed
                pass
            self.client = None

    # one run: runner.execute's contract, on a worker
    def execute(self, repo: Path, spec, workdir: Path, *, lineage: dict | None = None,
                stream=None, on_start=None):
        from .runner import RunResult

        workdir = Path(workdir)
        if workdir.exists():
            raise EVError(f"run directory {workdir} exists already", code=FAILED,
                          hint="remove it (a run left by a killed process), then re-run")
        p = self.plan
        task = {"git_url": p["git_url"], "commit": p["commit"], "dvc_remote": p["dvc_remote"],
                "inputs": p["inputs"], "lineage": lineage or p["lineage"],
                "run": spec.to_dict(), "gpus": self.gpus, "threshold": self.threshold,
                "keep_checkouts": p["keep_checkouts"]}
        kwargs = {"resources": {"GPU": self.gpus}} if self.gpus else {}
        t0 = time.time()
        fut = self.client.submit(_bootstrap(), self.zip_name, task, pure=False,
                                 key=f"ev-run-{spec.key}-{uuid.uuid4().hex[:8]}", **kwargs)
        if on_start:
            on_start({"key": spec.key, "task": fut.key})
        result = RunResult(spec=spec, workdir=str(workdir))
        (workdir / "tree").mkdir(parents=True)
        try:
            out = fut.result()
        except Exception as exc:  # noqa: BLE001 - a task that raised, or KilledWorker
            msg = " ".join(str(exc).split()) or type(exc).__name__
            result.error = f"on the Dask cluster: {type(exc).__name__}: {msg}"
            self._record(spec.key, {"worker": None, "seconds": round(time.time() - t0, 3),
                                    "error": result.error})
            return result
        finally:
            fut.release()
        t_back = time.time()
        (workdir / "log").write_text(out.get("log") or "")
        result.log = str(workdir / "log")
        result.exit_code, result.error = out["exit_code"], out["error"]
        result.error_code = out.get("error_code", FAILED)
        result.rows, result.track_ids = out["rows"], out["track_ids"]
        result.seconds = out["seconds"]
        transfers = {}
        tree = workdir / "tree"
        try:
            if out.get("shard"):
                result.shard = str(self._land(out["shard"], tree, spec.results_db))
                transfers["shard"] = out["shard"]["via"]
            for rel, shipped in (out.get("models") or {}).items():
                result.models[rel] = str(self._land(shipped, tree, rel))
                transfers[rel] = shipped["via"]
            for rel, shipped in (out.get("extras") or {}).items():
                self._land(shipped, tree, rel)
                transfers[rel] = shipped["via"]
        except EVError as exc:  # the run is not landed: a failed run, redone next time
            result.error, result.shard, result.models = exc.line(), None, {}
        self._record(spec.key, {"worker": out["worker"], "host": out["host"],
                                "gpus": out.get("gpus"),
                                "checkout_reused": out["checkout_reused"],
                                "checkouts_removed": out.get("checkouts_removed") or [],
                                "timing": {**out["timing"],
                                           "driver_s": round(time.time() - t0, 3),
                                           "landing_s": round(time.time() - t_back, 3)},
                                "seconds": round(time.time() - t0, 3),
                                "transfers": transfers})
        return result

    def describe(self, key: str, shard: Path, metric: str | None, mode: str) -> str:
        """The progress line's tail: which worker, how long, the run's metric."""
        info = self.info.get(key) or {}
        text = f" on {info.get('worker') or '?'} in {info.get('seconds', 0):.1f} s"
        value = _best(shard, metric, mode) if metric else None
        if value is not None:
            text += f", {metric}={value}"
        return text

    def annotate(self, report: dict) -> None:
        """Per-run worker and timing in the report (--json), and the cluster it ran on."""
        for r in report.get("runs", []):
            info = self.info.get(r["key"])
            if info:
                r.update({k: info.get(k) for k in ("worker", "host", "seconds", "timing",
                                                    "transfers", "checkout_reused",
                                                    "checkouts_removed")})
                if info.get("gpus"):
                    r["gpus"] = info["gpus"]
        p = self.plan
        report["executor"] = {"name": "dask", "scheduler": self.address,
                              "commit": p.get("commit"), "git_remote": p.get("git_url"),
                              "dvc_remote": (p.get("dvc_remote") or {}).get("name"),
                              "dvc_inputs": p.get("inputs"), "gpus_per_run": self.gpus,
                              "transfer_threshold": self.threshold}

    def _record(self, key: str, info: dict) -> None:
        with self._lock:
            self.info[key] = info

    def _land(self, shipped: dict, tree: Path, rel: str) -> Path:
        """A shipped result at tree/rel (a new file or folder; nothing written in place)."""
        from .atomic import md5_file, write_bytes

        dest = tree / rel
        if tree.resolve() not in dest.resolve().parents:  # a path from the worker: never outside the run
            raise EVError(f"a worker sent a result for {dest}, outside its run directory",
                          code=FAILED, hint="report this as a bug")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if shipped["via"] == "dask":
            if shipped["kind"] == "dir":
                tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
                with tarfile.open(fileobj=io.BytesIO(shipped["data"])) as tar:
                    # "data": no absolute paths, no links out (Python >= 3.10.12 has it)
                    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(tmp, **safe)  # noqa: S202
                os.replace(tmp, dest)
            else:
                write_bytes(dest, shipped["data"])
                if md5_file(dest) != shipped["md5"]:
                    dest.unlink()
                    raise EVError(f"{dest.name} arrived damaged (md5 differs)", code=FAILED,
                                  hint="re-run the sweep; the run is redone")
            return dest
        self._pull(shipped["dvc"], dest)
        return dest

    def _pull(self, record: str, dest: Path) -> None:
        """A big result from the DVC remote, through the project's cache (so a later
        `dvc add` of the candidate costs no second copy)."""
        from .dask_task import stage_repo
        from .dvcmeta import cache_dir
        from .proc import dvc

        root = self.repo / ".ev" / "incoming"
        root.mkdir(parents=True, exist_ok=True)
        self._remove_dead_stages()
        # named by the driver's pid: a killed driver's stages are known dead, and removed
        stage = root / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            stage_repo(stage, self.plan["dvc_remote"], cache_dir(self.repo))
            (stage / "data.dvc").write_text(record)
            dvc(stage, "pull", "-q", "data.dvc")
            os.replace(stage / "data", dest)  # a copy (the stage's cache type), not a link
        finally:
            shutil.rmtree(stage, ignore_errors=True)
