"""Parallel sweeps that lose nothing: one shard DB per run, merged into the results DB at the end.

Why shards: several xetrack Trackers writing one SQLite file at once (threads or processes,
engine='duckdb' or the default) race on "database is locked" and on two writers adding the
same new column ("duplicate column name: f1_score"); runs die and rows are lost. A run that
owns its file has nothing to race with; the merge engine (idempotent, keyed on xetrack's
(track_id, timestamp)) then puts every shard into the main DB, and re-merging is harmless.

Use from a training script (in-process, threads or processes):

    import sys; sys.path.insert(0, SKILL + "/scripts")
    from _evlib.sweep import run_sweep, expand_grid
    report = run_sweep(train_and_evaluate, configs, version="e0.2.0", workers=4)

Layout: shards under ``<db dir>/shards/<version>/run-<key>.db`` (key = hash of the run's
params), one ledger ``sweep.json`` there (atomic writes) saying which runs are done, failed,
or were interrupted. A run is done when its ledger entry says so and its shard still holds the
rows it had when it finished (or it was merged already); only those are merged and skipped on
a re-run. A run that was killed or failed is redone on the next invocation; its partial shard
is moved aside (``*.partial-<time>``), never merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import EVENTS_TABLE
from .errors import USAGE, EVError
from .runs import rank_runs
from .sql import in_values, quote_ident, sqlite_connect, sqlite_tables

LEDGER = "sweep.jsonl"  # append-only, one JSON object per line
LEGACY_LEDGER = "sweep.json"  # the format before: read once, never written


# --- runs, keys and the grid ------------------------------------------------------------

def config_params(config: Any) -> dict:
    """A run's params as a plain dict (a dataclass instance or a mapping)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise EVError(f"a sweep config must be a dataclass instance or a dict, not "
                  f"{type(config).__name__}", code=USAGE)


def run_key(params: dict) -> str:
    """A stable short id for a run's params: same params, same shard, whatever the order."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def expand_grid(spec: Any) -> list[dict]:
    """Runs from a grid spec: a mapping, or a list of mappings.

    In each mapping a list value means one run per value (cartesian product with the other
    lists) and a scalar is fixed. A list of mappings concatenates their runs, so
    ``[{model: logreg, C: [0.1, 1]}, {model: forest, max_depth: [2, 4]}]`` is 4 runs.
    Duplicate runs (same params) are kept once, in first-seen order.
    """
    if isinstance(spec, dict):
        blocks = [spec]
    elif isinstance(spec, list) and spec:
        blocks = spec
    else:
        raise EVError("the grid must be a mapping (param: [values]) or a non-empty list of "
                      "mappings", code=USAGE, hint="see references/parallel-sweeps.md")
    runs: list[dict] = []
    seen: set[str] = set()
    for block in blocks:
        if not isinstance(block, dict) or not block:
            raise EVError(f"grid entry is not a non-empty mapping: {block!r}", code=USAGE,
                          hint="each entry is param: value or param: [values]")
        names = list(block)
        choices = []
        for name in names:
            if not isinstance(name, str):
                raise EVError(f"grid param name must be a string: {name!r}", code=USAGE)
            value = block[name]
            if isinstance(value, list):
                if not value:
                    raise EVError(f"grid param {name!r} has an empty list of values",
                                  code=USAGE, hint="give at least one value")
                choices.append(value)
            else:
                choices.append([value])
        for combo in itertools.product(*choices):
            params = dict(zip(names, combo, strict=True))
            key = run_key(params)
            if key not in seen:
                seen.add(key)
                runs.append(params)
    return runs


def shard_dir(db: str | os.PathLike, version: str) -> Path:
    from .models import check_name

    check_name(version, "version")
    return Path(db).parent / "shards" / version


def shard_rows(path: Path) -> int:
    """Rows in a shard's events table (0 if missing or not a readable xetrack DB)."""
    return count_events(path)


def count_events(db: Path, track_ids: list[str] | None = None) -> int:
    """Rows in a results DB's events table, optionally of these runs only (0 if the file or
    its table is missing, or it is not a readable SQLite DB)."""
    if not Path(db).exists() or track_ids == []:
        return 0
    try:
        con = sqlite_connect(db, readonly=True)
        try:
            if EVENTS_TABLE not in sqlite_tables(con):
                return 0
            where, binds = "", []
            if track_ids is not None:
                cond, binds = in_values(con, EVENTS_TABLE, "track_id", track_ids)
                where = f" WHERE {cond}"
            return con.execute(f"SELECT count(*) FROM {quote_ident(EVENTS_TABLE)}{where}",
                               binds).fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return 0


def shard_track_ids(path: Path) -> list[str]:
    con = sqlite_connect(path, readonly=True)
    try:
        q = f"SELECT DISTINCT track_id FROM {quote_ident(EVENTS_TABLE)} ORDER BY 1"
        return [r[0] for r in con.execute(q)]
    finally:
        con.close()


def move_aside(shard: Path) -> str | None:
    """Keep a failed/killed run's partial shard (and its hot journal) under another name."""
    if not shard.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = shard.with_name(f"{shard.name}.partial-{stamp}-{os.getpid()}")
    for suffix in ("-journal", "-wal", "-shm"):  # a journal must follow its DB file
        side = Path(str(shard) + suffix)
        if side.exists():
            os.replace(side, Path(str(dest) + suffix))
    os.replace(shard, dest)
    return str(dest)


def sweep_lock(directory: Path):
    """One sweep per version at a time: they would share a ledger and shard names.

    An flock on <shards>/sweep.lock; the kernel drops it when the holder dies (even SIGKILL).
    """
    from .atomic import held_lock

    path = directory / "sweep.lock"
    return held_lock(path, wait_s=0,
                     message=f"another sweep of version {directory.name} is running "
                             f"(lock {path})",
                     hint="wait for it to finish, or use another --version")


# --- the ledger ---------------------------------------------------------------------------

class Ledger:
    """The sweep's state: an append-only JSON-lines file, one line per change of a run.

    O(1) per run (one short append, no rewrite of the whole state). Replaying the lines gives
    each run's latest fields. A line torn by a kill is skipped on reading (and terminated
    before the next append); a lost line costs at most a redone run, because "done" is
    decided by the run's rows (its shard, or the results DB), not by the ledger alone.
    A ledger of the old format (sweep.json) is read as the starting state.
    """

    def __init__(self, directory: Path, version: str):
        self.path = directory / LEDGER
        self.lock = threading.Lock()
        self.data: dict = {"version": version, "runs": {}}
        self._fh = None
        legacy = directory / LEGACY_LEDGER
        if legacy.exists():
            try:
                old = json.loads(legacy.read_text())
                assert isinstance(old.get("runs"), dict)
                self.data["runs"] = old["runs"]
            except (ValueError, AssertionError) as exc:
                raise EVError(f"sweep ledger {legacy} is not valid JSON", code=USAGE,
                              hint="move it aside; the runs will be redone") from exc
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line torn by a kill
                    if not isinstance(rec, dict):
                        continue
                    if isinstance(rec.get("merged"), list):
                        for k in rec["merged"]:
                            self.data["runs"].setdefault(k, {})["merged"] = True
                    elif isinstance(rec.get("key"), str):
                        k = rec.pop("key")
                        self.data["runs"].setdefault(k, {}).update(rec)

    def entry(self, key: str) -> dict:
        return self.data["runs"].get(key, {})

    def _append(self, rec: dict) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+b")  # noqa: SIM115 - kept open for the sweep
            size = self._fh.seek(0, os.SEEK_END)
            if size:
                self._fh.seek(size - 1)
                if self._fh.read(1) != b"\n":  # a torn last line: end it first
                    self._fh.write(b"\n")
        self._fh.write(json.dumps(rec, sort_keys=True, default=str).encode("utf-8") + b"\n")
        self._fh.flush()

    def update(self, key: str, *, write: bool = True, **fields) -> None:
        with self.lock:
            self.data["runs"].setdefault(key, {}).update(fields)
            if write:
                self._append({"key": key, **fields})

    def mark_merged(self, keys: list[str]) -> None:
        with self.lock:
            for k in keys:
                self.data["runs"].setdefault(k, {})["merged"] = True
            if keys:
                self._append({"merged": list(keys)})

    def save(self) -> None:
        """Make what was appended durable (once, at the end of a sweep)."""
        with self.lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def is_done(self, key: str, shard: Path, db: Path) -> bool:
        """Done = finished OK, and its rows are still somewhere: in its shard, or in db.

        "merged" alone is not enough: the results DB may have been reset since (a checkout of
        an older version), and a run whose shard was deleted too would be lost, not skipped.
        """
        e = self.entry(key)
        if e.get("status") != "done":
            return False
        want = e.get("rows") or 1
        if shard.exists() and shard_rows(shard) >= want:
            return True
        return bool(e.get("merged")) and rows_in_db(db, e.get("track_id")) >= want


def rows_in_db(db: Path, track_id) -> int:
    """Rows of the given run(s) in a results DB (0 if it or its table is missing)."""
    ids = track_id if isinstance(track_id, list) else [track_id]
    return count_events(db, [str(t) for t in ids if t])


def plan(runs: Iterable[dict], directory: Path, ledger: Ledger, db: Path) -> list[dict]:
    """One item per run: key, params, shard, and whether it is done already."""
    out = []
    for params in runs:
        key = run_key(params)
        shard = directory / f"run-{key}.db"
        out.append({"key": key, "params": params, "shard": str(shard),
                    "done": ledger.is_done(key, shard, db)})
    return out


def killed_message(exit_code: int) -> str:
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"killed by {name}"


# --- in-process sweeps --------------------------------------------------------------------

_local = threading.local()


def current_tracker():
    """The Tracker of the run executing in this thread/process (inside train_fn), or None.

    For extra rows of the same run (per-epoch losses, the model path): they go to the run's
    shard with its track_id, never to the shared DB.
    """
    return getattr(_local, "tracker", None)


def _run_one(train_fn: Callable, config: Any, shard: str, tracker_params: dict):
    from xetrack import Tracker

    tracker = Tracker(shard, params=tracker_params)
    _local.tracker = tracker
    try:
        result = tracker.track(train_fn, args=[config])
    finally:
        _local.tracker = None
    return tracker.track_id, result


def _proc_main(train_fn, config, shard, tracker_params, conn) -> None:
    try:
        track_id, result = _run_one(train_fn, config, shard, tracker_params)
        try:
            conn.send({"ok": True, "track_id": track_id, "result": result})
        except Exception:  # an unpicklable result: the rows are in the shard anyway
            conn.send({"ok": True, "track_id": track_id, "result": None})
    except BaseException as exc:  # report it to the parent, then fail this process only
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"})
        conn.close()
        os._exit(1)
    conn.close()


def run_sweep(train_fn: Callable, configs: Iterable[Any], *, version: str,
              db: str | os.PathLike = "results/experiments.db", params: dict | None = None,
              workers: int = 4, mode: str = "threads", start_method: str | None = None,
              merge: bool = True, metric: str | None = None, metric_mode: str = "max") -> dict:
    """Run train_fn(config) for every config, each run in its own shard, then merge them all.

    Each run: ``Tracker(shard, params={"version": version, **params}).track(train_fn,
    args=[config])``, so its rows carry the version and the config as ``config_<field>``
    columns. mode is "threads" or "processes" (processes: train_fn and configs must be
    picklable, i.e. defined at module level). Runs already done (ledger + complete shard) are
    skipped; a failed or killed run is recorded with its error and redone next time. Returns a
    report: runs (key, params, status, track_id, rows, error), merged (the merge report), and
    ranking (per run) when metric is given. Raises nothing for failed runs: check
    report["failed"].
    """
    if mode not in ("threads", "processes"):
        raise EVError(f"mode must be 'threads' or 'processes', not {mode!r}", code=USAGE)
    if workers < 1:
        raise EVError("workers must be at least 1", code=USAGE)
    with sweep_lock(shard_dir(db, version)):
        return _run_sweep(train_fn, configs, version=version, db=db, params=params,
                          workers=workers, mode=mode, start_method=start_method, merge=merge,
                          metric=metric, metric_mode=metric_mode)


def _run_sweep(train_fn, configs, *, version, db, params, workers, mode, start_method, merge,
               metric, metric_mode) -> dict:
    configs = list(configs)
    by_key = {}
    for cfg in configs:
        by_key.setdefault(run_key(config_params(cfg)), cfg)
    directory = shard_dir(db, version)
    directory.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(directory, version)
    items = plan([config_params(c) for c in by_key.values()], directory, ledger, Path(db))
    tracker_params = {"version": version, **(params or {})}
    todo = [it for it in items if not it["done"]]
    results: dict[str, Any] = {}

    def start(it):
        it["moved_aside"] = move_aside(Path(it["shard"]))
        ledger.update(it["key"], status="running", params=it["params"], shard=it["shard"],
                      started=time.time(), error=None, exit_code=None)

    def finish(it, ok: bool, track_id=None, error=None, exit_code=None):
        shard = Path(it["shard"])
        rows = shard_rows(shard)
        if ok and rows == 0:
            ok, error = False, "finished but wrote no rows to its shard"
        ledger.update(it["key"], status="done" if ok else "failed", track_id=track_id,
                      rows=rows, error=error, exit_code=exit_code, finished=time.time(),
                      merged=False)

    if mode == "threads":
        def job(it):
            start(it)
            try:
                tid, res = _run_one(train_fn, by_key[it["key"]], it["shard"], tracker_params)
            except Exception as exc:
                finish(it, False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                return
            results[it["key"]] = res
            finish(it, True, track_id=tid)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(job, todo))
    else:
        ctx = multiprocessing.get_context(start_method)
        pending = list(todo)
        running: dict = {}
        while pending or running:
            while pending and len(running) < workers:
                it = pending.pop(0)
                start(it)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_proc_main, daemon=True, args=(
                    train_fn, by_key[it["key"]], it["shard"], tracker_params, send))
                proc.start()
                send.close()
                running[proc.sentinel] = (proc, recv, it)
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc, recv, it = running.pop(sentinel)
                msg = None
                try:
                    if recv.poll():
                        msg = recv.recv()
                except (EOFError, OSError):
                    msg = None
                proc.join()
                if msg and msg.get("ok") and proc.exitcode == 0:
                    results[it["key"]] = msg.get("result")
                    finish(it, True, track_id=msg.get("track_id"), exit_code=0)
                elif msg and not msg.get("ok"):
                    finish(it, False, error=msg["error"], exit_code=proc.exitcode)
                else:
                    code = proc.exitcode
                    err = killed_message(code) if code and code < 0 else f"exit {code}"
                    finish(it, False, error=err, exit_code=code)
                recv.close()

    report = finalize(db, directory, ledger, items, merge=merge, metric=metric,
                      metric_mode=metric_mode)
    for r in report["runs"]:
        r["result"] = results.get(r["key"])
    return report


# --- merging and ranking ------------------------------------------------------------------

def merge_done(db: str | os.PathLike, directory: Path, ledger: Ledger, items: list[dict]
               ) -> dict | None:
    """Merge every done run's shard into db with the merge engine (idempotent)."""
    from .merge import merge_dbs

    shards = []
    for it in items:
        shard = Path(it["shard"])
        if ledger.entry(it["key"]).get("status") == "done" and shard.exists():
            shards.append(shard)
    if not shards:
        return None
    merge_report = merge_dbs(Path(db), shards, Path(db), strategy="merge", new_base_dirs=True)
    ledger.mark_merged([it["key"] for it in items if Path(it["shard"]) in shards])
    ledger.save()
    return merge_report


def finalize(db, directory: Path, ledger: Ledger, items: list[dict], *, merge: bool,
             metric: str | None, metric_mode: str) -> dict:
    merged = merge_done(db, directory, ledger, items) if merge else None
    runs = []
    for it in items:
        e = ledger.entry(it["key"])
        runs.append({"key": it["key"], "params": it["params"], "shard": it["shard"],
                     "status": "skipped" if it["done"] else e.get("status", "pending"),
                     "track_id": e.get("track_id"), "rows": e.get("rows"),
                     "exit_code": e.get("exit_code"), "error": e.get("error"),
                     "moved_aside": it.get("moved_aside")})
    failed = [r for r in runs if r["status"] == "failed"]
    report = {"version": ledger.data.get("version"), "db": str(db), "shards": str(directory),
              "ledger": str(ledger.path), "runs": runs,
              "counts": {s: sum(r["status"] == s for r in runs)
                         for s in ("done", "skipped", "failed")},
              "failed": failed, "merged": merged}
    if metric and merge:
        ids = []
        for r in runs:
            if r["track_id"] and r["status"] != "failed":
                tid = r["track_id"]
                ids += tid if isinstance(tid, list) else [tid]
        report.update(rank_runs(db, metric, metric_mode, ids))
    return report
