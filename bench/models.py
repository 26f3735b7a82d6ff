"""model_manager.py costs, as ratios against baselines measured in the same run.

1. Ranking runs: `_evlib.models.load_results` + `_evlib.runs.rank` (aggregate every run's rows by
   track_id, last non-null value) vs the bare `SELECT * FROM "default"` fetch it builds on.
2. Promoting and rolling back a large model: `model_manager.py promote` / `rollback` (one
   read of the source while md5+sha256 are computed into the DVC cache, fsync, model.bin
   made from the object per cache.type, .dvc and ledger written; no `dvc add`) vs the
   workflows' `cp model models/production/model.bin && dvc add` for the same bytes.

    python3 dev.py bench models [--runs 20000] [--model-mb 100 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _evlib import models  # noqa: E402
from _evlib import runs as evruns  # noqa: E402

PRODUCTION = "models/production/model.bin"

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def sh(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)


def best_of(n, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_db(path: Path, runs: int) -> None:
    from xetrack import Tracker

    t = Tracker(str(path), params={"version": "e0.1.0", "model": "toy"})
    t.log({"f1_score": 0.5, "accuracy": 0.5, "epoch": 1})
    t.log({"model_path": "x"})
    con = sqlite3.connect(path)
    cols = [r[1] for r in con.execute('PRAGMA table_info("default")')]
    rows = []
    for i in range(runs):
        base = {c: None for c in cols}
        base.update(track_id=f"run-{i}", version=f"e0.{i % 7}.0", model="toy")
        rows.append({**base, "timestamp": f"2026-01-01 00:00:{i:09d}.0",
                     "f1_score": (i * 7919 % 1000) / 1000, "accuracy": 0.5, "epoch": 3})
        rows.append({**base, "timestamp": f"2026-01-01 00:00:{i:09d}.1",
                     "model_path": f"models/candidates/e0.1.0--run-{i}.pkl"})
    ph = ", ".join("?" for _ in cols)
    con.executemany(f'INSERT INTO "default" VALUES ({ph})', [[r[c] for c in cols] for r in rows])
    con.commit()
    con.close()


def bench_rank(tmp: Path, runs: int) -> dict:
    db = tmp / f"r{runs}.db"
    make_db(db, runs)

    def baseline():
        con = sqlite3.connect(db)
        con.execute('SELECT * FROM "default" ORDER BY timestamp, rowid').fetchall()
        con.close()

    def ours():
        res = models.load_results(db)
        ranked = evruns.rank(list(res.runs.values()), "f1_score", "max")
        assert len(ranked) == runs + 1

    base, mine = best_of(3, baseline), best_of(3, ours)
    return {"runs": runs + 1, "rows": 2 * (runs + 1), "baseline_s": round(base, 3),
            "rank_s": round(mine, 3), "ratio": round(mine / base, 2)}


def bench_promote(tmp: Path, mb: int) -> dict:
    repo = tmp / "proj"
    repo.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("git", "commit", "-qm", "init", cwd=repo)
    from xetrack import Tracker

    ids = []
    for i in range(4):
        t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0"})
        t.log({"f1_score": 0.5 + i / 10})
        cand = repo / f"models/candidates/e0.1.0--{t.track_id}.bin"
        cand.parent.mkdir(parents=True, exist_ok=True)
        with open(cand, "wb") as fh:  # distinct bytes per model, so every dvc add hashes
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))
        ids.append((t.track_id, cand))
    prod = repo / PRODUCTION
    prod.parent.mkdir(parents=True, exist_ok=True)

    def baseline(cand):
        t = time.perf_counter()
        prod.unlink(missing_ok=True)
        shutil.copyfile(cand, prod)
        sh("dvc", "add", "-q", PRODUCTION, cwd=repo)
        return time.perf_counter() - t

    def ours(*args):
        t = time.perf_counter()
        sh(sys.executable, str(ROOT / "scripts/model_manager.py"), "--json", *args, cwd=repo)
        return time.perf_counter() - t

    base = min(baseline(ids[0][1]), baseline(ids[1][1]))
    sh("dvc", "add", "-q", PRODUCTION, cwd=repo)
    prom = min(ours("promote", "--run-id", ids[2][0], "--reason", "bench"),
               ours("promote", "--run-id", ids[3][0], "--reason", "bench"))
    back = min(ours("rollback", "--reason", "bench"),  # -> ids[2] (from the cache)
               ours("rollback", "--to", "2", "--reason", "bench"))  # -> ids[3]
    return {"model_mb": mb, "cp_dvc_add_s": round(base, 2), "promote_s": round(prom, 2),
            "promote_ratio": round(prom / base, 2), "rollback_s": round(back, 2),
            "rollback_ratio": round(back / base, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--model-mb", type=int, nargs="+", default=[100])
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ev-bench-models-") as tmp:
        out = {"rank": [bench_rank(Path(tmp), n) for n in a.runs],
               "promote": [bench_promote(Path(tmp) / f"m{mb}", mb) for mb in a.model_mb]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
