"""experiments.py / tag_suggest.py costs, as ratios against baselines measured in the same run.

A project with --versions tagged versions (each: --runs runs logged with xetrack, the
results DB DVC-tracked and committed, tagged with tag_suggest.py --create), then:
1. `experiments.py list` (every version's DB read from its tag, via the DVC cache) vs the
   workflows' `git tag -l 'e*' -n9` (which reads only the tag messages);
2. the same `list` with the local cache moved away (every DB via `dvc get` from the remote)
   vs 1;
3. `tag_suggest.py` for a new version vs `git tag -l 'e*' -n9`.

    python3 dev.py bench history [--versions 8] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
DB = "results/experiments.db"


def sh(*cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True, text=True)


def script(name, *args, cwd):
    return sh(sys.executable, str(ROOT / "scripts" / name), *args, cwd=cwd)


def best_of(n, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def log(repo: Path, version: str, runs: int, c: float) -> None:
    from xetrack import Tracker

    for i in range(runs):
        t = Tracker(str(repo / DB), params={"version": version, "model": "logreg",
                                             "config_C": c})
        t.log({"f1_score": 0.5 + i / (10 * runs), "precision": 0.5})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=8)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ev-bench-history-") as tmp:
        repo = Path(tmp) / "proj"
        repo.mkdir()
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        sh("dvc", "init", "-q", cwd=repo)
        sh("dvc", "remote", "add", "-d", "storage", str(Path(tmp) / "remote"), cwd=repo)
        (repo / "data").mkdir()
        (repo / "data" / "train.csv").write_text("x\n1\n")
        sh("dvc", "add", "-q", "data/train.csv", cwd=repo)
        versions = [f"e0.{i + 1}.0" for i in range(a.versions)]
        for i, v in enumerate(versions):
            log(repo, v, a.runs, 1.0 / (i + 1))
            sh("dvc", "add", "-q", DB, cwd=repo)
            sh("git", "add", "-A", cwd=repo)
            sh("git", "commit", "-q", "-m", v, cwd=repo)
            script("tag_suggest.py", "--create", cwd=repo)
        sh("dvc", "push", "-q", "-T", cwd=repo)
        db_mb = (repo / DB).stat().st_size / 1e6

        def baseline():
            sh("git", "tag", "-l", "e*", "-n9", cwd=repo)

        def listing():
            out = json.loads(script("experiments.py", "--json", "list", cwd=repo).stdout)
            assert len(out["versions"]) == a.versions

        t_base = best_of(3, baseline)
        t_list = best_of(3, listing)
        cache = repo / ".dvc" / "cache"
        aside = Path(tmp) / "cache-aside"
        shutil.move(cache, aside)
        t_remote = best_of(1, listing)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(aside, cache)
        log(repo, f"e0.{a.versions + 1}.0", a.runs, 0.001)
        t_suggest = best_of(3, lambda: script("tag_suggest.py", "--json", cwd=repo))
        print(json.dumps({
            "versions": a.versions, "runs_per_version": a.runs,
            "db_mb_at_last_tag": round(db_mb, 2),
            "git_tag_n9_s": round(t_base, 3),
            "list_cached_s": round(t_list, 3),
            "list_vs_git_tag": round(t_list / t_base, 1),
            "list_remote_s": round(t_remote, 3),
            "list_remote_vs_cached": round(t_remote / t_list, 1),
            "tag_suggest_s": round(t_suggest, 3),
            "tag_suggest_vs_git_tag": round(t_suggest / t_base, 1),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
