"""The pitfalls SKILL.md lists, each shown on the real tools (the facts behind the docs)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SCRIPTS, make_xetrack_db, sh


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's object names


def cache_objects(repo: Path) -> list[Path]:
    return [p for p in (repo / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_cp_over_a_linked_tracked_file_corrupts_the_cache(dvc_repo, link):
    """The workflows' `cp exp/model.bin models/production/model.bin` writes into the cache."""
    sh(["dvc", "config", "--local", "cache.type", link], cwd=dvc_repo)
    model = dvc_repo / "models" / "production" / "model.bin"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model A" * 1000)
    sh(["dvc", "add", "models/production/model.bin"], cwd=dvc_repo)
    (obj,) = cache_objects(dvc_repo)
    assert obj.parent.name + obj.name == md5(obj)
    new = dvc_repo / "new.bin"
    new.write_bytes(b"model B" * 1000)
    sh(["cp", str(new), str(model)])  # what the workflow document does
    assert obj.parent.name + obj.name != md5(obj), "cache object rewritten in place"


def test_atomic_replace_over_a_linked_tracked_file_keeps_the_cache(dvc_repo):
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.atomic import copy_file

    sh(["dvc", "config", "--local", "cache.type", "hardlink"], cwd=dvc_repo)
    model = dvc_repo / "model.bin"
    model.write_bytes(b"model A" * 1000)
    sh(["dvc", "add", "model.bin"], cwd=dvc_repo)
    new = dvc_repo / "new.bin"
    new.write_bytes(b"model B" * 1000)
    copy_file(new, model)
    for obj in cache_objects(dvc_repo):
        assert obj.parent.name + obj.name == md5(obj)


def test_workflows_duckdb_query_on_predictions_fails_table_is_default(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.sql import duckdb_attach_sqlite, duckdb_connect

    db = tmp_path / "results" / "experiments.db"
    make_xetrack_db(db, [{"f1_score": 0.9}], params={"version": "e0.1.0", "model": "m"})
    con = duckdb_connect()
    duckdb_attach_sqlite(con, db, "db")
    with pytest.raises(Exception, match="predictions"):
        con.execute("SELECT version, f1_score FROM db.predictions").fetchall()
    assert con.execute('SELECT version, f1_score FROM db."default"').fetchall() == [
        ("e0.1.0", pytest.approx(0.9))]


def test_track_on_a_dataclass_prefixes_columns_with_the_argument_name(tmp_path):
    """`best.learning_rate` in the workflows is `config_learning_rate` in the table."""
    from xetrack import Reader, Tracker

    @dataclass(frozen=True)
    class ExperimentConfig:
        learning_rate: float
        batch_size: int

    def train_and_evaluate(config: ExperimentConfig) -> dict:
        return {"f1_score": 0.5 + config.learning_rate}

    db = str(tmp_path / "exp.db")
    Tracker(db, params={"version": "e0.2.0"}).track(
        train_and_evaluate, args=[ExperimentConfig(1e-3, 16)])
    df = Reader(db).to_df()
    assert "config_learning_rate" in df.columns and "learning_rate" not in df.columns
    assert df.loc[0, "config_batch_size"] == 16 and df.loc[0, "f1_score"] == pytest.approx(0.501)


def test_dvc_add_dot_inside_a_subdirectory_is_rejected_by_dvc3(dvc_repo):
    cand = dvc_repo / "models" / "candidates"
    cand.mkdir(parents=True)
    (cand / "a.pkl").write_bytes(b"a")
    cp = sh(["dvc", "add", "."], cwd=cand, check=False)
    assert cp.returncode != 0
    sh(["dvc", "add", "models/candidates"], cwd=dvc_repo)
    assert (dvc_repo / "models" / "candidates.dvc").exists()


def test_dvc_cache_dir_without_local_edits_the_tracked_config(dvc_repo, tmp_path):
    shared = tmp_path / "shared-cache"
    sh(["dvc", "cache", "dir", str(shared)], cwd=dvc_repo)
    assert str(shared) in (dvc_repo / ".dvc" / "config").read_text()
    assert sh(["git", "status", "--porcelain"], cwd=dvc_repo).stdout.strip() == "M .dvc/config"
    sh(["git", "checkout", ".dvc/config"], cwd=dvc_repo)
    sh(["dvc", "cache", "dir", "--local", str(shared)], cwd=dvc_repo)
    assert sh(["git", "status", "--porcelain"], cwd=dvc_repo).stdout.strip() == ""


def test_plain_dvc_push_skips_objects_only_an_older_tag_needs(dvc_repo, tmp_path):
    f = dvc_repo / "data.bin"
    f.write_bytes(b"v1")
    sh(["dvc", "add", "data.bin"], cwd=dvc_repo)
    sh("git add -A && git commit -qm v1 && git tag -a v1 -m v1", cwd=dvc_repo)
    v1 = md5(f)
    f.unlink()
    f.write_bytes(b"v2")
    sh(["dvc", "add", "data.bin"], cwd=dvc_repo)
    sh("git add -A && git commit -qm v2", cwd=dvc_repo)
    sh(["dvc", "push"], cwd=dvc_repo)
    remote = tmp_path / "dvc-remote" / "files" / "md5"
    assert not (remote / v1[:2] / v1[2:]).exists()
    sh(["dvc", "push", "-T"], cwd=dvc_repo)
    assert (remote / v1[:2] / v1[2:]).exists()



def test_xetrack_appending_to_a_tracked_db_needs_unprotect_with_a_link_cache(dvc_repo):
    """With hardlinks, logging into a `dvc add`-ed results DB rewrites the cache object;
    `dvc unprotect` first makes the DB a private copy and the cache stays intact."""
    sh(["dvc", "config", "--local", "cache.type", "hardlink"], cwd=dvc_repo)
    db = dvc_repo / "results" / "experiments.db"
    make_xetrack_db(db, [{"f1_score": 0.5}], params={"version": "e0.1.0"})
    sh(["dvc", "add", "results/experiments.db"], cwd=dvc_repo)
    sh(["dvc", "unprotect", "results/experiments.db"], cwd=dvc_repo)
    make_xetrack_db(db, [{"f1_score": 0.6}], params={"version": "e0.2.0"})
    for obj in cache_objects(dvc_repo):
        assert obj.parent.name + obj.name == md5(obj)
    # Without unprotect the same append damages the object.
    sh(["dvc", "add", "results/experiments.db"], cwd=dvc_repo)
    import os

    os.chmod(db, 0o644)  # root writes through read-only bits anyway; be explicit
    make_xetrack_db(db, [{"f1_score": 0.7}], params={"version": "e0.3.0"})
    assert any(obj.parent.name + obj.name != md5(obj) for obj in cache_objects(dvc_repo))


def test_default_cache_type_copies_so_appending_to_a_tracked_db_is_safe(dvc_repo):
    """DVC's default cache.type (reflink,copy) gives a private copy on ext4 (no reflinks)."""
    db = dvc_repo / "results" / "experiments.db"
    make_xetrack_db(db, [{"f1_score": 0.5}], params={"version": "e0.1.0"})
    sh(["dvc", "add", "results/experiments.db"], cwd=dvc_repo)
    (obj,) = [o for o in cache_objects(dvc_repo)]
    assert obj.stat().st_ino != db.stat().st_ino and not db.is_symlink()
    make_xetrack_db(db, [{"f1_score": 0.6}], params={"version": "e0.2.0"})
    assert obj.parent.name + obj.name == md5(obj)
