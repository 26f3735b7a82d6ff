"""Sweeps of an unchanged training command (scripts/sweep.py).

Every run is `runner.execute` of the command with the run's values filled in (`{param}`
placeholders, `--append-args`, `EV_PARAMS`) in its own sandbox, so a script that writes the
fixed paths results/experiments.db and models/production/model.bin runs N at a time. A run
that succeeds puts its stamped results DB at <db dir>/shards/<version>/run-<key>.db (one
rename: a shard there is always complete) and its models into the candidates folder.

Done is decided by rows, not by bookkeeping: a run is done when its shard holds rows or the
results DB holds rows of this version with ev_run = its key. So a run key never gets a
second track_id, whatever was killed when. The ledger (sweep.jsonl, append-only) keeps each
run's status, exit code and error; a lost line costs nothing but a line of the report.

An earlier sweep of the same version killed alone leaves its runs going: their sandboxes
(<repo>/.ev/sweeps/<version>/<key>/) say which pids. A new sweep refuses (exit 4, naming
them) while they live, or ends them with kill_stale; a run that finished meanwhile (exit 0,
rows in its sandbox) is collected, not redone.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import EVENTS_TABLE, runner, sweeppack
from .errors import FAILED, REFUSED, USAGE, EVError
from .runs import rank_runs
from .sql import quote_ident, sqlite_columns, sqlite_connect, sqlite_tables
from .sweep import Ledger, run_key, shard_dir, shard_rows, sweep_lock

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def arg_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def placeholders(command: list[str]) -> list[str]:
    return sorted({m.group(1) for a in command for m in PLACEHOLDER.finditer(a)})


def fill(command: list[str], params: dict, append_args: bool) -> list[str]:
    """The run's command: {name} replaced by its value ({{ and }} are literal braces)."""
    out = []
    for a in command:
        a = a.replace("{{", "\0").replace("}}", "\1")
        a = PLACEHOLDER.sub(lambda m: arg_text(params[m.group(1)]) if m.group(1) in params
                            else m.group(0), a)
        out.append(a.replace("\0", "{").replace("\1", "}"))
    if append_args:
        for name, value in params.items():
            out += [f"--{name.replace('_', '-')}", arg_text(value)]
    return out


def check_placeholders(command: list[str], runs: list[dict]) -> None:
    names = placeholders(command)
    known = set().union(*[set(r) for r in runs]) if runs else set()
    for n in names:
        if n not in known:
            raise EVError(f"the command has a placeholder {{{n}}} but the grid has no "
                          f"param {n!r}", code=USAGE,
                          hint=f"add {n} to the grid, or write {{{{{n}}}}} for literal braces")
        for r in runs:
            if n not in r:
                raise EVError(f"run {r} has no value for the command's placeholder {{{n}}}",
                              code=USAGE, hint=f"give {n} a value in every grid entry")


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [g.strip() for g in text.split(",")]
    if not ids or any(not g for g in ids) or len(set(ids)) != len(ids):
        raise EVError(f"--gpus {text!r} is not a list of distinct GPU ids", code=USAGE,
                      hint="write e.g. --gpus 0,1,2,3")
    return ids


def keys_in_db(db: Path, version: str) -> dict[str, set[str]]:
    """{ev_run: {track_id}} of this version's rows in the results DB (one query)."""
    if not Path(db).exists():
        return {}
    try:
        con = sqlite_connect(db, readonly=True)
        try:
            if EVENTS_TABLE not in sqlite_tables(con):
                return {}
            cols = {c[0] for c in sqlite_columns(con, EVENTS_TABLE)}
            if not {"ev_run", "version"} <= cols:
                return {}
            out: dict[str, set[str]] = {}
            for k, tid in con.execute(
                    f"SELECT DISTINCT ev_run, track_id FROM {quote_ident(EVENTS_TABLE)} "
                    f"WHERE CAST(version AS TEXT) = ? AND ev_run IS NOT NULL", [version]):
                out.setdefault(str(k), set()).add(tid)
            return out
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return {}


def sandboxes(repo: Path, version: str) -> Path:
    return Path(repo) / runner.SANDBOX_ROOT / "sweeps" / version


def stale_runs(repo: Path, version: str) -> list[dict]:
    """States of this version's run sandboxes whose process still lives."""
    base = sandboxes(repo, version)
    out = []
    for wd in sorted(base.iterdir()) if base.is_dir() else []:
        st = runner.read_state(wd)
        if runner.alive(st):
            out.append({**st, "workdir": str(wd)})
    return out


def plan(runs: list[dict], directory: Path, in_db: dict, ledger: Ledger) -> list[dict]:
    items = []
    for params in runs:
        key = run_key(params)
        shard = directory / f"run-{key}.db"
        shard_ok = key not in in_db and shard_rows(shard) > 0
        items.append({"key": key, "params": params, "shard": str(shard),
                      "done": key in in_db or shard_ok, "in_db": key in in_db,
                      "shard_ok": shard_ok})
    return items


def run_command_sweep(repo: Path, command: list[str], runs: list[dict], *, version: str,
                      db: Path, workers: int | None = None, append_args: bool = False,
                      dry_run: bool = False, metric: str | None = "f1_score",
                      metric_mode: str = "max", model_outputs: list[str] | None = None,
                      require_models: bool = False, gpus: list[str] | None = None,
                      kill_stale: bool = False, settings=None,
                      on_progress: Callable[[str], None] | None = None,
                      executor=None, on_warn: Callable[[str], None] | None = None) -> dict:
    """Run `command` once per run (see the module doc); merge; rank. Returns the report.

    executor: None runs each run here (runner.execute, one reused sandbox per worker); an
    object with execute(repo, spec, workdir, lineage=...) like runner.execute's
    (dask_exec.DaskExecutor) runs them elsewhere and lands their files here; the rest
    (candidates, ledger, merge, ranking) is the same code.
    on_warn: what a killed sweep left and this one recovered (said with --json too, as every
    recovery is); None: said through on_progress.
    """
    from . import settings as settings_mod

    s = settings or settings_mod.load(repo)
    if gpus is not None and workers is None:
        workers = len(gpus)
    workers = 1 if workers is None else workers
    if workers < 1:
        raise EVError("--workers must be at least 1", code=USAGE)
    if executor is not None and gpus is not None:
        raise EVError("--gpus names this machine's GPUs; on a Dask cluster use "
                      "--gpus-per-run N", code=USAGE, hint="start workers with --resources GPU=k")
    if gpus is not None and workers > len(gpus):
        raise EVError(f"--workers {workers} is more than the {len(gpus)} GPUs given: two runs "
                      f"would share a GPU", code=USAGE,
                      hint="drop --workers (it defaults to the number of GPUs) or list more")
    check_placeholders(command, runs)
    db = Path(db)
    try:
        db_rel = db.resolve().relative_to(Path(repo).resolve()).as_posix()
    except ValueError:
        raise EVError(f"--db {db} is outside the repository", code=USAGE,
                      hint="the command logs inside its sandbox; give a path in the project"
                      ) from None
    outs = list(model_outputs) if model_outputs else [s.production_model]
    require = bool(model_outputs) and require_models
    directory = shard_dir(db, version)
    if dry_run:
        ledger = Ledger(directory, version)  # reads only
        items = plan(runs, directory, keys_in_db(db, version), ledger)
        live = stale_runs(repo, version)
        if executor is not None and any(not it["done"] for it in items):
            executor.preflight(runner.lineage(repo, s, extra_outputs=outs))
        return {"version": version, "db": str(db), "shards": str(directory), "dry_run": True,
                "command": command, "stale": [st["pid"] for st in live],
                "runs": [{"key": it["key"], "params": it["params"], "shard": it["shard"],
                          "command": fill(command, it["params"], append_args),
                          "status": "skip (done)" if it["done"] else "would run"}
                         for it in items]}
    directory.mkdir(parents=True, exist_ok=True)
    with sweep_lock(directory):
        ledger = Ledger(directory, version)
        try:
            return _sweep(Path(repo), s, command, runs, version=version, db=db, db_rel=db_rel,
                          workers=workers, append_args=append_args, metric=metric,
                          metric_mode=metric_mode, outs=outs, require=require, gpus=gpus,
                          kill_stale=kill_stale, ledger=ledger, directory=directory,
                          on_progress=on_progress, executor=executor,
                          on_warn=on_warn or on_progress)
        finally:
            ledger.save()
            ledger.close()


def _handle_stale(repo: Path, version: str, kill_stale: bool, on_progress) -> list[int]:
    live = stale_runs(repo, version)
    if live and not kill_stale:
        pids = ", ".join(str(p) for p in sorted(st["pid"] for st in live))
        raise EVError(f"{len(live)} run(s) of an earlier sweep of {version} are still running "
                      f"(pids {pids}); their rows would be lost or doubled", code=REFUSED,
                      hint="wait for them to end, or re-run with --kill-stale to end them "
                           "first", pids=[st["pid"] for st in live])
    killed = []
    for st in live:
        if not runner.kill_group(st):
            raise EVError(f"could not end process {st['pid']} of an earlier sweep",
                          code=FAILED, hint=f"end it by hand: kill -9 {st['pid']}")
        killed.append(st["pid"])
        if on_progress:
            on_progress(f"ended run {st.get('key')} of an earlier sweep (pid {st['pid']})")
    return killed


def _sweep(repo, s, command, runs, *, version, db, db_rel, workers, append_args, metric,
           metric_mode, outs, require, gpus, kill_stale, ledger, directory, on_progress,
           executor=None, on_warn=None):
    runner.ensure_ignored(repo)
    killed = _handle_stale(repo, version, kill_stale, on_progress)
    base = sandboxes(repo, version)
    recovered = []
    lin = None
    # What a killed sweep left: collect runs that finished well, remove the others.
    for wd in sorted(base.iterdir()) if base.is_dir() else []:
        if not wd.is_dir() or wd.is_symlink():
            continue
        st = runner.read_state(wd)
        key = st.get("key") or wd.name
        shard = directory / f"run-{key}.db"
        if st.get("key") and _nonempty(wd / runner.LOG_FILE):  # the output it had so far
            os.replace(wd / runner.LOG_FILE, directory / f"run-{key}.log")
        # A run killed mid-stamp ("stamping": its journal was in memory) may be torn: redone.
        if (runner.read_rc(wd, key) == 0 and st.get("spec") and shard_rows(shard) == 0
                and st.get("phase") != "stamping"):
            res = runner.RunResult(spec=runner.RunSpec(**st["spec"]), workdir=str(wd),
                                   exit_code=0)
            res = runner.finish(res, st.get("lineage") or {})
            if res.ok:
                _land(repo, s, res, directory, ledger)
                recovered.append(key)
                if on_warn:
                    on_warn(f"collected run-{key}, which ended after its sweep was killed")
        runner.remove_workdir(wd)
    in_db = keys_in_db(db, version)
    items = plan(runs, directory, in_db, ledger)
    todo = [it for it in items if not it["done"]]
    if todo:
        lin = runner.lineage(repo, s, extra_outputs=outs)
        if executor is not None:  # refusals first (nothing submitted), then the cluster
            executor.preflight(lin)
            executor.connect()
            workers = executor.concurrency
    total = len(todo)
    counter = itertools.count(1)
    base.mkdir(parents=True, exist_ok=True)
    # Local runs' shards are packed as they land (see sweeppack); a killed sweep's pack is
    # discarded either way.
    pack = sweeppack.Pack(base / sweeppack.PACK) if todo and executor is None else None
    if pack is None:
        sweeppack.discard(base / sweeppack.PACK)

    def spec_for(it, gpu=None):
        return runner.RunSpec(command=fill(command, it["params"], append_args),
                              version=version, key=it["key"], params=it["params"],
                              results_db=db_rel, model_outputs=outs,
                              require_models=require, gpus=gpu,
                              candidates_dir=s.candidates_dir,
                              protect=[] if s.production_model in outs
                              else [s.production_model])

    def job(it):  # on an executor: a fresh directory per run, where it lands its files
        wd = base / it["key"]
        if wd.exists():
            runner.remove_workdir(wd)
        res = executor.execute(repo, spec_for(it), wd, lineage=lin)
        _after(it, res, wd, None)
        runner.remove_workdir(wd)

    def _after(it, res, wd, gpu):
        log = directory / f"run-{it['key']}.log"
        if res.log and Path(res.log) != log and _nonempty(res.log):  # an empty one: not kept
            os.replace(res.log, log)
        if res.ok:
            it["candidates"] = _land(repo, s, res, directory, ledger, pack)
            it["landed"] = True
            state = "done"
        else:
            partial = Path(wd / "tree" / db_rel)
            if partial.exists():
                stamp_ = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                it["moved_aside"] = str(directory / f"run-{it['key']}.db.partial-{stamp_}")
                os.replace(partial, it["moved_aside"])
            error, code = res.error, res.exit_code or 0
            if code < 0:
                error = runner.describe_exit(code)
            elif code > 0:
                error = runner.last_line(runner.tail(log)) or f"exit {code}"
            ledger.update(it["key"], status="failed", exit_code=res.exit_code, rows=res.rows,
                          error=error, finished=time.time(), gpus=gpu)
            state = (f"FAILED ({error})" if code < 0 else  # the signal is the error
                     f"FAILED ({runner.describe_exit(code)}: {error})")
        it["result"] = res
        if executor is not None:
            state += executor.describe(it["key"], Path(it["shard"]), metric, metric_mode)
        if on_progress:
            on_progress(f"[{next(counter)}/{total}] run-{it['key']} {it['params']}: {state}")

    boxes = 2 * workers  # sandboxes of the local loop (see _run_local)
    try:
        if todo and executor is not None:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for f in [pool.submit(job, it) for it in todo]:
                    f.result()
        elif todo:
            _run_local(repo, todo, spec_for, _after, base=base, workers=workers, boxes=boxes,
                       gpus=gpus, lineage=lin, directory=directory)
    finally:
        if executor is not None:
            executor.close()
    for i in range(boxes):
        runner.remove_workdir(base / f"w{i}")
    try:
        report = _finalize(db, directory, ledger, items, in_db, version=version, metric=metric,
                           metric_mode=metric_mode, command=command, killed=killed,
                           recovered=recovered, gpus=gpus, pack=pack)
    finally:
        if pack is not None:
            pack.close()
            sweeppack.discard(pack.path)
    if executor is not None:
        executor.annotate(report)
    return report


def _run_local(repo, todo, spec_for, after, *, base, workers, boxes, gpus, lineage,
               directory) -> None:
    """Run the commands on this machine, `workers` at once.

    A slot per running command (with GPUs, slot i owns GPU i); twice as many sandboxes as
    slots. ONE thread starts commands, reaps them (os.waitid on any child, without blocking
    while there is work to do) and collects each finished run: judges and stamps it, lands
    it and empties its sandbox for a later run. Between two collections it reaps and starts
    again, so a slot that frees up gets its next command (in a sandbox prepared earlier)
    before the next collection, and no thread hand-off sits between a command's exit and
    the next start. If collecting a run raises, no new run starts, the running ones finish
    and are collected, then the error is raised; if this process is interrupted, the
    running ones are ended.
    """
    pending = collections.deque(todo)
    free = collections.deque(range(workers))
    ready: collections.deque = collections.deque()  # prepared sandboxes
    finished: collections.deque = collections.deque()  # (it, run, box, code) to collect
    running: dict[int, tuple] = {}
    errors: list[Exception] = []
    for b in range(min(boxes, len(todo))):
        runner.prepare(repo, spec_for(todo[0]), base / f"w{b}", reuse=True)
        ready.append(b)
    try:
        while pending or running or finished:
            while pending and free and ready and not errors:
                b, it, slot = ready.popleft(), pending.popleft(), free.popleft()
                spec = spec_for(it, gpus[slot] if gpus else None)
                run = runner.launch(repo, spec, base / f"w{b}", lineage=lineage, reuse=True,
                                    log=None)
                if run.proc is None:  # it could not start: collected like a failed run
                    free.append(slot)
                    finished.append((it, run, b, None))
                else:
                    running[run.proc.pid] = (it, run, slot, b)
            if running:  # block only when there is nothing to collect
                for pid, code in _reap(running, block=not finished):
                    it, run, slot, b = running.pop(pid)
                    free.append(slot)
                    finished.append((it, run, b, code))
                if pending and free and ready and not errors:
                    continue  # start first, collect after
            if not finished:
                if not running and (errors or not pending):
                    break
                continue
            it, run, b, code = finished.popleft()
            try:
                res = run.result if code is None else runner.complete(run, code, snapshot=True)
                after(it, res, base / f"w{b}", res.spec.gpus)
                if not errors:
                    runner.prepare(repo, res.spec, base / f"w{b}", reuse=True,
                                   collected=bool(it.get("landed")))
            except Exception as exc:  # noqa: BLE001 - raised once the running ones end
                errors.append(exc)
            finally:
                ready.append(b)
    except BaseException:  # interrupted: end every running command too
        for _it, run, _slot, _b in running.values():
            runner.kill_group(run.state)
            run.proc.wait()
            run.close()
        raise
    if errors:
        raise errors[0]


def _reap(running: dict, block: bool) -> list[tuple[int, int]]:
    """[(pid, exit status as Popen gives it)] of the running commands that have exited,
    reaped (os.waitid on any child: one call per exit, no per-pid polling). block: wait for
    at least one. A child that is not a run is reaped too (it is nobody's: every other
    child of this process is waited for by the call that started it, in this thread)."""
    out = []
    flags = os.WEXITED | (0 if block else os.WNOHANG)
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:  # no child left at all
            lost = set(running) - {pid for pid, _ in out}
            if not lost:
                return out
            # (never: this thread is their only waiter) their codes are not ours to guess
            raise EVError(f"the sweep lost track of {len(lost)} running command(s) (pids "
                          f"{', '.join(map(str, sorted(lost)))}): something else reaped them",
                          code=FAILED, hint="re-run the sweep: those runs are redone") from None
        if info is None:  # (WNOHANG) nothing more has exited
            return out
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if info.si_pid in running:
            running[info.si_pid][1].proc.returncode = code
            out.append((info.si_pid, code))
        flags |= os.WNOHANG  # then take what else has exited, without waiting


def _nonempty(path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _land(repo: Path, s, res: runner.RunResult, directory: Path, ledger: Ledger,
          pack: sweeppack.Pack | None = None) -> dict:
    """A good run: models to candidates, extras into the repo, shard into place, ledger;
    then its rows into the pack (if any)."""
    key = res.spec.key
    cands = runner.collect_models(res, Path(repo) / s.candidates_dir)
    runner.collect_extras(res, repo, directory / f"run-{key}.files")
    shard = directory / f"run-{key}.db"
    os.replace(res.shard, shard)  # the stamped DB, whole: a shard in place is complete
    ledger.update(key, status="done", exit_code=0, rows=res.rows,
                  track_id=res.track_ids[0] if len(res.track_ids) == 1 else res.track_ids,
                  error=None, finished=time.time(), gpus=res.spec.gpus,
                  candidates=list(cands.values()), shard=str(shard), params=res.spec.params)
    if pack is not None:
        snap = getattr(res, "snapshot", None)
        if snap is not None:
            pack.add_rows(snap, key)
        else:
            pack.add(shard, key)
    return cands


def _finalize(db, directory, ledger, items, in_db, *, version, metric, metric_mode, command,
              killed, recovered, gpus, pack=None) -> dict:
    from .merge import merge_dbs

    # Only shards whose rows the DB lacks (landed now, or done before but not merged): the
    # merge costs what the new rows cost.
    new_items = [it for it in items
                 if not it["in_db"] and (it.get("landed") or (it["done"] and it.get("shard_ok")))]
    new = [Path(it["shard"]) for it in new_items]
    # The packed ones through the pack: one input, not one per run.
    if pack is not None:
        pack.close()  # commits its last batch: keys are then the shards it holds
    packed = set(pack.keys) if pack is not None else set()
    packed &= {it["key"] for it in new_items}
    inputs = [Path(it["shard"]) for it in new_items if it["key"] not in packed]
    if packed:
        inputs.insert(0, pack.path)
    merged = None
    if inputs:
        try:
            merged = merge_dbs(Path(db), inputs, Path(db), strategy="merge", new_base_dirs=True)
        except EVError:
            if not packed:
                raise
            # Merged shard by shard instead (nothing was written: a merge is all or nothing),
            # so that an error names the run's shard, not the pack.
            packed = set()
            merged = merge_dbs(Path(db), new, Path(db), strategy="merge", new_base_dirs=True)
    if new:
        merged_shards = set(new)  # once: a set per item made this O(runs^2)
        ledger.mark_merged([it["key"] for it in items if Path(it["shard"]) in merged_shards])
    after = keys_in_db(db, version)
    keys = {it["key"] for it in items}
    doubled = {k: sorted(t) for k, t in after.items() if len(t) > 1 and k in keys}
    expected_multi = {it["key"] for it in items
                      if isinstance(ledger.entry(it["key"]).get("track_id"), list)}
    doubled = {k: v for k, v in doubled.items() if k not in expected_multi}
    if doubled:
        k, t = next(iter(doubled.items()))
        raise EVError(f"run key {k} has {len(t)} track_ids in {db} ({', '.join(t)})",
                      code=FAILED, hint="report this as a bug; remove the extra run's rows")
    runs = []
    for it in items:
        e = ledger.entry(it["key"])
        if it["done"]:
            status = "skipped"
        else:
            status = e.get("status", "pending") if "result" in it else "pending"
        tid = e.get("track_id")
        if tid is None and it["key"] in after:
            t = sorted(after[it["key"]])
            tid = t[0] if len(t) == 1 else t
        runs.append({"key": it["key"], "params": it["params"], "shard": it["shard"],
                     "status": status, "track_id": tid, "rows": e.get("rows"),
                     "exit_code": e.get("exit_code"), "error": e.get("error") if status ==
                     "failed" else None, "gpus": e.get("gpus"),
                     "candidates": e.get("candidates") or [],
                     "moved_aside": it.get("moved_aside")})
    failed = [r for r in runs if r["status"] == "failed"]
    report = {"version": version, "db": str(db), "shards": str(directory),
              "ledger": str(ledger.path), "runs": runs, "command": command,
              "counts": {st: sum(r["status"] == st for r in runs)
                         for st in ("done", "skipped", "failed")},
              "failed": failed, "merged": merged, "killed_stale": killed,
              "recovered": recovered, "gpus": gpus, "packed": len(packed)}
    if metric:
        ids = []
        for r in runs:
            if r["track_id"] and r["status"] != "failed":
                ids += r["track_id"] if isinstance(r["track_id"], list) else [r["track_id"]]
        report.update(rank_runs(db, metric, metric_mode, ids))
        by_tid = {r["track_id"]: r for r in runs if isinstance(r["track_id"], str)}
        for entry in report.get("ranking", []):
            run_ = by_tid.get(entry["track_id"])
            if run_:
                entry["key"], entry["params"] = run_["key"], run_["params"]
    return report
