"""worktree.py teardown (refuses to lose work), explore and explore-cleanup, list."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import count_rows, run_script, sh
from test_worktree import (
    assert_cache_intact,
    cache_objects,
    md5,
    tracked_project,
    worktree_list,
)

E = "worktree.py: error: "
L = "worktree.py: would lose: "


def tip(repo: Path, ref: str) -> str:
    return sh(["git", "rev-parse", ref], cwd=repo).stdout.strip()


def test_teardown_refuses_listing_what_would_be_lost_then_removes(dvc_repo):
    repo = tracked_project(dvc_repo)
    sh(["dvc", "push", "-q"], cwd=repo)
    assert run_script("worktree.py", "create", "tr", cwd=repo).returncode == 0
    wt = repo.parent / "exp-tr"
    model = wt / "models" / "production" / "model.bin"
    from _evlib.atomic import write_bytes
    from xetrack import Tracker

    # Commit 1, tagged exp-tr-v0: a new model. Commit 2 (the tip): rows and another model.
    write_bytes(model, b"model-v0")
    sh("dvc add -q models/production/model.bin && git add -A && git commit -qm v0 "
       "&& git tag -a exp-tr-v0 -m v0", cwd=wt)
    run_script("worktree.py", "privatize", cwd=wt)
    t = Tracker(str(wt / "results" / "experiments.db"), params={"version": "exp-tr"})
    t.log({"f1_score": 0.9})
    t.log({"f1_score": 0.91})
    with open(model, "wb") as fh:  # in place: privatize made it a private copy again
        fh.write(b"model-v1")
    sh("dvc add -q results/experiments.db models/production/model.bin && git add -A "
       "&& git commit -qm v1", cwd=wt)
    (wt / "notes.txt").write_text("unsaved\n")
    head = tip(repo, "exp/tr")
    m0, m1, rdb = md5_of(b"model-v0"), md5_of(b"model-v1"), md5(wt / "results" /
                                                                 "experiments.db")
    cp = run_script("worktree.py", "teardown", "tr", "--json", cwd=repo)
    assert cp.returncode == 4, cp.stderr
    lines = cp.stderr.strip().splitlines()
    push = f"; run dvc push -T in {wt}"
    expected = [
        "uncommitted change: notes.txt",
        f"no tag points at exp/tr's last commit {head[:12]}",
        f"not on remote 'storage': models/production/model.bin (md5 {m1[:12]}) at exp/tr tip"
        + push,
        f"not on remote 'storage': results/experiments.db (md5 {rdb[:12]}) at exp/tr tip" + push,
        f"not on remote 'storage': models/production/model.bin (md5 {m0[:12]}) at exp-tr-v0"
        + push,
        f"2 results row(s) of run {t.track_id} in results/experiments.db are not in main's "
        "results/experiments.db",
    ]
    assert lines == [f"{E}teardown of exp-tr refused: 6 thing(s) would be lost (listed below); "
                     "commit, tag, dvc push -T and merge the results into main, or pass --force",
                     *[L + x for x in expected]]
    assert json.loads(cp.stdout)["items"] == expected
    assert wt.exists()

    # Fix the tip only: a plain `dvc push` pushes the tip, not the tag exp-tr-v0. The tip's
    # tag is a tag of a tag (peeled to the tip's commit, not to the inner tag's object).
    (wt / "notes.txt").unlink()
    sh("git tag -a exp-tr-v1-inner -m inner && git tag -a exp-tr-v1 -m v1 exp-tr-v1-inner "
       "&& dvc push -q", cwd=wt)
    from _evlib.atomic import copy_file

    copy_file(wt / "results" / "experiments.db", repo / "results" / "experiments.db")  # merged
    cp = run_script("worktree.py", "teardown", "tr", cwd=repo)
    assert cp.returncode == 4
    # Merged into main's working DB but not committed there: a `git reset --hard` in main
    # would lose the rows, so the committed DB at main's HEAD is checked too.
    assert cp.stderr.strip().splitlines()[1:] == [
        L + expected[4],
        f"{L}2 results row(s) of run {t.track_id} in results/experiments.db are not in main's "
        "results/experiments.db as committed at HEAD (commit it in main: dvc add "
        "results/experiments.db && git commit)"]
    sh("dvc add -q results/experiments.db && git commit -qam 'merge tr'", cwd=repo)

    sh(["dvc", "push", "-q", "-T"], cwd=wt)
    cp = run_script("worktree.py", "teardown", "tr", "--dry-run", cwd=repo)
    assert cp.returncode == 0 and wt.exists()
    cp = run_script("worktree.py", "teardown", "tr", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert (out["status"], out["removed"], out["branch_deleted"], out["tags"],
            out["backup_tag"], out["lost"]) == (
        "ok", str(wt), "exp/tr", ["exp-tr-v1", "exp-tr-v1-inner"], None, [])
    assert not wt.exists() and worktree_list(repo) == [str(repo)]
    assert sh(["git", "branch", "--list", "exp/tr"], cwd=repo).stdout == ""
    assert tip(repo, "exp-tr-v1^{commit}") == head
    # No gc: the experiment's objects are still in the shared cache, all intact.
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    assert all((cache / h[:2] / h[2:]).is_file() for h in (m0, m1, rdb))
    assert_cache_intact(repo / ".dvc" / "cache")
    assert count_rows(repo / "results" / "experiments.db") == 4


def md5_of(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()  # noqa: S324


def test_teardown_force_removes_after_listing_and_keeps_a_backup_tag(dvc_repo):
    repo = tracked_project(dvc_repo)
    sh(["dvc", "push", "-q"], cwd=repo)
    assert run_script("worktree.py", "create", "ff", cwd=repo).returncode == 0
    wt = repo.parent / "exp-ff"
    (wt / "code.py").write_text("print('new')\n")
    sh("git add -A && git commit -qm code", cwd=wt)
    head = tip(repo, "exp/ff")
    cp = run_script("worktree.py", "teardown", "ff", "--force", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr.strip().splitlines() == [
        f"worktree.py: warning: --force: removing anyway, this is lost: no tag points at "
        f"exp/ff's last commit {head[:12]}"]
    out = json.loads(cp.stdout)
    assert (out["forced"], out["backup_tag"]) == (True, "backup/exp/ff")
    assert out["restore"] == f"git worktree add {wt} -b exp/ff backup/exp/ff"
    assert tip(repo, "backup/exp/ff") == head
    assert not wt.exists() and worktree_list(repo) == [str(repo)]
    assert sh(["git", "branch", "--list", "exp/ff"], cwd=repo).stdout == ""
    cp = run_script("worktree.py", "teardown", "ff", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        5, f"{E}no experiment worktree {wt}; list them with: worktree.py list")


def test_explore_tag_read_only_from_cache_or_remote_and_cleanup_removes_only_its_own(dvc_repo):
    repo = tracked_project(dvc_repo)
    sh("git tag -a e0.1.0 -m baseline && dvc push -q", cwd=repo)
    v1 = md5(repo / "models" / "production" / "model.bin")
    from _evlib.atomic import write_bytes

    write_bytes(repo / "models" / "production" / "model.bin", b"model-v2")
    sh("dvc add -q models/production/model.bin && git add -A && git commit -qm v2", cwd=repo)
    main_head = tip(repo, "HEAD")
    obj = repo / ".dvc" / "cache" / "files" / "md5" / v1[:2] / v1[2:]
    obj.chmod(0o644)
    obj.unlink()  # e0.1.0's model only on the remote now

    cp = run_script("worktree.py", "explore", "e0.1.0", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    ex = repo.parent / "explore-e0.1.0"
    assert (out["path"], out["tag"], out["existing"], out["data_from"], out["link_type"]) == (
        str(ex), "e0.1.0", False, "remote", "hardlink")
    assert md5(ex / "models" / "production" / "model.bin") == v1
    assert obj.is_file()  # pulled into the shared cache
    for f in ("models/production/model.bin", "data/train.bin", "README.md",
              "results/experiments.db.dvc"):
        assert (ex / f).stat().st_mode & 0o222 == 0, f
    assert sh(["git", "status", "--porcelain"], cwd=ex).stdout == ""
    # The user's own working tree did not move.
    assert tip(repo, "HEAD") == main_head
    assert (repo / "models" / "production" / "model.bin").read_bytes() == b"model-v2"
    again = json.loads(run_script("worktree.py", "explore", "e0.1.0", "--json", cwd=repo).stdout)
    assert again["existing"] is True

    # Other worktrees: an experiment and a hand-made one; cleanup leaves them alone.
    assert run_script("worktree.py", "create", "keep", cwd=repo).returncode == 0
    sh(["git", "worktree", "add", "-q", "--detach", str(repo.parent / "explore-manual")],
       cwd=repo)
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=repo).stdout)["worktrees"]
    assert sorted((Path(r["path"]).name, r["kind"]) for r in rows) == [
        ("exp-keep", "experiment"), ("explore-e0.1.0", "explore"),
        ("explore-manual", "other"), ("proj", "main")]
    cp = run_script("worktree.py", "explore-cleanup", "e9", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        5, f"{E}no explore worktree of tag 'e9'; list them with: worktree.py list")
    # Results changed in the exploration (an ignored DVC output, invisible to git status).
    import sqlite3

    con = sqlite3.connect(ex / "results" / "experiments.db")
    con.execute("DELETE FROM \"default\" WHERE rowid = (SELECT min(rowid) FROM \"default\")")
    con.commit()
    con.close()
    cp = run_script("worktree.py", "explore-cleanup", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        4, f"{E}explore worktree {ex} has 1 local change(s) (first: DVC output "
           "results/experiments.db (modified)); copy them elsewhere, or pass --force to "
           "discard them")
    (ex / "notes.txt").write_text("looked at it\n")
    cp = run_script("worktree.py", "explore-cleanup", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        4, f"{E}explore worktree {ex} has 2 local change(s) (first: notes.txt); copy them "
           "elsewhere, or pass --force to discard them")
    assert ex.exists()
    cp = run_script("worktree.py", "explore-cleanup", "--force", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["removed"] == [
        {"path": str(ex), "tag": "e0.1.0",
         "discarded": ["notes.txt", "DVC output results/experiments.db (modified)"]}]
    assert not ex.exists()
    assert sorted(Path(p).name for p in worktree_list(repo)) == [
        "exp-keep", "explore-manual", "proj"]
    assert_cache_intact(repo / ".dvc" / "cache")
    cp = run_script("worktree.py", "explore", "nope", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        5, f"{E}no tag 'nope'; list tags with: git tag -l -n9")


def test_dvc_gc_w_in_a_worktree_deletes_what_main_needs(dvc_repo):
    """Why nothing here runs gc: the cache is shared, gc -w sees only its own workspace."""
    repo = tracked_project(dvc_repo)
    assert run_script("worktree.py", "create", "g", cwd=repo).returncode == 0
    from _evlib.atomic import write_bytes

    write_bytes(repo / "models" / "production" / "model.bin", b"model-v2")
    sh("dvc add -q models/production/model.bin && git commit -qam v2", cwd=repo)
    h = md5_of(b"model-v2")
    obj = repo / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]
    assert obj.is_file()
    sh(["dvc", "gc", "-w", "-f", "-q"], cwd=repo.parent / "exp-g")
    assert not obj.exists()


def test_teardown_of_a_worktree_whose_directory_was_deleted(dvc_repo):
    repo = tracked_project(dvc_repo)
    sh(["dvc", "push", "-q"], cwd=repo)
    assert run_script("worktree.py", "create", "gone", cwd=repo).returncode == 0
    wt = repo.parent / "exp-gone"
    import shutil

    shutil.rmtree(wt)
    head = tip(repo, "exp/gone")
    cp = run_script("worktree.py", "teardown", "gone", cwd=repo)
    assert cp.returncode == 4
    assert cp.stderr.strip().splitlines()[1:] == [
        f"{L}worktree directory {wt} is missing: anything uncommitted in it is already gone",
        f"{L}no tag points at exp/gone's last commit {head[:12]}"]
    cp = run_script("worktree.py", "teardown", "gone", "--force", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["backup_tag"] == "backup/exp/gone"
    assert worktree_list(repo) == [str(repo)]
    assert sh(["git", "branch", "--list", "exp/gone"], cwd=repo).stdout == ""


def test_remote_check_through_dvc_status_c(dvc_repo):
    """The check used for remotes that are not a local directory (S3...), run on a local one."""
    from _evlib.teardown import missing_by_dvc_status

    repo = tracked_project(dvc_repo)
    sh(["dvc", "push", "-q", "data/train.bin"], cwd=repo)
    assert missing_by_dvc_status(repo, "storage", "e1") == [
        f"not on remote 'storage': {p} (new) at e1; run dvc push -T in {repo}"
        for p in ("models/production/model.bin", "results/experiments.db")]
    sh(["dvc", "push", "-q"], cwd=repo)
    assert missing_by_dvc_status(repo, "storage", "e1") == []


def test_training_again_inside_an_exploration_cannot_touch_the_cache(dvc_repo):
    """Found by QA: root ignores read-only bits, so explore makes results/models private."""
    from conftest import make_xetrack_db

    repo = tracked_project(dvc_repo)
    sh("git tag -a e0.1.0 -m baseline", cwd=repo)
    assert run_script("worktree.py", "explore", "e0.1.0", cwd=repo).returncode == 0
    ex = repo.parent / "explore-e0.1.0"
    db = ex / "results" / "experiments.db"
    assert db.stat().st_nlink == 1 and not db.is_symlink()
    make_xetrack_db(db, [{"f1_score": 0.9}], params={"version": "e0.1.0-repro"})
    assert count_rows(db) == 3
    assert_cache_intact(repo / ".dvc" / "cache")


def test_data_changed_in_place_needs_private_data(dvc_repo):
    """Found by QA: an in-place rewrite of linked data rewrites main's cache object; creating
    the worktree with --private data/ (as SKILL.md says for data changes) keeps it intact."""
    repo = tracked_project(dvc_repo)
    cache = repo / ".dvc" / "cache"
    assert run_script("worktree.py", "create", "datafix", "--private", "data/",
                      "--private", "results/*.db", "--private", "models/",
                      cwd=repo).returncode == 0
    data = repo.parent / "exp-datafix" / "data" / "train.bin"
    assert data.stat().st_nlink == 1
    with open(data, "r+b") as fh:  # what pandas' to_parquet on the same path amounts to
        fh.write(b"edited in place")
    assert_cache_intact(cache)
    # The control: the default list leaves data linked, and the same write damages the cache.
    assert run_script("worktree.py", "create", "datafix2", cwd=repo).returncode == 0
    data2 = repo.parent / "exp-datafix2" / "data" / "train.bin"
    assert data2.stat().st_nlink > 1
    os.chmod(data2, 0o644)  # root writes through read-only bits anyway
    with open(data2, "r+b") as fh:
        fh.write(b"edited in place")
    bad = [p for p in cache_objects(cache)
           if md5(p) != (p.parent.name + p.name).removesuffix(".dir")]
    assert len(bad) == 1


def test_a_damaged_directory_listing_on_the_remote_counts_as_not_pushed(dvc_repo):
    """The remote's .dir object of a directory output is what a teammate's pull reads: one
    that is not a DVC listing keeps nothing safe, so teardown refuses naming the output."""
    repo = tracked_project(dvc_repo)
    sh(["dvc", "push", "-q"], cwd=repo)
    assert run_script("worktree.py", "create", "dl", cwd=repo).returncode == 0
    wt = repo.parent / "exp-dl"
    cands = wt / "models" / "candidates"
    cands.mkdir(parents=True)
    (cands / "a.bin").write_bytes(b"a" * 100)
    (cands / "b.bin").write_bytes(b"b" * 100)
    sh("dvc add -q models/candidates && git add -A && git commit -qm cands "
       "&& git tag -a exp-dl-v1 -m v1 && dvc push -q -T", cwd=wt)
    assert run_script("worktree.py", "teardown", "dl", "--dry-run", cwd=repo).returncode == 0
    text = (wt / "models" / "candidates.dvc").read_text()
    dir_md5 = next(ln.split()[-1] for ln in text.splitlines() if "md5:" in ln)
    # the fixture's remote (dvc remote list cuts a long path to the terminal's width)
    listing = dvc_repo.parent / "dvc-remote" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    assert listing.is_file()
    listing.write_bytes(b"\0" * 64)  # zeroed, as a torn upload leaves it
    cp = run_script("worktree.py", "teardown", "dl", "--json", cwd=repo)
    assert cp.returncode == 4, cp.stderr
    want = (f"not on remote 'storage': models/candidates (md5 {dir_md5[:12]}) at exp-dl-v1; "
            f"run dvc push -T in {wt}")
    assert json.loads(cp.stdout)["items"] == [want]
    assert wt.exists()
