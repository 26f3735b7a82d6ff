"""worktree.py create / setup_worktree.sh: shared cache, links, private copies, refusals."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conftest import count_rows, init_git, make_xetrack_db, run_script, sh

E = "worktree.py: error: "


def md5(path: Path) -> str:
    from _evlib.atomic import md5_file

    return md5_file(path)


def cache_objects(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "files" / "md5").rglob("*") if p.is_file())


def assert_cache_intact(cache: Path) -> int:
    """Re-hash every object: its md5 must be its name (a .dir manifest: name minus .dir)."""
    objs = cache_objects(cache)
    bad = [p for p in objs
           if md5(p) != (p.parent.name + p.name).removesuffix(".dir")]
    assert bad == [], f"corrupted cache objects: {bad}"
    return len(objs)


def tracked_project(repo: Path) -> Path:
    """main with data, a results DB and a production model, all tracked by DVC, committed."""
    (repo / "data").mkdir()
    (repo / "data" / "train.bin").write_bytes(os.urandom(300_000))
    make_xetrack_db(repo / "results" / "experiments.db", [{"f1_score": 0.5}, {"f1_score": 0.6}],
                    params={"version": "e0.1.0"})
    (repo / "models" / "production").mkdir(parents=True)
    (repo / "models" / "production" / "model.bin").write_bytes(b"model-v1" * 1000)
    sh(["dvc", "add", "-q", "data/train.bin", "results/experiments.db",
        "models/production/model.bin"], cwd=repo)
    sh("git add -A && git commit -qm 'e0.1.0 baseline'", cwd=repo)
    return repo


def worktree_list(repo: Path) -> list[str]:
    out = sh(["git", "worktree", "list", "--porcelain"], cwd=repo).stdout
    return [ln[9:] for ln in out.splitlines() if ln.startswith("worktree ")]


def test_experiment_in_worktree_never_touches_the_shared_cache(dvc_repo):
    repo = tracked_project(dvc_repo)
    cache = repo / ".dvc" / "cache"
    before = {p.name: md5(p) for p in cache_objects(cache)}
    main_files = {f: md5(repo / f) for f in ("data/train.bin", "results/experiments.db",
                                             "models/production/model.bin")}
    cp = run_script("setup_worktree.sh", "transformer-pii", "--json", cwd=repo,
                    env={"PYTHON": sys.executable})
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    wt = repo.parent / "exp-transformer-pii"
    assert out["status"] == "ok"
    assert out["path"] == str(wt)
    assert out["branch"] == "exp/transformer-pii"
    assert out["cache_dir"] == str(cache)
    assert out["link_type"] == "hardlink"  # ext4: no reflink, hardlink is the cheapest
    assert sorted(out["private"]) == ["models/production/model.bin", "results/experiments.db"]
    # The cache dir is set in the untracked config.local only; the tracked config is unchanged.
    assert sh(["git", "status", "--porcelain"], cwd=wt).stdout == ""
    assert f"dir = {cache}" in (wt / ".dvc" / "config.local").read_text()
    assert "cache" not in (wt / ".dvc" / "config").read_text()
    assert not (wt / ".dvc" / "cache").exists()

    # Disk: the data file is the cache object itself (same inode), read-only; the files the
    # experiment writes are private copies (own inode, writable).
    data = wt / "data" / "train.bin"
    obj = cache / "files" / "md5" / main_files["data/train.bin"][:2] / \
        main_files["data/train.bin"][2:]
    assert data.stat().st_ino == obj.stat().st_ino
    assert data.stat().st_mode & 0o222 == 0
    for f in ("results/experiments.db", "models/production/model.bin"):
        st = (wt / f).stat()
        assert st.st_nlink == 1 and st.st_ino != (repo / f).stat().st_ino, f
        assert st.st_mode & 0o200, f
        assert md5(wt / f) == main_files[f]
    seen = {os.stat(p).st_ino for p in cache.rglob("*") if p.is_file()}
    extra = sum(p.lstat().st_blocks * 512 for p in wt.rglob("*")
                if p.is_file() and not p.is_symlink() and ".git" not in p.parts
                and p.lstat().st_ino not in seen)
    assert extra < 100_000  # the 300 kB data file costs nothing; only small private copies

    # A whole experiment: xetrack appends rows in place, the model is rewritten in place.
    from xetrack import Tracker

    t = Tracker(str(wt / "results" / "experiments.db"), params={"version": "exp-tr-v1"})
    t.log({"f1_score": 0.94})
    t.log({"f1_score": 0.95})
    with open(wt / "models" / "production" / "model.bin", "r+b") as fh:
        fh.write(b"TRANSFORMER")
    sh(["dvc", "add", "-q", "results/experiments.db", "models/production/model.bin"], cwd=wt)
    sh("git add -A && git commit -qm 'exp: transformer'", cwd=wt)

    n = assert_cache_intact(cache)
    assert n == len(before) + 2  # two new objects, and every old one unchanged
    assert all(md5(cache / "files" / "md5" / p.parent.name / p.name) == h
               for p in cache_objects(cache) for name, h in before.items() if p.name == name)
    assert {f: md5(repo / f) for f in main_files} == main_files
    assert count_rows(repo / "results" / "experiments.db") == 2
    assert count_rows(wt / "results" / "experiments.db") == 4
    assert sh(["dvc", "status", "--json"], cwd=repo).stdout.strip() == "{}"


def test_without_private_copies_the_same_experiment_corrupts_the_cache(dvc_repo):
    """The control: a plain hardlinked checkout lets an in-place write rewrite the cache."""
    repo = tracked_project(dvc_repo)
    cp = run_script("worktree.py", "create", "ctl", "--private", "nothing-matches/", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    wt = repo.parent / "exp-ctl"
    db = wt / "results" / "experiments.db"
    assert db.stat().st_nlink > 1  # still a link into the cache
    from xetrack import Tracker

    Tracker(str(db), params={"version": "x"}).log({"f1_score": 0.1})  # root ignores 0444
    cache = repo / ".dvc" / "cache"
    bad = [p for p in cache_objects(cache)
           if md5(p) != (p.parent.name + p.name).removesuffix(".dir")]
    assert len(bad) == 1


def test_create_refusals_are_one_line_and_leave_nothing(dvc_repo, tmp_path):
    repo = tracked_project(dvc_repo)
    git_repo = init_git(tmp_path / "plain")
    sh(["git", "branch", "exp/taken"], cwd=repo)
    (repo.parent / "exp-squatter").mkdir()
    cases = [
        (["bad/name"], 2, f"{E}bad experiment name 'bad/name'; use letters, digits, '.', '_' "
                          "or '-' (start with a letter or digit)"),
        (["-x"], 2, None),  # argparse: an option, still one line
        (["taken"], 2, f"{E}branch exp/taken already exists; pick another name, or delete the "
                       "branch after tagging it"),
        (["squatter"], 2, f"{E}path {repo.parent / 'exp-squatter'} already exists; pick "
                          "another name, or move that directory away"),
        (["ok", "--base", "nope"], 5, f"{E}--base nope is not a commit in {repo}; pass a "
                                      "branch, tag or commit that exists (git log --oneline)"),
        (["ok", "--private", "/abs"], 2, f"{E}--private '/abs' must be a path relative to the "
                                         "repository root; e.g. --private "
                                         "results/experiments.db --private models/"),
    ]
    for args, code, line in cases:
        cp = run_script("worktree.py", "create", *args, cwd=repo)
        assert cp.returncode == code, (args, cp.stderr)
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        if line:
            assert cp.stderr.strip() == line
    # Not a DVC repo.
    cp = run_script("worktree.py", "create", "ok", cwd=git_repo)
    assert (cp.returncode, cp.stderr.strip()) == (2, f"{E}DVC is not initialised in {git_repo}; "
                                                     "run `dvc init` and commit .dvc/ first")
    # Dirty tree (git), then dirty DVC data (modified, not dvc-added).
    (repo / "notes.txt").write_text("wip\n")
    cp = run_script("worktree.py", "create", "ok", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        4, f"{E}{repo} has 1 uncommitted change(s) (first: notes.txt) that would not be in the "
           "new worktree; commit them (git add -A && git commit) or stash them, or pass --base REF")
    (repo / "notes.txt").unlink()
    data = repo / "data" / "train.bin"
    from _evlib.atomic import write_bytes

    write_bytes(data, b"changed")
    cp = run_script("worktree.py", "create", "ok", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        4, f"{E}{repo} has 1 DVC-tracked change(s) not recorded with dvc add (first: "
           "data/train.bin (modified)) that would not be in the new worktree; run dvc add on "
           "them and commit, or pass --base REF")
    # --base lets a dirty tree through (its changes are not wanted), and a second create of
    # the same name is refused.
    cp = run_script("worktree.py", "create", "ok", "--base", "main", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    cp = run_script("worktree.py", "create", "ok", "--base", "main", cwd=repo)
    assert (cp.returncode, cp.stderr.strip()) == (
        2, f"{E}name 'ok' is already used by the worktree {repo.parent / 'exp-ok'} (it is a "
           "finished experiment worktree); pick another name, or tear that one down first "
           "(worktree.py teardown ok)")
    assert worktree_list(repo) == [str(repo), str(repo.parent / "exp-ok")]
    branches = sh(["git", "branch", "--format=%(refname:short)"], cwd=repo).stdout.split()
    assert sorted(branches) == ["exp/ok", "exp/taken", "main"]


def test_failure_after_worktree_add_rolls_back(dvc_repo):
    """Data in neither the cache nor the remote: dvc checkout fails after dvc fetch, with
    DVC's own error line and what to do; nothing is left behind."""
    repo = tracked_project(dvc_repo)
    h = md5(repo / "data" / "train.bin")
    obj = repo / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]
    obj.chmod(0o644)
    obj.unlink()
    cp = run_script("worktree.py", "create", "doomed", "--json", cwd=repo)
    assert cp.returncode == 1, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert cp.stderr.strip() == (
        f"{E}dvc checkout failed: ERROR: Checkout failed for following targets: data/train.bin; "
        "the data is neither in the DVC cache nor on the remote: push it from where it was made "
        "(dvc push -T), or pull from the remote that has it (dvc pull -r NAME)")
    assert json.loads(cp.stdout)["status"] == "error"
    assert worktree_list(repo) == [str(repo)]
    assert not (repo.parent / "exp-doomed").exists()
    assert sh(["git", "branch", "--list", "exp/doomed"], cwd=repo).stdout == ""


def test_create_from_a_tag_with_custom_private_and_privatize_after_dvc_add(dvc_repo):
    repo = tracked_project(dvc_repo)
    sh(["git", "tag", "-a", "e0.1.0", "-m", "baseline"], cwd=repo)
    (repo / "later.txt").write_text("later\n")
    sh("git add -A && git commit -qm later", cwd=repo)
    cp = run_script("worktree.py", "--json", "create", "cnn", "--base", "e0.1.0",
                    "--private", "data/", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    wt = Path(out["path"])
    assert out["base"] == "e0.1.0" and out["private"] == ["data/train.bin"]
    assert not (wt / "later.txt").exists()
    assert (wt / "data" / "train.bin").stat().st_nlink == 1
    assert (wt / "results" / "experiments.db").stat().st_nlink > 1  # not private this time
    # dvc add links a private file back into the cache: list shows it, privatize fixes it.
    from _evlib.atomic import write_bytes

    write_bytes(wt / "data" / "train.bin", b"new data")
    sh(["dvc", "add", "-q", "data/train.bin"], cwd=wt)
    assert (wt / "data" / "train.bin").stat().st_nlink > 1
    rows = json.loads(run_script("worktree.py", "list", "--json", cwd=wt).stdout)["worktrees"]
    assert [(r["kind"], r.get("exposed_private")) for r in rows] == [
        ("main", None), ("experiment", ["data/train.bin"])]
    cp = run_script("worktree.py", "privatize", "--json", cwd=wt)
    assert json.loads(cp.stdout)["private"] == ["data/train.bin"]
    assert (wt / "data" / "train.bin").stat().st_nlink == 1
    assert (wt / "data" / "train.bin").read_bytes() == b"new data"


def test_wrapper_without_name_is_a_usage_error(tmp_path):
    cp = run_script("setup_worktree.sh", cwd=tmp_path)
    assert cp.returncode == 2
    assert cp.stderr.strip() == ("setup_worktree.sh: error: missing NAME; usage: "
                                 "setup_worktree.sh NAME [--base REF] [--private PATH ...] "
                                 "[--json]")


def _other_fs() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and \
            shm.stat().st_dev != Path(__file__).stat().st_dev:
        return shm
    return None


def test_cache_dir_configured_in_main_on_another_filesystem_gives_symlinks(dvc_repo, tmp_path):
    """main's configured cache (another filesystem: no hardlinks) is the one shared."""
    import shutil
    import uuid

    import pytest

    shm = _other_fs()
    if shm is None or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test repo")
    cache = shm / f"ev-test-cache-{uuid.uuid4().hex[:8]}"
    try:
        sh(["dvc", "cache", "dir", "--local", str(cache)], cwd=dvc_repo)
        repo = tracked_project(dvc_repo)
        cp = run_script("worktree.py", "create", "sym", "--json", cwd=repo)
        assert cp.returncode == 0, cp.stderr
        out = json.loads(cp.stdout)
        assert (out["cache_dir"], out["link_type"]) == (str(cache), "symlink")
        wt = Path(out["path"])
        assert (wt / "data" / "train.bin").is_symlink()
        assert str((wt / "data" / "train.bin").resolve()).startswith(str(cache))
        db = wt / "results" / "experiments.db"
        assert not db.is_symlink() and db.stat().st_nlink == 1
        from xetrack import Tracker

        Tracker(str(db), params={"version": "s"}).log({"f1_score": 0.3})
        with open(wt / "models" / "production" / "model.bin", "wb") as fh:
            fh.write(b"rewritten")
        assert assert_cache_intact(cache) == 3
        assert not (repo / ".dvc" / "cache").exists()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_dry_run_creates_nothing(dvc_repo):
    repo = tracked_project(dvc_repo)
    cp = run_script("worktree.py", "create", "dry", "--dry-run", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert (out["dry_run"], out["path"], out["branch"], out["cache_dir"]) == (
        True, str(repo.parent / "exp-dry"), "exp/dry", str(repo / ".dvc" / "cache"))
    assert worktree_list(repo) == [str(repo)] and not (repo.parent / "exp-dry").exists()


def test_a_wrong_db_object_in_the_cache_is_refused_not_copied(dvc_repo):
    """DVC trusts the objects it finds in its cache; the private copy of the results DB is
    hashed while it is made: a zeroed object is one line and a failed create (no empty
    DB to run experiments against, exit 0)."""
    repo = tracked_project(dvc_repo)
    h = md5(repo / "results" / "experiments.db")
    obj = repo / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]
    size = obj.stat().st_size
    obj.unlink()  # a new inode: main's own DB (a hardlink of the old one) stays as it was
    obj.write_bytes(b"\0" * size)  # as a torn write leaves it: the size right, no bytes
    cp = run_script("worktree.py", "create", "bad-db", "--json", cwd=repo)
    assert cp.returncode == 1, cp.stdout
    err = [ln for ln in cp.stderr.splitlines() if ln]
    assert len(err) == 1 and f"DVC cache object {obj} is damaged" in err[0], cp.stderr
    assert not (repo.parent / "exp-bad-db" / "results" / "experiments.db").exists()
