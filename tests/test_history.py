"""tag_suggest.py and experiments.py on a real repo with five tagged versions.

One module-scoped project (real git, real dvc with a local remote, real xetrack DBs written
by Tracker.track on a frozen dataclass) is built once by tagging each version with
`tag_suggest.py --create`; the read-side tests then query it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import init_dvc, init_git, run_script, sh

DB = "results/experiments.db"
DATA1 = b"x,label\n1,0\n2,1\n"
DATA2 = b"x,label\n1,0\n2,1\n3,1\n"
MODEL = b"pickled model bytes"


@dataclass(frozen=True)
class Config:
    model: str = "logreg"
    C: float = 1.0


def log_runs(repo: Path, version: str, runs: list[tuple[str, float, float]],
             db: str = DB) -> list[str]:
    """One xetrack run per (model, C, f1): track() on the dataclass, like train.py."""
    from xetrack import Tracker

    ids = []
    for model, c, f1 in runs:
        t = Tracker(str(repo / db), params={"version": version, "model": model})

        def train(config: Config, f1=f1) -> dict:
            return {"f1_score": f1, "precision": 0.5}

        t.track(train, args=[Config(model=model, C=c)])
        ids.append(t.track_id)
    return ids


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()  # noqa: S324


def suggest(repo: Path, *args: str):
    cp = run_script("tag_suggest.py", "--json", *args, cwd=repo)
    return cp, (json.loads(cp.stdout) if cp.stdout.strip() else None)


def commit_version(repo: Path, *paths: str) -> None:
    sh(["dvc", "add", "-q", *paths, DB], cwd=repo)
    sh("git add -A && git commit -q -m step", cwd=repo)


@pytest.fixture(scope="module")
def hist(tmp_path_factory):
    root = tmp_path_factory.mktemp("hist")
    repo = init_dvc(init_git(root / "proj"), root / "remote")
    (repo / "data").mkdir()
    (repo / "data" / "train.csv").write_bytes(DATA1)
    (repo / "code.py").write_text("v = 1\n")
    (repo / "models" / "candidates").mkdir(parents=True)
    (repo / "models" / "candidates" / "e0.1.0--a.pkl").write_bytes(MODEL)
    made = {}

    def tag(version, runs, *extra):
        ids = log_runs(repo, version, runs)
        commit_version(repo, *extra)
        cp, out = suggest(repo, "--create", *(["--description", "baseline run"]
                                             if version == "e0.1.0" else []))
        assert cp.returncode == 0, cp.stderr
        made[version] = {"out": out, "ids": ids, "stderr": cp.stderr}

    tag("e0.1.0", [("logreg", 1.0, 0.80), ("logreg", 0.1, 0.85)], "data/train.csv",
        "models/candidates")
    tag("e0.1.1", [("logreg", 0.1, 0.86)])
    tag("e0.2.0", [("logreg", 0.01, 0.83)])
    (repo / "data" / "train.csv").unlink()
    (repo / "data" / "train.csv").write_bytes(DATA2)
    (repo / "code.py").write_text("v = 2\nw = 3\n")
    tag("e1.0.0", [("logreg", 0.01, 0.90)], "data/train.csv")
    tag("e2.0.0", [("forest", 0.01, 0.88)])
    sh(["dvc", "push", "-q", "-T"], cwd=repo)  # every tag's objects, not just HEAD's
    # The working-tree DB moves on (uncommitted): history must still come from the tags.
    (repo / DB).unlink()
    log_runs(repo, "e9.9.9", [("logreg", 5.0, 0.1)])
    return repo, made


# --- tag_suggest ----------------------------------------------------------------------------

def test_first_tag_message_exact_and_lineage(hist):
    repo, made = hist
    out = made["e0.1.0"]["out"]
    d = md5(DATA1)
    assert out["name"] == "e0.1.0" and out["bump"] == "initial" and out["created"] is True
    assert out["reason"] == "first experiment tag"
    first, blank, block = out["message"].split("\n")[:3]
    assert first == f"model=logreg | C=0.1 | f1_score=0.85 | best of 2 runs | data={d[:6]} " \
                    "| baseline run"
    assert blank == ""
    lineage = json.loads(block)
    assert lineage == out["lineage"]
    assert lineage["run"] == made["e0.1.0"]["ids"][1]  # the better of the two runs
    assert lineage["data"] == {"data/train.csv": d}
    assert lineage["dirty"] is False and lineage["runs"] == 2
    assert lineage["params"] == {"model": "logreg", "config_model": "logreg", "config_C": 0.1}
    assert lineage["metrics"] == {"f1_score": 0.85, "precision": 0.5}
    # the tag really exists, annotated, with that message, on the commit of the lineage
    msg = sh(["git", "tag", "-l", "e0.1.0", "--format=%(contents)"], cwd=repo).stdout
    assert msg.strip() == out["message"].strip()
    assert sh(["git", "rev-parse", "e0.1.0^{commit}"], cwd=repo).stdout.strip() == \
        lineage["commit"]


def test_bump_rules_patch_minor_major_data_major_model(hist):
    _, made = hist
    got = {v: (m["out"]["bump"], m["out"]["reason"]) for v, m in made.items()}
    assert got == {
        "e0.1.0": ("initial", "first experiment tag"),
        "e0.1.1": ("patch", "same data, model and params as e0.1.0: a re-run or a fix"),
        "e0.2.0": ("minor", "params changed: C 0.1 -> 0.01"),
        "e1.0.0": ("major", f"data changed: data/train.csv {md5(DATA1)[:6]} -> "
                            f"{md5(DATA2)[:6]}"),
        "e2.0.0": ("major", "model changed: logreg -> forest"),
    }
    assert made["e2.0.0"]["out"]["message"].split("\n")[0] == \
        f"model=forest | C=0.01 | f1_score=0.88 | data={md5(DATA2)[:6]} | model changed"
    assert made["e0.1.1"]["out"]["message"].split("\n")[0] == \
        f"model=logreg | C=0.1 | f1_score=0.86 | data={md5(DATA1)[:6]} | re-run"
    assert all(m["stderr"] == "" for m in made.values())  # names matched the inferred bump


def test_bump_override_and_name_mismatch_warning(hist):
    repo, _ = hist
    log_runs(repo, "e2.0.1", [("forest", 0.01, 0.7)], db="results/other.db")
    cp, out = suggest(repo, "--db", "results/other.db", "--version", "e2.0.1",
                      "--bump", "minor", "--metric", "f1_score")
    assert cp.returncode == 0, cp.stderr
    assert out["bump"] == "minor" and out["expected"] == "e2.1.0" and out["name"] == "e2.0.1"
    assert out["reason"] == ("--bump minor (inferred: patch: same data, model and params as "
                             "e2.0.0: a re-run or a fix)")
    assert cp.stderr == ("tag_suggest.py: warning: rows are logged under e2.0.1 but the change "
                         "since e2.0.0 is a minor bump (e2.1.0); tagging e2.0.1 so the tag "
                         "matches its rows\n")
    (repo / "results" / "other.db").unlink()


def test_version_without_rows_is_not_found(hist):
    repo, _ = hist
    cp, out = suggest(repo, "--version", "e3.0.0")
    assert cp.returncode == 5
    assert cp.stderr == ("tag_suggest.py: error: no rows for version e3.0.0 in "
                         "results/experiments.db; run training with --version e3.0.0 first, "
                         "or pass --db/--version\n")
    assert out["status"] == "error" and out["code"] == 5


def test_existing_tag_is_refused(hist):
    repo, _ = hist
    before = sh(["git", "tag"], cwd=repo).stdout
    cp = run_script("tag_suggest.py", "--version", "e9.9.9", "--create", cwd=repo)
    assert cp.returncode == 4  # dirty DB (uncommitted rows): refused before any tag
    assert cp.stderr.splitlines()[-1].startswith(
        "tag_suggest.py: error: not tagging e9.9.9: "
        "results/experiments.db changed since it was committed")
    sh(["git", "tag", "e9.9.9"], cwd=repo)
    try:
        cp = run_script("tag_suggest.py", "--version", "e9.9.9", "--create", cwd=repo)
        assert cp.returncode == 4
        assert cp.stderr.splitlines()[-1] == (
            "tag_suggest.py: error: tag e9.9.9 already exists; pass --tag NAME for the "
            "new tag (next free: e9.9.10), or log new runs under a new --version")
    finally:
        sh(["git", "tag", "-d", "e9.9.9"], cwd=repo)
    assert sh(["git", "tag"], cwd=repo).stdout == before


def test_malformed_tags_warned_and_ignored(git_repo):
    sh("git tag e2 && git tag e1.2 && git tag experiment-notes", cwd=git_repo)
    log_runs(git_repo, "e0.1.0", [("logreg", 1.0, 0.5)])
    cp, out = suggest(git_repo)
    assert cp.returncode == 0, cp.stderr
    assert out["name"] == "e0.1.0" and out["bump"] == "initial" and out["last"] is None
    assert cp.stderr == (
        "tag_suggest.py: warning: ignoring malformed experiment tag 'e1.2' "
        "(expected e<major>.<minor>.<patch>)\n"
        "tag_suggest.py: warning: ignoring malformed experiment tag 'e2' "
        "(expected e<major>.<minor>.<patch>)\n")
    assert out["message"].split("\n")[0] == \
        "model=logreg | C=1 | f1_score=0.5 | data=none | baseline"


def test_a_tag_of_a_tag_is_peeled_to_its_commit(git_repo):
    """for-each-ref's %(*objectname) peels one level: a nested annotated tag's commit was a
    tag object id (list/show --json, the summary cache, teardown's tip check)."""
    import _evlib.history as history

    repo = git_repo
    log_runs(repo, "e0.1.0", [("logreg", 1.0, 0.5)])
    sh("git add -A && git commit -qm runs", cwd=repo)
    cp, _ = suggest(repo, "--create")
    assert cp.returncode == 0, cp.stderr
    head = sh(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    msg = sh(["git", "tag", "-l", "--format=%(contents)", "e0.1.0"], cwd=repo).stdout
    (repo.parent / "msg.txt").write_text(msg)
    sh("git tag -a -m inner inner HEAD && git tag -a -m outer outer inner && "
       "git tag light outer && git tag -a -m tree treetag 'HEAD^{tree}' && "
       f"git tag -f -a -F {repo.parent / 'msg.txt'} e0.1.0 outer", cwd=repo)
    tags = history.all_tags(repo)
    tree = sh(["git", "rev-parse", "HEAD^{tree}"], cwd=repo).stdout.strip()
    assert {n: t.commit for n, t in tags.items()} == {
        "e0.1.0": head, "inner": head, "outer": head, "light": head, "treetag": tree}
    assert tags["e0.1.0"].lineage["version"] == "e0.1.0"
    cp = run_script("experiments.py", "--json", "show", "e0.1.0", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["commit"] == head


def test_exp_sequence_is_separate(git_repo):
    sh("git tag e0.4.0 && git tag exp-transformer-v1 && git tag exp-cnn-v7", cwd=git_repo)
    log_runs(git_repo, "exp-transformer", [("transformer", 1.0, 0.94)])
    cp, out = suggest(git_repo, "--kind", "exp", "--name", "transformer")
    assert cp.returncode == 0, cp.stderr
    assert out["name"] == "exp-transformer-v2" and out["bump"] == "exp"
    assert out["message"].split("\n")[0] == ("model=transformer | C=1 | f1_score=0.94 | "
                                             "data=none | worktree experiment transformer")
    cp, out = suggest(git_repo, "--name", "transformer", "--params", "")
    assert out["message"].startswith("model=transformer | f1_score=0.94 | data=none")
    cp, out = suggest(git_repo, "--name", "transformer", "--params", "lr")
    assert cp.returncode == 2
    assert cp.stderr.endswith("error: --params lr: not a param of run "
                              f"{out['error'].split('run ')[1].split(';')[0]}; choose from: C\n")
    log_runs(git_repo, "exp-rnn", [("rnn", 1.0, 0.9)])
    cp, out = suggest(git_repo, "--name", "rnn")
    assert out["name"] == "exp-rnn-v1"


def test_params_yaml_change_is_minor(git_repo):
    log_runs(git_repo, "e0.1.0", [("logreg", 1.0, 0.5)])
    cp, _ = suggest(git_repo, "--create", "--allow-dirty")
    assert cp.returncode == 0, cp.stderr
    (git_repo / "params.yaml").write_text("lr: 0.1\n")
    log_runs(git_repo, "e0.2.0", [("logreg", 1.0, 0.6)])
    cp, out = suggest(git_repo)  # the one untagged version in the DB is picked
    assert cp.returncode == 0, cp.stderr
    assert (out["version"], out["bump"], out["reason"]) == \
        ("e0.2.0", "minor", "params.yaml changed since e0.1.0")


def test_create_refusals_then_dry_run_then_create(dvc_repo):
    repo = dvc_repo
    log_runs(repo, "e0.1.0", [("logreg", 1.0, 0.5)])
    cp = run_script("tag_suggest.py", "--create", cwd=repo)
    assert cp.returncode == 4
    assert cp.stderr == ("tag_suggest.py: error: not tagging e0.1.0: uncommitted changes: "
                         "results/experiments.db; results/experiments.db is not tracked at "
                         "HEAD (dvc add results/experiments.db && git commit); commit them "
                         "first (the tag must point at what produced the rows), or pass "
                         "--allow-dirty\n")
    commit_version(repo)
    cp = run_script("tag_suggest.py", "--create", "--dry-run", "--json", cwd=repo)
    assert cp.returncode == 0 and json.loads(cp.stdout)["created"] is False
    assert sh(["git", "tag"], cwd=repo).stdout == ""
    cp = run_script("tag_suggest.py", "--create", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.rstrip().endswith("created tag e0.1.0")
    assert sh(["git", "tag"], cwd=repo).stdout == "e0.1.0\n"


# --- experiments.py -------------------------------------------------------------------------

def xp(repo, *args):
    cp = run_script("experiments.py", "--json", *args, cwd=repo) if args[0] != "--text" else \
        run_script("experiments.py", *args[1:], cwd=repo)
    return cp


def test_list_reads_each_version_from_its_tag(hist):
    repo, _ = hist
    cp = xp(repo, "list")
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)["versions"]
    got = [(r["tag"], r["model"], r["value"], r["runs"], r["data"], r["description"])
           for r in rows]
    d1, d2 = md5(DATA1)[:6], md5(DATA2)[:6]
    assert got == [("e0.1.0", "logreg", 0.85, 2, d1, "baseline run"),
                   ("e0.1.1", "logreg", 0.86, 1, d1, "re-run"),
                   ("e0.2.0", "logreg", 0.83, 1, d1, "params changed"),
                   ("e1.0.0", "logreg", 0.9, 1, d2, "data changed"),
                   ("e2.0.0", "forest", 0.88, 1, d2, "model changed")]
    cp = xp(repo, "--text", "list", "--sort", "metric")
    lines = cp.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["e1.0.0", "e2.0.0", "e0.1.1", "e0.1.0",
                                               "e0.2.0"]
    assert re.fullmatch(r"e1\.0\.0\s+\d{4}-\d\d-\d\d\s+logreg\s+f1_score=0\.9\s+runs=1\s+"
                        rf"data={d2}\s+data changed", lines[0])


def test_show_version(hist):
    repo, made = hist
    cp = xp(repo, "show", "e0.1.0")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["message"] == made["e0.1.0"]["out"]["message"].strip()
    assert [(r["track_id"], r["best"], r["params"]["config_C"], r["metrics"]["f1_score"])
            for r in out["run_list"]] == [(made["e0.1.0"]["ids"][0], False, 1.0, 0.8),
                                          (made["e0.1.0"]["ids"][1], True, 0.1, 0.85)]
    db_md5 = re.search(r"md5: (\w+)", sh(["git", "show", "e0.1.0:results/experiments.db.dvc"],
                                          cwd=repo).stdout)[1]
    dir_md5 = re.search(r"md5: (\w+\.dir)", sh(["git", "show",
                                                "e0.1.0:models/candidates.dvc"], cwd=repo).stdout)[1]
    assert out["artifacts"] == {"data/train.csv": md5(DATA1), DB: db_md5,
                                "models/candidates": dir_md5}
    assert out["lineage"]["run"] == made["e0.1.0"]["ids"][1]
    cp = xp(repo, "show", "e7.0.0")
    assert cp.returncode == 5
    assert cp.stderr == ("experiments.py: error: no tag 'e7.0.0' in this repository; list "
                         "versions with experiments.py list (or git tag -l 'e*')\n")


def test_compare_versions(hist):
    repo, _ = hist
    out = json.loads(xp(repo, "compare", "e0.2.0", "e1.0.0").stdout)
    assert out["metrics"]["f1_score"] == {"from": 0.83, "to": 0.9, "delta": 0.07}
    assert out["params_changed"] == {}
    assert set(out["artifacts_changed"]) == {"data/train.csv", DB}
    assert out["artifacts_changed"]["data/train.csv"] == {"from": md5(DATA1), "to": md5(DATA2)}
    assert "code.py | 3 ++-" in out["diffstat"] and ".dvc" not in out["diffstat"]
    out = json.loads(xp(repo, "compare", "e1.0.0", "e2.0.0").stdout)
    assert out["params_changed"] == {"model": {"from": "logreg", "to": "forest"},
                                     "config_model": {"from": "logreg", "to": "forest"}}
    assert out["diffstat"] == ""


def test_get_from_cache_and_refuses_to_overwrite(hist, tmp_path):
    repo, _ = hist
    dest = tmp_path / "old.csv"
    out = json.loads(xp(repo, "get", "e0.2.0", "data/train.csv", "-o", str(dest)).stdout)
    assert out["source"] == "cache" and out["md5"] == md5(DATA1)
    assert dest.read_bytes() == DATA1
    assert (repo / "data" / "train.csv").read_bytes() == DATA2
    cp = xp(repo, "get", "e0.2.0", "data/train.csv", "-o", str(dest))
    assert cp.returncode == 4 and "already exists" in cp.stderr
    cp = xp(repo, "get", "e0.2.0", "data/nope.csv", "-o", str(tmp_path / "n"))
    assert cp.returncode == 5
    assert "data/nope.csv is not tracked (by DVC or git) at e0.2.0" in cp.stderr
    # a file inside a DVC-tracked directory, from the cache via the directory's manifest
    out = json.loads(xp(repo, "get", "e0.1.0", "models/candidates/e0.1.0--a.pkl", "-o",
                        str(tmp_path)).stdout)
    assert (out["source"], out["md5"]) == ("cache", md5(MODEL))
    assert (tmp_path / "e0.1.0--a.pkl").read_bytes() == MODEL
    cp = run_script("experiments.py", "get", "e0.1.0", "data/train.csv", "-o",
                    str(tmp_path / "dry.csv"), "--dry-run", cwd=repo)
    assert cp.stdout.startswith("dry run: would write data/train.csv as of e0.1.0 to ")
    assert not (tmp_path / "dry.csv").exists()
    # a git-tracked file works too
    xp(repo, "get", "e0.1.0", "code.py", "-o", str(tmp_path / "code.py"))
    assert (tmp_path / "code.py").read_text() == "v = 1\n"


def test_get_from_remote_when_local_cache_lacks_it(hist, tmp_path):
    repo, _ = hist
    cache = repo / ".dvc" / "cache"
    aside = tmp_path / "cache-aside"
    shutil.move(cache, aside)
    try:
        dest = tmp_path / "from-remote.csv"
        cp = xp(repo, "get", "e0.1.0", "data/train.csv", "-o", str(dest))
        assert cp.returncode == 0, cp.stderr
        out = json.loads(cp.stdout)
        assert out["source"] == "remote" and out["md5"] == md5(DATA1)
        assert dest.read_bytes() == DATA1
        assert sh(["git", "status", "--porcelain"], cwd=repo).stdout == ""
        assert (repo / "data" / "train.csv").read_bytes() == DATA2
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
        cp = xp(repo, "get", "e0.1.0", "models/candidates/e0.1.0--a.pkl", "-o",
                str(tmp_path / "m.pkl"))
        assert json.loads(cp.stdout)["source"] == "remote"
        assert (tmp_path / "m.pkl").read_bytes() == MODEL
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(aside, cache)


def test_sql_working_tree_and_at_a_tag_read_only(hist):
    repo, _ = hist
    q = 'SELECT version, count(DISTINCT track_id) AS n FROM results."default" GROUP BY 1 ORDER BY 1'
    out = json.loads(xp(repo, "sql", q).stdout)
    assert out["columns"] == ["version", "n"] and out["rows"] == [["e9.9.9", 1]]
    out = json.loads(xp(repo, "sql", "--version", "e0.1.1",
                        "SELECT version, count(*) FROM runs GROUP BY 1 ORDER BY 1").stdout)
    assert out["rows"] == [["e0.1.0", 2], ["e0.1.1", 1]]
    cp = xp(repo, "--text", "sql", "SELECT version, f1_score FROM runs")
    assert cp.stdout == "version\tf1_score\ne9.9.9\t0.1\n"
    db_before = md5((repo / DB).read_bytes())
    cp = xp(repo, "sql", 'DELETE FROM results."default"')
    assert cp.returncode == 2 and cp.stderr.startswith("experiments.py: error: query failed: ")
    cp = xp(repo, "sql", f"ATTACH '{repo / DB}' AS w; DELETE FROM w.\"default\"")
    assert cp.returncode == 2 and "file system operations are disabled" in cp.stderr
    cp = xp(repo, "sql", "SELECT path FROM duckdb_databases() WHERE database_name='results'")
    attached = json.loads(cp.stdout)["rows"][0][0]
    assert attached != str(repo / DB) and not Path(attached).exists()  # a private snapshot
    assert md5((repo / DB).read_bytes()) == db_before


def test_create_refuses_a_model_not_tracked_by_dvc(dvc_repo):
    from xetrack import Tracker

    repo = dvc_repo
    (repo / "models" / "candidates").mkdir(parents=True)
    (repo / "models" / "candidates" / "e0.1.0--r.pkl").write_bytes(MODEL)
    t = Tracker(str(repo / DB), params={"version": "e0.1.0", "model": "logreg"})
    t.log({"f1_score": 0.7})
    t.log({"model_path": "models/candidates/e0.1.0--r.pkl"})
    commit_version(repo)  # the DB is in DVC, the model only in git
    cp = run_script("tag_suggest.py", "--create", cwd=repo)
    assert cp.returncode == 4
    assert cp.stderr == ("tag_suggest.py: error: not tagging e0.1.0: model "
                         "models/candidates/e0.1.0--r.pkl is not DVC-tracked at HEAD (dvc add "
                         "models/candidates && git commit); commit them first (the tag must "
                         "point at what produced the rows), or pass --allow-dirty\n")
    cp = run_script("tag_suggest.py", "--create", "--allow-dirty", "--json", cwd=repo)
    out = json.loads(cp.stdout)
    assert out["created"] is True
    assert out["lineage"]["run_lineage"] == {"model_path": "models/candidates/e0.1.0--r.pkl"}
    assert out["message"].split("\n")[0] == "model=logreg | f1_score=0.7 | data=none | baseline"


def test_pipeline_outputs_in_dvc_lock_count_as_data(git_repo):
    def lock(md5_value: str) -> None:
        (git_repo / "dvc.lock").write_text(
            "schema: '2.0'\nstages:\n  prepare:\n    cmd: python prep.py\n    outs:\n"
            f"    - path: data/prepared.csv\n      md5: {md5_value}\n      size: 3\n"
            f"    - path: models/m.pkl\n      md5: {'f' * 32}\n      size: 3\n")
        sh("git add dvc.lock && git commit -q -m lock", cwd=git_repo)

    lock("a" * 32)
    log_runs(git_repo, "e0.1.0", [("logreg", 1.0, 0.5)])
    cp, out = suggest(git_repo, "--create", "--allow-dirty")
    assert out["lineage"]["data"] == {"data/prepared.csv": "a" * 32}  # models/ is a product
    assert "| data=aaaaaa |" in out["message"]
    lock("b" * 32)
    log_runs(git_repo, "e1.0.0", [("logreg", 1.0, 0.5)])
    cp, out = suggest(git_repo)
    assert (out["bump"], out["reason"]) == ("major", "data changed: data/prepared.csv "
                                                     "aaaaaa -> bbbbbb")
    # flags after the subcommand work too
    cp = run_script("experiments.py", "list", "--json", "--repo", str(git_repo), cwd="/")
    assert [v["tag"] for v in json.loads(cp.stdout)["versions"]] == ["e0.1.0"]


def test_version_omitted_picks_the_one_version_no_tag_stands_for(git_repo):
    """Found by QA: exp-NAME-vN and --tag tags count as tagging their rows' version."""
    from conftest import make_xetrack_db

    db = git_repo / "results" / "experiments.db"
    for version, f1 in (("e0.1.0", 0.5), ("exp-a", 0.6), ("exp-b", 0.7), ("e0.2.0", 0.8)):
        make_xetrack_db(db, [{"f1_score": f1}], params={"version": version, "model": "m"})
    for args in (["--version", "e0.1.0"], ["--kind", "exp", "--name", "a"],
                 ["--version", "exp-b", "--tag", "e0.1.1"]):
        cp = run_script("tag_suggest.py", *args, "--create", "--allow-dirty", cwd=git_repo)
        assert cp.returncode == 0, cp.stderr
    cp = run_script("tag_suggest.py", "--json", cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["version"] == "e0.2.0"


def test_list_kind_exp_and_all_show_worktree_tags(git_repo):
    from conftest import make_xetrack_db

    db = git_repo / "results" / "experiments.db"
    for version, f1 in (("e0.1.0", 0.5), ("exp-b", 0.7), ("exp-a", 0.6)):
        make_xetrack_db(db, [{"f1_score": f1}], params={"version": version, "model": "m"})
    for args in (["--version", "e0.1.0"], ["--kind", "exp", "--name", "b"],
                 ["--kind", "exp", "--name", "a"]):
        cp = run_script("tag_suggest.py", *args, "--create", "--allow-dirty", cwd=git_repo)
        assert cp.returncode == 0, cp.stderr

    def tags(*args):
        cp = run_script("experiments.py", "list", "--json", *args, cwd=git_repo)
        assert cp.returncode == 0, cp.stderr
        return [(v["tag"], v["value"]) for v in json.loads(cp.stdout)["versions"]]

    assert tags() == [("e0.1.0", 0.5)]
    assert tags("--kind", "exp") == [("exp-a-v1", 0.6), ("exp-b-v1", 0.7)]
    assert tags("--kind", "all") == [("e0.1.0", 0.5), ("exp-a-v1", 0.6), ("exp-b-v1", 0.7)]
