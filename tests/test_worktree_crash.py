"""worktree.py under a held DVC lock, crafted .dvc paths, half-made trees, ignored files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_xetrack_db, run_script, sh
from test_worktree import assert_cache_intact, md5, tracked_project, worktree_list

E = "worktree.py: error: "
W = "worktree.py: warning: "


class DvcLockHolder:
    """A second process holding DVC's repository lock (.dvc/tmp/lock) the way DVC does:
    `Repo.lock` (zc.lockfile, the pid written into the file), until stopped."""

    def __init__(self, repo: Path):
        code = ("import sys; from dvc.repo import Repo\n"
                "r = Repo(sys.argv[1])\n"
                "with r.lock:\n"
                "    print('locked', flush=True)\n"
                "    sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(repo)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_dvc_error_line_kept_under_a_held_lock_and_names_the_holder(dvc_repo):
    """`dvc -q` prints nothing on failure: the line is DVC's own, and the hint names the pid."""
    from _evlib.errors import EVError
    from _evlib.proc import dvc

    repo = tracked_project(dvc_repo)
    (repo / "other.txt").write_text("x\n")
    holder = DvcLockHolder(repo)
    try:
        # the bare CLI with -q: exit 1 and not a word (what the bundle used to relay)
        cp = sh(["dvc", "add", "-q", "other.txt"], cwd=repo, check=False)
        assert (cp.returncode, cp.stdout, cp.stderr) == (1, "", "")
        with pytest.raises(EVError) as ei:
            dvc(repo, "add", "-q", "other.txt")
        pid = holder.proc.pid
        assert ei.value.message == (
            "dvc add failed: ERROR: Unable to acquire lock. Most likely another DVC process is "
            "running or was terminated abruptly. Check the page "
            "<https://dvc.org/doc/user-guide/troubleshooting#lock-issue> for other possible "
            "reasons and to learn how to resolve this.")
        assert ei.value.hint.startswith(
            f"another DVC process holds the repository lock (PID {pid}: {sys.executable} -c ")
        assert ei.value.hint.endswith("): wait for it to finish and re-run, or end it if it "
                                      "is stale")
        # create takes no lock of main's: it reads DVC's files, and checks out in the new
        # tree (its own .dvc/tmp), so it works while another dvc holds main's lock
        (repo / "other.txt").unlink()
        cp = run_script("worktree.py", "create", "locked", cwd=repo)
        assert cp.returncode == 0, cp.stderr
        assert_cache_intact(repo / ".dvc" / "cache")
    finally:
        holder.stop()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_dvc_paths_outside_the_repository_are_refused(dvc_repo, tmp_path, how):
    repo = tracked_project(dvc_repo)
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours\n")
    victim.chmod(0o644)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("not yours either\n")
    h = md5(repo / "models" / "production" / "model.bin")
    if how == "dotdot":
        raw = "../../../victim.txt"  # from models/production/: one level above the repo
    elif how == "absolute":
        raw = str(victim)
    else:
        os.symlink(tmp_path / "outside", repo / "models" / "link")
        raw = "../link/victim.txt"
    (repo / "models" / "production" / "evil.dvc").write_text(
        f"outs:\n- md5: {h}\n  size: 8000\n  hash: md5\n  path: {raw}\n")
    sh("git add -A && git commit -qm 'a crafted .dvc file'", cwd=repo)
    expected = (f"{E}models/production/evil.dvc records the output path {raw!r}, which resolves "
                "outside the repository (DVC refuses such paths too); nothing was read or "
                "changed; fix or remove models/production/evil.dvc (git checkout -- "
                "models/production/evil.dvc, or git rm it if it is not yours)")
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in
              (victim, tmp_path / "outside" / "victim.txt")}
    cp = run_script("worktree.py", "create", "x", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (2, expected)
    sh("git tag e1", cwd=repo)
    cp = run_script("worktree.py", "explore", "e1", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (2, expected)
    assert worktree_list(repo) == [str(repo)]
    # privatize inside an existing experiment worktree that gets the crafted file later
    sh("git rm -q models/production/evil.dvc && git commit -qm clean", cwd=repo)
    assert run_script("worktree.py", "create", "y", cwd=repo).returncode == 0
    wt = repo.parent / "exp-y"
    assert (wt / "models" / "link").is_symlink() == (how == "symlink")  # committed
    (wt / "models" / "production" / "evil.dvc").write_text(
        f"outs:\n- md5: {h}\n  size: 8000\n  hash: md5\n  path: {raw}\n")
    cp = run_script("worktree.py", "privatize", cwd=wt)
    assert (cp.returncode, cp.stderr.strip()) == (2, expected)
    after = {p: (p.read_bytes(), p.stat().st_mode) for p in before}
    assert after == before


def test_parse_outs_unit():
    from _evlib.dvcmeta import parse_outs
    from _evlib.errors import EVError

    ok = parse_outs("outs:\n- md5: abc\n  path: ../b/x.bin\n", "a/sub/x.dvc")
    assert [(o.path, o.md5) for o in ok] == [("a/b/x.bin", "abc")]
    lock = "stages:\n  s:\n    outs:\n    - path: ../../x\n      md5: abc\n"
    with pytest.raises(EVError) as ei:
        parse_outs(lock, "sub/dvc.lock")
    assert ei.value.code == 2 and "'../../x'" in ei.value.message


def test_teardown_refuses_ignored_files_and_keeps_caches_out_of_it(dvc_repo):
    repo = tracked_project(dvc_repo)
    (repo / ".gitignore").write_text("results/shards/\n")
    sh("git add .gitignore && git commit -qm ignore && dvc push -q", cwd=repo)
    assert run_script("worktree.py", "create", "ig", cwd=repo).returncode == 0
    wt = repo.parent / "exp-ig"
    sh("git tag exp-ig-v1", cwd=wt)
    (wt / "results" / "shards").mkdir()
    (wt / "results" / "shards" / "analysis.csv").write_text("a,b\n1,2\n")
    (wt / "__pycache__").mkdir()
    (wt / "__pycache__" / "x.cpython-312.pyc").write_bytes(b"\0")
    # a shard DB is checked by its rows (not listed as a file); caches are not listed at all
    make_xetrack_db(wt / "results" / "shards" / "run-1.db", [{"f1_score": 0.1}])
    cp = run_script("worktree.py", "teardown", "ig", "--json", cwd=repo)
    assert cp.returncode == 4, cp.stderr
    items = json.loads(cp.stdout)["items"]
    assert items[0] == ("ignored file, not a DVC output (teardown would delete it): "
                        "results/shards/analysis.csv")
    assert len(items) == 2 and items[1].startswith("1 results row(s) of run ")
    (wt / "results" / "shards" / "analysis.csv").unlink()
    (wt / "results" / "shards" / "run-1.db").unlink()
    cp = run_script("worktree.py", "teardown", "ig", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert worktree_list(repo) == [str(repo)]


def test_half_made_worktree_is_listed_and_privatize_finishes_it(dvc_repo, tmp_path):
    """Killed after `dvc checkout`: list says half-made, privatize (inside) finishes it."""
    from killpoints import call_log, killed, wrappers

    repo = tracked_project(dvc_repo)
    env, counter = wrappers(tmp_path / "w0")
    assert run_script("worktree.py", "create", "probe", cwd=repo, env=env).returncode == 0
    log = call_log(counter)
    n = next(int(ln.split()[0]) for ln in log if " dvc checkout" in ln)
    sh(["git", "worktree", "remove", "--force", str(repo.parent / "exp-probe")], cwd=repo)
    sh("git branch -D exp/probe", cwd=repo)
    env, _ = wrappers(tmp_path / "w1", kill_at=n)
    cp = run_script("worktree.py", "create", "half", cwd=repo, env=env)
    assert killed(cp), cp
    wt = repo.parent / "exp-half"
    # no writable link: the private outputs were copied out before checkout
    for rel in ("results/experiments.db", "models/production/model.bin"):
        assert (wt / rel).stat().st_nlink == 1 and not (wt / rel).is_symlink()
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    half = [r for r in rows if r["path"] == str(wt)]
    assert half[0]["kind"] == "half-made" and half[0]["exposed_private"] == []
    assert half[0]["next"].startswith("worktree.py create half finishes it")
    cp = run_script("worktree.py", "privatize", "--json", cwd=wt)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["recovered"] == (
        "finished: the half-made worktree of an interrupted create was completed")
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    assert [r["kind"] for r in rows if r["path"] == str(wt)] == ["experiment"]
    assert_cache_intact(repo / ".dvc" / "cache")


def test_explore_killed_after_checkout_is_redone(dvc_repo, tmp_path):
    from killpoints import call_log, killed, wrappers

    repo = tracked_project(dvc_repo)
    sh("git tag e1", cwd=repo)
    env, counter = wrappers(tmp_path / "w0")
    assert run_script("worktree.py", "explore", "e1", cwd=repo, env=env).returncode == 0
    n = next(int(ln.split()[0]) for ln in call_log(counter) if " dvc checkout" in ln)
    assert run_script("worktree.py", "explore-cleanup", "e1", cwd=repo).returncode == 0
    env, _ = wrappers(tmp_path / "w1", kill_at=n)
    assert killed(run_script("worktree.py", "explore", "e1", cwd=repo, env=env))
    ex = repo.parent / "explore-e1"
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    assert [(r["kind"], r["next"]) for r in rows if r["path"] == str(ex)] == [
        ("half-made", "worktree.py explore e1 (removes it and makes it again)")]
    cp = run_script("worktree.py", "explore", "e1", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["recovered"].startswith("redone: ")
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    assert [r["kind"] for r in rows if r["path"] == str(ex)] == ["explore"]
    assert_cache_intact(repo / ".dvc" / "cache")


def test_half_made_tree_with_work_in_it_is_never_removed_by_a_rerun(dvc_repo, tmp_path):
    from killpoints import call_log, killed, wrappers

    repo = tracked_project(dvc_repo)
    env, counter = wrappers(tmp_path / "w0")
    cp = run_script("worktree.py", "create", "used", "--dry-run", cwd=repo, env=env)
    assert cp.returncode == 0
    # create makes the dry run's calls, then rev-parse --git-common-dir, then worktree add
    n = len(call_log(counter)) + 2
    env, counter = wrappers(tmp_path / "w1", kill_at=n)
    assert killed(run_script("worktree.py", "create", "used", cwd=repo, env=env))
    assert " worktree add " in call_log(counter)[n - 1]
    wt = repo.parent / "exp-used"
    (wt / "notes.txt").write_text("work\n")
    sh("git add notes.txt && git commit -qm work", cwd=wt)
    tip = sh(["git", "rev-parse", "HEAD"], cwd=wt).stdout.strip()
    cp = run_script("worktree.py", "create", "used", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        4, f"{E}{wt} is a half-made worktree (create was interrupted) and exp/used has commits "
           f"of its own ({tip[:12]}); keep the work (commit and tag it), then remove the tree "
           "with: worktree.py teardown used (--force if needed), and create again")
    assert (wt / "notes.txt").is_file()
    cp = run_script("worktree.py", "teardown", "used", "--force", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["backup_tag"] == "backup/exp/used"
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    assert [r["kind"] for r in rows] == ["main"]
    cp = run_script("worktree.py", "create", "used", "--json", cwd=repo)
    assert cp.returncode == 0 and "recovered" not in json.loads(cp.stdout), cp.stderr
