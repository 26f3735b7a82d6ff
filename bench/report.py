"""experiments.py report: build time as a ratio to `experiments.py list` on the same history,
and the report's size, at 5, 20 and 50 tagged versions.

One project grows version by version (each: --runs runs of a C sweep, --epochs rows per
run, the results DB DVC-tracked and committed, tagged with tag_suggest.py --create, one
promote entry in the production ledger); at each checkpoint both commands run as an agent
runs them (a new process, --json), best of 3:

    python3 dev.py bench report [--checkpoints 5,20,50] [--runs 4] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import best_of

ROOT = Path(__file__).resolve().parents[1]
# Byte-compiled modules, as an installed skill has them: without them each start of a
# script recompiles the bundle and the ratios measure the compiler.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
DB = "results/experiments.db"


def sh(*cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True, text=True)


def script(name, *args, cwd):
    return sh(sys.executable, str(ROOT / "scripts" / name), *args, cwd=cwd)


def log(repo: Path, version: str, runs: int, epochs: int, i: int) -> str:
    from xetrack import Tracker

    best, best_f1 = "", -1.0
    for r in range(runs):
        c = 10 ** (r - 2)
        f1 = round(0.6 + 0.3 * (i % 7) / 7 + 0.02 * r, 6)
        t = Tracker(str(repo / DB), params={"version": version, "model": "logreg", "C": c})
        for e in range(1, epochs + 1):
            t.log({"epoch": e, "loss": round(1 / e + c / 100, 6),
                   "f1_score": round(f1 - 0.01 * (epochs - e), 6)})
        if f1 > best_f1:
            best, best_f1 = t.track_id, f1
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="5,20,50")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args()
    marks = sorted(int(x) for x in a.checkpoints.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="ev-bench-report-") as tmp:
        repo = Path(tmp) / "proj"
        repo.mkdir()
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        sh("dvc", "init", "-q", cwd=repo)
        sh("dvc", "remote", "add", "-d", "storage", str(Path(tmp) / "remote"), cwd=repo)
        (repo / "data").mkdir()
        (repo / "data" / "train.csv").write_text("x\n1\n")
        sh("dvc", "add", "-q", "data/train.csv", cwd=repo)
        ledger = repo / "models" / "production" / "ledger.jsonl"
        ledger.parent.mkdir(parents=True)
        out = Path(tmp) / "report.html"
        for i in range(1, marks[-1] + 1):
            v = f"e0.{i}.0"
            run = log(repo, v, a.runs, a.epochs, i)
            with ledger.open("a") as fh:
                fh.write(json.dumps({"time": f"2026-01-01T00:00:{i % 60:02d}Z",
                                     "action": "promote", "version": v, "run_id": run,
                                     "reason": f"bench version {i}",
                                     "model": {"md5": f"{i:032x}"}}) + "\n")
            sh("dvc", "add", "-q", DB, cwd=repo)
            sh("git", "add", "-A", cwd=repo)
            sh("git", "commit", "-q", "-m", v, cwd=repo)
            script("tag_suggest.py", "--create", "--params", "C", cwd=repo)
            if i not in marks:
                continue

            def listing(n=i):
                res = json.loads(script("experiments.py", "--json", "list", cwd=repo).stdout)
                assert len(res["versions"]) == n

            def report(n=i):
                res = json.loads(script("experiments.py", "--json", "report", "--force", "-o",
                                        str(out), cwd=repo).stdout)
                assert res["versions"] == n

            t_list = best_of(3, listing)
            t_report = best_of(3, report)
            res = json.loads(script("experiments.py", "--json", "report", "--dry-run", "--force", "-o",
                                    str(out), cwd=repo).stdout)
            results.append({"versions": i, "list_s": round(t_list, 3),
                            "report_s": round(t_report, 3),
                            "report_vs_list": round(t_report / t_list, 1),
                            "report_kib": round(out.stat().st_size / 1024),
                            "png_kib": round(res["png_bytes"] / 1024),
                            "charts": len(res["charts"])})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"runs_per_version": a.runs, "rows_per_run": a.epochs,
                      "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
