"""A project whose training script is written like the original workflow document's.

train.py: fixed paths results/experiments.db and models/production/model.bin, its own
--version / --lr flags and xetrack params, its own `git rev-parse HEAD`. The bundle must run
it unchanged.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from conftest import init_dvc, init_git, sh

TRAIN_PY = '''\
import argparse
import os
import subprocess
import time
from pathlib import Path

from xetrack import Tracker

parser = argparse.ArgumentParser()
parser.add_argument("--version", required=True)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
if args.fail:
    raise SystemExit("training diverged: loss is nan")


def get_git_hash():
    return subprocess.check_output(["git", "rev-parse", "HEAD"]).decode().strip()


rows = Path("data/train.csv").read_text().splitlines()
tracker = Tracker("results/experiments.db", params={
    "version": args.version, "git_commit": get_git_hash(), "model": "tiny",
    "learning_rate": args.lr})
t0 = time.time()
time.sleep(args.sleep)
f1 = round(1.0 - abs(args.lr - 0.1), 6)
tracker.log({"f1_score": f1, "epoch": 1, "n_rows": len(rows),
             "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "t0": t0,
             "t1": time.time()})
Path("models/production").mkdir(parents=True, exist_ok=True)
Path("models/production/model.bin").write_bytes(f"weights lr={args.lr}\\n".encode())
'''


def make_project(root: Path, remote: Path) -> Path:
    proj = init_dvc(init_git(root), remote)
    (proj / "train.py").write_text(TRAIN_PY)
    (proj / "data").mkdir()
    (proj / "data" / "train.csv").write_text("x,y\n1,0\n2,1\n3,1\n")
    sh(["dvc", "add", "-q", "data/train.csv"], cwd=proj)
    (proj / ".gitignore").write_text("shards/\n__pycache__/\n")
    sh("git add -A && git commit -qm 'train.py, data tracked by DVC'", cwd=proj)
    return proj


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(db: Path, sql: str = 'SELECT * FROM "default"') -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    finally:
        con.close()


def cache_objects_ok(proj: Path) -> int:
    """Every object in the DVC cache re-hashes to its name; returns how many were checked."""
    cache = proj / ".dvc" / "cache" / "files" / "md5"
    n = 0
    for d in cache.iterdir() if cache.exists() else []:
        for f in d.iterdir():
            if f.name.endswith(".dir"):
                continue
            got = hashlib.md5(f.read_bytes()).hexdigest()  # noqa: S324 - DVC's names
            assert got == d.name + f.name, f"cache object {f} is corrupt"
            n += 1
    return n


def run_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("EV_") is False}
