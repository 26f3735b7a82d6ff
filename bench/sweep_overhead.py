"""Overhead of run.py and sweep.py over the bare command (issues #14 and #18).

(a) run.py: one run of a training command vs running it directly (same command, same
    project): the seed-like xetrack script, and a one-row command;
(b) sweep.py: N runs of a one-row command (N = 1, 50, 200) vs `xargs -P W` running the same
    commands into separate DBs: ratio and overhead per run;
(c) #18: 1,000 runs of a ~5 ms command (the sqlite3 CLI inserting one row) vs `xargs -P 2`,
    as --pairs interleaved samples (each pair: xargs, this checkout's sweep and, with --old,
    another checkout's sweep, in a rotating order, each in a fresh project): the ratio's
    min/median/worst, the overhead per run (ms) and CPU time (user+sys): the sweep process's
    own and its whole tree's (the commands included), against xargs' tree.

    python bench/sweep.py overhead [--runs 1,50,200] [--big 1000] [--workers 2] [--reps 3]
        [--cases abc] [--pairs 5] [--old /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Byte-compiled modules, as an installed skill has them: without them each start of a
# script recompiles the bundle and the ratios measure the compiler.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
SCRIPTS = ROOT / "scripts"
PY = sys.executable

ONE_ROW = r'''
import sqlite3, sys, time, uuid
db, x = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db)
con.execute('CREATE TABLE IF NOT EXISTS "default" (track_id TEXT, timestamp TEXT, x TEXT, '
            'f1_score REAL)')
con.execute('INSERT INTO "default" VALUES (?, ?, ?, ?)',
            (uuid.uuid4().hex[:12], repr(time.time()), x, 0.5))
con.commit()
'''
SQL = ('CREATE TABLE IF NOT EXISTS "default" (track_id TEXT, timestamp TEXT, x TEXT, '
       'f1_score REAL); INSERT INTO "default" VALUES (lower(hex(randomblob(6))), '
       "strftime('%Y-%m-%d %H:%M:%f','now'), '{x}', 0.5);")


def sh(cmd, cwd, env=None, check=True):
    e = dict(os.environ, DVC_NO_ANALYTICS="1", **(env or {}))
    cp = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise SystemExit(f"{cmd[:4]} exited {cp.returncode}: {cp.stderr[-800:]}")
    return cp


def project(base: Path) -> Path:
    p = base / "proj"
    p.mkdir(parents=True)
    for c in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "b@x"],
              ["git", "config", "user.name", "b"], ["dvc", "init", "-q"]):
        sh(c, p)
    (p / "data").mkdir()
    (p / "data/train.csv").write_text("x\n" + "\n".join(map(str, range(100))) + "\n")
    sh(["dvc", "add", "-q", "data/train.csv"], p)
    (p / "one_row.py").write_text(ONE_ROW)
    (p / "results").mkdir()
    (p / ".gitignore").write_text("shards/\n/.ev/\n/out/\n")
    sh(["git", "add", "-A"], p)
    sh(["git", "commit", "-qm", "init"], p)
    return p


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best(fn, reps: int) -> float:
    return min(timed(fn) for _ in range(reps))


def reset(p: Path) -> None:
    for d in ("results", ".ev", "out", "models"):
        shutil.rmtree(p / d, ignore_errors=True)
    (p / "results").mkdir()


def xargs(p: Path, n: int, workers: int, cmd: str) -> None:
    (p / "out").mkdir(exist_ok=True)
    seq = "\n".join(str(i) for i in range(n)) + "\n"
    subprocess.run(["xargs", "-P", str(workers), "-I{}", "sh", "-c", cmd], cwd=p, input=seq,
                   text=True, check=True, capture_output=True)


def sweep(p: Path, n: int, workers: int, command: list[str], version: str,
          scripts: Path = SCRIPTS) -> None:
    grid = p.parent / f"grid-{n}.yaml"
    grid.write_text("x: [" + ", ".join(str(i) for i in range(n)) + "]\n")
    sh([PY, str(scripts / "sweep.py"), "--json", "--version", version, "--grid", str(grid),
        "--workers", str(workers), "--metric", "f1_score", "--", *command], p)


# Runs a script as __main__ and writes its own CPU time (user, sys; all its threads, not its
# children) to a file at exit: the sweep process's share of the tree's CPU.
SELF_CPU = ("import atexit, resource, runpy, sys\n"
            "out = sys.argv.pop(1)\n"
            "def _w():\n"
            "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    open(out, 'w').write(repr(r.ru_utime + r.ru_stime))\n"
            "atexit.register(_w)\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sample(fn) -> tuple[float, float]:
    """(wall s, CPU s of the process tree fn started and waited for)."""
    c0, t0 = children_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, children_cpu() - c0


def sweep_sample(q: Path, n: int, workers: int, version: str, scripts: Path) -> dict:
    grid = q.parent / f"grid-{q.name}.yaml"
    grid.write_text("x: [" + ", ".join(str(i) for i in range(n)) + "]\n")
    own = q.parent / f"cpu-{q.name}"
    cmd = [PY, "-c", SELF_CPU, str(own), str(scripts / "sweep.py"), "--json", "--version",
           version, "--grid", str(grid), "--workers", str(workers), "--metric", "f1_score",
           "--", "sqlite3", "results/experiments.db", SQL]
    wall, tree = sample(lambda: sh(cmd, q))
    return {"wall": wall, "tree_cpu": tree, "self_cpu": float(own.read_text())}


def spread(xs: list[float], nd: int = 2) -> dict:
    return {"min": round(min(xs), nd), "median": round(statistics.median(xs), nd),
            "worst": round(max(xs), nd)}


def big_pairs(tmp: Path, n: int, workers: int, pairs: int, old: Path | None) -> dict:
    """Case (c) as interleaved samples (see the module doc)."""
    cmd = f"sqlite3 out/run-{{}}.db \"{SQL.replace('{x}', '{}').replace(chr(34), chr(92) + chr(34))}\""
    sides = ["xargs", "sweep"] + (["old"] if old else [])
    got: dict[str, list] = {s: [] for s in sides}
    for i in range(pairs):
        order = sides[i % len(sides):] + sides[:i % len(sides)]  # no side always first
        for side in order:
            # A fresh project per sample, nothing deleted until the end (see below).
            q = project(tmp / f"pair{i}-{side}")
            if side == "xargs":
                w, c = sample(lambda q=q: xargs(q, n, workers, cmd))
                got[side].append({"wall": w, "tree_cpu": c})
            else:
                got[side].append(sweep_sample(q, n, workers, f"p{i}",
                                              SCRIPTS if side == "sweep" else old / "scripts"))
    out: dict = {"runs": n, "pairs": pairs, "workers": workers,
                 "load_avg": [round(x, 2) for x in os.getloadavg()],
                 "xargs_s": spread([g["wall"] for g in got["xargs"]], 3),
                 "xargs_tree_cpu_s": spread([g["tree_cpu"] for g in got["xargs"]], 3)}
    for side in sides[1:]:
        xs = got["xargs"]
        out[side] = {
            "checkout": str(ROOT if side == "sweep" else old),
            "sweep_s": spread([g["wall"] for g in got[side]], 3),
            "ratio": spread([g["wall"] / x["wall"] for g, x in zip(got[side], xs, strict=True)]),
            "overhead_per_run_ms": spread([(g["wall"] - x["wall"]) / n * 1000
                                           for g, x in zip(got[side], xs, strict=True)]),
            "self_cpu_s": spread([g["self_cpu"] for g in got[side]], 3),
            "tree_cpu_s": spread([g["tree_cpu"] for g in got[side]], 3),
            "extra_cpu_per_run_ms": spread([(g["tree_cpu"] - x["tree_cpu"]) / n * 1000
                                            for g, x in zip(got[side], xs, strict=True)])}
    if old:
        out["new_over_old"] = spread([g["wall"] / o["wall"] for g, o in
                                      zip(got["sweep"], got["old"], strict=True)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="1,50,200")
    ap.add_argument("--big", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="abc", help="which of (a), (b), (c) to run")
    ap.add_argument("--pairs", type=int, default=0, metavar="N",
                    help="case (c) as N interleaved xargs/sweep samples (min/median/worst)")
    ap.add_argument("--old", type=Path, default=None, metavar="CHECKOUT",
                    help="with --pairs: also time the sweep of this checkout (e.g. a detached "
                         "worktree of main) in the same pairs")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.old and not (a.old / "scripts" / "sweep.py").is_file():
        ap.error(f"--old {a.old}: no scripts/sweep.py there")
    out: dict = {"workers": a.workers, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ev-bench-sweep-") as tmp:
        p = project(Path(tmp))
        if "c" in a.cases and a.pairs and a.big and shutil.which("sqlite3"):
            out["sweep_1000_sqlite3_pairs"] = big_pairs(Path(tmp), a.big, a.workers, a.pairs,
                                                        a.old)
        # (a) run.py vs the command directly
        if "a" in a.cases:
            direct = best(lambda: sh([PY, "one_row.py", "results/experiments.db", "1"], p), a.reps)
            reset(p)
            wrapped = best(lambda: sh([PY, str(SCRIPTS / "run.py"), "--json", "--version", "r1",
                                       "--", PY, "one_row.py", "results/experiments.db", "1"], p),
                           a.reps)
            reset(p)
            out["run_py"] = {"command_s": round(direct, 4), "run_py_s": round(wrapped, 4),
                             "overhead_s": round(wrapped - direct, 4),
                             "ratio": round(wrapped / direct, 2)}
            try:
                import xetrack  # noqa: F401
                (p / "train_x.py").write_text(
                    "import sys\nfrom xetrack import Tracker\n"
                    "t = Tracker('results/experiments.db', params={'version': sys.argv[1]})\n"
                    "t.log({'f1_score': 0.5})\n")
                d2 = best(lambda: sh([PY, "train_x.py", "r2"], p), a.reps)
                reset(p)
                w2 = best(lambda: sh([PY, str(SCRIPTS / "run.py"), "--version", "r2", "--", PY,
                                      "train_x.py", "r2"], p), a.reps)
                reset(p)
                out["run_py_xetrack"] = {"command_s": round(d2, 4), "run_py_s": round(w2, 4),
                                         "overhead_s": round(w2 - d2, 4),
                                         "ratio": round(w2 / d2, 2)}
            except ImportError:
                pass
        if "b" in a.cases:
            # (b) sweeps of a one-row python command vs xargs -P
            rows = []
            for n in [int(x) for x in a.runs.split(",")]:
                base = best(lambda n=n: (reset(p), xargs(
                    p, n, a.workers, f'{PY} one_row.py out/run-{{}}.db {{}}')), a.reps)
                swept = []
                for r in range(a.reps):
                    reset(p)
                    swept.append(timed(lambda n=n, r=r: sweep(
                        p, n, a.workers, [PY, "one_row.py", "results/experiments.db", "{x}"],
                        f"b{n}-{r}")))
                s_ = min(swept)
                rows.append({"runs": n, "xargs_s": round(base, 3), "sweep_s": round(s_, 3),
                             "ratio": round(s_ / base, 2),
                             "overhead_per_run_ms": round((s_ - base) / n * 1000, 2)})
            out["sweep_one_row_python"] = rows
        # (c) 1,000 runs of a ~5 ms command (sqlite3 CLI)
        if "c" in a.cases and not a.pairs and a.big and shutil.which("sqlite3"):
            n = a.big
            one = best(lambda: sh(["sqlite3", "out1.db", SQL.replace("{x}", "1")], p), 5)
            reset(p)
            cmd = f"sqlite3 out/run-{{}}.db \"{SQL.replace('{x}', '{}').replace(chr(34), chr(92) + chr(34))}\""
            bases, sweeps = [], []
            for r in range(max(1, min(a.reps, 2))):  # interleaved: load changes hit both
                # A fresh project per repetition, and nothing deleted until the end: ext4
                # makes every file created near many just-deleted ones slower (it skips
                # inodes freed in the last minute), which would bias whichever side runs
                # after a clean-up.
                q = project(Path(tmp) / f"big{r}")
                bases.append(timed(lambda q=q: xargs(q, n, a.workers, cmd)))
                sweeps.append(timed(lambda q=q, r=r: sweep(
                    q, n, a.workers, ["sqlite3", "results/experiments.db", SQL], f"big{r}")))
            base, s_ = min(bases), min(sweeps)
            out["sweep_1000_sqlite3"] = {"runs": n, "command_ms": round(one * 1000, 2),
                                         "xargs_s": round(base, 3), "sweep_s": round(s_, 3),
                                         "ratio": round(s_ / base, 2),
                                         "overhead_per_run_ms": round((s_ - base) / n * 1000,
                                                                      2)}
    if a.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
