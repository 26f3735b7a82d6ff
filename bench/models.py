"""model_manager.py costs, as ratios against baselines measured in the same run.

1. Ranking runs: `_evlib.models.load_results` + `_evlib.runs.rank` (aggregate every run's rows by
   track_id, last non-null value) vs the bare `SELECT * FROM "default"` fetch it builds on.
2. Promoting and rolling back a large model: `model_manager.py promote` / `rollback` (one
   read of the source while md5+sha256 are computed and the bytes written to the DVC cache
   and, per cache.type, to model.bin's new copy; the object fsynced; .dvc and ledger
   written; no `dvc add`) vs the workflows' `cp model models/production/model.bin && dvc
   add` for the same bytes, and vs the same plus an fsync of the object (what promote makes
   durable). Wall min/median over interleaved pairs, CPU (user+sys of the process tree),
   peak RSS, load.

    python3 dev.py bench models [--runs 20000] [--model-mb 100 1024] [--rounds 5]
        [--other /path/to/main-worktree] [--skip-rank]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import best_of

ROOT = Path(__file__).resolve().parents[1]
# Byte-compiled modules, as an installed skill has them: without them each start of a
# script recompiles the bundle and the ratios measure the compiler.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.path.insert(0, str(ROOT / "scripts"))

from _evlib import models  # noqa: E402
from _evlib import runs as evruns  # noqa: E402
from _evlib.dvcmeta import first_md5  # noqa: E402

PRODUCTION = "models/production/model.bin"

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def sh(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)


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


def _project(where: Path) -> Path:
    where.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=where)
    sh("dvc", "init", "-q", cwd=where)
    sh("git", "commit", "-qm", "init", cwd=where)
    return where


def _run(*cmd, cwd) -> tuple[float, float, int]:
    """(CPU seconds, user+sys, of cmd's process tree; its peak RSS in KiB): os.wait4 gives
    the rusage of this child and of the children it waited for."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=err)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def _object(repo: Path) -> Path:
    md5 = first_md5((repo / (PRODUCTION + ".dvc")).read_text())
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _stats(xs: list[float]) -> tuple[float, float]:
    return min(xs), statistics.median(xs)


def bench_promote(tmp: Path, mb: int, rounds: int = 5, other: Path | None = None) -> dict:
    """Interleaved, so machine load hits both sides alike: in one project `cp SRC model.bin &&
    dvc add`, in another `promote --model SRC`, for the same distinct sources; then rollbacks
    (ours: `rollback`, from the cache; by hand: cp the previous source + dvc add). `other`:
    a second bundle checkout (e.g. main's) run the same way in a third project, in the same
    interleaving, so before and after are measured under the same load.

    Two baselines: `cp + dvc add` as the workflows run it (DVC never fsyncs: its object may
    be lost or torn by a power cut after the .dvc file says it is there), and the same
    followed by an fsync of the cache object dvc add wrote, which is what promote makes
    durable before it writes model.bin.dvc. The ratios against both are printed."""
    tmp.mkdir(parents=True)
    srcs = []
    for i in range(rounds + 1):
        src = tmp / f"src{i}.bin"
        with open(src, "wb") as fh:  # distinct bytes per model, so every dvc add hashes
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))
        srcs.append(src)
    hand = _project(tmp / "by-hand")
    impls = {"ours": ROOT} | ({"other": other} if other else {})
    repos = {k: _project(tmp / k) for k in impls}
    prod = hand / PRODUCTION
    prod.parent.mkdir(parents=True, exist_ok=True)
    rec: dict[str, dict[str, list]] = {}

    def note(kind, key, wall, cpu, rss=None):
        r = rec.setdefault(kind, {}).setdefault(key, {"wall": [], "cpu": [], "rss": []})
        r["wall"].append(wall)
        r["cpu"].append(cpu)
        if rss is not None:
            r["rss"].append(rss)

    # Each timed step starts with no dirty pages (os.sync, untimed): the baseline leaves its
    # gigabyte unwritten (DVC does not fsync), and the kernel's writeback of it would be
    # charged to whichever step runs next (ours, interleaved). Ours still pays for the fsync
    # of what it must make durable; the durable baseline pays for the same.
    def baseline(kind, src, timed=True):
        os.sync()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        prod.unlink(missing_ok=True)
        shutil.copyfile(src, prod)
        cpu, rss = _run("dvc", "add", "-q", PRODUCTION, cwd=hand)
        wall = time.perf_counter() - t
        fd = os.open(_object(hand), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        durable = time.perf_counter() - t
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu += c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime
        if timed:
            note(kind, "cp_dvc_add", wall, cpu, rss)
            note(kind, "cp_dvc_add_fsync", durable, cpu, rss)

    def ours(kind, key, *args, timed=True):
        os.sync()
        t = time.perf_counter()
        cpu, rss = _run(sys.executable, str(impls[key] / "scripts/model_manager.py"),
                        "--json", *args, cwd=repos[key])
        if timed:
            note(kind, key, time.perf_counter() - t, cpu, rss)

    baseline("promote", srcs[0], timed=False)
    for k in impls:
        ours("promote", k, "promote", "--model", str(srcs[0]), "--reason", "bench",
             timed=False)
    for src in srcs[1:]:
        baseline("promote", src)
        for k in impls:
            ours("promote", k, "promote", "--model", str(src), "--reason", "bench")
    for i in range(rounds):  # back and forth between the last two models
        baseline("rollback", srcs[-2] if i % 2 == 0 else srcs[-1])
        for k in impls:
            if i % 2 == 0:
                ours("rollback", k, "rollback", "--reason", "bench")
            else:
                ours("rollback", k, "rollback", "--to", str(rounds + 1), "--reason", "bench")
    out = {"model_mb": mb, "pairs": rounds, "load_avg": [round(x, 2) for x in os.getloadavg()]}
    for kind, by in rec.items():
        res = {}
        for key, r in by.items():
            wmin, wmed = _stats(r["wall"])
            cmin, cmed = _stats(r["cpu"])
            res[key] = {"wall_min": round(wmin, 2), "wall_median": round(wmed, 2),
                        "cpu_median": round(cmed, 2),
                        "rss_mb": round(max(r["rss"]) / 1024) if r["rss"] else None}
        for key in impls:
            for base in ("cp_dvc_add", "cp_dvc_add_fsync"):
                b, o = res[base], res[key]
                res[f"{key}_vs_{base}"] = {
                    "min": round(o["wall_min"] / b["wall_min"], 2),
                    "median": round(o["wall_median"] / b["wall_median"], 2),
                    "cpu_median": round(o["cpu_median"] / b["cpu_median"], 2)}
        out[kind] = res
    # a cycle: promote i + rollback i, pair by pair
    cyc = {}
    for key in ["cp_dvc_add", "cp_dvc_add_fsync", *impls]:
        w = [p + r for p, r in zip(rec["promote"][key]["wall"], rec["rollback"][key]["wall"],
                                   strict=True)]
        cyc[key] = _stats(w)
    out["cycle"] = {f"{k}_vs_{b}": {"min": round(cyc[k][0] / cyc[b][0], 2),
                                    "median": round(cyc[k][1] / cyc[b][1], 2)}
                    for k in impls for b in ("cp_dvc_add", "cp_dvc_add_fsync")}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--model-mb", type=int, nargs="+", default=[100])
    p.add_argument("--rounds", type=int, default=5, help="interleaved pairs per size")
    p.add_argument("--other", type=Path, help="another checkout of the bundle (e.g. a "
                   "worktree of main) measured in the same interleaving")
    p.add_argument("--skip-rank", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ev-bench-models-") as tmp:
        out = {"rank": [] if a.skip_rank else [bench_rank(Path(tmp), n) for n in a.runs],
               "promote": [bench_promote(Path(tmp) / f"m{mb}", mb, a.rounds, a.other)
                           for mb in a.model_mb]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
