"""experiments.py list at 5, 20, 50 and 200 tagged versions, as ratios to baselines in the same run.

A project with N tagged versions (each: R runs appended to the results DB, the DB DVC-tracked
and pushed to a local-directory remote, three more .dvc-tracked data files, an annotated tag
with tag_suggest's message format; built with git and direct writes of DVC's own file
layout, so building 200 versions takes seconds, not `dvc add` minutes). Then, per N:

1. **remote**: `experiments.py list` in a fresh clone (empty DVC cache, no summary cache: a
   teammate's first list) vs a loop of `git show TAG:results/experiments.db.dvc` over the
   same tags PLUS copying the bytes every tag's DB object holds (what any reader must
   transfer). Target: within 3x.
2. **cached**: the second `list` (listfast's answer file, else the summary cache) vs `git tag
   -n1`, interleaved, best of 10. Target: within 20x at 50. Also the summary cache alone
   (listfast's file removed before each run: the path before listfast), informative.
3. **objects local**: `list` with the objects in the cache but no summary cache (informative).
4. slope: seconds per version of the remote list (least squares over N), and of its ratio.
5. floor (informative): FLOOR, the least a fresh list does in Python with the standard
   library and none of the bundle's checks or caches, on the same clone; and `python -c pass`.

`--before` also times the previous implementation (a `git archive` of --before-rev's
scripts/) on the same clones, for the before/after table: its remote list, and its cached
list interleaved with `git tag -n1` (slow with the default rev: minutes at 50 versions).

    python3 dev.py bench history [--versions 5,20,50,200] [--runs 20] [--before]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import best_of

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
# Byte-compiled modules, as an installed skill has them (kept out of the tree): without
# them every start-up recompiles the scripts and the cached list measures the compiler.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
DB = "results/experiments.db"
COLS = ("track_id", "timestamp", "version", "model", "config_C", "f1_score", "precision")


# The floor, informative: the least a fresh `list` must do, in Python with the standard
# library and nothing of the bundle (no checks, no caches, no atomic writes, one metric):
# for-each-ref, one cat-file for every tag's DB .dvc, each DB object copied from the remote
# into the cache with its md5 checked, a count and a max per version, JSON out.
FLOOR = r"""
import hashlib, json, os, sqlite3, subprocess
fmt = "%(refname:short)%1f%(contents)%1e"
out = subprocess.run(["git", "for-each-ref", "refs/tags", "--format=" + fmt],
                     capture_output=True, check=True).stdout.decode()
tags = [r.strip("\n").split("\x1f")[0] for r in out.split("\x1e") if r.strip("\n")]
req = "".join(t + ":results/experiments.db.dvc\n" for t in tags).encode()
raw = subprocess.run(["git", "cat-file", "--batch"], input=req, capture_output=True,
                     check=True).stdout
remote = [ln.split("=", 1)[1].strip() for ln in open(".dvc/config")
          if ln.strip().startswith("url")][0]
res, pos = [], 0
for t in tags:
    nl = raw.index(b"\n", pos)
    size = int(raw[pos:nl].split()[2])
    blob, pos = raw[nl + 1:nl + 1 + size], nl + 2 + size
    md5 = blob.split(b"md5: ")[1].split(b"\n")[0].decode()
    data = open(os.path.join(remote, "files", "md5", md5[:2], md5[2:]), "rb").read()
    assert hashlib.md5(data).hexdigest() == md5
    d = os.path.join(".dvc", "cache", "files", "md5", md5[:2])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, md5[2:]), "wb") as f:
        f.write(data)
    con = sqlite3.connect("file:" + os.path.join(d, md5[2:]) + "?mode=ro", uri=True)
    n, best = con.execute('SELECT count(*), max(f1_score) FROM "default" WHERE version = ?',
                          (t,)).fetchone()
    con.close()
    res.append({"tag": t, "runs": n, "value": best})
print(json.dumps({"status": "ok", "versions": res}))
"""


def sh(*cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, check=True, capture_output=True,
                          text=True)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's object names


def dvc_track(repo: Path, remote: Path, rel: str) -> None:
    """What `dvc add` + `dvc push` leave: the object in cache and remote, the .dvc file."""
    p = repo / rel
    h = md5(p)
    for root in (repo / ".dvc" / "cache", remote):
        obj = root / "files" / "md5" / h[:2] / h[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        if not obj.exists():
            shutil.copyfile(p, obj)
    (repo / (rel + ".dvc")).write_text(
        f"outs:\n- md5: {h}\n  size: {p.stat().st_size}\n  hash: md5\n"
        f"  path: {Path(rel).name}\n")
    gi = p.parent / ".gitignore"
    line = f"/{p.name}\n"
    if not gi.exists() or line not in gi.read_text():
        with open(gi, "a") as fh:
            fh.write(line)


def build(tmp: Path, n: int, runs: int) -> tuple[Path, Path]:
    repo, remote = tmp / "proj", tmp / "remote"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-q", "-d", "storage", str(remote), cwd=repo)
    (repo / "results").mkdir()
    (repo / "data").mkdir()
    con = sqlite3.connect(repo / DB)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, version TEXT, '
                'model TEXT, config_C REAL, f1_score REAL, precision REAL)')
    con.commit()
    for i in range(n):
        v = f"e0.{i + 1}.0"
        con.executemany('INSERT INTO "default" VALUES (?,?,?,?,?,?,?)', [
            (f"run-{i}-{j}", f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.{j:06d}", v,
             "logreg", 1.0 / (j + 1), 0.5 + (i * runs + j) / (10 * n * runs), 0.5)
            for j in range(runs)])
        con.commit()
        dvc_track(repo, remote, DB)
        if i % 10 == 0:  # data changes now and then: several .dvc files at every tag
            for k in range(3):
                (repo / "data" / f"part{k}.csv").write_text(f"x\n{i}\n{k}\n")
                dvc_track(repo, remote, f"data/part{k}.csv")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-q", "-m", v, cwd=repo)
        best = f"run-{i}-{runs - 1}"
        msg = (f"model=logreg | f1_score=0.9 | best of {runs} runs | data=abcdef | bench\n\n"
               + json.dumps({"run": best, "version": v, "runs": runs}))
        sh("git", "tag", "-a", v, "-m", msg, cwd=repo)
    con.close()
    return repo, remote


def fresh_clone(repo: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    sh("git", "clone", "-q", str(repo), str(dest), cwd=repo.parent)
    return dest


def counting_git(tmp: Path) -> tuple[dict, Path]:
    """An EV_GIT wrapper that counts git processes."""
    log = tmp / "git-calls.log"
    w = tmp / "git-count"
    w.write_text(f"#!/bin/sh\necho x >> {log}\nexec git \"$@\"\n")
    w.chmod(0o755)
    return {**ENV, "EV_GIT": str(w)}, log


def slope(xs, ys) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def measure(tmp: Path, n: int, runs: int, old_scripts: Path | None) -> dict:
    work = tmp / f"n{n}"
    work.mkdir()
    t0 = time.perf_counter()
    repo, remote = build(work, n, runs)
    build_s = time.perf_counter() - t0
    tags = [f"e0.{i + 1}.0" for i in range(n)]
    clone = fresh_clone(repo, work / "clone")

    def xp(scripts=ROOT / "scripts", env=None, cwd=clone):
        cp = sh(sys.executable, str(scripts / "experiments.py"), "--json", "list",
                cwd=cwd, env=env)
        out = json.loads(cp.stdout)
        assert len(out["versions"]) == n, out
        return out

    # baseline 1: a git show loop over the tags + the bytes of every tag's DB object
    t_show = best_of(3, lambda: [sh("git", "show", f"{t}:{DB}.dvc", cwd=clone)
                                 for t in tags])
    objs = sorted({ln.split()[-1] for t in tags for ln in sh(
        "git", "show", f"{t}:{DB}.dvc", cwd=repo).stdout.splitlines()
        if ln.startswith("- md5:")})
    paths = [remote / "files" / "md5" / h[:2] / h[2:] for h in objs]
    nbytes = sum(p.stat().st_size for p in paths)
    copy_dir = work / "copy"

    def copy_bytes():
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        for p in paths:
            shutil.copyfile(p, copy_dir / p.name)
    t_bytes = best_of(3, copy_bytes)
    t_base_remote = t_show + t_bytes

    # 1. list from the remote alone (fresh clone: empty cache, no summary cache)
    env_count, calls = counting_git(work)

    def reset():
        shutil.rmtree(clone / ".dvc" / "cache", ignore_errors=True)
        shutil.rmtree(clone / ".dvc" / "tmp", ignore_errors=True)
    reset()
    calls.unlink(missing_ok=True)
    t = time.perf_counter()
    first = xp(env=env_count)
    t_remote = time.perf_counter() - t
    git_calls = len(calls.read_text().splitlines())
    in_cache = sum(1 for _ in (clone / ".dvc" / "cache").rglob("*") if _.is_file())
    for _ in range(3 if n <= 50 else 0):  # more samples where it is cheap (the first ran
        reset()                           # through the counting wrapper: 3 more processes)
        t = time.perf_counter()
        xp()
        t_remote = min(t_remote, time.perf_counter() - t)
    # the floor (informative): FLOOR on the same clone, and Python's bare start-up
    def floor():
        reset()
        out = json.loads(sh(sys.executable, "-c", FLOOR, cwd=clone).stdout)
        assert len(out["versions"]) == n, out
    t_floor = best_of(3, floor)
    t_python = best_of(5, lambda: sh(sys.executable, "-c", "pass", cwd=clone))
    reset()
    xp()  # the cache and summary cache as the first list leaves them, for what follows
    # 2. the second list: the summary cache (and listfast's answer file, written by the
    # first); timed interleaved with its baseline, best of 10 each
    calls.unlink(missing_ok=True)
    second = xp(env=env_count)
    git_calls_cached = len(calls.read_text().splitlines()) if calls.exists() else 0
    assert second == first, "the cached list differs from the first"
    fast_file = clone / ".dvc" / "tmp" / "ev-list.txt"

    def xp_summary_only():  # without listfast's file: the summary cache + 2 git processes
        fast_file.unlink(missing_ok=True)
        xp()
    t_cached = t_tag = t_summary = float("inf")
    for _ in range(10):
        t_tag = min(t_tag, best_of(1, lambda: sh("git", "tag", "-n1", cwd=clone)))
        t_cached = min(t_cached, best_of(1, xp))
        t_summary = min(t_summary, best_of(1, xp_summary_only))
        xp()  # the file again, for the next round's t_cached
    # 3. objects in the cache, no summary cache
    shutil.rmtree(clone / ".dvc" / "tmp", ignore_errors=True)
    t = time.perf_counter()
    xp()
    t_local = time.perf_counter() - t
    row = {
        "versions": n, "runs_per_version": runs, "build_s": round(build_s, 1),
        "db_objects": len(objs), "db_bytes_all_tags": nbytes,
        "git_show_loop_s": round(t_show, 3), "copy_bytes_s": round(t_bytes, 3),
        "list_remote_s": round(t_remote, 3),
        "list_remote_vs_show_loop_plus_bytes": round(t_remote / t_base_remote, 2),
        "floor_minimal_list_s": round(t_floor, 3),
        "floor_vs_show_loop_plus_bytes": round(t_floor / t_base_remote, 2),
        "list_remote_vs_floor": round(t_remote / t_floor, 2),
        "python_start_s": round(t_python, 3),
        "objects_fetched_into_cache": in_cache,
        "git_processes_first_list": git_calls,
        "git_processes_cached_list": git_calls_cached,
        "git_tag_n1_s": round(t_tag, 4), "list_cached_s": round(t_cached, 3),
        "list_cached_vs_git_tag_n1": round(t_cached / t_tag, 1),
        "list_summary_cache_only_s": round(t_summary, 3),
        "list_summary_cache_only_vs_git_tag_n1": round(t_summary / t_tag, 1),
        "list_objects_local_s": round(t_local, 3),
    }
    if old_scripts is not None:
        reset()
        t = time.perf_counter()
        xp(scripts=old_scripts)
        row["before_list_remote_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        xp(scripts=old_scripts)
        row["before_list_remote_again_s"] = round(time.perf_counter() - t, 3)
        # the previous cached list (its summary cache now warm), interleaved with git tag
        t_old = t_tag_old = float("inf")
        for _ in range(10):
            t_tag_old = min(t_tag_old, best_of(1, lambda: sh("git", "tag", "-n1", cwd=clone)))
            t_old = min(t_old, best_of(1, lambda: xp(scripts=old_scripts)))
        row["before_list_cached_s"] = round(t_old, 3)
        row["before_list_cached_vs_git_tag_n1"] = round(t_old / t_tag_old, 1)
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="5,20,50,200")
    ap.add_argument("--runs", type=int, default=20, help="runs logged per version")
    ap.add_argument("--before", action="store_true",
                    help="also time the previous implementation (slow)")
    ap.add_argument("--before-rev", default="c2aac25")
    a = ap.parse_args()
    sizes = [int(x) for x in a.versions.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ev-bench-history-") as tmp_s:
        tmp = Path(tmp_s)
        ENV["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        old_scripts = None
        if a.before:
            old = tmp / "before"
            old.mkdir()
            tar = tmp / "before.tar"
            sh("git", "archive", "-o", str(tar), a.before_rev, "scripts", cwd=ROOT)
            sh("tar", "-xf", str(tar), "-C", str(old), cwd=tmp)
            old_scripts = old / "scripts"
        for n in sizes:
            row = measure(tmp, n, a.runs, old_scripts)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    summary = {"sizes": rows}
    if len(rows) > 1:
        xs = [r["versions"] for r in rows]
        summary["list_remote_s_per_version_slope"] = round(
            slope(xs, [r["list_remote_s"] for r in rows]), 4)
        summary["list_remote_ratio_slope_per_version"] = round(
            slope(xs, [r["list_remote_vs_show_loop_plus_bytes"] for r in rows]), 4)
        summary["list_cached_s_per_version_slope"] = round(
            slope(xs, [r["list_cached_s"] for r in rows]), 6)
        summary["git_tag_n1_s_per_version_slope"] = round(
            slope(xs, [r["git_tag_n1_s"] for r in rows]), 6)
        summary["list_cached_ratio_slope_per_version"] = round(
            slope(xs, [r["list_cached_vs_git_tag_n1"] for r in rows]), 4)
        summary["list_remote_s_per_version"] = {
            r["versions"]: round(r["list_remote_s"] / r["versions"], 4) for r in rows}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
