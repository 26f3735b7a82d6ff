"""run.py: any training command, unchanged, lands right (rows once, lineage, candidates)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import run_script, sh
from run_support import TRAIN_PY, cache_objects_ok, make_project, rows, sha


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    return make_project(base / "proj", base / "remote")


def run_py(proj, *args, cwd=None):
    return run_script("run.py", "--json", *args, cwd=cwd or proj)


def test_sequential_runs_land_once_with_lineage(proj):
    head = sh(["git", "rev-parse", "HEAD"], cwd=proj).stdout.strip()
    data_md5 = json.loads(Path(proj / "data/train.csv.dvc").read_text().split("md5: ")[1]
                          .split()[0].join('""'))
    out = []
    for lr in ("0.05", "0.1"):
        cp = run_py(proj, "--version", "e0.1.0", "--", "python", "train.py",
                    "--version", "e0.1.0", "--lr", lr)
        assert cp.returncode == 0, cp.stderr
        out.append(json.loads(cp.stdout))
    db = proj / "results/experiments.db"
    got = rows(db, 'SELECT * FROM "default" ORDER BY learning_rate')
    assert [r["track_id"] for r in got] == [o["track_id"] for o in out]
    assert [r["f1_score"] for r in got] == [0.95, 1.0]
    for r, o, lr in zip(got, out, ("0.05", "0.1"), strict=True):
        assert r["ev_run"] == o["run_key"] and r["version"] == "e0.1.0"
        assert r["ev_commit"] == head == r["git_commit"]  # the script's own column too
        assert r["ev_dirty"] == 0
        assert json.loads(r["ev_data_md5"]) == {"data/train.csv": data_md5}
        assert json.loads(r["ev_params"]) == {"version": "e0.1.0", "lr": lr}
        assert r["ev_command"] == f"python train.py --version e0.1.0 --lr {lr}"
        assert r["ev_gpus"] == "" and r["ev_seconds"] > 0
        cand = proj / o["candidates"]["models/production/model.bin"]
        assert cand.name == f"e0.1.0--{o['track_id']}.bin"
        assert cand.read_bytes() == f"weights lr={float(lr)}\n".encode()
    assert not (proj / "models/production/model.bin").exists()  # training never writes it
    assert (proj / "train.py").read_text() == TRAIN_PY
    assert not list((proj / ".ev/runs").iterdir())
    assert sh(["git", "status", "--porcelain", ".ev"], cwd=proj).stdout == ""
    assert cache_objects_ok(proj) >= 1


def test_promote_a_run_py_candidate(proj):
    cp = run_py(proj, "--version", "e0.2.0", "--", "python", "train.py", "--version", "e0.2.0",
                "--lr", "0.2")
    assert cp.returncode == 0, cp.stderr
    tid = json.loads(cp.stdout)["track_id"]
    cp = run_script("model_manager.py", "promote", "--version", "e0.2.0", "--run-id", tid,
                    cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert (proj / "models/production/model.bin").read_bytes() == b"weights lr=0.2\n"
    # a later run still never writes production
    before = sha(proj / "models/production/model.bin")
    cp = run_py(proj, "--version", "e0.2.0", "--", "python", "train.py", "--version", "e0.2.0")
    assert cp.returncode == 0, cp.stderr
    assert sha(proj / "models/production/model.bin") == before
    assert (proj / "train.py").read_text() == TRAIN_PY
    assert cache_objects_ok(proj) >= 2


def test_failures_say_so_and_collect_nothing(proj):
    db = proj / "results/experiments.db"
    n = len(rows(db)) if db.exists() else 0
    cp = run_py(proj, "--version", "e0.3.0", "--", "python", "train.py", "--version", "e0.3.0",
                "--fail")
    assert cp.returncode == 1
    err = cp.stderr.strip().splitlines()[-1]
    assert err.startswith("run.py: error: the command failed (exit 1): training diverged: "
                          "loss is nan; nothing was collected; its output: .ev/logs/e0.3.0--")
    log = proj / err.rsplit("its output: ", 1)[1]
    assert "training diverged" in log.read_text()
    assert json.loads(cp.stdout)["status"] == "error"
    cp = run_py(proj, "--version", "e0.3.0", "--", "python", "-c", "print('no tracker')")
    assert cp.returncode == 1
    assert "the command exited 0 but logged no run to results/experiments.db" in cp.stderr
    cp = run_py(proj, "--version", "e0.3.1", "--", "python", "train.py", "--version", "e0.3.0")
    assert cp.returncode == 2
    assert "the command logged version 'e0.3.0' but the run is --version e0.3.1" in cp.stderr
    cp = run_py(proj, "--version", "e0.3.0", "--model-output", "models/other.pt", "--",
                "python", "train.py", "--version", "e0.3.0")
    assert cp.returncode == 1
    assert "wrote nothing at --model-output models/other.pt" in cp.stderr
    assert len(rows(db)) == n if db.exists() else True
    assert not list((proj / ".ev/runs").iterdir())


def test_dry_run_writes_nothing(proj):
    before = sorted(str(p) for p in proj.rglob("*") if ".git/" not in str(p))
    cp = run_py(proj, "--dry-run", "--version", "e0.4.0", "--", "python", "train.py",
                "--version", "e0.4.0")
    assert cp.returncode == 0, cp.stderr
    r = json.loads(cp.stdout)
    assert r["dry_run"] is True and r["private"] == ["results/experiments.db",
                                                     "models/production/model.bin"]
    assert sorted(str(p) for p in proj.rglob("*") if ".git/" not in str(p)) == before


def test_dirty_data_is_recorded_with_the_md5_of_what_was_read(tmp_path):
    proj = make_project(tmp_path / "p", tmp_path / "r")
    (proj / "data/train.csv").unlink()  # a new file (the cache object stays intact)
    (proj / "data/train.csv").write_text("x,y\n9,9\n")
    cp = run_py(proj, "--version", "e1.0.0", "--", "python", "train.py", "--version", "e1.0.0")
    assert cp.returncode == 0, cp.stderr
    r = rows(proj / "results/experiments.db")[0]
    assert r["ev_dirty"] == 1 and r["n_rows"] == 2
    import hashlib
    assert json.loads(r["ev_data_md5"]) == {
        "data/train.csv": hashlib.md5(b"x,y\n9,9\n").hexdigest()}  # noqa: S324
    # clean again, then a DVC-tracked folder changed (this one DVC itself is asked about)
    sh("dvc add -q data/train.csv && mkdir feats && echo 1 > feats/a.txt && dvc add -q feats "
       "&& git add -A && git commit -qm 'feats'", cwd=proj)
    cp = run_py(proj, "--version", "e1.0.1", "--", "python", "train.py", "--version", "e1.0.1")
    assert cp.returncode == 0, cp.stderr
    assert rows(proj / "results/experiments.db", 'SELECT ev_dirty FROM "default" WHERE '
                "version = 'e1.0.1'") == [{"ev_dirty": 0}]
    (proj / "feats/a.txt").unlink()
    (proj / "feats/a.txt").write_text("2\n")
    cp = run_py(proj, "--version", "e1.0.2", "--", "python", "train.py", "--version", "e1.0.2")
    assert cp.returncode == 0, cp.stderr
    (r,) = rows(proj / "results/experiments.db", 'SELECT * FROM "default" WHERE '
                "version = 'e1.0.2'")
    assert r["ev_dirty"] == 1
    assert json.loads(r["ev_data_md5"])["feats"].endswith(" (modified)")


def test_killed_while_collecting_is_completed_by_the_next_run(tmp_path, monkeypatch):
    from _evlib import merge, settings, training

    proj = make_project(tmp_path / "p", tmp_path / "r")
    s = settings.load(proj)

    def boom(*a, **k):
        raise KeyboardInterrupt  # stands for a SIGKILL between the two collection steps

    monkeypatch.setattr(merge, "merge_dbs", boom)
    monkeypatch.chdir(proj)
    with pytest.raises(KeyboardInterrupt):
        training.run(proj, s, ["python", "train.py", "--version", "e0.1.0"], version="e0.1.0",
                     db_rel=s.results_db, model_outputs=[s.production_model],
                     require_models=False)
    monkeypatch.undo()
    left = list((proj / ".ev/runs").iterdir())
    assert len(left) == 1 and not (proj / "results/experiments.db").exists()
    state = json.loads((left[0] / "state.json").read_text())
    assert state["owner_pid"] == os.getpid()  # alive: another run.py would leave it alone
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
    state["owner_pid"] = int(dead.stdout)  # its run.py is gone now (as if SIGKILLed)
    (left[0] / "state.json").write_text(json.dumps(state))
    assert len(list((proj / "models/candidates").iterdir())) == 1  # moved before the kill
    cp = run_py(proj, "--version", "e0.1.1", "--", "python", "train.py", "--version", "e0.1.1")
    assert cp.returncode == 0, cp.stderr
    r = json.loads(cp.stdout)
    assert [x["action"] for x in r["recovered"]] == ["completed"]
    assert (f"run.py: warning: completed the collection of run {state['key']} (version "
            f"e0.1.0) left by a killed run.py") in cp.stderr.splitlines()
    got = rows(proj / "results/experiments.db", 'SELECT version FROM "default" ORDER BY 1')
    assert got == [{"version": "e0.1.0"}, {"version": "e0.1.1"}]
    assert len(list((proj / "models/candidates").iterdir())) == 2
    assert not list((proj / ".ev/runs").iterdir())
    con = sqlite3.connect(proj / "results/experiments.db")
    assert con.execute('SELECT count(DISTINCT track_id) FROM "default"').fetchone()[0] == 2
    con.close()


def test_worktree_experiment_with_run_py_then_promote_in_main(tmp_path):
    proj = make_project(tmp_path / "proj", tmp_path / "remote")
    cp = run_script("worktree.py", "create", "lr", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    wt = tmp_path / "exp-lr"
    cp = run_py(wt, "--version", "exp-lr", "--", "python", "train.py", "--version", "exp-lr",
                "--lr", "0.11")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    head = sh(["git", "rev-parse", "HEAD"], cwd=wt).stdout.strip()
    (r,) = rows(wt / "results/experiments.db")
    assert (r["ev_commit"], r["ev_dirty"], r["version"]) == (head, 0, "exp-lr")
    cand = wt / out["candidates"]["models/production/model.bin"]
    assert cand.read_bytes() == b"weights lr=0.11\n"
    sh("dvc add -q results/experiments.db models/candidates", cwd=wt)
    assert run_script("worktree.py", "privatize", cwd=wt).returncode == 0
    sh("git add -A && git commit -qm 'exp: lr 0.11'", cwd=wt)
    assert sh(["git", "status", "--porcelain"], cwd=wt).stdout == ""
    cp = run_script("merge_artifacts.py", "--strategy", "merge", "--base-db",
                    "results/experiments.db", "--exp-db", wt / "results/experiments.db",
                    "--new-base", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    mm = ["model_manager.py"]
    cp = run_script(*mm, "add-candidate", "--run-id", out["track_id"], "--model", cand,
                    cwd=proj)
    assert cp.returncode == 0, cp.stderr
    cp = run_script(*mm, "promote", "--version", "exp-lr", "--run-id", out["track_id"],
                    cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert (proj / "models/production/model.bin").read_bytes() == b"weights lr=0.11\n"
    for d in (proj, wt):
        assert (d / "train.py").read_text() == TRAIN_PY
    assert cache_objects_ok(proj) >= 3


def test_production_stays_private_when_the_model_output_is_elsewhere(proj):
    prod = proj / "models/production/model.bin"
    before = sha(prod) if prod.exists() else None
    cp = run_py(proj, "--version", "e0.5.0", "--model-output", "model.pt", "--", "bash", "-c",
                "python train.py --version e0.5.0 --lr 0.3 && "
                "cp models/production/model.bin model.pt")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    cand = proj / out["candidates"]["model.pt"]
    assert cand.name == f"e0.5.0--{out['track_id']}.pt"
    assert cand.read_bytes() == b"weights lr=0.3\n"
    assert (sha(prod) if prod.exists() else None) == before
    assert not (proj / "model.pt").exists()


def test_run_from_a_subfolder_keeps_parent_relative_outputs_private(tmp_path):
    proj = make_project(tmp_path / "p", tmp_path / "r")
    (proj / "src").mkdir()
    (proj / "src/train.py").write_text(TRAIN_PY.replace('"data/train.csv"', '"../data/train.csv"')
                                       .replace('"results/', '"../results/')
                                       .replace('"models/', '"../models/'))
    sh("git add -A && git commit -qm 'train in src/'", cwd=proj)
    cp = run_py(proj, "--version", "s1", "--", "python", "train.py", "--version", "s1",
                cwd=proj / "src")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert [r["version"] for r in rows(proj / "results/experiments.db")] == ["s1"]
    assert (proj / out["candidates"]["models/production/model.bin"]).is_file()
    assert not (proj / "models/production/model.bin").exists()


OWN_CANDIDATE_PY = '''\
import sys
from pathlib import Path
from xetrack import Tracker
lr = sys.argv[1]
t = Tracker("results/experiments.db", params={"version": sys.argv[2], "learning_rate": lr})
t.log({"f1_score": 0.5})
Path("models/candidates").mkdir(parents=True, exist_ok=True)
Path(f"models/candidates/own-{lr}.bin").write_text(f"w {lr}")
Path(f"models/candidates/{sys.argv[2]}--{t.track_id}.pkl").write_text("named")
if len(sys.argv) > 3:
    raise SystemExit("diverged")
'''


def test_a_script_writing_into_the_candidates_folder_writes_its_own_copy(tmp_path):
    proj = make_project(tmp_path / "p", tmp_path / "r")
    (proj / "own.py").write_text(OWN_CANDIDATE_PY)
    (proj / "models/candidates").mkdir(parents=True)
    (proj / "models/candidates/e0.0.1--old-run-1.bin").write_text("old")  # linked in sandboxes
    (proj / "grid.yaml").write_text("lr: ['0.1', '0.2']\n")
    sh("git add -A && git commit -qm own", cwd=proj)
    cands = proj / "models/candidates"
    cp = run_py(proj, "--version", "e0.1.0", "--", "python", "own.py", "0.3", "e0.1.0", "fail")
    assert cp.returncode == 1
    assert sorted(os.listdir(cands)) == ["e0.0.1--old-run-1.bin"]  # a failed run: nothing
    cp = run_py(proj, "--version", "e0.1.0", "--", "python", "own.py", "0.3", "e0.1.0")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    tid = out["track_id"]
    assert out["candidates"] == {  # a file already named after the run keeps its name
        "models/candidates/own-0.3.bin": f"models/candidates/e0.1.0--{tid}.own-0.3.bin",
        f"models/candidates/e0.1.0--{tid}.pkl": f"models/candidates/e0.1.0--{tid}.pkl"}
    cp = run_script("sweep.py", "--json", "--version", "e0.2.0", "--grid", "grid.yaml", "--",
                    "python", "own.py", "{lr}", "e0.2.0", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    runs = json.loads(cp.stdout)["runs"]
    assert [sorted(r["candidates"]) for r in runs] == [sorted(
        [str(cands / f"e0.2.0--{r['track_id']}.own-{r['params']['lr']}.bin"),
         str(cands / f"e0.2.0--{r['track_id']}.pkl")]) for r in runs]
    assert sorted(os.listdir(cands)) == sorted(
        ["e0.0.1--old-run-1.bin", f"e0.1.0--{tid}.own-0.3.bin", f"e0.1.0--{tid}.pkl",
         *[f"e0.2.0--{r['track_id']}.own-{r['params']['lr']}.bin" for r in runs],
         *[f"e0.2.0--{r['track_id']}.pkl" for r in runs]])
    assert (cands / f"e0.1.0--{out['track_id']}.own-0.3.bin").read_text() == "w 0.3"
    assert (cands / "e0.0.1--old-run-1.bin").read_text() == "old"


def test_a_version_that_cannot_be_a_tag_is_refused_before_anything_runs(proj):
    line = ("error: bad version 'e0 1': letters, digits, '.', '_', '+' and '-' only (no '--'), "
            "starting with a letter or digit; use a tag-like name such as e0.2.0")
    (proj / "g.yaml").write_text("lr: [1]\n")
    for script, extra in (("run.py", []), ("sweep.py", ["--grid", "g.yaml"])):
        cp = run_script(script, "--version", "e0 1", *extra, "--", "touch", "ran", cwd=proj)
        assert (cp.returncode, cp.stderr) == (2, f"{script}: {line}\n")
    assert not (proj / "ran").exists() and not (proj / "results/shards/e0 1").exists()
    assert not [p for p in (proj / ".ev").rglob("*") if "e0 1" in p.name]
    (proj / "g.yaml").unlink()
