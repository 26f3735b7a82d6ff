#!/usr/bin/env python3
"""Benchmark merge_artifacts.py against plain baselines run in the same process.

    python3 dev.py bench merge [--reps N] [--keep DIR] [--only db|small|parquet|keyed]
                               [--big-mb MB] [--keyed-base ROWS] [--keyed-exp ROWS]

1. DB merge, 10 experiment DBs x 50,000 and x 500,000 rows (20 columns) into a base of the
   same size, in place, vs plain sqlite3 ATTACH + INSERT OR IGNORE ... SELECT in one
   transaction (also in place, on an identical copy). Target <= 1.15x.
2. The same merge again (every row present: adds nothing). Target <= 1.5x.
3. One 50-row DB into a large base (--big-mb, default 300 MB) in place vs the same baseline.
   Target <= 2x (the cost is the input's, not the base's).
4. Parquet keyless merge of 1, 10 and 100 experiment files (5,000 rows each, half new) into a
   100,000-row base vs a plain pyarrow read + concat_tables + write of the same files.
   Reported per size: N files should cost O(total rows).
5. Parquet keyed merge (--key-columns id) of one file (--keyed-exp rows, default 250,000: half
   already in the base with the same values, half new) into a --keyed-base row base (default
   1,000,000) vs DuckDB COPY of the base UNION ALL the experiment's rows anti-joined on id.
Peak RSS of every side is reported; target < 1.5x the baseline's.

Each side runs as its own subprocess (CLI start-up included on both sides), in interleaved
pairs (baseline, tool, baseline, tool, ...); the time is the median (and min) of --reps runs,
CPU is the child's user + sys (os.wait4, less sensitive to other load), peak memory its
ru_maxrss.
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
# Byte-compiled modules, as an installed skill has them: without them each start of a
# script recompiles the bundle and the ratios measure the compiler.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
SCRIPT = ROOT / "scripts" / "merge_artifacts.py"
N_EXP, N_COLS = 10, 20
PQ_BASE, PQ_FILE = 100_000, 5_000


def run_child(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + sys) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"bench: {cmd[:3]} failed ({p.returncode}): {err.strip()}")
    return dt, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime  # Linux: KiB


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
    import sqlite3, sys
    out, exps = sys.argv[1], sys.argv[2:]
    con = sqlite3.connect(out, isolation_level=None)
    con.execute("BEGIN")
    for i, e in enumerate(exps):
        con.execute(f"ATTACH DATABASE ? AS e{i}", (e,))
        con.execute(f'INSERT OR IGNORE INTO "default" SELECT * FROM e{i}."default"')
    con.execute("COMMIT")
""")

BASELINE_PQ = textwrap.dedent("""
    import sys
    import pyarrow as pa, pyarrow.parquet as pq
    out, files = sys.argv[1], sys.argv[2:]
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in files]), out)
""")


def _pair(work: Path, reps: int, prep, plain_cmd, tool_cmd) -> tuple[list, list]:
    tool, plain = [], []
    for _ in range(reps):
        for side in ("plain", "tool"):
            out = prep(side)
            cmd = plain_cmd(out) if side == "plain" else tool_cmd(out)
            (plain if side == "plain" else tool).append(run_child(cmd, work))
    return tool, plain


def bench_db(work: Path, reps: int, n_rows: int) -> list[dict]:
    base = work / f"base-{n_rows}.db"
    make_db(base, n_rows, 0)
    exps = []
    for i in range(N_EXP):
        e = work / f"exp{i}-{n_rows}.db"
        make_db(e, n_rows, (i + 1) * n_rows)
        exps.append(str(e))
    py = sys.executable

    def prep(side):
        out = work / f"out-{side}.db"
        shutil.copyfile(base, out)
        return out

    def prep_again(side):
        return work / f"out-{side}.db"  # already merged: the same merge adds nothing

    def plain_cmd(out):
        return [py, "-c", BASELINE_DB, str(out), *exps]

    def tool_cmd(out):
        return [py, str(SCRIPT), "--repo", str(ROOT), "--base-db", str(out), "--exp-db", *exps]

    first = _pair(work, reps, prep, plain_cmd, tool_cmd)
    con = sqlite3.connect(work / "out-tool.db")
    rows = con.execute('SELECT count(*) FROM "default"').fetchone()[0]
    con.close()  # an open connection is a live reader: the tool would refuse a big merge
    assert rows == n_rows * (N_EXP + 1), rows
    again = _pair(work, reps, prep_again, plain_cmd, tool_cmd)
    size = f"{N_EXP} x {n_rows:,} rows"
    return [_summary(f"db merge {size}", *first, 1.15),
            _summary(f"db re-merge (adds nothing) {size}", *again, 1.5)]


def bench_small_into_big(work: Path, reps: int, big_mb: int) -> dict:
    base = work / "big.db"
    n = big_mb * 1_000_000 // 330  # ~330 bytes per row with make_db's 20 columns + index
    make_db(base, n, 0)
    small = work / "small.db"
    make_db(small, 50, n)
    mb = base.stat().st_size / 1e6
    py = sys.executable
    outs = {s: work / f"big-{s}.db" for s in ("plain", "tool")}
    for o in outs.values():
        shutil.copyfile(base, o)
    base.unlink()
    state = {"n": 0}

    def prep(side):
        # A fresh 50-row input each time (new keys), so every run adds 50 rows.
        state["n"] += 1
        return outs[side]

    def plain_cmd(out):
        e = work / f"small-{state['n']}-p.db"
        make_db(e, 50, n + 1000 * state["n"])
        return [py, "-c", BASELINE_DB, str(out), str(e)]

    def tool_cmd(out):
        e = work / f"small-{state['n']}-t.db"
        make_db(e, 50, n + 1000 * state["n"])
        return [py, str(SCRIPT), "--repo", str(ROOT), "--base-db", str(out), "--exp-db", str(e)]

    res = _pair(work, reps, prep, plain_cmd, tool_cmd)
    return _summary(f"db 50 rows into a {mb:.0f} MB base in place", *res, 2.0)


def bench_parquet(work: Path, reps: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(lo, n):
        ids = pa.array(range(lo, lo + n), pa.int64())
        return pa.table({"id": ids, "x": pa.compute.multiply(ids.cast(pa.float64()), 0.5),
                         "s": pa.array([f"text-{i % 1000}" for i in range(lo, lo + n)]),
                         "label": pa.compute.bit_wise_and(ids, 7)})

    base = work / "base.parquet"
    pq.write_table(table(0, PQ_BASE), base)
    out = []
    py = sys.executable
    for n_files in (1, 10, 100):
        files = []
        for i in range(n_files):
            f = work / f"pq{n_files}-{i}.parquet"
            # half of each file's rows are already in the base, half are new
            pq.write_table(pa.concat_tables([table(i * PQ_FILE // 2 % PQ_BASE, PQ_FILE // 2),
                                             table(PQ_BASE + i * PQ_FILE, PQ_FILE // 2)]), f)
            files.append(str(f))

        def prep(side, n_files=n_files):
            o = work / f"out-{side}-{n_files}.parquet"
            o.unlink(missing_ok=True)
            return o

        res = _pair(work, reps, prep,
                    lambda o, files=files: [py, "-c", BASELINE_PQ, str(o), str(base), *files],
                    lambda o, files=files: [py, str(SCRIPT), "--repo", str(ROOT), "--base-data",
                                            str(base), "--exp-data", *files, "--output-data",
                                            str(o)])
        n_tool = pq.read_metadata(work / f"out-tool-{n_files}.parquet").num_rows
        assert n_tool == PQ_BASE + n_files * PQ_FILE // 2, n_tool
        out.append(_summary(f"parquet keyless merge, {n_files} file(s) x {PQ_FILE:,} rows "
                            f"into {PQ_BASE:,}", *res, None))
    return out


BASELINE_KEYED = textwrap.dedent("""
    import sys
    import duckdb
    out, base, exp = sys.argv[1:4]
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{base}') UNION ALL SELECT e.* FROM "
                f"read_parquet('{exp}') e ANTI JOIN read_parquet('{base}') b USING (id)) "
                f"TO '{out}' (FORMAT parquet)")
""")


def bench_keyed(work: Path, reps: int, n_base: int, n_exp: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def table(lo, n):
        ids = pa.array(range(lo, lo + n), pa.int64())
        return pa.table({"id": ids, "x": pc.multiply(ids.cast(pa.float64()), 0.5),
                         "s": pc.binary_join_element_wise(
                             "text-", pc.cast(pc.bit_wise_and(ids, 1023), pa.string()), ""),
                         "label": pc.bit_wise_and(ids, 7)})

    base, exp = work / "keyed-base.parquet", work / "keyed-exp.parquet"
    with pq.ParquetWriter(base, table(0, 1).schema) as w:
        for lo in range(0, n_base, 1_000_000):
            w.write_table(table(lo, min(1_000_000, n_base - lo)))
    # half of the experiment's rows are base rows (same values, every 2nd id), half new
    half = n_exp // 2
    assert 2 * half <= n_base, "--keyed-exp must be at most twice --keyed-base"
    old = pc.take(table(0, 2 * half), pa.array(range(0, 2 * half, 2)))
    pq.write_table(pa.concat_tables([old, table(n_base, n_exp - half)]), exp)
    py = sys.executable

    def prep(side):
        o = work / f"keyed-out-{side}.parquet"
        o.unlink(missing_ok=True)
        return o

    res = _pair(work, reps, prep,
                lambda o: [py, "-c", BASELINE_KEYED, str(o), str(base), str(exp)],
                lambda o: [py, str(SCRIPT), "--repo", str(ROOT), "--base-data", str(base),
                           "--exp-data", str(exp), "--key-columns", "id", "--output-data",
                           str(o)])
    for side in ("plain", "tool"):
        n = pq.read_metadata(work / f"keyed-out-{side}.parquet").num_rows
        assert n == n_base + n_exp - half, (side, n)
    mb = base.stat().st_size / 1e6
    return _summary(f"parquet keyed merge, {n_exp:,} rows (half new) into {n_base:,} "
                    f"({mb:.0f} MB)", *res, None)


def _summary(name: str, tool: list, plain: list, target) -> dict:
    t = statistics.median(x[0] for x in tool)
    b = statistics.median(x[0] for x in plain)
    return {"name": name, "tool_s": t, "baseline_s": b, "ratio": t / b, "target": target,
            "min_ratio": min(x[0] for x in tool) / min(x[0] for x in plain),
            "cpu_ratio": statistics.median(x[2] for x in tool)
            / statistics.median(x[2] for x in plain), "n": len(tool),
            "tool_peak_mb": max(x[1] for x in tool), "baseline_peak_mb": max(x[1] for x in plain)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and leave the files there")
    ap.add_argument("--only", choices=("db", "db-large", "small", "parquet", "keyed"))
    ap.add_argument("--big-mb", type=int, default=300, help="size of the large base (MB)")
    ap.add_argument("--keyed-base", type=int, default=1_000_000, help="keyed merge base rows")
    ap.add_argument("--keyed-exp", type=int, default=250_000, help="keyed merge input rows")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        if args.only in (None, "db"):
            results += bench_db(work, args.reps, 50_000)
        if args.only in (None, "db-large"):
            results += bench_db(work, args.reps, 500_000)
        if args.only in (None, "small"):
            results.append(bench_small_into_big(work, args.reps, args.big_mb))
        if args.only in (None, "parquet"):
            results += bench_parquet(work, args.reps)
        if args.only in (None, "keyed"):
            results.append(bench_keyed(work, args.reps, args.keyed_base, args.keyed_exp))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for r in results:
        target = r["target"]
        mem_ok = r["tool_peak_mb"] < 1.5 * r["baseline_peak_mb"]
        verdict = ("" if target is None else
                   ": ok" if r["ratio"] <= target and mem_ok else ": OVER TARGET")
        print(f"{r['name']}: tool {r['tool_s']:.2f} s vs baseline {r['baseline_s']:.2f} s = "
              f"{r['ratio']:.2f}x" + (f" (target <= {target}x)" if target else "")
              + f" [min {r['min_ratio']:.2f}x, CPU {r['cpu_ratio']:.2f}x, {r['n']} pairs]"
              + f"; peak RSS tool {r['tool_peak_mb']:.0f} MB, baseline "
              f"{r['baseline_peak_mb']:.0f} MB ({r['tool_peak_mb'] / r['baseline_peak_mb']:.2f}x, "
              f"target < 1.5x){verdict}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
