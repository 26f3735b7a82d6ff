"""No leftovers: a merge SIGKILLed at 25 random points, then run again, completes, leaves the
exact result and nothing else in the directory (listed after every re-run)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from _evlib.merge import merge_data, merge_dbs  # noqa: E402

BASE_ROWS, EXP_ROWS = 1_000, 60_000


def _db(path: Path, n: int, offset: int) -> None:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v REAL, pad TEXT, '
                'PRIMARY KEY (track_id, timestamp))')
    con.execute("WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < ?) "
                "INSERT INTO \"default\" SELECT 'r' || (i + ?), 't', i * 0.5, "
                "hex(randomblob(32)) FROM c", (n - 1, offset))
    con.commit()
    con.close()


OPS = {
    "db in place": lambda d: merge_dbs(d / "base.db", [d / "exp.db"], d / "base.db"),
    "db new file": lambda d: merge_dbs(d / "base.db", [d / "exp.db"], d / "out.db", force=True),
    "db dry run": lambda d: merge_dbs(d / "base.db", [d / "exp.db"], d / "base.db",
                                      dry_run=True),
    "parquet in place": lambda d: merge_data(d / "base.parquet", [d / "exp.parquet"],
                                             d / "base.parquet", key_columns=["id"],
                                             on_conflict="keep-base"),  # (x differs)
    "parquet dry run": lambda d: merge_data(d / "base.parquet", [d / "exp.parquet"],
                                            d / "base.parquet", dry_run=True),
}


def _run_killed(op, d: Path, delay: float) -> None:
    pid = os.fork()
    if pid == 0:  # the child: the merge, killed from outside at a random point
        try:
            OPS[op](d)
        finally:
            os._exit(0)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_25_random_kills_leave_nothing_behind(tmp_path):
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    _db(pristine / "base.db", BASE_ROWS, 0)
    _db(pristine / "exp.db", EXP_ROWS, BASE_ROWS)
    pq.write_table(pa.table({"id": range(BASE_ROWS), "x": [0.5] * BASE_ROWS}),
                   pristine / "base.parquet")
    pq.write_table(pa.table({"id": range(EXP_ROWS), "x": [1.5] * EXP_ROWS}),
                   pristine / "exp.parquet")
    d = tmp_path / "work"
    d.mkdir()
    durations = {}
    for op in OPS:  # how long each takes undisturbed: the kills land inside that window
        for p in pristine.iterdir():
            shutil.copy(p, d / p.name)
        t0 = time.perf_counter()
        OPS[op](d)
        durations[op] = time.perf_counter() - t0
        (d / "out.db").unlink(missing_ok=True)
    rng = random.Random(25)
    seen = []
    for i in range(25):
        op = list(OPS)[i % len(OPS)]
        for p in d.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        for p in pristine.iterdir():
            shutil.copy(p, d / p.name)
        _run_killed(op, d, rng.uniform(0, durations[op] * 1.2))
        seen.append(sorted(p.name for p in d.iterdir()))
        rep = OPS[op](d)  # the same command again completes
        listing = sorted(p.name for p in d.iterdir())
        want = ["base.db", "base.parquet", "exp.db", "exp.parquet"]
        if op == "db new file":
            want = sorted([*want, "out.db"])
        assert listing == want, (i, op, listing)
        if op.startswith("db"):
            out = d / ("out.db" if op == "db new file" else "base.db")
            con = sqlite3.connect(out)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = con.execute('SELECT count(*) FROM "default"').fetchone()[0]
            con.close()
            assert n == (BASE_ROWS if op == "db dry run" else EXP_ROWS + BASE_ROWS), (i, op)
        else:
            n = pq.ParquetFile(d / "base.parquet").metadata.num_rows
            assert n == (BASE_ROWS if op == "parquet dry run" else EXP_ROWS), (i, op, rep)
    # The kills did land mid-merge: some runs left litter that the next run removed.
    assert any(len(s) > 4 + 0 for s in seen if "out.db" not in s)
