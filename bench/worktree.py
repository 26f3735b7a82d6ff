#!/usr/bin/env python3
"""Benchmark: extra disk and setup time of one experiment worktree over 1 GiB of DVC data.

Builds a throwaway repo with --size-mib of random bytes (os.urandom, so nothing compresses or
is sparse) tracked by DVC, then in the same run:
  - times `git worktree add` alone (the baseline), then removes it;
  - times `worktree.py create exp1` (git worktree add + shared cache + dvc checkout +
    private copies), as a user runs it;
  - measures the extra disk of the experiment worktree: st_blocks of every file and
    directory under the worktree and its git admin dir, counting an inode only if it is not
    already in main's tree or the cache (hardlinks cost nothing, private copies count).
Target: extra disk <= 1% of the tracked bytes. Prints one JSON object; exit 1 if missed.

    python3 dev.py bench worktree            # 1 GiB in 8 files
    python bench/worktree.py --size-mib 64   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _evlib.proc import dvc, git, run  # noqa: E402


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
        st = os.lstat(root)
        total += st.st_blocks * 512
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                key = (st.st_dev, st.st_ino)
                if key in seen or key in counted:
                    continue
                counted.add(key)
                total += st.st_blocks * 512
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="tracked data size (MiB)")
    ap.add_argument("--files", type=int, default=8, help="number of data files")
    ap.add_argument("--dir", default=None, help="parent folder for the throwaway repo")
    ap.add_argument("--keep", action="store_true", help="leave the repo behind")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ev-bench-wt-", dir=a.dir))
    repo = tmp / "proj"
    try:
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.name", "Bench")
        git(repo, "config", "user.email", "bench@example.com")
        dvc(repo, "init", "-q")
        dvc(repo, "config", "core.analytics", "false")
        dvc(repo, "remote", "add", "-d", "storage", str(tmp / "remote"))
        (repo / "data").mkdir()
        per = a.size_mib * (1 << 20) // a.files
        t0 = time.monotonic()
        for i in range(a.files):
            with open(repo / "data" / f"part-{i:02d}.bin", "wb") as fh:
                left = per
                while left:
                    n = min(left, 16 << 20)
                    fh.write(os.urandom(n))
                    left -= n
        # A small results DB and model: the files an experiment writes (private copies).
        from xetrack import Tracker

        Tracker(str(repo / "results" / "experiments.db"), params={"version": "e0"}).log(
            {"f1_score": 0.5})
        (repo / "models" / "production").mkdir(parents=True)
        (repo / "models" / "production" / "model.bin").write_bytes(os.urandom(64 << 10))
        gen_s = time.monotonic() - t0
        t0 = time.monotonic()
        dvc(repo, "add", "-q", "data", "results/experiments.db", "models/production/model.bin")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "1 GiB of data")
        add_s = time.monotonic() - t0
        tracked = sum(p.stat().st_size for p in (repo / "data").iterdir()) + \
            (repo / "results" / "experiments.db").stat().st_size + \
            (repo / "models" / "production" / "model.bin").stat().st_size

        t0 = time.monotonic()
        git(repo, "worktree", "add", "-q", "-b", "plain", str(tmp / "plain"))
        plain_s = time.monotonic() - t0
        git(repo, "worktree", "remove", "--force", str(tmp / "plain"))
        git(repo, "branch", "-D", "plain")

        seen = inodes(repo)  # main's tree, its .git and .dvc/cache
        t0 = time.monotonic()
        cp = run([sys.executable, str(ROOT / "scripts" / "worktree.py"), "create", "exp1",
                  "--json"], cwd=repo)
        create_s = time.monotonic() - t0
        out = json.loads(cp.stdout)
        wt = Path(out["path"])
        admin = repo / ".git" / "worktrees" / wt.name
        extra = extra_bytes([wt, admin], seen)
        data_extra = extra_bytes([wt / "data"], seen)
        result = {
            "tracked_bytes": tracked,
            "tracked_files": a.files + 2,
            "link_type": out["link_type"],
            "private_copies": out["private"],
            "worktree_extra_bytes": extra,
            "worktree_extra_pct": round(100 * extra / tracked, 4),
            "data_dir_extra_bytes": data_extra,
            "target_pct": 1.0,
            "git_worktree_add_s": round(plain_s, 3),
            "create_s": round(create_s, 3),
            "create_internal_s": out["seconds"],
            "create_vs_git_worktree_add": round(create_s / plain_s, 1),
            "generate_s": round(gen_s, 1),
            "dvc_add_s": round(add_s, 1),
        }
        result["ok"] = result["worktree_extra_pct"] <= result["target_pct"]
        print(json.dumps(result, indent=1))
        return 0 if result["ok"] else 1
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
