"""A run's sandbox never writes through to the project: cache-linked DVC outputs are private
copies, any other file changed through a link fails the run, naming it and how to restore it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import count_rows, run_script, sh
from run_support import cache_objects_ok, make_project, sha

APPEND_TRACKED = '''\
import sys
from pathlib import Path
from xetrack import Tracker
Tracker("results/experiments.db", params={"x": sys.argv[1]}).log({"f1_score": 0.5})
with open(sys.argv[2], "a") as fh:  # an existing project file, seen through a link
    fh.write("appended\\n")
'''

READ_THEN_WRITE_DATA = '''\
import sys
from pathlib import Path
from xetrack import Tracker
n = len(Path("data/train.csv").read_text().splitlines())
with open("data/train.csv", "a") as fh:  # the DVC-tracked file (a cache object's link)
    fh.write("9,9\\n")
Path("data/train.csv").write_text("rewritten\\n") if sys.argv[1] == "2" else None
Tracker("results/experiments.db", params={"x": sys.argv[1]}).log({"f1_score": 0.5,
                                                                  "n_read": n})
'''

WRITE_PLOT = '''\
import sys
from pathlib import Path
from xetrack import Tracker
Tracker("results/experiments.db", params={"x": sys.argv[1]}).log({"f1_score": 0.5})
Path("plots").mkdir(exist_ok=True)
Path("plots/loss.txt").write_text(f"run {sys.argv[1]}\\n")
'''


def _proj(tmp_path: Path, cache_type: str | None = None) -> Path:
    proj = make_project(tmp_path / "proj", tmp_path / "remote")
    if cache_type:
        sh(["dvc", "config", "cache.type", cache_type], cwd=proj)
        sh(["dvc", "checkout", "--relink", "-q"], cwd=proj)
    (proj / "params.yaml").write_text("lr: 0.1\n")
    (proj / "append.py").write_text(APPEND_TRACKED)
    (proj / "data_writer.py").write_text(READ_THEN_WRITE_DATA)
    (proj / "plot.py").write_text(WRITE_PLOT)
    sh("git add -A && git commit -qm scripts", cwd=proj)
    return proj


def test_run_py_appending_to_a_tracked_file_fails_naming_it_and_the_restore(tmp_path):
    proj = _proj(tmp_path)
    before = (proj / "params.yaml").read_bytes()
    cp = run_script("run.py", "--version", "e1", "--", "python", "append.py", "1",
                    "params.yaml", cwd=proj)
    assert cp.returncode == 1, cp.stderr
    (line,) = cp.stderr.strip().splitlines()
    assert line.startswith(
        "run.py: error: the command changed the project's params.yaml through its sandbox's "
        "link; nothing was collected; restore it (git checkout -- params.yaml) and make the "
        "command write new files instead of changing the project's; its output: .ev/logs/e1--")
    assert not (proj / "results/experiments.db").exists()  # nothing collected
    assert not (proj / "models/candidates").exists()
    sh(["git", "checkout", "--", "params.yaml"], cwd=proj)  # the restore it names works
    assert (proj / "params.yaml").read_bytes() == before
    # A DVC output kept as a plain copy (cache.type copy): its restore is dvc checkout.
    cp = run_script("run.py", "--version", "e1", "--", "python", "append.py", "1",
                    "data/train.csv", cwd=proj)
    assert cp.returncode == 1
    assert "restore it (dvc checkout --force data/train.csv)" in cp.stderr
    sh(["dvc", "checkout", "--force", "data/train.csv"], cwd=proj)
    assert sh(["dvc", "status", "--json"], cwd=proj).stdout.strip() == "{}"
    assert cache_objects_ok(proj) == 1


@pytest.mark.parametrize("cache_type", ["hardlink", "symlink"])
def test_sweep_writing_a_cache_linked_dvc_output_never_touches_the_cache(tmp_path, cache_type):
    proj = _proj(tmp_path, cache_type)
    data = proj / "data/train.csv"
    assert data.is_symlink() if cache_type == "symlink" else os.stat(data).st_nlink == 2
    want = sha(data)
    (proj / "grid.yaml").write_text("x: [1, 2, 3, 4, 5, 6]\n")
    cp = run_script("sweep.py", "--json", "--version", "s1", "--grid", "grid.yaml",
                    "--workers", "2", "--", "python", "data_writer.py", "{x}", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["counts"] == {"done": 6, "skipped": 0, "failed": 0}
    assert cache_objects_ok(proj) == 1  # every cache object still hashes to its name
    assert sha(data) == want and sh(["dvc", "status", "--json"], cwd=proj).stdout.strip() == "{}"
    db = proj / "results/experiments.db"
    # Each run read the data as DVC has it: the copy an earlier run wrote was made fresh.
    import sqlite3

    con = sqlite3.connect(db)
    assert con.execute('SELECT DISTINCT n_read FROM "default"').fetchall() == [(4,)]
    con.close()
    assert count_rows(db) == 6
    assert sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=proj).stdout == ""
    assert not list((proj / "results/shards/s1").glob("run-*.files"))  # copies not extras


def test_sweep_appending_to_a_project_file_fails_every_such_run(tmp_path):
    proj = _proj(tmp_path, "hardlink")
    (proj / "data/log.csv").write_text("step\n")
    sh("git add -A && git commit -qm log", cwd=proj)
    (proj / "grid.yaml").write_text("x: [1, 2, 3]\n")
    cp = run_script("sweep.py", "--json", "--version", "s2", "--grid", "grid.yaml",
                    "--workers", "2", "--", "python", "append.py", "{x}", "data/log.csv",
                    cwd=proj)
    assert cp.returncode == 1
    out = json.loads(cp.stdout)
    assert out["counts"] == {"done": 0, "skipped": 0, "failed": 3}
    assert {f["error"] for f in out["failed"]} == {
        "the command changed the project's data/log.csv through its sandbox's link; nothing "
        "was collected; restore it (git checkout -- data/log.csv) and make the command write "
        "new files instead of changing the project's"}
    assert not (proj / "results/experiments.db").exists()
    assert cache_objects_ok(proj) == 1


def test_sweep_runs_writing_the_same_new_file_each_write_their_own(tmp_path):
    """A file the first landed run moved into the project is not shown to later runs: they
    write their own (kept beside the shards), never the project's copy through a link."""
    proj = _proj(tmp_path)
    (proj / "grid.yaml").write_text("x: [1, 2, 3, 4, 5]\n")
    cp = run_script("sweep.py", "--json", "--version", "s3", "--grid", "grid.yaml",
                    "--workers", "2", "--", "python", "plot.py", "{x}", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    first = (proj / "plots/loss.txt").read_text()
    kept = sorted(p.read_text() for p in
                  (proj / "results/shards/s3").glob("run-*.files/plots/loss.txt"))
    assert sorted([first, *kept]) == [f"run {i}\n" for i in range(1, 6)]
