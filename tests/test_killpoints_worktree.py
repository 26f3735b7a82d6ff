"""Kill-point walks: SIGKILL `worktree.py create` and `teardown` right after each of their
git/dvc calls in turn, re-run the same command, and compare with a clean run.

Compared: worktree list, branches, tags, `git status` of main and of the worktree, pending
records, the marker, the worktree's DVC config, every output file (md5, link or private,
writable or not); the cache is re-hashed (every object's md5 is its name) and no writable
link into the cache may exist. Each project is a `cp -a` copy of one template (hardlinks
kept), its absolute paths rewritten, so a point costs the killed run and the re-run only.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import init_dvc, init_git, make_xetrack_db, run_script, sh
from killpoints import call_log, calls, killed, wrappers
from test_worktree import assert_cache_intact

W = "worktree.py: warning: "
# Text files that hold the template's absolute path (git's worktree links, the worktree's
# DVC config.local, the marker): rewritten in each copy (all copies share the remote).
PATH_FILES = ("proj/.git/worktrees/exp-k/gitdir", "exp-k/.git", "exp-k/.dvc/config.local",
              "proj/.git/worktrees/exp-k/ev-worktree.json")


def clone(template: Path, dest: Path) -> Path:
    """cp -a (hardlinks between worktree and cache kept), absolute paths rewritten."""
    dest.mkdir(parents=True)
    sh(["cp", "-a", f"{template}/.", str(dest)])
    for rel in PATH_FILES:
        f = dest / rel
        if f.is_file():
            f.write_text(f.read_text().replace(str(template), str(dest)))
    return dest / "proj"


def state(root: Path) -> dict:
    repo, wt = root / "proj", root / "exp-k"
    cache = repo / ".dvc" / "cache"
    objs = {}
    for p in (cache / "files" / "md5").rglob("*"):
        if p.is_file():
            objs[(p.stat().st_dev, p.stat().st_ino)] = p
    out = {
        "worktrees": [os.path.relpath(ln[9:], root) for ln in sh(
            ["git", "worktree", "list", "--porcelain"], cwd=repo).stdout.splitlines()
            if ln.startswith("worktree ")],
        "branches": sh(["git", "branch", "--format=%(refname:short) %(objectname)"],
                       cwd=repo).stdout.split("\n"),
        "tags": sh(["git", "tag", "-l"], cwd=repo).stdout.split(),
        "main_status": sh(["git", "status", "--porcelain", "--ignored"], cwd=repo).stdout,
        "pending": sorted(p.name for p in (repo / ".git" / "ev-pending").glob("*")),
        "wt": wt.exists(),
    }
    if wt.exists():
        marker = json.loads((repo / ".git" / "worktrees" / "exp-k" / "ev-worktree.json")
                            .read_text().replace(str(root), "ROOT"))
        files = {}
        for rel in ("data/a.bin", "results/experiments.db"):
            p = wt / rel
            st = p.stat()
            into_cache = p.is_symlink() or (st.st_dev, st.st_ino) in objs
            writable = bool(stat.S_IMODE(st.st_mode) & 0o222)
            files[rel] = (sh(["md5sum", str(p)]).stdout.split()[0], into_cache, writable)
            # never a writable link into the cache, and the private DB is never a link
            assert not (into_cache and writable), (rel, st)
        assert files["results/experiments.db"][1] is False
        out.update(wt_status=sh(["git", "status", "--porcelain", "--ignored"], cwd=wt).stdout,
                   marker=marker, files=files,
                   config=(wt / ".dvc" / "config.local").read_text().replace(str(root), "R"))
    assert_cache_intact(cache)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The smallest project that makes every call: a data file (read-only link), a results
    DB (private copy), a local remote with both pushed."""
    root = tmp_path_factory.mktemp("kp") / "t"
    repo = init_dvc(init_git(root / "proj"), root / "remote")
    (repo / "data").mkdir()
    (repo / "data" / "a.bin").write_bytes(os.urandom(4096))
    make_xetrack_db(repo / "results" / "experiments.db", [{"f1_score": 0.5}])
    sh(["dvc", "config", "cache.type", "hardlink"], cwd=repo)  # main's files: cache links
    sh(["dvc", "add", "-q", "data/a.bin", "results/experiments.db"], cwd=repo)
    sh("git add -A && git commit -qm base && dvc push -q", cwd=repo)
    return root


def walk(tmp: Path, template: Path, args: list[str], prepare=None) -> dict:
    """Clean run (the reference and the call count), then one kill per call + re-run."""
    ref_root = tmp / "ref"
    repo = clone(template, ref_root)
    if prepare:
        prepare(repo)
    env, counter = wrappers(tmp / "w0")
    cp = run_script("worktree.py", *args, cwd=repo, env=env)
    assert cp.returncode == 0, cp.stderr
    total, log = calls(counter), call_log(counter)
    ref = state(ref_root)

    def point(n: int) -> tuple[int, str]:
        root = tmp / f"n{n}"
        repo = clone(template, root)
        if prepare:
            prepare(repo)
        env, _ = wrappers(tmp / f"w{n}", kill_at=n)
        cp = run_script("worktree.py", *args, cwd=repo, env=env)
        assert killed(cp), (n, log[n - 1], cp.returncode, cp.stderr)
        again = run_script("worktree.py", *args, "--json", cwd=repo)
        assert again.returncode == 0, (n, log[n - 1], again.stderr)
        got = state(root)
        assert got == ref, (n, log[n - 1])
        recovered = json.loads(again.stdout).get("recovered", "")
        if recovered:
            assert again.stderr.strip() == W + recovered
        shutil.rmtree(root, ignore_errors=True)
        return n, recovered.split(":")[0]

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(point, range(1, total + 1)))
    return {"total": total, "log": log, "recovered": results}


def test_create_killed_after_every_call(tmp_path, template):
    r = walk(tmp_path, template, ["create", "k"])
    log = r["log"]
    add = next(i for i, ln in enumerate(log, 1) if " worktree add " in ln)
    assert any(" dvc checkout" in ln for ln in log)
    # before `git worktree add` nothing was written: a plain create; from it on, the re-run
    # finishes the half-made tree (or only its record, when killed after the marker)
    assert all(r["recovered"][n] == "" for n in range(1, add))
    assert {r["recovered"][n] for n in range(add, r["total"])} == {"finished"}
    assert r["recovered"][r["total"]] == "completed"
    print(f"create: {r['total']} kill points")  # noqa: T201 (reported by -s)


def test_teardown_killed_after_every_call(tmp_path, template):
    base = tmp_path / "base"
    repo = clone(template, base)
    assert run_script("worktree.py", "create", "k", cwd=repo).returncode == 0
    sh("git tag exp-k-v1 exp/k", cwd=repo)
    r = walk(tmp_path, base, ["teardown", "k"])
    log = r["log"]
    rm = next(i for i, ln in enumerate(log, 1) if " worktree remove " in ln)
    assert all(r["recovered"][n] == "" for n in range(1, rm))
    assert {r["recovered"][n] for n in range(rm, r["total"] + 1)} == {"completed"}
    print(f"teardown: {r['total']} kill points")  # noqa: T201
