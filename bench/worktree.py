#!/usr/bin/env python3
"""Benchmark: worktree.py create + teardown against the same done by hand, and extra disk.

Two projects, each in a throwaway repo with a local-directory remote (everything pushed):
  big:   one file of --big-mib MiB of random bytes (default 200)
  small: --small-files files of 1 KiB in one DVC-tracked directory (default 10,000)
Both also track a small xetrack results DB (the file an experiment writes: a private copy).

By hand (the baseline), as the issue states it:
  create:   git worktree add -b B PATH; dvc cache dir --local CACHE;
            dvc config --local cache.type reflink,hardlink,symlink,copy; dvc checkout
  teardown: git worktree remove --force PATH  (and git branch -D B)
The bundle: `worktree.py create NAME --json`, then (tip tagged) `worktree.py teardown NAME`.
Each pair alternates --reps times (median reported). A last in-process run breaks the
bundle's time down: git calls, dvc calls, the rest (Python start-up measured apart).
Extra disk of the experiment worktree (inodes not already in main or the cache) is reported
for the big project: target <= 1% of the tracked bytes.

    python3 dev.py bench worktree
    python bench/worktree.py --big-mib 32 --small-files 1000 --reps 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(ROOT / "scripts"))

from _evlib import proc  # noqa: E402
from _evlib.proc import dvc, git, run  # noqa: E402

LINK_ORDER = "reflink,hardlink,symlink,copy"


def inodes(*roots: Path) -> set[tuple[int, int]]:
    seen = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                seen.add((st.st_dev, st.st_ino))
    return seen


def extra_bytes(roots: list[Path], seen: set) -> int:
    """Allocated bytes under roots whose inode is not in seen (each inode counted once)."""
    total, counted = 0, set()
    for root in roots:
        total += os.lstat(root).st_blocks * 512
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                key = (st.st_dev, st.st_ino)
                if key not in seen and key not in counted:
                    counted.add(key)
                    total += st.st_blocks * 512
    return total


def build(tmp: Path, kind: str, a) -> Path:
    repo = tmp / "proj"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Bench")
    git(repo, "config", "user.email", "bench@example.com")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "storage", str(tmp / "remote"))
    (repo / "data").mkdir()
    if kind == "big":
        with open(repo / "data" / "big.bin", "wb") as fh:
            left = a.big_mib << 20
            while left:
                n = min(left, 16 << 20)
                fh.write(os.urandom(n))
                left -= n
        target = "data/big.bin"
    else:
        d = repo / "data" / "small"
        d.mkdir()
        for i in range(a.small_files):
            (d / f"f{i:05d}.txt").write_bytes(os.urandom(512).hex().encode())
        target = "data/small"
    from xetrack import Tracker

    Tracker(str(repo / "results" / "experiments.db"), params={"version": "e0"}).log(
        {"f1_score": 0.5})
    dvc(repo, "add", "-q", target, "results/experiments.db")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{kind} data")
    dvc(repo, "push", "-q")
    return repo


def by_hand(repo: Path, cache: Path, i: int) -> tuple[float, float]:
    path = repo.parent / f"hand{i}"
    t0 = time.perf_counter()
    git(repo, "worktree", "add", "-q", "-b", f"hand{i}", str(path))
    dvc(path, "cache", "dir", "--local", str(cache))
    dvc(path, "config", "--local", "cache.type", LINK_ORDER)
    dvc(path, "checkout")
    t1 = time.perf_counter()
    git(repo, "worktree", "remove", "--force", str(path))
    git(repo, "branch", "-D", f"hand{i}")
    return t1 - t0, time.perf_counter() - t1


def bundle(repo: Path, i: int) -> tuple[float, float, dict]:
    script = str(ROOT / "scripts" / "worktree.py")
    t0 = time.perf_counter()
    cp = run([sys.executable, script, "create", f"b{i}", "--json"], cwd=repo)
    t1 = time.perf_counter()
    out = json.loads(cp.stdout)
    git(repo, "tag", f"exp-b{i}-v1", f"exp/b{i}")
    t2 = time.perf_counter()
    run([sys.executable, script, "teardown", f"b{i}", "--json"], cwd=repo)
    return t1 - t0, time.perf_counter() - t2, out


def breakdown(repo: Path, i: int) -> dict:
    """One create + teardown in-process, time split by the programs it starts."""
    from _evlib import teardown as td
    from _evlib import worktree as wt

    spent: dict[str, list[float]] = {"git": [], "dvc": []}
    real = proc.subprocess.run

    def timed(cmd, *args, **kw):
        t = time.perf_counter()
        try:
            return real(cmd, *args, **kw)
        finally:
            prog = "dvc" if Path(cmd[0]).name == "dvc" else "git"
            spent[prog].append(time.perf_counter() - t)

    proc.subprocess.run = timed
    try:
        t0 = time.perf_counter()
        wt.create(wt.plan_create(repo, f"p{i}", None, None))
        t1 = time.perf_counter()
        c_git, c_dvc = list(spent["git"]), list(spent["dvc"])
        spent["git"].clear()
        spent["dvc"].clear()
        real(["git", "tag", f"exp-p{i}-v1", f"exp/p{i}"], cwd=repo, check=True)
        t2 = time.perf_counter()
        check = td.teardown_check(repo, f"p{i}")
        assert not check["items"], check["items"]
        td.teardown(check)
        t3 = time.perf_counter()
    finally:
        proc.subprocess.run = real

    def part(total, g, d):
        return {"total_s": round(total, 3), "git_calls": len(g), "git_s": round(sum(g), 3),
                "dvc_calls": len(d), "dvc_s": round(sum(d), 3),
                "in_process_s": round(total - sum(g) - sum(d), 3)}

    return {"create": part(t1 - t0, c_git, c_dvc),
            "teardown": part(t3 - t2, spent["git"], spent["dvc"])}


def case(kind: str, a) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"ev-bench-wt-{kind}-", dir=a.dir))
    try:
        t0 = time.perf_counter()
        repo = build(tmp, kind, a)
        build_s = time.perf_counter() - t0
        cache = (repo / ".dvc" / "cache").resolve()
        hand_c, hand_t, ours_c, ours_t = [], [], [], []
        out = {}
        for i in range(a.reps):
            hc, ht = by_hand(repo, cache, i)
            oc, ot, out = bundle(repo, i)
            hand_c.append(hc)
            hand_t.append(ht)
            ours_c.append(oc)
            ours_t.append(ot)
        seen = inodes(repo)
        script = str(ROOT / "scripts" / "worktree.py")
        made = json.loads(run([sys.executable, script, "create", "disk", "--json"],
                              cwd=repo).stdout)
        wtp = Path(made["path"])
        extra = extra_bytes([wtp, repo / ".git" / "worktrees" / wtp.name], seen)
        tracked = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
        run([sys.executable, script, "teardown", "disk", "--force", "--json"], cwd=repo)
        bd = breakdown(repo, 0)
        med = statistics.median
        return {
            "case": kind, "tracked_bytes": tracked,
            "tracked_files": 1 if kind == "big" else a.small_files,
            "link_type": out.get("link_type"),
            "hand_create_s": round(med(hand_c), 3), "create_s": round(med(ours_c), 3),
            "create_ratio": round(med(ours_c) / med(hand_c), 2),
            "hand_teardown_s": round(med(hand_t), 3), "teardown_s": round(med(ours_t), 3),
            "teardown_ratio": round(med(ours_t) / med(hand_t), 2),
            "create_plus_teardown_ratio": round((med(ours_c) + med(ours_t))
                                                / (med(hand_c) + med(hand_t)), 2),
            "breakdown_in_process": bd,
            "worktree_extra_bytes": extra,
            "worktree_extra_pct": round(100 * extra / tracked, 4),
            "build_s": round(build_s, 1),
        }
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=200, help="size of the one big file (MiB)")
    ap.add_argument("--small-files", type=int, default=10_000, help="number of small files")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions per case")
    ap.add_argument("--case", choices=("big", "small", "both"), default="both")
    ap.add_argument("--dir", default=None, help="parent folder for the throwaway repos")
    ap.add_argument("--keep", action="store_true", help="leave the repos behind")
    a = ap.parse_args()
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "worktree.py"), "--help"],
                   capture_output=True, check=True)
    startup = time.perf_counter() - t
    cases = ["big", "small"] if a.case == "both" else [a.case]
    results = {"python_startup_and_import_s": round(startup, 3),
               "cases": [case(k, a) for k in cases]}
    results["targets"] = {"create_ratio_max": 1.2, "teardown_s_max": "0.5 + checks",
                          "extra_disk_pct_max": 1.0}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
