"""tag_suggest.py --create: lineage that tells the truth, sanitised messages, idempotent exp
tags, and a tag for a production change (promote/rollback with no new runs)."""

from __future__ import annotations

import json
from pathlib import Path

import _evlib.history as history
from conftest import run_script, run_script_closed_stdout, sh
from test_registry import make_runs


def ts(repo: Path, *args, rc: int = 0):
    cp = run_script("tag_suggest.py", "--json", *args, cwd=repo)
    assert cp.returncode == rc, (cp.returncode, cp.stdout, cp.stderr)
    return json.loads(cp.stdout) if cp.stdout.strip() else None, cp


def commit_all(repo: Path, msg: str) -> None:
    sh("git add -A && git commit -qm " + json.dumps(msg), cwd=repo)


def test_param_values_cannot_forge_fields_and_lineage_parses(dvc_repo):
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "results").mkdir()
    t = Tracker(str(repo / "results/experiments.db"),
                params={"version": "e0.1.0", "model": "toy", "note": "a | f1_score=1.0 | x\n{"})
    t.log({"f1_score": 0.5})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    res, _ = ts(repo, "--create")
    tag = history.all_tags(repo)["e0.1.0"]
    fields = tag.subject.split(" | ")
    assert [f for f in fields if f.startswith("f1_score=")] == ["f1_score=0.5"]
    assert r"note=a \| f1_score=1.0 \| x\n{" in fields
    assert "\n" not in tag.subject
    assert tag.lineage["params"]["note"] == "a | f1_score=1.0 | x\n{"  # exact, parsed


def test_step_and_count_columns_are_no_params_when_no_metrics_are_named(dvc_repo):
    """metrics: null (recognised by name): epoch, n_rows and the like are neither params
    nor metrics in a tag, `experiments.py show` and Settings.split; a setting named like
    them (epochs, n_estimators) stays a param; a step column named in metrics is one."""
    from _evlib import settings
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "ev.yaml").write_text("metrics: null\n")
    (repo / "results").mkdir()
    t = Tracker(str(repo / "results/experiments.db"),
                params={"version": "e0.1.0", "model": "toy", "lr": 0.1, "epochs": 3,
                        "n_estimators": 50})
    for ep in range(1, 4):
        t.log({"epoch": ep, "loss": 1 / ep, "f1_score": 0.5 + ep / 10})
    t.log({"n_rows": 1000, "train_count": 800, "f1_score": 0.9, "seed": 3})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    res, _ = ts(repo, "--create")
    want = {"model": "toy", "lr": 0.1, "epochs": 3, "n_estimators": 50, "seed": 3}
    assert res["message"].splitlines()[0] == (
        "model=toy | lr=0.1 | epochs=3 | n_estimators=50 | seed=3 | f1_score=0.9 | data=none "
        "| baseline")
    assert res["lineage"]["params"] == want
    assert res["lineage"]["metrics"] == {"loss": 1 / 3, "f1_score": 0.9}
    assert history.all_tags(repo)["e0.1.0"].lineage["params"] == want
    cp = run_script("experiments.py", "--json", "show", "e0.1.0", cwd=repo)
    assert json.loads(cp.stdout)["run_list"][0]["params"] == want
    values = {"epoch": 3, "n_rows": 1000, "lr": 0.1, "f1_score": 0.9, "step": "warmup"}
    assert settings.Settings().split(values) == (
        {"lr": 0.1, "step": "warmup"}, {"f1_score": 0.9})  # a step that is no number stays
    assert settings.Settings(metrics=["f1_score", "n_rows"]).split(values) == (
        {"lr": 0.1, "step": "warmup"}, {"n_rows": 1000, "f1_score": 0.9})


def test_create_into_a_closed_stdout_is_still_success(dvc_repo):
    """`tag_suggest.py --create | head -1`: the tag is made, exit 0, nothing on stderr; the
    same for experiments.py list (its full path, then its fast path) over that tag."""
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "results").mkdir()
    t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0"})
    t.log({"f1_score": 0.5})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    for args in (["--create"], ["--create", "--json", "--version", "e0.1.0"]):  # unchanged
        cp = run_script_closed_stdout("tag_suggest.py", *args, cwd=repo)
        assert (cp.returncode, cp.stderr) == (0, ""), args
    assert list(history.all_tags(repo)) == ["e0.1.0"]
    for _ in range(2):
        cp = run_script_closed_stdout("experiments.py", "list", cwd=repo)
        assert (cp.returncode, cp.stderr) == (0, "")
    assert run_script("experiments.py", "list", cwd=repo).stdout.startswith("e0.1.0 ")


def test_a_run_without_a_model_param_has_no_model_field(dvc_repo):
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "results").mkdir()
    t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0", "arch": "mlp"})
    t.log({"f1_score": 0.5})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    res, _ = ts(repo, "--description", "no model param")
    assert res["message"].splitlines()[0] == (
        "arch=mlp | f1_score=0.5 | data=none | no model param")


def test_create_refuses_uncommitted_data_and_records_the_data_a_run_read(dvc_repo):
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "data").mkdir()
    (repo / "data/train.csv").write_text("a,b\n1,2\n")
    sh(["dvc", "add", "-q", "data/train.csv"], cwd=repo)
    commit_all(repo, "data")
    (repo / "data/train.csv").write_text("a,b\n1,3\n")  # changed, no dvc add
    (repo / "results").mkdir()
    t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0"})
    t.log({"f1_score": 0.5, "ev_data_md5": json.dumps({"data/train.csv": "f" * 32})})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    for extra in ([], ["--allow-dirty"]):
        _, cp = ts(repo, "--create", *extra, rc=4)
        assert cp.stderr.strip() == (
            "tag_suggest.py: error: not tagging e0.1.0: data differs from what is committed "
            "(dvc status): data/train.csv (modified); dvc add them (or dvc repro) and git "
            "commit, so the tag names the data the runs read; --allow-dirty does not skip "
            "this")
    res, _ = ts(repo)  # the suggestion says dirty, and names the data the run read
    assert res["lineage"]["dirty"] is True
    assert res["lineage"]["dvc_changed"] == ["data/train.csv (modified)"]
    assert res["lineage"]["data"] == {"data/train.csv": "f" * 32}
    assert res["lineage"]["data_from"] == "run lineage"
    assert sh(["git", "tag"], cwd=repo).stdout == ""


def test_exp_tag_create_is_idempotent_per_commit(dvc_repo):
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "results").mkdir()
    Tracker(str(repo / "results/experiments.db"),
            params={"version": "exp-forest"}).log({"f1_score": 0.4})
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    first, _ = ts(repo, "--kind", "exp", "--name", "forest", "--create")
    again, _ = ts(repo, "--kind", "exp", "--name", "forest", "--create")
    assert (first["name"], first["created"]) == ("exp-forest-v1", True)
    assert (again["name"], again["created"], again["unchanged"]) == (
        "exp-forest-v1", False, True)
    assert sh(["git", "tag"], cwd=repo).stdout.split() == ["exp-forest-v1"]
    # an e-tag create re-run on the same commit is unchanged too
    # (exit 0, nothing written), and a refused name says which flag to use
    _, cp = ts(repo, "--version", "exp-forest", "--tag", "e1.0.0", "--create")
    again, _ = ts(repo, "--version", "exp-forest", "--tag", "e1.0.0", "--create")
    assert again["unchanged"] is True


def test_a_production_change_with_no_new_runs_gets_its_own_tag(dvc_repo):
    repo = dvc_repo
    a, b = make_runs(repo, 2)
    sh(["dvc", "add", "-q", "models/candidates", "results/experiments.db"], cwd=repo)
    commit_all(repo, "runs")
    run_script("model_manager.py", "promote", "--run-id", a, "--reason", "first", "--commit",
               cwd=repo)
    ts(repo, "--version", "e0.1.0", "--create")
    ts(repo, "--version", "e0.2.0", "--create")
    for args in (["promote", "--run-id", b, "--reason", "b wins"],
                 ["rollback", "--reason", "false positives"]):
        cp = run_script("model_manager.py", *args, "--commit", cwd=repo)
        assert cp.returncode == 0, cp.stderr
    # the way: rows of a tagged version under a new --tag: the same suggestion
    res, cp = ts(repo, "--version", "e0.1.0", "--tag", "e0.2.1")
    assert res["production_change"] is True and "rows are logged" not in cp.stderr
    res, _ = ts(repo)  # every version is tagged: the change is production's
    assert res["production_change"] is True and res["name"] == "e0.2.1"
    assert res["bump"] == "patch"
    subject = res["message"].splitlines()[0]
    assert subject == (f"production={a} (e0.1.0) | rollback to ledger entry 1 | model="
                       f"{res['lineage']['model_md5'][:8]} | data="
                       f"{'0' * 6} | false positives")
    assert res["lineage"]["data"] == {"data/train.parquet": "0" * 32}
    assert res["lineage"]["reason"] == "false positives"
    res, _ = ts(repo, "--create")
    assert res["created"] is True
    assert history.all_tags(repo)["e0.2.1"].lineage["run"] == a
    again, _ = ts(repo, "--create")  # the re-run of a done create
    assert again["unchanged"] is True
    # untagged runs in the DB too: the error says how to tag the production change
    cp = run_script("model_manager.py", "promote", "--run-id", b, "--reason", "b again",
                    "--commit", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    from xetrack import Tracker
    for v in ("e0.3.0", "e0.4.0"):
        Tracker(str(repo / "results/experiments.db"), params={"version": v}).log(
            {"f1_score": 0.1})
    _, cp = ts(repo, rc=2)
    assert cp.stderr.strip() == (
        "tag_suggest.py: error: several untagged versions in experiments.db: e0.3.0, e0.4.0; "
        "pass --version to choose one; to tag the production change (promote since e0.2.1): "
        "--version e0.2.0 --tag e0.2.2")
    res, _ = ts(repo, "--version", "e0.2.0", "--tag", "e0.2.2")
    assert (res["production_change"], res["name"]) == (True, "e0.2.2")


def test_tags_rank_runs_as_ev_yaml_says_unless_flags_say_otherwise(dvc_repo):
    """ev.yaml's metric, mode and results_db choose the tag's best run, as they do for
    experiments.py, the ledger and the report; --metric/--mode/--db still override."""
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "ev.yaml").write_text("metric: loss\nmode: min\nresults_db: results/other.db\n")
    (repo / "results").mkdir()
    ids = {}
    for name, loss, f1 in (("low-loss", 0.1, 0.6), ("high-f1", 0.5, 0.9)):
        t = Tracker(str(repo / "results/other.db"), params={"version": "e0.1.0", "model": name})
        t.log({"loss": loss, "f1_score": f1})
        ids[name] = t.track_id
    sh(["dvc", "add", "-q", "results/other.db"], cwd=repo)
    commit_all(repo, "runs")
    res, _ = ts(repo)
    assert res["lineage"]["run"] == ids["low-loss"]
    assert (res["lineage"]["metric"], res["lineage"]["mode"]) == ("loss", "min")
    assert "| loss=0.1 |" in res["message"].splitlines()[0]
    res, _ = ts(repo, "--metric", "f1_score", "--mode", "max")
    assert res["lineage"]["run"] == ids["high-f1"]
    # --db another file: no runs there, as before (the flag wins over ev.yaml)
    cp = run_script("tag_suggest.py", "--json", "--db", "results/none.db", cwd=repo)
    assert cp.returncode != 0, cp.stdout
