#!/usr/bin/env python3
"""Benchmark: the same sweep on the local executor (--workers 2) and on a local Dask cluster
(2 workers, 1 thread each, on 127.0.0.1), as ratios measured in this one process.

A 16-run grid of a command that sleeps 2 s and logs one xetrack row and writes a small model.
Reports: wall time of each sweep and their ratio (dask / local); the Dask path's per-run
overhead (a task's time on its worker minus the command's own time, plus landing its files
here; time queued for a free worker is not overhead) against the local path's (its wall time
per run slot minus the command's time), as ratios to the command's time;
checkout reuse (runs that reused their worker's checkout) and the setup time of a first vs a
reused checkout.

    python bench/sweep_dask.py [--runs 16] [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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
SWEEP = ROOT / "scripts" / "sweep.py"
BIN = Path(sys.executable).parent
TRAIN = '''\
import sys, time
from pathlib import Path
from xetrack import Tracker
lr, secs = float(sys.argv[1]), float(sys.argv[2])
time.sleep(secs)
Path("models/production").mkdir(parents=True, exist_ok=True)
Path("models/production/model.bin").write_bytes(b"w" * 4096)
Tracker("results/experiments.db", params={"lr": lr}).log({"f1_score": 1 - lr})
'''


def sh(cmd, cwd=None, env=None):
    e = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=e, check=True, text=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(root: Path) -> Path:
    proj, gitr, dvcr = root / "proj", root / "git.git", root / "dvc"
    proj.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=proj)
    sh(["git", "config", "user.name", "bench"], cwd=proj)
    sh(["git", "config", "user.email", "bench@example.com"], cwd=proj)
    sh(["git", "init", "-q", "--bare", str(gitr)])
    sh(["git", "remote", "add", "origin", str(gitr)], cwd=proj)
    sh(["dvc", "init", "-q"], cwd=proj)
    sh(["dvc", "remote", "add", "-d", "storage", str(dvcr)], cwd=proj)
    (proj / "train.py").write_text(TRAIN)
    (proj / "data").mkdir()
    (proj / "data" / "train.csv").write_text("x,y\n1,0\n")
    sh(["dvc", "add", "-q", "data/train.csv"], cwd=proj)
    sh(["git", "add", "-A"], cwd=proj)
    sh(["git", "commit", "-qm", "bench"], cwd=proj)
    sh(["git", "push", "-q", "origin", "main"], cwd=proj)
    sh(["dvc", "push", "-q"], cwd=proj)
    return proj


def sweep(proj: Path, version: str, grid: Path, secs: float, extra: list[str]) -> tuple:
    t0 = time.perf_counter()
    cp = subprocess.run([sys.executable, str(SWEEP), "--json", "--version", version, "--grid",
                         str(grid), "--model-output", "models/production/model.bin", *extra,
                         "--", "python", "train.py", "{lr}", str(secs)],
                        cwd=proj, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    if cp.returncode != 0:
        raise SystemExit(f"sweep {version} failed: {cp.stderr.strip().splitlines()[-1:]}")
    return wall, json.loads(cp.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ev-bench-dask-"))
    procs: list[subprocess.Popen] = []
    try:
        proj = project(root)
        grid = root / "grid.yaml"
        grid.write_text("lr: [" + ", ".join(f"{i / 1000:.3f}" for i in range(1, a.runs + 1))
                        + "]\n")
        local_wall, _ = sweep(proj, "local", grid, a.seconds, ["--workers", "2"])

        port = free_port()
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        log = open(root / "cluster.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0"], env=env, stdout=log, stderr=log))
        for i in range(2):
            d = root / f"worker-{i}"
            d.mkdir()
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--dashboard-address", "127.0.0.1:0", "--nthreads", "1", "--no-nanny",
                 "--local-directory", str(d)], cwd=d, env={**env, "EV_DASK_DIR": str(d)},
                stdout=log, stderr=log))
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        dask_wall, rep = sweep(proj, "dask", grid, a.seconds,
                               ["--executor", "dask", "--scheduler", f"127.0.0.1:{port}"])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)

    runs = rep["runs"]
    cmd = [r["timing"]["command_s"] for r in runs]
    # on the worker (checkout/pull, sandbox, shipping) plus landing here; not queue time
    dask_over = [r["timing"]["total_s"] - r["timing"]["command_s"] + r["timing"]["landing_s"]
                 for r in runs]
    local_over = max(local_wall * 2 / a.runs - statistics.mean(cmd), 0.0)
    first = [r["timing"]["setup_s"] for r in runs if not r["checkout_reused"]]
    reused = [r["timing"]["setup_s"] for r in runs if r["checkout_reused"]]
    out = {
        "runs": a.runs, "command_s": a.seconds,
        "local_wall_s": round(local_wall, 2), "dask_wall_s": round(dask_wall, 2),
        "wall_ratio_dask_over_local": round(dask_wall / local_wall, 3),
        "wall_extra_per_run_slot_s": round((dask_wall - local_wall) * 2 / a.runs, 3),
        "dask_overhead_per_run_s": round(statistics.mean(dask_over), 3),
        "local_overhead_per_run_s": round(local_over, 3),
        "dask_overhead_over_command": round(statistics.mean(dask_over) / a.seconds, 3),
        "local_overhead_over_command": round(local_over / a.seconds, 3),
        "checkouts_made": len(first), "checkouts_reused": len(reused),
        "setup_first_s": round(statistics.mean(first), 3) if first else None,
        "setup_reused_s": round(statistics.mean(reused), 3) if reused else None,
        "setup_ratio_reused_over_first": (round(statistics.mean(reused) / statistics.mean(first),
                                                3) if first and reused else None),
        "collect_s_mean": round(statistics.mean(r["timing"]["collect_s"] for r in runs), 3),
        "workers": sorted({r["worker"] for r in runs}),
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
