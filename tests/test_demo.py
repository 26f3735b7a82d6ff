"""The demo is the main job: it must always pass, and leave a real project with --keep."""

from __future__ import annotations

import json
import sqlite3

from conftest import run_script, sh


def test_demo_runs_end_to_end_and_keeps_the_project(tmp_path):
    keep = tmp_path / "demo"
    cp = run_script("demo.py", "--json", "--keep", str(keep), cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["status"] == "ok"
    proj = keep / "project"
    assert "e0.1.0" in out["tags"]
    msg = sh(["git", "tag", "-l", "e0.1.0", "--format=%(contents:subject)"], cwd=proj).stdout
    assert "model=logreg" in msg
    # The results DB is DVC-tracked and its rows carry real metrics from a fitted model.
    assert (proj / "results" / "experiments.db.dvc").exists()
    con = sqlite3.connect(proj / "results" / "experiments.db")
    f1 = con.execute('SELECT f1_score FROM "default" WHERE f1_score IS NOT NULL').fetchall()
    assert len(f1) == 1 and 0.8 < f1[0][0] <= 1.0
    assert sh(["git", "status", "--porcelain"], cwd=proj).stdout == ""


def test_demo_refuses_an_existing_keep_dir(tmp_path):
    cp = run_script("demo.py", "--keep", str(tmp_path), cwd=tmp_path)
    assert cp.returncode == 2
    assert cp.stderr.strip() == (f"demo.py: error: --keep {tmp_path} already exists; "
                                 "name a folder that does not exist yet")
