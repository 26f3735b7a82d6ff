#!/usr/bin/env python3
"""Benchmark: parallel xetrack writers, shard design vs one shared SQLite file, same run.

(a) shard design: each worker its own shard DB (xetrack default SQLite engine), then all
    shards merged into the main DB with the merge engine (timed together);
(b) baseline: every worker writes one shared SQLite file (default engine), its columns created
    before the workers start (so that it survives the "duplicate column" race);
(c) the workflows' recipe: every worker a Tracker(engine='duckdb') on one shared file, columns
    NOT pre-created, as the workflows wrote it (threads and processes): rows lost, exceptions.

    python bench/sweep.py [--workers 16] [--calls 500] [--reps 5] [--json]

`python bench/sweep.py overhead ...` measures instead what run.py and sweep.py add over the
bare command (issues #14, #18); see bench/sweep_overhead.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _evlib.sql import ensure_duckdb_sqlite  # noqa: E402


def worker(db: str, wid: int, calls: int, engine: str) -> str | None:
    """calls log() rows from one worker; returns the error it died with (None if none)."""
    from xetrack import Tracker

    try:
        t = Tracker(db, params={"worker": wid}, engine=engine)
        for j in range(calls):
            t.log({"step": j, "loss": 1.0 / (j + 1), "f1_score": j / calls})
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def _proc(db, wid, calls, engine, q):
    q.put(worker(db, wid, calls, engine))


def launch(kind: str, targets: list[str], calls: int, engine: str) -> list[str]:
    """Run one worker per target DB path, as threads or processes; return the errors."""
    if kind == "threads":
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            errs = list(pool.map(lambda a: worker(a[1], a[0], calls, engine),
                                 enumerate(targets)))
    else:
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        procs = [ctx.Process(target=_proc, args=(db, i, calls, engine, q))
                 for i, db in enumerate(targets)]
        for p in procs:
            p.start()
        errs = [q.get() for _ in procs]
        for p in procs:
            p.join()
        errs += [f"exit {p.exitcode}" for p in procs if p.exitcode != 0]
    return [e for e in errs if e]


def integrity(db: Path) -> str:
    if not db.exists():
        return "missing"
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        con.close()


def rows(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT count(*) FROM "default"').fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def precreate(db: Path) -> None:
    """Give the shared file its table and every column, then remove the seed row."""
    from xetrack import Tracker

    Tracker(str(db), params={"worker": -1}).log({"step": 0, "loss": 0.0, "f1_score": 0.0})
    con = sqlite3.connect(db)
    con.execute('DELETE FROM "default"')
    con.commit()
    con.close()


def shard_design(tmp: Path, kind: str, workers: int, calls: int) -> dict:
    from _evlib.merge import merge_dbs

    main = tmp / "main.db"
    shards = [tmp / "shards" / f"w{i}.db" for i in range(workers)]
    shards[0].parent.mkdir(parents=True)
    t0 = time.perf_counter()
    errs = launch(kind, [str(s) for s in shards], calls, "sqlite")
    t1 = time.perf_counter()
    merge_dbs(main, shards, main, strategy="merge")
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "write_s": t1 - t0, "merge_s": t2 - t1, "rows": rows(main),
            "errors": errs}


def shared_file(tmp: Path, kind: str, workers: int, calls: int, engine: str,
                pre: bool) -> dict:
    db = tmp / "shared.db"
    if pre:
        precreate(db)
    t0 = time.perf_counter()
    errs = launch(kind, [str(db)] * workers, calls, engine)
    return {"seconds": time.perf_counter() - t0, "rows": rows(db), "errors": errs,
            "integrity": integrity(db)}


@dataclass(frozen=True)
class ExperimentConfig:  # the workflows' Workflow 2 snippet, verbatim shape
    learning_rate: float
    batch_size: int
    dropout: float
    model_name: str = "bert-base"


def train_and_evaluate(config: ExperimentConfig) -> dict:
    time.sleep(0.05)  # some work, so the four runs overlap as real ones do
    return {"f1_score": round(1 - config.learning_rate * 10, 4), "loss": config.dropout}


def workflow_recipe(tmp: Path, engine: str) -> dict:
    """The workflows' 4-thread sweep: each thread a Tracker on the shared file, track()."""
    from xetrack import Tracker

    db = str(tmp / "results" / "experiments.db")
    (tmp / "results").mkdir()
    configs = [ExperimentConfig(1e-3, 16, 0.1), ExperimentConfig(1e-4, 32, 0.1),
               ExperimentConfig(1e-4, 32, 0.2), ExperimentConfig(1e-5, 64, 0.3)]

    def one(config):
        try:
            t = Tracker(db, engine=engine, params={"version": "e0.2.0",
                                                   "model": config.model_name})
            t.track(train_and_evaluate, args=[config])
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        errs = [e for e in pool.map(one, configs) if e]
    return {"runs_landed": rows(Path(db)), "errors": errs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duckdb-reps", type=int, default=None,
                    help="repetitions of the duckdb recipe (default: --reps)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ensure_duckdb_sqlite()  # the duckdb engine must not try to download its extension
    expected = a.workers * a.calls
    out: dict = {"workers": a.workers, "calls": a.calls, "reps": a.reps, "expected": expected,
                 "results": {}}
    for kind in ("threads", "processes"):
        res = {"shard": [], "baseline": [], "duckdb_recipe": []}
        for rep in range(a.reps):
            # alternate the order so neither design always runs on a warmer machine
            order = ("shard", "baseline") if rep % 2 == 0 else ("baseline", "shard")
            for design in order:
                with tempfile.TemporaryDirectory() as d:
                    if design == "shard":
                        r = shard_design(Path(d), kind, a.workers, a.calls)
                    else:
                        r = shared_file(Path(d), kind, a.workers, a.calls, "sqlite", True)
                res[design].append(r)
        for _ in range(a.duckdb_reps if a.duckdb_reps is not None else a.reps):
            with tempfile.TemporaryDirectory() as d:
                try:
                    r = shared_file(Path(d), kind, a.workers, a.calls, "duckdb", False)
                except Exception:
                    r = {"seconds": None, "rows": rows(Path(d) / "shared.db"),
                         "errors": [traceback.format_exc().splitlines()[-1]]}
            res["duckdb_recipe"].append(r)
        out["results"][kind] = res
        s = sum(r["seconds"] for r in res["shard"])
        b = sum(r["seconds"] for r in res["baseline"])
        s_rps = sum(r["rows"] for r in res["shard"]) / s
        b_rps = sum(r["rows"] for r in res["baseline"]) / b
        out.setdefault("summary", {})[kind] = {
            "shard_rows": [r["rows"] for r in res["shard"]],
            "shard_lost": [expected - r["rows"] for r in res["shard"]],
            "shard_seconds": [round(r["seconds"], 3) for r in res["shard"]],
            "shard_merge_seconds": [round(r["merge_s"], 3) for r in res["shard"]],
            "baseline_rows": [r["rows"] for r in res["baseline"]],
            "baseline_seconds": [round(r["seconds"], 3) for r in res["baseline"]],
            "baseline_lost": [expected - r["rows"] for r in res["baseline"]],
            "shard_rows_per_s": round(s_rps),
            "baseline_rows_per_s": round(b_rps),
            "throughput_ratio_shard_vs_baseline": round(s_rps / b_rps, 2),
            "wall_time_ratio_baseline_vs_shard": round(b / s, 2),
            "duckdb_rows": [r["rows"] for r in res["duckdb_recipe"]],
            "duckdb_lost": [expected - r["rows"] for r in res["duckdb_recipe"]],
            "duckdb_failed_workers": [len(r["errors"]) for r in res["duckdb_recipe"]],
            "duckdb_seconds": [round(r["seconds"], 2) if r["seconds"] else None
                               for r in res["duckdb_recipe"]],
            "duckdb_integrity": [r.get("integrity") for r in res["duckdb_recipe"]],
            "baseline_integrity": sorted({r["integrity"] for r in res["baseline"]}),
            "duckdb_errors": sorted({e[:80] for r in res["duckdb_recipe"]
                                     for e in r["errors"]}),
            "baseline_errors": sorted({e[:80] for r in res["baseline"] for e in r["errors"]}),
        }
    recipe = {}
    for engine in ("duckdb", "sqlite"):
        tries = []
        for _ in range(a.reps):
            with tempfile.TemporaryDirectory() as d:
                tries.append(workflow_recipe(Path(d), engine))
        recipe[engine] = {"runs_landed_of_4": [t["runs_landed"] for t in tries],
                          "errors": sorted({e[:90] for t in tries for e in t["errors"]})}
    out["summary"]["workflow2_recipe_4_threads"] = recipe
    if a.json:
        print(json.dumps(out["summary"], indent=1))
    else:
        for kind, s in out["summary"].items():
            print(f"== {kind}: {a.workers} workers x {a.calls} log() = {expected} rows, "
                  f"{a.reps} reps" if kind != "workflow2_recipe_4_threads" else f"== {kind}")
            for k, v in s.items():
                print(f"  {k}: {v}")
    bad = any(x for k in ("threads", "processes") for x in out["summary"][k]["shard_lost"])
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["overhead"]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from sweep_overhead import main as overhead_main

        sys.exit(overhead_main(sys.argv[2:]))
    import logging

    logging.disable(logging.CRITICAL)  # xetrack logs every failed query of the racing writers
    sys.exit(main())
