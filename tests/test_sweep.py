"""Parallel sweeps: every row lands (threads, processes, commands), failures and SIGKILL are
recorded and redone, re-runs skip done runs, ranking is per run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _evlib.errors import EVError
from _evlib.sweep import current_tracker, expand_grid, rank_runs, run_key, run_sweep
from conftest import ROOT, count_rows, make_xetrack_db, run_script, sh


@dataclass(frozen=True)
class Cfg:
    lr: float
    epochs: int = 20
    die: bool = False


def train_and_evaluate(config: Cfg) -> dict:
    t = current_tracker()
    for epoch in range(config.epochs):  # extra rows of the same run, into its own shard
        t.log({"epoch": epoch, "loss": config.lr / (epoch + 1)})
    if config.die:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"f1_score": round(1 - config.lr, 4)}


def _db_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT track_id, timestamp, config_lr, f1_score, epoch '
                           'FROM "default" ORDER BY 1, 2').fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("mode,workers", [("threads", 8), ("processes", 4)])
def test_every_row_lands(tmp_path, mode, workers):
    configs = [Cfg(lr=round(0.01 * i, 2), epochs=30) for i in range(1, 9)]
    db = tmp_path / "results" / "experiments.db"
    rep = run_sweep(train_and_evaluate, configs, version="e0.2.0", db=db, workers=workers,
                    mode=mode, metric="f1_score")
    assert rep["counts"] == {"done": 8, "skipped": 0, "failed": 0}
    assert count_rows(db) == 8 * 31  # 30 epoch rows + the track() row, per run
    rows = _db_rows(db)
    assert len({r[0] for r in rows}) == 8
    assert sorted(r[2] for r in rows if r[3] is not None) == [c.lr for c in configs]
    assert [e["value"] for e in rep["ranking"]] == sorted((round(1 - c.lr, 4) for c in configs),
                                                          reverse=True)
    assert rep["ranked_by"]["column"] == "f1_score"
    assert all(e["rows"] == 31 for e in rep["ranking"])
    # a second call skips every run and the re-merge adds nothing
    again = run_sweep(train_and_evaluate, configs, version="e0.2.0", db=db, workers=workers,
                      mode=mode)
    assert again["counts"] == {"done": 0, "skipped": 8, "failed": 0}
    assert _db_rows(db) == rows


def test_process_killed_costs_only_its_own_rows(tmp_path):
    db = tmp_path / "results" / "experiments.db"
    configs = [Cfg(lr=0.1), Cfg(lr=0.2), Cfg(lr=0.3, die=True), Cfg(lr=0.4)]
    rep = run_sweep(train_and_evaluate, configs, version="e1", db=db, workers=2,
                    mode="processes")
    assert rep["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    (dead,) = rep["failed"]
    assert dead["params"]["lr"] == 0.3
    assert (dead["error"], dead["exit_code"]) == ("killed by SIGKILL", -9)
    assert dead["rows"] == 20  # its epoch rows reached its shard, the track() row did not
    assert count_rows(db) == 3 * 21  # only the finished runs were merged
    assert {r[2] for r in _db_rows(db) if r[2] is not None} == {0.1, 0.2, 0.4}


def test_grid_expansion():
    assert expand_grid({"model": "logreg", "C": [0.1, 1.0], "seed": [0, 1]}) == [
        {"model": "logreg", "C": 0.1, "seed": 0}, {"model": "logreg", "C": 0.1, "seed": 1},
        {"model": "logreg", "C": 1.0, "seed": 0}, {"model": "logreg", "C": 1.0, "seed": 1}]
    runs = expand_grid([{"model": "logreg", "C": [0.1, 1.0]},
                        {"model": "forest", "max_depth": [2, 4]},
                        {"C": 0.1, "model": "logreg"}])  # a duplicate, kept once
    assert len(runs) == 4
    assert run_key({"a": 1, "b": 2}) == run_key({"b": 2, "a": 1})
    with pytest.raises(EVError, match="empty list of values"):
        expand_grid({"C": []})
    with pytest.raises(EVError, match="must be a mapping"):
        expand_grid("C: 1")


def test_ranking_is_per_run_not_per_row(tmp_path):
    db = tmp_path / "r.db"
    (a,) = make_xetrack_db(db, [{"f1_score": 0.9}, {"model_path": "a.pkl"}])
    (b,) = make_xetrack_db(db, [{"f1_score": 0.7}, {"f1_score": 0.8},
                                {"model_path": "b.pkl"}])
    rep = rank_runs(db, "f1_score", "max")
    assert rep["ranked_by"] == {"column": "f1_score",
                                "aggregate": "last non-null value per track_id",
                                "order": "descending"}
    assert rep["ranking"] == [{"rank": 1, "track_id": a, "value": 0.9, "rows": 2},
                              {"rank": 2, "track_id": b, "value": 0.8, "rows": 3}]
    low = rank_runs(db, "f1_score", "min")
    assert [(e["track_id"], e["value"]) for e in low["ranking"]] == [(b, 0.8), (a, 0.9)]
    missing = rank_runs(db, "auc", "max")
    assert missing["ranked_by"] is None
    assert missing["rank_error"] == f"no column 'auc' in {db} table 'default'"


# --- the CLI runner ----------------------------------------------------------------------

FAKE_TRAIN = r'''
import json, os, signal, sys
from xetrack import Tracker
p = json.loads(os.environ["EV_PARAMS"])
with open(os.environ["COUNT_FILE"], "a") as fh:
    fh.write(json.dumps(p, sort_keys=True) + "\n")
if p.get("fail"):
    print("loading data", file=sys.stderr)
    print("ValueError: bad param fail=true", file=sys.stderr)
    sys.exit(3)
t = Tracker(os.environ["EV_SHARD_DB"], params={"version": os.environ["EV_VERSION"]})
t.log({"x": p["x"], "f1_score": p["x"] / 10})
if p.get("kill") and not os.environ.get("NO_KILL"):
    os.kill(os.getpid(), signal.SIGKILL)
t.log({"model_path": "m.pkl"})
'''


def _grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _calls(count_file: Path) -> list[dict]:
    if not count_file.exists():
        return []
    return [json.loads(x) for x in count_file.read_text().splitlines()]


def test_cli_failure_recorded_and_rerun_redoes_only_it(git_repo, tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "- {x: [1, 2, 3]}\n- {x: 4, fail: true}\n")
    count = tmp_path / "calls.txt"
    env = {"COUNT_FILE": str(count)}
    args = ["--json", "--version", "e0.3.0", "--grid", grid, "--workers", "2",
            "--", sys.executable, tmp_path / "fake_train.py"]
    cp = run_script("sweep.py", *args, cwd=git_repo, env=env)
    assert cp.returncode == 1, cp.stderr
    out = json.loads(cp.stdout)
    assert out["status"] == "failed"
    assert out["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    (bad,) = out["failed"]
    assert (bad["params"], bad["exit_code"], bad["error"]) == (
        {"x": 4, "fail": True}, 3, "ValueError: bad param fail=true")
    assert cp.stderr.strip().splitlines() == [
        f"sweep.py: warning: 1 run(s) failed, e.g. run-{bad['key']}: ValueError: bad param "
        "fail=true; fix and re-run the same command (done runs are skipped)"]
    db = git_repo / "results" / "experiments.db"
    assert count_rows(db) == 6
    lines = [json.loads(x) for x in
             (git_repo / "results/shards/e0.3.0/sweep.jsonl").read_text().splitlines()]
    assert [ln["status"] for ln in lines if ln.get("key") == bad["key"]] == ["failed"]
    assert len([ln for ln in lines if ln.get("status")]) == 4  # one line per run
    assert "ValueError: bad param" in (git_repo / f"results/shards/e0.3.0/run-{bad['key']}.log"
                                       ).read_text()
    assert [e["params"]["x"] for e in out["ranking"]] == [3, 2, 1]
    assert len(_calls(count)) == 4
    # re-run: only the failed run starts again (and fails again); nothing is duplicated
    cp2 = run_script("sweep.py", *args, cwd=git_repo, env=env)
    assert cp2.returncode == 1
    assert json.loads(cp2.stdout)["counts"] == {"done": 0, "skipped": 3, "failed": 1}
    assert _calls(count)[4:] == [{"x": 4, "fail": True}]
    assert count_rows(db) == 6


def test_cli_sigkilled_run_costs_only_its_rows(git_repo, tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "- {x: [1, 2, 3]}\n- {x: 4, kill: true}\n")
    count = tmp_path / "calls.txt"
    args = ["--json", "--version", "e1", "--grid", grid, "--workers", "3",
            "--", sys.executable, tmp_path / "fake_train.py"]
    cp = run_script("sweep.py", *args, cwd=git_repo, env={"COUNT_FILE": str(count)})
    assert cp.returncode == 1
    out = json.loads(cp.stdout)
    (dead,) = out["failed"]
    assert (dead["exit_code"], dead["error"], dead["rows"]) == (-9, "killed by SIGKILL", 1)
    db = git_repo / "results" / "experiments.db"
    assert count_rows(db) == 6  # the three finished runs, two rows each
    shards = git_repo / "results/shards/e1"
    ok_shards = {r["shard"]: count_rows(Path(r["shard"])) for r in out["runs"]
                 if r["status"] == "done"}
    assert list(ok_shards.values()) == [2, 2, 2]
    con = sqlite3.connect(db)
    before = con.execute('SELECT * FROM "default" ORDER BY track_id, timestamp').fetchall()
    con.close()
    # re-run: only the killed run starts; its partial shard is moved aside, never merged
    cp2 = run_script("sweep.py", *args, cwd=git_repo,
                     env={"COUNT_FILE": str(count), "NO_KILL": "1"})
    assert cp2.returncode == 0, cp2.stderr
    out2 = json.loads(cp2.stdout)
    assert out2["counts"] == {"done": 1, "skipped": 3, "failed": 0}
    assert [c["x"] for c in _calls(count)[4:]] == [4]
    assert count_rows(db) == 8
    assert len(list(shards.glob(f"run-{dead['key']}.db.partial-*"))) == 1
    con = sqlite3.connect(db)
    after = con.execute('SELECT * FROM "default" ORDER BY track_id, timestamp').fetchall()
    con.close()
    assert set(before) <= set(after)
    assert {r["shard"]: count_rows(Path(r["shard"])) for r in out2["runs"]
            if r["shard"] in ok_shards} == ok_shards


def test_cli_progress_names_a_killed_run_once(git_repo, tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "- {x: 4, kill: true}\n")
    cp = run_script("sweep.py", "--version", "e1", "--grid", grid, "--", sys.executable,
                    tmp_path / "fake_train.py", cwd=git_repo,
                    env={"COUNT_FILE": str(tmp_path / "calls.txt")})
    assert cp.returncode == 1
    (line,) = [ln for ln in cp.stderr.splitlines() if ln.startswith("sweep.py: [1/1]")]
    assert line.endswith(": FAILED (killed by SIGKILL)"), line


def test_cli_dry_run_writes_nothing(git_repo, tmp_path):
    grid = _grid(tmp_path / "g.yaml", "C: [0.1, 1.0]\nmodel: logreg\n")
    cp = run_script("sweep.py", "--json", "--dry-run", "--version", "e2", "--grid", grid,
                    "--", "python", "train.py", cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert [(r["params"], r["status"]) for r in out["runs"]] == [
        ({"C": 0.1, "model": "logreg"}, "would run"), ({"C": 1.0, "model": "logreg"},
                                                       "would run")]
    assert not (git_repo / "results").exists()
    bad = run_script("sweep.py", "--version", "e2", "--grid", tmp_path / "nope.yaml",
                     "--", "true", cwd=git_repo)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"sweep.py: error: grid file {tmp_path / 'nope.yaml'} does not exist; write a YAML "
        "mapping param: [values]"]


def test_cli_end_to_end_with_the_training_template(git_repo, tmp_path):
    for name in ("train.py", "prepare_data.py"):
        shutil.copy(ROOT / "assets" / name, git_repo / name)
    sh([sys.executable, "prepare_data.py"], cwd=git_repo)
    grid = _grid(tmp_path / "grid.yaml", "- {model: logreg, C: [0.01, 1.0]}\n"
                                         "- {model: forest, max_depth: [2, 6]}\n")
    count = tmp_path / "calls.txt"
    cmd = ["--", "bash", "-c", f'echo run >> {count}; exec "$0" "$@"', sys.executable,
           "train.py", "--version", "e0.2.0"]
    cp = run_script("sweep.py", "--json", "--version", "e0.2.0", "--grid", grid,
                    "--workers", "2", *cmd, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    db = git_repo / "results" / "experiments.db"
    assert count_rows(db) == 8  # track() row + model_path row per run
    con = sqlite3.connect(db)
    best = dict(con.execute('SELECT track_id, max(f1_score) FROM "default" '
                            'GROUP BY track_id').fetchall())
    models = {r[0] for r in con.execute('SELECT config_model FROM "default" '
                                        'WHERE config_model IS NOT NULL')}
    con.close()
    assert models == {"logreg", "forest"}
    assert out["ranked_by"]["column"] == "f1_score"
    assert [(e["track_id"], e["value"]) for e in out["ranking"]] == sorted(
        best.items(), key=lambda kv: (-kv[1], kv[0]))
    assert all(e["rows"] == 2 for e in out["ranking"])
    assert len(list((git_repo / "models/candidates").glob("e0.2.0--*.pkl"))) == 4
    assert len(count.read_text().splitlines()) == 4
    # re-run: nothing trains again, the merge adds nothing
    cp2 = run_script("sweep.py", "--version", "e0.2.0", "--grid", grid, *cmd, cwd=git_repo)
    assert cp2.returncode == 0, cp2.stderr
    assert "sweep e0.2.0: 0 ran, 4 skipped (done before), 0 failed" in cp2.stdout
    assert ("runs ranked by f1_score (last non-null value per track_id, descending):"
            in cp2.stdout)
    assert len(count.read_text().splitlines()) == 4
    assert count_rows(db) == 8


def test_cli_refuses_a_second_sweep_of_the_same_version(git_repo, tmp_path):
    import fcntl

    grid = _grid(tmp_path / "g.yaml", "x: [1]\n")
    lock_dir = git_repo / "results/shards/e5"
    lock_dir.mkdir(parents=True)
    with open(lock_dir / "sweep.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another sweep holds it
        cp = run_script("sweep.py", "--version", "e5", "--grid", grid, "--", "true",
                        cwd=git_repo)
    assert cp.returncode == 4
    assert cp.stderr.strip().splitlines() == [
        f"sweep.py: error: another sweep of version e5 is running (lock {lock_dir}/sweep.lock); "
        "wait for it to finish, or use another --version"]
    assert not (lock_dir / "sweep.jsonl").exists()


def test_cli_merged_runs_stay_done_when_their_shards_are_deleted(git_repo, tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "x: [1, 2]\n")
    count = tmp_path / "calls.txt"
    args = ["--json", "--version", "e6", "--grid", grid,
            "--", sys.executable, tmp_path / "fake_train.py"]
    assert run_script("sweep.py", *args, cwd=git_repo,
                      env={"COUNT_FILE": str(count)}).returncode == 0
    for shard in (git_repo / "results/shards/e6").glob("run-*.db"):
        shard.unlink()
    cp = run_script("sweep.py", *args, cwd=git_repo, env={"COUNT_FILE": str(count)})
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["counts"] == {"done": 0, "skipped": 2, "failed": 0}
    assert len(_calls(count)) == 2
    assert count_rows(git_repo / "results/experiments.db") == 4


def test_cli_unknown_metric_is_said_not_guessed(git_repo, tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "x: [1]\n")
    cp = run_script("sweep.py", "--json", "--version", "e7", "--grid", grid, "--metric", "auc",
                    "--", sys.executable, tmp_path / "fake_train.py", cwd=git_repo,
                    env={"COUNT_FILE": str(tmp_path / "calls.txt")})
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    db = git_repo / "results" / "experiments.db"
    assert (out["ranked_by"], out["ranking"]) == (None, [])
    assert cp.stderr.strip().splitlines() == [
        f"sweep.py: warning: runs not ranked: no column 'auc' in {db} table 'default'; "
        "pass --metric with a column the runs log"]


def test_cli_rerun_redoes_a_merged_run_whose_rows_are_gone(git_repo, tmp_path):
    """Shard deleted and the results DB reset to before the merge: the run is redone, not
    skipped as 'merged' (which would lose it with exit 0)."""
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "x: [1, 2]\n")
    count = tmp_path / "calls.txt"
    args = ["--json", "--version", "e7", "--grid", grid,
            "--", sys.executable, tmp_path / "fake_train.py"]
    assert run_script("sweep.py", *args, cwd=git_repo,
                      env={"COUNT_FILE": str(count)}).returncode == 0
    (git_repo / "results/experiments.db").unlink()  # e.g. `dvc checkout` of an older DB
    first = sorted((git_repo / "results/shards/e7").glob("run-*.db"))[0]
    first.unlink()
    cp = run_script("sweep.py", *args, cwd=git_repo, env={"COUNT_FILE": str(count)})
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["counts"] == {"done": 1, "skipped": 1, "failed": 0}
    assert len(_calls(count)) == 3
    assert count_rows(git_repo / "results/experiments.db") == 4


def test_cli_bad_grid_yaml_is_one_line_saying_where_and_how(git_repo, tmp_path):
    grid = _grid(tmp_path / "bad.yaml", "C: [0.1, 1\nx: ]\n")
    cp = run_script("sweep.py", "--version", "e9", "--grid", grid, "--", "true", cwd=git_repo)
    assert cp.returncode == 2
    assert cp.stderr == (f"sweep.py: error: grid file {grid} is not valid YAML at line 2, "
                         "column 2: expected ',' or ']', but got ':'; write a mapping of "
                         "param: [values], e.g. 'C: [0.1, 1.0]', or a list of such mappings\n")


# --- unchanged commands: sandboxes, placeholders, GPUs, stale runs -----------------------

FAST_TRAIN = r'''
import json, os, sqlite3, sys, time, uuid
p = json.loads(os.environ["EV_PARAMS"])
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
os.makedirs("results", exist_ok=True)
con = sqlite3.connect("results/experiments.db")
con.execute('CREATE TABLE IF NOT EXISTS "default" '
            '(track_id TEXT, timestamp TEXT, x INTEGER, f1_score REAL)')
con.execute('INSERT INTO "default" VALUES (?, ?, ?, ?)',
            (uuid.uuid4().hex[:12], repr(time.time()), p["x"], p["x"] / 10))
con.commit()
'''


def _per_key(db: Path, version: str) -> dict:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute('SELECT ev_run, count(DISTINCT track_id) FROM "default" '
                                'WHERE version = ? GROUP BY ev_run', [version]).fetchall())
    finally:
        con.close()


def test_cli_three_workers_run_the_seed_script_unchanged(tmp_path):
    from run_support import TRAIN_PY, cache_objects_ok, make_project, rows

    proj = make_project(tmp_path / "proj", tmp_path / "remote")
    grid = _grid(tmp_path / "g.yaml", "learning_rate: [0.01, 0.1, 0.5]\n")
    args = ["--json", "--version", "e0.2.0", "--grid", grid, "--workers", "3", "--",
            "python", "train.py", "--version", "e0.2.0", "--lr", "{learning_rate}"]
    cp = run_script("sweep.py", *args, cwd=proj)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    got = rows(proj / "results/experiments.db", 'SELECT * FROM "default" ORDER BY 1')
    by_key = {r["key"]: r for r in out["runs"]}
    assert sorted(r["learning_rate"] for r in got) == [0.01, 0.1, 0.5]
    for r in got:
        run = by_key[r["ev_run"]]
        assert json.loads(r["ev_params"]) == run["params"] == {
            "learning_rate": r["learning_rate"]}
        assert r["ev_command"] == ("python train.py --version e0.2.0 --lr "
                                   f"{r['learning_rate']}")
        assert r["track_id"] == run["track_id"] and r["version"] == "e0.2.0"
        (cand,) = run["candidates"]
        assert Path(cand).name == f"e0.2.0--{r['track_id']}.bin"
        assert Path(cand).read_bytes() == f"weights lr={r['learning_rate']}\n".encode()
    assert [e["params"]["learning_rate"] for e in out["ranking"]] == [0.1, 0.01, 0.5]
    assert not (proj / "models/production/model.bin").exists()
    # a finished sweep re-run runs nothing and exits 0
    cp = run_script("sweep.py", *args, cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["counts"] == {"done": 0, "skipped": 3, "failed": 0}
    assert len(rows(proj / "results/experiments.db")) == 3
    best = out["ranking"][0]["track_id"]
    cp = run_script("model_manager.py", "promote", "--version", "e0.2.0", "--run-id", best,
                    cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert (proj / "models/production/model.bin").read_bytes() == b"weights lr=0.1\n"
    sh("dvc add -q results/experiments.db models/candidates && git add -A && "
       "git commit -qm 'sweep e0.2.0'", cwd=proj)
    assert sh(["git", "status", "--porcelain"], cwd=proj).stdout == ""
    assert (proj / "train.py").read_text() == TRAIN_PY
    assert cache_objects_ok(proj) >= 5


def test_cli_gpus_one_run_per_gpu_at_a_time(git_repo, tmp_path):
    from run_support import TRAIN_PY

    (git_repo / "train.py").write_text(TRAIN_PY)
    (git_repo / "data").mkdir()
    (git_repo / "data/train.csv").write_text("x\n1\n")
    sh("git add -A && git commit -qm train", cwd=git_repo)
    grid = _grid(tmp_path / "g.yaml", "lr: [0.1, 0.2, 0.3, 0.4, 0.5]\n")
    cmd = ["--", "python", "train.py", "--version", "g1", "--lr", "{lr}", "--sleep", "0.4"]
    bad = run_script("sweep.py", "--version", "g1", "--grid", grid, "--gpus", "0,1",
                     "--workers", "3", *cmd, cwd=git_repo)
    assert bad.returncode == 2
    assert bad.stderr.startswith("sweep.py: error: --workers 3 is more than the 2 GPUs given")
    cp = run_script("sweep.py", "--json", "--version", "g1", "--grid", grid, "--gpus", "0,1",
                    *cmd, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    con = sqlite3.connect(git_repo / "results/experiments.db")
    got = con.execute('SELECT cuda, ev_gpus, t0, t1 FROM "default"').fetchall()
    con.close()
    assert len(got) == 5 and all(c == g and c in ("0", "1") for c, g, _, _ in got)
    assert {c for c, *_ in got} == {"0", "1"}
    overlaps = 0
    for i, a in enumerate(got):
        for b in got[i + 1:]:
            if a[2] < b[3] and b[2] < a[3]:  # ran at the same time: never on one GPU
                overlaps += 1
                assert a[0] != b[0], (a, b)
    assert overlaps >= 1  # two workers really ran side by side


def _sandbox_states(repo: Path, version: str) -> list[dict]:
    base = repo / ".ev/sweeps" / version
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        try:
            out.append(json.loads((d / "state.json").read_text()))
        except (OSError, ValueError):
            pass
    return out


def _start_sweep(repo, args):
    import subprocess
    return subprocess.Popen([sys.executable, str(ROOT / "scripts/sweep.py"), *map(str, args)],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_cli_stale_runs_of_a_killed_sweep_refuse_or_are_ended(git_repo, tmp_path):
    import time

    (tmp_path / "fast.py").write_text(FAST_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "x: [1, 2]\n")
    args = ["--version", "s1", "--grid", grid, "--workers", "2", "--",
            sys.executable, tmp_path / "fast.py", "30"]
    proc = _start_sweep(git_repo, args)
    deadline = time.monotonic() + 20
    while len(_sandbox_states(git_repo, "s1")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # the sweep alone: its two runs go on
    proc.wait()
    pids = sorted(st["pid"] for st in _sandbox_states(git_repo, "s1"))
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    cp = run_script("sweep.py", *args, cwd=git_repo)
    assert cp.returncode == 4
    assert cp.stderr.strip().splitlines() == [
        f"sweep.py: error: 2 run(s) of an earlier sweep of s1 are still running (pids "
        f"{pids[0]}, {pids[1]}); their rows would be lost or doubled; wait for them to end, "
        f"or re-run with --kill-stale to end them first"]
    assert not (git_repo / "results/experiments.db").exists()
    cp = run_script("sweep.py", "--json", "--kill-stale", *args[:-1], "0.1", cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert sorted(out["killed_stale"]) == pids
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert _per_key(git_repo / "results/experiments.db", "s1") == {
        r["key"]: 1 for r in out["runs"]}


def test_cli_sweep_killed_alone_at_random_moments_never_doubles_a_run(git_repo, tmp_path):
    import random
    import time

    (tmp_path / "fast.py").write_text(FAST_TRAIN)
    grid = _grid(tmp_path / "g.yaml", "x: [1, 2, 3, 4, 5, 6]\n")
    rng = random.Random(13)
    outcomes = []
    db = git_repo / "results/experiments.db"
    for i in range(10):  # a fresh version each time, so every kill lands in real work
        # The first kill waits until a run is going (its runs take 2 s): at least one kill
        # leaves runs going, however slow the machine; the others land at random moments.
        args = ["--version", f"k{i}", "--grid", grid, "--workers", "3", "--",
                sys.executable, tmp_path / "fast.py", "2" if i == 0 else "0.2"]
        proc = _start_sweep(git_repo, args)
        if i == 0:
            deadline = time.monotonic() + 60
            while not [st for st in _sandbox_states(git_repo, "k0")
                       if st.get("pid") and os.path.exists(f"/proc/{st['pid']}")]:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
        else:
            time.sleep(rng.uniform(0.2, 1.0))
        proc.kill()
        proc.wait()
        live = [st["pid"] for st in _sandbox_states(git_repo, f"k{i}")
                if os.path.exists(f"/proc/{st['pid']}")]
        cp = run_script("sweep.py", "--json", *(["--kill-stale"] if i % 2 else []), *args,
                        cwd=git_repo)
        outcomes.append((len(live), cp.returncode))
        if cp.returncode == 4:
            assert "are still running (pids" in cp.stderr
            cp = run_script("sweep.py", "--json", "--kill-stale", *args, cwd=git_repo)
        assert cp.returncode == 0, cp.stderr
        out = json.loads(cp.stdout)
        keys = {r["key"] for r in out["runs"]}
        assert len(keys) == 6
        assert _per_key(db, f"k{i}") == dict.fromkeys(keys, 1), (i, outcomes)
        cp = run_script("sweep.py", "--json", *args, cwd=git_repo)  # finished: runs nothing
        assert json.loads(cp.stdout)["counts"] == {"done": 0, "skipped": 6, "failed": 0}
        assert not any(os.path.exists(f"/proc/{st['pid']}")
                       for st in _sandbox_states(git_repo, f"k{i}"))
    assert count_rows(db) == 60
    assert any(n for n, _ in outcomes), outcomes  # some kills left runs going
    print("kill outcomes (live orphans, exit of the re-run):", outcomes)


# --- the local loop (#18: the bundle's work overlaps the commands) ------------------------

def _loop_specs(tmp_path, n):
    from _evlib import runner

    (tmp_path / "fast.py").write_text(FAST_TRAIN)
    todo = [{"key": f"k{i:02d}", "params": {"x": i}} for i in range(n)]

    def spec_for(it, gpu=None):
        return runner.RunSpec(command=[sys.executable, str(tmp_path / "fast.py"), "0.05"],
                              version="L1", key=it["key"], params=it["params"], gpus=gpu)
    return todo, spec_for


def test_local_loop_a_failing_collection_stops_new_runs_and_collects_the_running(
        git_repo, tmp_path):
    from _evlib.cmdsweep import _run_local

    todo, spec_for0 = _loop_specs(tmp_path, 8)
    base, logs = git_repo / ".ev" / "sweeps" / "L1", tmp_path / "logs"
    base.mkdir(parents=True)
    logs.mkdir()
    collected = []
    starts = tmp_path / "started"

    def spec_for(it, gpu=None):  # each command says it started (its key, one line)
        spec = spec_for0(it, gpu)
        spec.command = ["sh", "-c", f'echo "$EV_RUN_KEY" >> {starts}; exec "$@"', "sh",
                        *spec.command]
        return spec

    def after(it, res, wd, gpu):
        collected.append((it["key"], res.ok, res.rows))
        if len(collected) == 1:
            raise EVError("the ledger is gone", code=1)

    with pytest.raises(EVError, match="the ledger is gone"):
        _run_local(git_repo, todo, spec_for, after, base=base, workers=2, boxes=4, gpus=None,
                   lineage={}, directory=logs)
    started = sorted(starts.read_text().split())
    # Runs already going when the first collection failed are finished and collected, never
    # abandoned; no run starts after it.
    assert sorted(k for k, _, _ in collected) == started
    assert all(ok and rows == 1 for _, ok, rows in collected)
    assert 2 <= len(started) <= 4 < len(todo)


def test_local_loop_gives_each_slot_its_gpu_and_runs_every_command_once(git_repo, tmp_path):
    from _evlib.cmdsweep import _run_local

    todo, spec_for = _loop_specs(tmp_path, 9)
    base, logs = git_repo / ".ev" / "sweeps" / "L1", tmp_path / "logs"
    base.mkdir(parents=True)
    logs.mkdir()
    seen = []
    _run_local(git_repo, todo, spec_for,
               lambda it, res, wd, gpu: seen.append((it["key"], res.ok, gpu, res.seconds)),
               base=base, workers=3, boxes=6, gpus=["4", "5", "6"], lineage={}, directory=logs)
    assert sorted(k for k, *_ in seen) == [it["key"] for it in todo]
    assert all(ok for _, ok, _, _ in seen)
    assert {g for _, _, g, _ in seen} <= {"4", "5", "6"}
    assert all(s >= 0.05 for *_, s in seen)  # the command's own time


def test_a_reused_sandbox_never_takes_an_earlier_runs_exit_code(git_repo, tmp_path):
    from _evlib import runner

    todo, spec_for = _loop_specs(tmp_path, 2)
    wd = git_repo / ".ev" / "sweeps" / "L1" / "w0"
    res = runner.execute(git_repo, spec_for(todo[0]), wd, lineage={}, reuse=True)
    assert res.ok and runner.read_rc(wd, "k00") == 0
    assert (wd / runner.RC_FILE).read_text().split("\n")[0] == "0 k00"
    # The next run in the same sandbox, killed before its shell wrote a code: the file still
    # says k00's code, which is not k01's.
    runner.prepare(git_repo, spec_for(todo[1]), wd, reuse=True)
    assert runner.read_rc(wd, "k01") is None
    assert runner.read_rc(wd, "k00") == 0
    bad = spec_for(todo[1])
    bad.command = ["sh", "-c", "exit 3"]
    res = runner.execute(git_repo, bad, wd, lineage={}, reuse=True)
    assert res.exit_code == 3 and runner.read_rc(wd, "k01") == 3
    assert (wd / runner.RC_FILE).read_text().split("\n")[0] == "3 k01"


def test_state_rewritten_in_place_reads_back_exactly(tmp_path):
    from _evlib import runner

    lin = {"ev_commit": "c" * 40, "ev_data_md5": '{"data/a.csv": "x"}', "nested": {"b": [1]}}
    big = {"pid": 1, "key": "k" * 300, "lineage": lin, "spec": {"command": ["a", "b"]}}
    small = {"pid": 2, "key": "k2", "lineage": lin}
    runner.write_state(tmp_path, big, in_place=True)
    ino = os.stat(tmp_path / runner.STATE).st_ino
    runner.write_state(tmp_path, small, in_place=True)
    assert os.stat(tmp_path / runner.STATE).st_ino == ino  # the same file, shorter text
    assert runner.read_state(tmp_path) == small
    assert (tmp_path / runner.STATE).read_text().rstrip() == json.dumps(small, sort_keys=True)
    lin["nested"]["b"].append(2)  # a changed lineage is serialised again, never stale
    runner.write_state(tmp_path, small, in_place=True)
    assert runner.read_state(tmp_path)["lineage"]["nested"]["b"] == [1, 2]


@pytest.mark.parametrize("create", [
    'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x TEXT, f1_score REAL)',
    'CREATE TABLE "default"(track_id,timestamp,"a)b" TEXT DEFAULT \')\' , -- ) here\n y)',
    'CREATE TABLE [default] (track_id TEXT, timestamp TEXT, z INTEGER NOT NULL DEFAULT 0,'
    ' PRIMARY KEY (track_id, timestamp)) STRICT',
    'CREATE TABLE "default" (track_id TEXT PRIMARY KEY, timestamp TEXT) WITHOUT ROWID',
])
def test_stamp_adds_the_lineage_columns_exactly_as_alter_table_would(tmp_path, create):
    from _evlib import sql

    cols = [("ev_run", "TEXT"), ("ev_command", "TEXT"), ("ev_dirty", "INTEGER"),
            ("ev_seconds", "REAL"), ("version", "TEXT")]
    dbs = {}
    for how in ("fast", "alter"):
        p = tmp_path / f"{how}.db"
        con = sqlite3.connect(p, isolation_level=None)
        con.execute(create)
        con.execute('INSERT INTO "default" (track_id, timestamp) VALUES (\'t\', \'1\')')
        con.execute("BEGIN IMMEDIATE")
        if how == "fast":
            seen: list[str] = []
            con.set_trace_callback(seen.append)
            sql.add_columns(con, "default", cols)
            con.set_trace_callback(None)
            assert sum(q.startswith("ALTER TABLE") for q in seen) == 1  # the edit was used
        else:
            for n, d in cols:
                con.execute(f'ALTER TABLE "default" ADD COLUMN "{n}" {d}')
        con.execute("COMMIT")
        con.close()
        con = sqlite3.connect(p)  # a new connection reads the schema from the file
        dbs[how] = (con.execute('PRAGMA table_info("default")').fetchall(),
                    con.execute('SELECT *, typeof(ev_dirty) FROM "default"').fetchall(),
                    con.execute("PRAGMA integrity_check").fetchone()[0])
        con.close()
    assert dbs["fast"] == dbs["alter"]
    assert dbs["fast"][2] == "ok" and [c[1] for c in dbs["fast"][0]][-5:] == [
        n for n, _ in cols]


def test_add_columns_places_a_create_text_it_has_seen_without_an_alter(tmp_path):
    """A sweep's runs all create the same table: where SQLite puts a column is found once
    (by an ALTER) and the next shards get the same edit, checked the same way."""
    from _evlib import sql

    create = 'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, "x y" REAL) -- #18'
    defs = [("ev_a", "TEXT"), ("ev_b", "REAL"), ("ev_c", "INTEGER")]

    def db(name):
        con = sqlite3.connect(tmp_path / name, isolation_level=None)
        con.execute(create)
        con.execute("INSERT INTO \"default\" VALUES ('t', '1', 0.5)")
        return con

    ref = db("ref.db")
    for n, d in defs:
        ref.execute(f'ALTER TABLE "default" ADD COLUMN {n} {d}')
    seen = []

    class Con:
        def __init__(self, c):
            self.c = c

        def execute(self, q, *a):
            seen.append(q)
            return self.c.execute(q, *a)

    cons = [db("1.db"), db("2.db")]
    for con in cons:
        con.execute("BEGIN IMMEDIATE")
        sql.add_columns(Con(con), "default", defs)
        con.execute("COMMIT")
        if con is cons[0]:
            first, seen[:] = list(seen), []
    assert any(q.startswith("ALTER TABLE") for q in first)
    assert not any(q.startswith("ALTER TABLE") for q in seen)  # the second: no ALTER
    want = ref.execute('PRAGMA table_info("default")').fetchall()
    for con in cons:
        assert con.execute('PRAGMA table_info("default")').fetchall() == want
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute('SELECT * FROM "default"').fetchall() == [("t", "1", 0.5, None,
                                                                      None, None)]


def test_add_columns_falls_back_to_alter_table_when_the_edit_does_not_check_out(
        tmp_path, monkeypatch):
    from _evlib import sql

    p = tmp_path / "a.db"
    con = sqlite3.connect(p, isolation_level=None)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT)')
    con.execute("INSERT INTO \"default\" VALUES ('t', '1')")
    real = sqlite3.Connection.execute

    class Con:  # every read-back of the columns after the edit says one is missing
        def __init__(self, c):
            self.c, self.edited = c, False

        def execute(self, q, *a):
            if q.startswith("UPDATE main.sqlite_master"):
                self.edited = True
            cur = real(self.c, q, *a)
            if self.edited and "table_info" in q:
                return iter(list(cur)[:-1])
            return cur

    con.execute("BEGIN IMMEDIATE")
    sql.add_columns(Con(con), "default", [("a", "TEXT"), ("b", "REAL"), ("c", "INTEGER")])
    con.execute("COMMIT")
    assert [r[1:3] for r in con.execute('PRAGMA table_info("default")')] == [
        ("track_id", "TEXT"), ("timestamp", "TEXT"), ("a", "TEXT"), ("b", "REAL"),
        ("c", "INTEGER")]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("phase", ["running", "stamping"])
def test_a_run_killed_mid_stamp_is_redone_not_collected(git_repo, tmp_path, phase):
    from _evlib import runner

    (tmp_path / "fast.py").write_text(FAST_TRAIN)
    cmd = [sys.executable, str(tmp_path / "fast.py"), "0"]
    key = run_key({"x": 1})
    spec = runner.RunSpec(command=cmd, version="m1", key=key, params={"x": 1})
    wd = git_repo / ".ev" / "sweeps" / "m1" / "w0"
    # What a sweep killed after its command exited 0 leaves: the sandbox, its rc, its state.
    runner.prepare(git_repo, spec, wd, reuse=True)
    run = runner.launch(git_repo, spec, wd, lineage={}, reuse=True)
    assert run.proc.wait() == 0
    run.close()
    runner.write_state(wd, {**run.state, "phase": phase}, in_place=True)
    assert runner.read_rc(wd, key) == 0
    cp = run_script("sweep.py", "--json", "--version", "m1", "--grid",
                    _grid(tmp_path / "g.yaml", "x: [1]\n"), "--", *cmd, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["recovered"] == ([key] if phase == "running" else [])
    # a recovery line is a warning, with --json too (as run.py's and model_manager.py's)
    assert cp.stderr == (f"sweep.py: warning: collected run-{key}, which ended after its "
                         "sweep was killed\n" if phase == "running" else "")
    assert out["counts"]["done"] == (0 if phase == "running" else 1)
    assert _per_key(git_repo / "results/experiments.db", "m1") == {key: 1}


def test_a_spawned_command_gets_default_signals_and_its_own_session(tmp_path):
    """Like Popen(restore_signals=True, start_new_session=True): SIGPIPE and SIGXFSZ (which
    Python ignores) are back to their defaults, so `yes | head -1` ends quietly."""
    from _evlib import runner

    script = 'grep SigIgn /proc/self/status; ps -o sid= -p $$; echo $$; yes | head -1'
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = runner._spawn(["/bin/sh", "-c", '"$@"', "sh", "sh", "-c", script], tmp_path,
                             dict(os.environ), out)
        assert proc.wait() == 0
    lines = log.read_text().splitlines()
    ign = int(next(ln for ln in lines if ln.startswith("SigIgn")).split()[1], 16)
    assert not ign & (1 << (signal.SIGPIPE - 1)) and not ign & (1 << (signal.SIGXFSZ - 1))
    assert lines[-1] == "y" and "Broken pipe" not in log.read_text()
    assert int(lines[-3]) == proc.pid  # the spawned shell leads its own session
