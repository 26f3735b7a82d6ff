"""model_manager.py on real repos: git, DVC with a local remote, xetrack DBs from real Trackers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_script, sh

PROD = "models/production/model.bin"
LEDGER = "models/production/ledger.jsonl"
ERR = "model_manager.py: error: "


def mm(repo: Path, *args, rc: int = 0, json_out: bool = True):
    """Run model_manager.py in repo; check the exit code; return parsed JSON (or the run)."""
    cp = run_script("model_manager.py", *(["--json"] if json_out else []), *args, cwd=repo)
    assert cp.returncode == rc, (cp.returncode, cp.stdout, cp.stderr)
    if rc:
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    return (json.loads(cp.stdout) if json_out else cp), cp


def err(repo: Path, *args, rc: int) -> str:
    """The one stderr line of a failing command (text mode)."""
    _, cp = mm(repo, *args, rc=rc, json_out=False)
    return cp.stderr.strip()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_runs(repo: Path, specs: list[tuple[str, dict]], db="results/experiments.db",
              candidates: bool = True) -> list[str]:
    """One real xetrack run per spec: a metrics row, then a model_path row (like train.py).
    Each run gets a candidate file with distinct bytes."""
    from xetrack import Tracker

    (repo / "results").mkdir(exist_ok=True)
    ids = []
    for i, (version, metrics) in enumerate(specs):
        t = Tracker(str(repo / db), params={"version": version, "model": "toy"})
        t.log({"epoch": 3, **metrics})
        path = f"models/candidates/{version}--{t.track_id}.bin"
        t.log({"model_path": path})
        if candidates:
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_bytes(f"model {i} of {t.track_id}\n".encode() * 100)
        ids.append(t.track_id)
    assert len(set(ids)) == len(ids)
    return ids


def commit_tag(repo: Path, tag: str) -> None:
    sh(["git", "add", "-A"], cwd=repo)
    sh(["git", "commit", "-q", "-m", f"release {tag}"], cwd=repo)
    sh(["git", "tag", "-a", tag, "-m", tag], cwd=repo)


def cache_is_intact(repo: Path) -> list[str]:
    """Every file object in the DVC cache must hash to its own name."""
    bad, seen = [], 0
    for obj in (repo / ".dvc/cache/files/md5").rglob("*"):
        if obj.is_file() and not obj.name.endswith(".dir"):
            seen += 1
            if hashlib.md5(obj.read_bytes()).hexdigest() != obj.parent.name + obj.name:  # noqa: S324
                bad.append(str(obj))
    assert seen, "no cache objects to check"
    return bad


# --- promote / rollback / ledger / tags / get --------------------------------------------

def test_promote_promote_rollback_restores_exact_bytes_and_ledger_answers_per_tag(dvc_repo,
                                                                                   tmp_path):
    repo = dvc_repo
    # hardlinks: the tracked model.bin IS the cache object; writing into it would corrupt it
    sh(["dvc", "config", "cache.type", "hardlink"], cwd=repo)
    a, b = make_runs(repo, [("e0.1.0", {"f1_score": 0.80}), ("e0.2.0", {"f1_score": 0.90})])
    cand_a = repo / f"models/candidates/e0.1.0--{a}.bin"
    cand_b = repo / f"models/candidates/e0.2.0--{b}.bin"
    sha_a, sha_b = sha(cand_a), sha(cand_b)

    out, _ = mm(repo, "promote", "--version", "e0.1.0", "--run-id", a)
    assert out["status"] == "ok" and out["entry"]["previous"] is None
    assert sha(repo / PROD) == sha_a
    commit_tag(repo, "v1")
    out, _ = mm(repo, "promote", "--db", "results/experiments.db", "--version", "e0.2.0",
                "--run-id", b)
    assert out["entry"]["previous"]["run_id"] == a
    assert out["entry"]["previous"]["sha256"] == sha_a
    assert sha(repo / PROD) == sha_b
    commit_tag(repo, "v2")
    assert cache_is_intact(repo) == []

    status, _ = mm(repo, "status")
    p = status["production"]
    assert (p["run_id"], p["version"], p["sha256"], p["in_sync"], p["in_ledger"]) == (
        b, "e0.2.0", sha_b, True, True)
    assert p["metrics"] == {"f1_score": 0.90}
    assert p["rollback_to"]["run_id"] == a

    # All tags pushed, then the local cache lost: rollback and get fetch from the remote.
    sh(["dvc", "push", "-q", "-T"], cwd=repo)
    shutil.rmtree(repo / ".dvc/cache")
    out, _ = mm(repo, "rollback", "--reason", "test")
    assert out["fetched_from"] == "remote"
    assert sha(repo / PROD) == sha_a  # the exact previous bytes
    assert out["entry"]["previous"]["run_id"] == b
    ledger = [json.loads(x) for x in (repo / LEDGER).read_text().splitlines()]
    assert [(e["action"], e["run_id"], e["model"]["sha256"]) for e in ledger] == [
        ("promote", a, sha_a), ("promote", b, sha_b), ("rollback", a, sha_a)]
    head = sh(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    assert ledger[2]["git_commit"] == head and ledger[1]["source"] == str(
        cand_b.relative_to(repo))
    status, _ = mm(repo, "status")
    assert status["production"]["run_id"] == a and status["production"]["in_sync"] is True
    # Only one promote below: a second rollback is refused, nothing changes.
    assert err(repo, "rollback", "--reason", "test", rc=4) == (
        ERR + "no previous model in models/production/ledger.jsonl; the first promotion "
        "cannot be rolled back; promote another model, or pass --to N / --run-id ID")
    commit_tag(repo, "v3")

    tags, _ = mm(repo, "history", "--tags")
    assert [(t["tag"], t["run_id"]) for t in tags["tags"]] == [("v1", a), ("v2", b), ("v3", a)]
    at_v1, _ = mm(repo, "status", "--at", "v1")
    assert at_v1["production"]["run_id"] == a and at_v1["production"]["rev"] == "v1"
    hist, _ = mm(repo, "history", "--at", "v2")
    assert [e["run_id"] for e in hist["entries"]] == [a, b]

    # get: v2's model (B) is not in the cache any more (rollback re-cached A only): remote.
    out, _ = mm(repo, "get", "--version", "v2", "-o", str(tmp_path / "b.bin"))
    assert (out["fetched_from"], out["run_id"]) == ("remote", b)
    assert sha(tmp_path / "b.bin") == sha_b
    out, _ = mm(repo, "get", "--version", "v1", "-o", str(tmp_path / "a.bin"))
    assert out["fetched_from"] == "cache" and sha(tmp_path / "a.bin") == sha_a
    assert sh(["git", "status", "--porcelain"], cwd=repo).stdout == ""  # tree untouched
    assert sha(repo / PROD) == sha_a
    assert cache_is_intact(repo) == []


def test_promote_over_a_symlinked_production_model_leaves_the_cache_intact(dvc_repo):
    repo = dvc_repo
    sh(["dvc", "config", "cache.type", "symlink"], cwd=repo)
    a, b = make_runs(repo, [("e0.1.0", {"f1_score": 0.5}), ("e0.1.0", {"f1_score": 0.6})])
    mm(repo, "promote", "--run-id", a)
    assert (repo / PROD).is_symlink()  # model.bin points into the cache
    mm(repo, "promote", "--run-id", b)
    assert cache_is_intact(repo) == []
    mm(repo, "rollback", "--reason", "test")
    assert sha(repo / PROD) == sha(repo / f"models/candidates/e0.1.0--{a}.bin")
    assert cache_is_intact(repo) == []


def test_get_and_status_errors(dvc_repo, tmp_path):
    repo = dvc_repo
    sh(["git", "tag", "bare"], cwd=repo)
    assert err(repo, "get", "--version", "nope", "-o", "x.bin", rc=5) == (
        ERR + "no tag or commit named 'nope'; list tags with `git tag -l -n1`")
    assert err(repo, "get", "--version", "bare", "-o", "x.bin", rc=5) == (
        ERR + "bare has no models/production/model.bin.dvc; no model was in production "
        "there; see `model_manager.py history --tags`")
    assert err(repo, "status", "--at", "nope", rc=5).startswith(ERR + "no tag or commit")
    out, _ = mm(repo, "status")
    assert out == {"status": "ok", "alias": "production", "production": None, "rev": None}
    assert err(repo, "rollback", "--reason", "test", rc=4) == (
        ERR + "no model has been promoted to production; nothing to roll back; promote a "
        "model first")
    _, cp = mm(repo, "status", json_out=False)
    assert cp.stdout == "no production model\n"


def test_get_refuses_existing_output_and_dry_run_writes_nothing(dvc_repo, tmp_path):
    repo = dvc_repo
    (a,) = make_runs(repo, [("e0.1.0", {"f1_score": 0.5})])
    mm(repo, "promote", "--run-id", a)
    commit_tag(repo, "v1")
    # A deleted model.bin loses nothing: status says so, promote needs no --force.
    (repo / PROD).unlink()
    status, _ = mm(repo, "status")
    assert (status["production"]["disk_md5"], status["production"]["in_sync"]) == (None, False)
    out, _ = mm(repo, "promote", "--run-id", a, "--model", str(repo / "README.md"))
    assert out["entry"]["previous"]["run_id"] == a
    out_file = tmp_path / "out.bin"
    out_file.write_bytes(b"keep me")
    assert err(repo, "get", "--version", "v1", "-o", str(out_file), rc=4) == (
        ERR + f"{out_file} already exists; pass another -o path, or --force to replace it")
    out, _ = mm(repo, "get", "--version", "v1", "-o", str(tmp_path / "new.bin"), "--dry-run")
    assert out["dry_run"] is True and not (tmp_path / "new.bin").exists()
    mm(repo, "get", "--version", "v1", "-o", str(out_file), "--force")
    assert sha(out_file) == sha(repo / f"models/candidates/e0.1.0--{a}.bin")  # v1, not now


def test_promote_errors_are_one_line_with_exit_codes(dvc_repo):
    repo = dvc_repo
    db = repo.resolve() / "results/experiments.db"
    assert err(repo, "promote", "--run-id", "x", rc=2) == (
        ERR + f"results DB {db} does not exist; pass --db with the results DB your runs "
        "logged to")
    a, b = make_runs(repo, [("e0.1.0", {"f1_score": 0.5}), ("e0.1.0", {"f1_score": 0.6})])
    (repo / f"models/candidates/e0.1.0--{b}.bin").unlink()
    assert err(repo, "promote", "--run-id", "no-such-run", rc=5) == (
        ERR + f"run no-such-run is not in {db}; list runs with `model_manager.py list` "
        "(check --db)")
    assert err(repo, "promote", "--run-id", a, "--version", "e9.9.9", rc=5) == (
        ERR + f"run {a} has version e0.1.0, not e9.9.9; pass --version e0.1.0 or another run")
    assert err(repo, "promote", "--run-id", b, rc=5) == (
        ERR + f"run {b} has no candidate model in models/candidates/; add it with "
        f"`model_manager.py add-candidate --run-id {b} --model PATH`, or pass --model PATH")
    assert err(repo, "promote", rc=2) == (
        ERR + "promote needs --run-id ID or --model PATH; see model_manager.py promote --help")
    assert err(repo, "promote", "--run-id", "../etc", rc=2).startswith(ERR + "bad run id")
    assert not (repo / PROD).exists() and not (repo / LEDGER).exists()

    out, _ = mm(repo, "promote", "--run-id", a, "--dry-run")
    assert out["dry_run"] is True and not (repo / PROD).exists()
    mm(repo, "promote", "--run-id", a)
    again, _ = mm(repo, "promote", "--run-id", a)
    assert again["unchanged"] is True
    assert len((repo / LEDGER).read_text().splitlines()) == 1

    # Production edited by hand (a new file, not recorded by DVC): promote refuses.
    (repo / PROD).unlink()
    (repo / PROD).write_bytes(b"hand-made model")
    assert err(repo, "promote", "--model", str(repo / f"models/candidates/e0.1.0--{a}.bin"),
               rc=4) == (
        ERR + f"{PROD} has changes DVC has not recorded; promoting would lose those bytes; "
        f"keep them with `dvc add {PROD}`, discard them with `dvc checkout --force {PROD}`, "
        "or pass --force (saves them to the DVC cache first)")
    assert (repo / PROD).read_bytes() == b"hand-made model"
    # The hint's way out works: the recorded model is back and in sync.
    sh(["dvc", "checkout", "--force", PROD], cwd=repo)
    status, _ = mm(repo, "status")
    assert status["production"]["in_sync"] is True and status["production"]["run_id"] == a


def test_promote_force_saves_unrecorded_bytes_and_model_path_without_run(dvc_repo, tmp_path):
    repo = dvc_repo
    (a,) = make_runs(repo, [("e0.1.0", {"f1_score": 0.5})])
    mm(repo, "promote", "--run-id", a)
    (repo / PROD).unlink()
    (repo / PROD).write_bytes(b"hand-made model")
    hand_md5 = hashlib.md5(b"hand-made model").hexdigest()  # noqa: S324
    other = tmp_path / "exp-x/models/production/model.bin"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"worktree model")
    out, _ = mm(repo, "promote", "--model", str(other), "--force")
    e = out["entry"]
    assert (e["run_id"], e["version"], e["metrics"]) == (None, None, {})
    assert e["source"] == "../exp-x/models/production/model.bin"  # relative to the repo
    assert e["previous"]["md5"] == hand_md5
    assert (repo / PROD).read_bytes() == b"worktree model"
    # The way back: the hand-made bytes are in the cache, and rollback restores them.
    assert (repo / ".dvc/cache/files/md5" / hand_md5[:2] / hand_md5[2:]).is_file()
    mm(repo, "rollback", "--reason", "test")
    assert (repo / PROD).read_bytes() == b"hand-made model"
    # --model tied to a run: the DB checks apply, the path is the recorded source.
    out, _ = mm(repo, "promote", "--run-id", a, "--model", str(other))
    assert (out["entry"]["run_id"], out["entry"]["metrics"]["f1_score"]) == (a, 0.5)


def test_rollback_refusals_and_a_shared_cache_dir_from_config_local(dvc_repo, tmp_path):
    repo = dvc_repo
    shared = tmp_path / "shared-cache"
    sh(["dvc", "cache", "dir", "--local", str(shared)], cwd=repo)  # as worktrees share one
    a, b = make_runs(repo, [("e0.1.0", {"f1_score": 0.5}), ("e0.1.0", {"f1_score": 0.6})])
    mm(repo, "promote", "--run-id", a)
    mm(repo, "promote", "--run-id", b)
    assert not (repo / ".dvc/cache").exists()
    # Edited in place of the tracked file, not recorded: rollback refuses, then --force.
    (repo / PROD).unlink()
    (repo / PROD).write_bytes(b"edited")
    status, cp = mm(repo, "status")
    assert (status["production"]["in_sync"], status["production"]["run_id"]) == (False, b)
    _, cp = mm(repo, "status", json_out=False)
    assert "dvc: OUT OF SYNC (disk md5 " in cp.stdout
    assert err(repo, "rollback", "--reason", "test", rc=4) == (
        ERR + f"{PROD} has changes DVC has not recorded; rolling back would lose those "
        f"bytes; keep them with `dvc add {PROD}`, discard them with `dvc checkout --force "
        f"{PROD}`, or pass --force (saves them to the DVC cache first)")
    out, _ = mm(repo, "rollback", "--reason", "test", "--force")
    assert out["fetched_from"] == "cache"  # found in the shared cache named by config.local
    assert sha(repo / PROD) == sha(repo / f"models/candidates/e0.1.0--{a}.bin")
    # A model recorded with plain `dvc add` (outside the ledger): rollback refuses.
    (repo / PROD).unlink()
    (repo / PROD).write_bytes(b"by hand")
    sh(["dvc", "add", "-q", PROD], cwd=repo)
    md5 = hashlib.md5  # noqa: S324
    top = md5((repo / f"models/candidates/e0.1.0--{a}.bin").read_bytes()).hexdigest()
    assert err(repo, "rollback", "--reason", "test", rc=4) == (
        ERR + f"{PROD} (md5 {md5(b'by hand').hexdigest()}) is not the ledger's production "
        f"model ({top}); it was changed outside model_manager.py; promote what you want, or "
        "pass --force")
    assert (repo / PROD).read_bytes() == b"by hand"


def test_first_promote_over_a_model_added_before_the_ledger_can_be_rolled_back(dvc_repo):
    repo = dvc_repo
    (repo / PROD).parent.mkdir(parents=True)
    (repo / PROD).write_bytes(b"copied in by hand, then dvc add")  # workflow 3's old way
    sh(["dvc", "add", "-q", PROD], cwd=repo)
    (a,) = make_runs(repo, [("e0.1.0", {"f1_score": 0.5})])
    out, _ = mm(repo, "promote", "--run-id", a)
    assert out["entry"]["previous"]["run_id"] is None
    out, _ = mm(repo, "rollback", "--reason", "test")
    assert out["entry"]["source"] == "before the ledger"
    assert (repo / PROD).read_bytes() == b"copied in by hand, then dvc add"
    status, _ = mm(repo, "status")
    assert (status["production"]["in_ledger"], status["production"]["run_id"]) == (True, None)


# --- add-candidate ------------------------------------------------------------------------

def test_add_candidate_copies_names_and_records_hash(dvc_repo, tmp_path):
    repo = dvc_repo
    (a,) = make_runs(repo, [("e0.3.0", {"f1_score": 0.7})], candidates=False)
    model = tmp_path / "trained.pkl"
    model.write_bytes(b"pickled model")
    md5 = hashlib.md5(b"pickled model").hexdigest()  # noqa: S324
    dest = repo / f"models/candidates/e0.3.0--{a}.pkl"

    out, _ = mm(repo, "add-candidate", "--run-id", a, "--model", str(model), "--dry-run")
    assert out["candidate"] == f"models/candidates/e0.3.0--{a}.pkl" and not dest.exists()
    out, _ = mm(repo, "add-candidate", "--run-id", a, "--model", str(model),
                "--version", "e0.3.0")
    assert (out["md5"], out["tracked"], out["unchanged"]) == (md5, True, False)
    assert dest.read_bytes() == b"pickled model"
    # The hash is recorded by DVC: the models/candidates manifest names the file's md5.
    import yaml

    dir_md5 = yaml.safe_load((repo / "models/candidates.dvc").read_text())["outs"][0]["md5"]
    manifest = json.loads((repo / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:])
                          .read_text())
    assert manifest == [{"md5": md5, "relpath": f"e0.3.0--{a}.pkl"}]

    out, _ = mm(repo, "add-candidate", "--run-id", a, "--model", str(model), "--no-track")
    assert out["unchanged"] is True
    model.write_bytes(b"retrained")
    assert err(repo, "add-candidate", "--run-id", a, "--model", str(model), rc=4) == (
        ERR + f"models/candidates/e0.3.0--{a}.pkl exists with different bytes; pass --force "
        "to replace it (the old bytes stay in the DVC cache if models/candidates was "
        "dvc-added)")
    mm(repo, "add-candidate", "--run-id", a, "--model", str(model), "--force", "--no-track")
    assert dest.read_bytes() == b"retrained"
    assert err(repo, "add-candidate", "--run-id", "ghost", "--model", str(model),
               rc=5).startswith(ERR + "run ghost is not in ")
    assert err(repo, "add-candidate", "--run-id", a, "--model", "nope.pkl", rc=2) == (
        ERR + f"model file {repo.resolve() / 'nope.pkl'} does not exist; pass --model with "
        "the trained model's path")
    assert err(repo, "add-candidate", "--run-id", a, "--model", str(model), "--version",
               "e0.1.0", rc=5) == (
        ERR + f"run {a} has version e0.3.0, not e0.1.0; pass --version e0.3.0 or another run")


# --- list -------------------------------------------------------------------------------

def test_list_ranks_runs_not_rows_missing_metric_last(dvc_repo):
    repo = dvc_repo
    ids = make_runs(repo, [("e0.2.0", {"f1_score": 0.7, "loss": 0.3}),
                           ("e0.2.0", {"accuracy": 0.99}),  # no f1_score: ranks last
                           ("e0.2.0", {"f1_score": 0.9, "loss": 0.5}),
                           ("e0.1.0", {"f1_score": 0.8, "loss": 0.1})])
    (repo / f"models/candidates/e0.2.0--{ids[0]}.bin").unlink()  # its model file is missing
    (repo / "models/candidates/e0.0.1--gone-run-1.bin").write_bytes(b"orphan")
    mm(repo, "promote", "--run-id", ids[3])

    out, _ = mm(repo, "list")
    assert out["ranked_by"]["column"] == "f1_score" and out["ranked_by"]["mode"] == "max"
    assert [(r["run_id"], r["f1_score"], r["rows"]) for r in out["runs"]] == [
        (ids[2], 0.9, 2), (ids[3], 0.8, 2), (ids[0], 0.7, 2), (ids[1], None, 2)]
    assert [r["production"] for r in out["runs"]] == [False, True, False, False]
    assert out["runs"][0]["candidate"] == f"models/candidates/e0.2.0--{ids[2]}.bin"
    assert out["missing_models"] == [{"run_id": ids[0], "version": "e0.2.0",
                                      "model_path": f"models/candidates/e0.2.0--{ids[0]}.bin"}]
    assert out["orphan_candidates"] == ["models/candidates/e0.0.1--gone-run-1.bin"]

    out, _ = mm(repo, "list", "--metric", "loss", "--mode", "min", "--version", "e0.2.0")
    assert [r["run_id"] for r in out["runs"]] == [ids[0], ids[2], ids[1]]
    _, cp = mm(repo, "list", "--metric", "loss", "--mode", "min", json_out=False)
    lines = cp.stdout.splitlines()
    assert lines[0] == ("ranked by loss (min; last non-null value; runs without it rank last)")
    assert lines[2] == (f"1  {ids[3]}  e0.1.0  0.1  models/candidates/e0.1.0--{ids[3]}.bin  *")
    assert f"missing model file: run {ids[0]} (e0.2.0), logged model_path " \
           f"models/candidates/e0.2.0--{ids[0]}.bin" in lines
    assert err(repo, "list", "--metric", "f1", rc=2) == (
        ERR + "column 'f1' is not in experiments.db table default; pass --metric with one "
        "of: epoch, f1_score, loss, accuracy")


# --- prune ------------------------------------------------------------------------------

def test_prune_sweep_of_8_keeps_production_and_3_best(dvc_repo):
    repo = dvc_repo
    scores = [0.71, 0.93, 0.65, 0.88, None, 0.90, 0.52, 0.60]
    ids = make_runs(repo, [("e0.2.0", {"f1_score": s} if s is not None else {"recall": 0.9})
                           for s in scores])
    best3 = {ids[1], ids[5], ids[3]}
    prod = ids[6]  # ranked 7th: production must survive anyway
    mm(repo, "promote", "--run-id", prod)
    before = sorted(p.name for p in (repo / "models/candidates").iterdir())
    # The workflows' `cd models/candidates && dvc add .` is what DVC 3.x rejects on a fresh
    # sweep; prune runs `dvc add models/candidates` from the root instead (checked below).
    cp = sh(["dvc", "add", "."], cwd=repo / "models/candidates", check=False)
    assert cp.returncode != 0 and not (repo / "models/candidates.dvc").exists()
    sh(["dvc", "add", "-q", "models/candidates"], cwd=repo)  # the sweep, tracked as one unit

    out, cp = mm(repo, "prune", "--keep", "3", "--metric", "f1_score")
    assert out["dry_run"] is True and len(out["would_delete"]) == 4
    assert sorted(p.name for p in (repo / "models/candidates").iterdir()) == before
    assert {d["run_id"] for d in out["would_delete"]} == {ids[0], ids[2], ids[4], ids[7]}
    _, cp = mm(repo, "prune", "--keep", "3", "--metric", "f1_score", json_out=False)
    assert cp.stdout.splitlines()[-1] == (
        "dry run: 4 file(s) would be deleted; pass --yes to delete")

    # Nothing is on the DVC remote yet: --yes would leave those bytes only in this
    # machine's cache, so it refuses, naming the first three and the push to run.
    assert out["not_pushed"] == [d["path"] for d in out["would_delete"]]
    assert out["remote"] == "DVC remote 'storage'"
    md5s = {d["run_id"]: d["md5"][:12] for d in out["would_delete"]}
    paths = [(d["path"], md5s[d["run_id"]]) for d in out["would_delete"]]
    assert err(repo, "prune", "--keep", "3", "--metric", "f1_score", "--yes", rc=4) == (
        ERR + "4 candidate(s) to delete are not on DVC remote 'storage': "
        + ", ".join(f"{p} (md5 {h})" for p, h in paths[:3]) + " and 1 more; nothing "
        "deleted; run dvc push models/candidates.dvc and re-run, or pass --force to delete "
        "them anyway (then they are only in this machine's DVC cache, until a dvc gc)")
    assert sorted(p.name for p in (repo / "models/candidates").iterdir()) == before
    sh(["dvc", "push", "-q", "models/candidates.dvc"], cwd=repo)
    out, _ = mm(repo, "prune", "--keep", "3", "--metric", "f1_score", "--yes")
    assert out["not_pushed"] == []
    left = {p.name.split("--")[1].split(".")[0] for p in (repo / "models/candidates").iterdir()
            if not p.name.startswith(".")}
    assert left == best3 | {prod}
    assert {k["run_id"]: k["kept_because"] for k in out["kept"]} == {
        ids[1]: "top", ids[5]: "top", ids[3]: "top", prod: "production"}
    assert out["tracked"] is True
    # Re-tracked as one unit: DVC sees nothing to do for the directory.
    st = sh(["dvc", "status", "--json", "models/candidates.dvc"], cwd=repo).stdout
    assert json.loads(st) == {}
    # A pruned file's bytes stay in the DVC cache (until `dvc gc`).
    gone = hashlib.md5(f"model 0 of {ids[0]}\n".encode() * 100).hexdigest()  # noqa: S324
    assert (repo / ".dvc/cache/files/md5" / gone[:2] / gone[2:]).is_file()
    assert err(repo, "prune", "--keep", "1", "--metric", "nope", rc=2).startswith(
        ERR + "column 'nope' is not in experiments.db")


def test_prune_refuses_when_no_candidate_has_the_metric(dvc_repo):
    repo = dvc_repo
    make_runs(repo, [("e0.2.0", {"recall": 0.5}), ("e0.2.0", {"f1_score": None,
                                                                 "recall": 0.4})])
    make_runs(repo, [("e0.3.0", {"f1_score": 0.3})], candidates=False)
    assert err(repo, "prune", "--keep", "1", "--metric", "f1_score", "--yes", rc=4) == (
        ERR + f"no candidate's run has a f1_score value in {repo.resolve()}/results/"
        "experiments.db; check --db and --metric; nothing deleted")
    assert len(list((repo / "models/candidates").iterdir())) == 2
    assert err(repo, "prune", "--keep", "-1", "--metric", "f1_score", rc=2) == (
        ERR + "--keep must be 0 or more; pass --keep K")


def test_prune_never_leaves_a_candidate_only_in_the_local_cache_unless_forced(dvc_repo):
    """A deleted candidate whose bytes the default DVC remote lacks would survive only in
    this machine's cache (which dvc gc empties): --yes refuses (exit 4, nothing deleted, the
    pushed one neither), and so it does with no default remote; --force deletes, the bytes
    staying in the cache."""
    repo = dvc_repo
    ids = make_runs(repo, [("e0.2.0", {"f1_score": s}) for s in (0.9, 0.5)])
    sh(["dvc", "add", "-q", "models/candidates"], cwd=repo)
    sh(["dvc", "push", "-q", "models/candidates.dvc"], cwd=repo)
    new = make_runs(repo, [("e0.2.0", {"f1_score": 0.1})])
    sh(["dvc", "add", "-q", "models/candidates"], cwd=repo)  # in the cache, not pushed
    mid, low = (f"models/candidates/e0.2.0--{i}.bin" for i in (ids[1], new[0]))
    md5 = {p: hashlib.md5((repo / p).read_bytes()).hexdigest() for p in (mid, low)}  # noqa: S324
    before = sorted(p.name for p in (repo / "models/candidates").iterdir())
    prune = ("prune", "--keep", "1", "--metric", "f1_score")
    tail = ("run dvc push models/candidates.dvc and re-run, or pass --force to delete them "
            "anyway (then they are only in this machine's DVC cache, until a dvc gc)")
    assert err(repo, *prune, "--yes", rc=4) == (
        ERR + f"1 candidate(s) to delete are not on DVC remote 'storage': {low} (md5 "
        f"{md5[low][:12]}); nothing deleted; " + tail)
    _, cp = mm(repo, *prune, json_out=False)
    assert cp.stdout.splitlines()[-2] == (
        f"not on DVC remote 'storage': {low} (--yes refuses them: dvc push first, or --force)")
    sh(["dvc", "remote", "default", "--unset"], cwd=repo)
    assert err(repo, *prune, "--yes", rc=4) == (
        ERR + f"2 candidate(s) to delete are not on any DVC remote (no default remote is "
        f"set): {mid} (md5 {md5[mid][:12]}), {low} (md5 {md5[low][:12]}); nothing deleted; "
        "add one (dvc remote add -d NAME URL), then " + tail)
    assert sorted(p.name for p in (repo / "models/candidates").iterdir()) == before
    sh(["dvc", "remote", "default", "storage"], cwd=repo)
    out, _ = mm(repo, *prune, "--yes", "--force")
    assert [d["path"] for d in out["deleted"]] == [mid, low] and out["not_pushed"] == [low]
    assert not (repo / mid).exists() and not (repo / low).exists()
    assert (repo / ".dvc/cache/files/md5" / md5[low][:2] / md5[low][2:]).is_file()


# --- with the real training template ------------------------------------------------------

def test_real_training_runs_promote_best_by_list(dvc_repo):
    repo = dvc_repo
    for name in ("train.py", "prepare_data.py"):
        shutil.copy(ROOT / "assets" / name, repo / name)
    sh(["python", "prepare_data.py"], cwd=repo)
    for c in ("0.001", "1.0"):
        sh(["python", "train.py", "--version", "e0.4.0", "--C", c], cwd=repo)
    out, _ = mm(repo, "list", "--version", "e0.4.0")
    best = out["runs"][0]
    assert best["f1_score"] >= out["runs"][1]["f1_score"]
    assert best["candidate"] == f"models/candidates/e0.4.0--{best['run_id']}.pkl"
    mm(repo, "promote", "--version", "e0.4.0", "--run-id", best["run_id"])
    status, _ = mm(repo, "status")
    assert status["production"]["metrics"]["f1_score"] == best["f1_score"]
    assert sha(repo / PROD) == sha(repo / best["candidate"])
    import pickle

    model = pickle.loads((repo / PROD).read_bytes())  # noqa: S301 - our own test model
    assert hasattr(model, "predict")


@pytest.mark.parametrize("args", [["--help"], ["promote", "--help"], ["prune", "--help"]])
def test_help_shows_example_and_codes(args, tmp_path):
    cp = run_script("model_manager.py", *args, cwd=tmp_path)
    assert cp.returncode == 0
    assert "example:" in cp.stdout and "5  the run, version" in cp.stdout
    if args != ["--help"]:
        assert "--dry-run" in cp.stdout and "--json" in cp.stdout
        assert f"python scripts/model_manager.py {args[0]} " in cp.stdout


def test_status_hashes_describe_one_file_and_a_missing_model_says_how_to_restore(dvc_repo):
    """Found by QA: out of sync, status mixed the ledger's md5 with the disk's sha256; a
    missing model.bin read 'OUT OF SYNC (disk md5 -...)'."""
    repo = dvc_repo
    (a,) = make_runs(repo, [("e0.1.0", {"f1_score": 0.5})])
    mm(repo, "promote", "--run-id", a)
    recorded = sha(repo / PROD)
    with open(repo / PROD, "ab") as fh:  # (not a link here: DVC's default cache copies)
        fh.write(b"appended")
    st = mm(repo, "status")[0]["production"]
    assert (st["in_sync"], st["sha256"], st["disk_sha256"]) == (False, recorded,
                                                                 sha(repo / PROD))
    (repo / PROD).unlink()
    cp = run_script("model_manager.py", "status", cwd=repo)
    assert cp.returncode == 0
    assert ("dvc: model.bin is not in the workspace (run `dvc checkout "
            "models/production/model.bin`, or `dvc pull` in a fresh clone)") in cp.stdout


def test_concurrent_promotes_lose_no_ledger_entry(dvc_repo):
    """Each promote rewrites the ledger; two at once used to race (the last writer won)."""
    import subprocess
    import sys

    from conftest import SCRIPTS

    repo = dvc_repo
    ids = make_runs(repo, [("e0.1.0", {"f1_score": 0.5 + i / 10}) for i in range(3)])
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "model_manager.py"), "promote",
                               "--run-id", rid], cwd=repo, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rid in ids]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    entries = [json.loads(x) for x in (repo / "models/production/ledger.jsonl").read_text()
               .splitlines()]
    assert sorted(e["run_id"] for e in entries) == sorted(ids)
    assert sha(repo / PROD) == entries[-1]["model"]["sha256"]
