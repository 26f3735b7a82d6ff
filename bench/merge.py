#!/usr/bin/env python3
"""Benchmark merge_artifacts.py against plain baselines run in the same process.

    python3 dev.py bench merge [--reps N] [--keep DIR]

1. DB merge: 10 experiment DBs x 50,000 rows x 20 columns into a 50,000-row base, vs a plain
   sqlite3 ATTACH + INSERT OR IGNORE ... SELECT in one transaction (on a copy of the base).
   Targets: <= 1.3x the baseline's time, peak RSS < 100 MB.
2. Parquet rebase: 2,000,000 base rows + 200,000 experiment rows on an int key, vs a single
   DuckDB COPY with an anti-join. Target: <= 1.3x.

Each side runs as its own subprocess (CLI start-up included on both sides); the time is the
median of --reps runs, peak memory is that child's ru_maxrss (os.wait4).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "merge_artifacts.py"
N_EXP, N_ROWS, N_COLS = 10, 50_000, 20
PQ_BASE, PQ_EXP = 2_000_000, 200_000


def run_child(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"bench: {cmd[:3]} failed ({p.returncode}): {err.strip()}")
    return dt, ru.ru_maxrss / 1024  # Linux: KiB


def make_db(path: Path, n: int, offset: int) -> None:
    cols = ", ".join(f"c{i} REAL" if i % 2 else f"c{i} TEXT" for i in range(N_COLS - 2))
    vals = ", ".join("i * 0.25" if i % 2 else "'v' || (i % 97)" for i in range(N_COLS - 2))
    con = sqlite3.connect(path)
    con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, {cols}, '
                'PRIMARY KEY (track_id, timestamp))')
    con.execute(f"WITH RECURSIVE s(i) AS (SELECT {offset} UNION ALL SELECT i + 1 FROM s "
                f"WHERE i < {offset + n - 1}) INSERT INTO \"default\" SELECT 'run-' || (i / 5), "
                f"'2026-01-01 00:00:' || i, {vals} FROM s")
    for t in ("assets", "keys", "counts"):
        con.execute(f'CREATE TABLE "{t}" (key TEXT PRIMARY KEY, value BLOB)')
    con.commit()
    con.close()


BASELINE_DB = textwrap.dedent("""
    import shutil, sqlite3, sys
    base, out, exps = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.copyfile(base, out)
    con = sqlite3.connect(out, isolation_level=None)
    con.execute("BEGIN")
    for i, e in enumerate(exps):
        con.execute(f"ATTACH DATABASE ? AS e{i}", (e,))
        con.execute(f'INSERT OR IGNORE INTO "default" SELECT * FROM e{i}."default"')
    con.execute("COMMIT")
""")

BASELINE_PQ = textwrap.dedent("""
    import duckdb, sys
    base, exp, out = sys.argv[1:4]
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet('{base}') AS b ANTI JOIN read_parquet('{exp}') AS e "
        f"USING (id) UNION ALL SELECT * FROM read_parquet('{exp}')) TO '{out}' (FORMAT parquet)")
""")


def bench_db(work: Path, reps: int) -> dict:
    base = work / "base.db"
    make_db(base, N_ROWS, 0)
    exps = []
    for i in range(N_EXP):
        e = work / f"exp{i}.db"
        make_db(e, N_ROWS, (i + 1) * N_ROWS)
        exps.append(str(e))
    py = sys.executable
    tool, plain = [], []
    for _ in range(reps):
        for side in ("plain", "tool"):
            out = work / f"out-{side}.db"
            out.unlink(missing_ok=True)
            if side == "plain":
                plain.append(run_child([py, "-c", BASELINE_DB, str(base), str(out), *exps], work))
            else:
                shutil.copyfile(base, out)  # the tool merges into its base in place
                tool.append(run_child([py, str(SCRIPT), "--repo", str(ROOT), "--base-db",
                                       str(out), "--exp-db", *exps], work))
    rows = sqlite3.connect(work / "out-tool.db").execute('SELECT count(*) FROM "default"'
                                                         ).fetchone()[0]
    assert rows == N_ROWS * (N_EXP + 1), rows
    return _summary("db merge", tool, plain)


def bench_parquet(work: Path, reps: int) -> dict:
    import duckdb

    base, exp = work / "base.parquet", work / "exp.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT i::BIGINT AS id, (i * 0.5)::DOUBLE AS x, 'text-' || (i % 1000) AS s, "
                f"i % 7 AS label FROM range({PQ_BASE}) t(i)) TO '{base}' (FORMAT parquet)")
    # Half of the experiment's keys replace base rows, half are new.
    con.execute(f"COPY (SELECT (i * 2 + {PQ_BASE - PQ_EXP})::BIGINT AS id, -1.0::DOUBLE AS x, "
                f"'exp' AS s, 9 AS label FROM range({PQ_EXP}) t(i)) TO '{exp}' "
                f"(FORMAT parquet)")
    con.close()
    py = sys.executable
    tool, plain = [], []
    for _ in range(reps):
        for side in ("plain", "tool"):
            out = work / f"out-{side}.parquet"
            out.unlink(missing_ok=True)
            if side == "plain":
                plain.append(run_child([py, "-c", BASELINE_PQ, str(base), str(exp), str(out)],
                                       work))
            else:
                tool.append(run_child([py, str(SCRIPT), "--repo", str(ROOT), "--strategy",
                                       "rebase", "--base-data", str(base), "--exp-data",
                                       str(exp), "--key-columns", "id", "--output-data",
                                       str(out)], work))
    import pyarrow.parquet as pq

    n_tool = pq.read_metadata(work / "out-tool.parquet").num_rows
    n_plain = pq.read_metadata(work / "out-plain.parquet").num_rows
    assert n_tool == n_plain == PQ_BASE + PQ_EXP // 2, (n_tool, n_plain)
    return _summary("parquet rebase", tool, plain)


def _summary(name: str, tool: list, plain: list) -> dict:
    t = statistics.median(x[0] for x in tool)
    b = statistics.median(x[0] for x in plain)
    return {"name": name, "tool_s": t, "baseline_s": b, "ratio": t / b,
            "tool_peak_mb": max(x[1] for x in tool), "baseline_peak_mb": max(x[1] for x in plain)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and leave the files there")
    ap.add_argument("--only", choices=("db", "parquet"))
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        if args.only in (None, "db"):
            results.append(bench_db(work, args.reps))
        if args.only in (None, "parquet"):
            results.append(bench_parquet(work, args.reps))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    targets = {"db merge": (1.3, 100), "parquet rebase": (1.3, None)}
    for r in results:
        ratio_max, mem_max = targets[r["name"]]
        verdict = "ok" if r["ratio"] <= ratio_max and (
            mem_max is None or r["tool_peak_mb"] < mem_max) else "OVER TARGET"
        print(f"{r['name']}: tool {r['tool_s']:.2f} s vs baseline {r['baseline_s']:.2f} s = "
              f"{r['ratio']:.2f}x (target <= {ratio_max}x); peak RSS tool "
              f"{r['tool_peak_mb']:.0f} MB, baseline {r['baseline_peak_mb']:.0f} MB"
              + (f" (target < {mem_max} MB)" if mem_max else "") + f": {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
