"""The model registry end to end: aliases, reasons, any past state, GTO tags read back by the
real `gto` CLI, a fresh clone's `dvc pull`, and a promote under another dvc's lock."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import BIN, run_script, sh

PROD = "models/production/model.bin"
LEDGER = "models/production/ledger.jsonl"
ERR = "model_manager.py: error: "


def mm(repo: Path, *args, rc: int = 0):
    cp = run_script("model_manager.py", "--json", *args, cwd=repo)
    assert cp.returncode == rc, (cp.returncode, cp.stdout, cp.stderr)
    if rc:
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    return json.loads(cp.stdout)


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()  # noqa: S324


def ledger(repo: Path, path: str = LEDGER) -> list[dict]:
    return [json.loads(x) for x in (repo / path).read_text().splitlines()]


def make_runs(repo: Path, n: int) -> list[str]:
    """n real xetrack runs with the run helper's lineage columns and a candidate each."""
    from xetrack import Tracker

    (repo / "results").mkdir(exist_ok=True)
    ids = []
    for i in range(n):
        t = Tracker(str(repo / "results/experiments.db"),
                    params={"version": f"e0.{i + 1}.0", "model": "toy"})
        t.log({"learning_rate": 0.1 * (i + 1), "seed": i, "epoch": 3,
               "f1_score": 0.7 + i / 10, "ev_commit": f"{i:040x}",
               "ev_data_md5": json.dumps({"data/train.parquet": f"{i:032x}"}),
               "ev_dirty": 0})
        path = repo / f"models/candidates/e0.{i + 1}.0--{t.track_id}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"model {i}\n".encode() * 2000)
        t.log({"model_path": str(path.relative_to(repo))})
        ids.append(t.track_id)
    return ids


def gto(repo: Path, *args) -> object:
    cp = sh([str(BIN / "gto"), *args], cwd=repo)
    return json.loads(cp.stdout)


def test_promote_rollback_restore_by_run_challenger_gto_and_a_fresh_clone(dvc_repo, tmp_path):
    repo = dvc_repo
    (repo / "ev.yaml").write_text("gto: true\nmetric: f1_score\n")
    sh(["git", "add", "ev.yaml"], cwd=repo)
    sh(["git", "commit", "-qm", "settings"], cwd=repo)
    a, b = make_runs(repo, 2)
    sh(["dvc", "add", "-q", "models/candidates", "results/experiments.db"], cwd=repo)
    sh("git add -A && git commit -qm runs", cwd=repo)
    cand = {r: next((repo / "models/candidates").glob(f"*--{r}.bin")) for r in (a, b)}
    want = {r: md5(cand[r]) for r in (a, b)}

    def check(step: int, run: str, action: str, reason, stage_version: str):
        e = ledger(repo)[-1]
        assert (e["seq"], e["action"], e["run_id"], e["reason"]) == (step, action, run, reason)
        assert md5(repo / PROD) == want[run] == e["model"]["md5"]
        st = mm(repo, "status")["production"]
        assert (st["run_id"], st["md5"], st["in_sync"], st["in_ledger"]) == (
            run, want[run], True, True)
        assert st["changed_by"]["seq"] == step and st["changed_by"]["action"] == action
        assert st["changed_by"]["reason"] == reason
        show = gto(repo, "show", "--json")
        assert show["model"]["stage"]["production"] == stage_version
        assert e["gto"]["version"] == stage_version
        assert sh(["git", "status", "--porcelain"], cwd=repo).stdout == ""  # all committed
        return st

    out = mm(repo, "promote", "--run-id", a, "--reason", "baseline")
    e = out["entry"]
    # only the run's metrics; its training commit and data md5s from its lineage
    assert e["metrics"] == {"f1_score": 0.7}
    assert e["trained_commit"] == f"{0:040x}"
    assert e["data_md5"] == {"data/train.parquet": f"{0:032x}"}
    assert e["git_commit"] != e["trained_commit"]
    check(1, a, "promote", "baseline", "v0.0.1")
    mm(repo, "promote", "--run-id", b, "--reason", "better f1")
    st = check(2, b, "promote", "better f1", "v0.0.2")
    assert st["rollback_to"]["run_id"] == a

    before = (repo / LEDGER).read_text()
    out = mm(repo, "rollback", "--reason", "too many false positives", "--dry-run")
    assert out["entry"]["restores"] == 1 and (repo / LEDGER).read_text() == before
    assert md5(repo / PROD) == want[b]
    out = mm(repo, "rollback", "--reason", "too many false positives")
    assert out["entry"]["restores"] == 1
    st = check(3, a, "rollback", "too many false positives", "v0.0.1")
    assert st["rollback_to"] is None
    assert st["undo"]["command"] == "rollback --to 2"
    assert st["undo"]["restores"]["run_id"] == b
    text = run_script("model_manager.py", "status", cwd=repo).stdout.splitlines()
    assert text[3].startswith("put there by: rollback (ledger entry 3) at ")
    assert text[3].endswith(": too many false positives")
    assert text[-2:] == [
        "rollback: no previous model (restore any past state with rollback --to N; see "
        "history)",
        f"undo this rollback: model_manager.py rollback --to 2 --reason ... (restores {b})"]
    mm(repo, "rollback", "--to", "2", "--reason", "false alarm: undo")
    st = check(4, b, "rollback", "false alarm: undo", "v0.0.2")
    assert st["rollback_to"]["run_id"] == a  # the state of entry 2 is back, stack included
    mm(repo, "rollback", "--run-id", a, "--reason", "A again, by run")
    check(5, a, "rollback", "A again, by run", "v0.0.1")
    assert [x["reason"] for x in mm(repo, "history")["entries"]] == [
        "baseline", "better f1", "too many false positives", "false alarm: undo",
        "A again, by run"]
    # a rollback needs a reason; restoring what is there is refused
    cp = run_script("model_manager.py", "rollback", cwd=repo)
    assert cp.returncode == 2 and "--reason" in cp.stderr
    assert mm(repo, "rollback", "--run-id", a, "--reason", "x", rc=4)["status"] == "error"

    # challenger: its own model.bin and ledger; production untouched
    mm(repo, "promote", "--alias", "challenger", "--run-id", b, "--reason", "shadow test")
    ch = ledger(repo, "models/challenger/ledger.jsonl")
    assert [(x["seq"], x["alias"], x["run_id"]) for x in ch] == [(1, "challenger", b)]
    assert md5(repo / "models/challenger/model.bin") == want[b]
    assert md5(repo / PROD) == want[a]
    st = mm(repo, "status", "--alias", "challenger")["production"]
    assert (st["alias"], st["run_id"]) == ("challenger", b)
    show = gto(repo, "show", "--json")
    assert show["model"]["stage"] == {"production": "v0.0.1", "challenger": "v0.0.2"}
    hist = gto(repo, "history", "model", "--json")
    assignments = [(h["stage"], h["version"]) for h in hist if h["event"] == "assignment"]
    assert sorted(assignments) == sorted([
        ("production", "v0.0.1"), ("production", "v0.0.2"), ("production", "v0.0.1"),
        ("production", "v0.0.2"), ("production", "v0.0.1"), ("challenger", "v0.0.2")])
    # prune keeps both aliases' candidates
    pr = mm(repo, "prune", "--keep", "0", "--metric", "f1_score")
    assert sorted(k["kept_because"] for k in pr["kept"]) == ["alias challenger", "production"]

    # a teammate's fresh clone gets the bytes with `dvc pull`
    sh(["dvc", "push", "-q", "-T"], cwd=repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)])
    sh(["dvc", "pull", "-q"], cwd=clone)
    assert md5(clone / PROD) == want[a]
    assert md5(clone / "models/challenger/model.bin") == want[b]
    assert gto(clone, "show", "--json")["model"]["stage"]["production"] == "v0.0.1"
    assert sh(["dvc", "status", "-q"], cwd=repo, check=False).returncode == 0

    # by tag: the state committed at GTO's registration of B; unknown selectors are exit 5
    mm(repo, "rollback", "--tag", "model@v0.0.2", "--reason", "by tag")
    assert (ledger(repo)[-1]["restores"], md5(repo / PROD)) == (2, want[b])
    assert mm(repo, "rollback", "--to", "99", "--reason", "x", rc=5)["error"] == (
        f"no ledger entry 99 in {LEDGER} (1..6); see the entries with `model_manager.py "
        "history`")
    assert mm(repo, "rollback", "--version", "e9.9.9", "--reason", "x", rc=5)["error"] == (
        f"version e9.9.9 was never in production ({LEDGER}); see `model_manager.py "
        "history`, or promote it")


def test_status_offers_exactly_what_rollback_accepts_with_byte_identical_models(dvc_repo):
    """Two runs with byte-identical models: a rollback to the other run is a change of the
    ledger (as an MLflow/GTO alias moved to another version), offered and done; the same run
    twice in a row is nothing to restore: not offered, and refused."""
    repo = dvc_repo
    a, b = make_runs(repo, 2)
    cand = {r: next((repo / "models/candidates").glob(f"*--{r}.bin")) for r in (a, b)}
    cand[b].write_bytes(cand[a].read_bytes())
    same = md5(cand[a])
    mm(repo, "promote", "--run-id", a, "--reason", "first")
    mm(repo, "promote", "--run-id", b, "--reason", "same bytes, other run")
    st = mm(repo, "status")["production"]
    assert (st["run_id"], st["md5"], st["rollback_to"]["run_id"]) == (b, same, a)
    out = mm(repo, "rollback", "--reason", "back to the first run")
    assert (out["entry"]["restores"], out["entry"]["run_id"]) == (1, a)
    assert out["entry"]["model"]["md5"] == same and md5(repo / PROD) == same
    st = mm(repo, "status")["production"]
    assert (st["run_id"], st["version"], st["in_sync"]) == (a, "e0.1.0", True)
    assert st["rollback_to"] is None and st["undo"]["command"] == "rollback --to 2"
    mm(repo, "rollback", "--to", "2", "--reason", "undo")
    assert mm(repo, "status")["production"]["run_id"] == b
    # the same run promoted again over a deleted model.bin: entries 5 and 2 are one state
    (repo / PROD).unlink()
    mm(repo, "promote", "--run-id", b, "--reason", "again")
    assert [e["run_id"] for e in ledger(repo)] == [a, b, a, b, b]
    st = mm(repo, "status")["production"]
    assert (st["run_id"], st["in_sync"], st["rollback_to"]) == (b, True, None)
    assert mm(repo, "rollback", "--reason", "x", rc=4)["error"] == (
        f"production already holds that model (md5 {same}, ledger entry 2); nothing to "
        "restore; see `model_manager.py history`")


def test_promote_under_another_dvcs_lock_replaces_nothing_early(dvc_repo):
    """promote writes the object and the .dvc itself: another dvc holding the repository
    lock cannot make it fail half-way (the issue's exit 1 after model.bin was replaced)."""
    repo = dvc_repo
    a, b = make_runs(repo, 2)
    mm(repo, "promote", "--run-id", a, "--reason", "first", "--commit")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dvc.repo import Repo\n"
         "r = Repo(sys.argv[1])\nwith r.lock:\n    print('held', flush=True)\n"
         "    time.sleep(30)\n", str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        mm(repo, "promote", "--run-id", b, "--reason", "under the lock")
        assert time.monotonic() - t < 25
        cand = next((repo / "models/candidates").glob(f"*--{b}.bin"))
        assert md5(repo / PROD) == md5(cand)
        assert ledger(repo)[-1]["run_id"] == b
        # the lock is really held: dvc itself fails now
        (repo / "other.txt").write_text("x")
        cp = sh(["dvc", "add", "other.txt"], cwd=repo, check=False)
        assert cp.returncode != 0 and "lock" in (cp.stderr + cp.stdout).lower()
        (repo / "other.txt").unlink()
        # add-candidate needs `dvc add` of the directory: refused with DVC's own line
        before = md5(cand)
        cp = run_script("model_manager.py", "add-candidate", "--run-id", b, "--model",
                        str(cand), cwd=repo)
        assert cp.returncode == 1, cp.stderr
        line = cp.stderr.strip()
        assert line.startswith(ERR + "dvc add failed: ERROR: ") and "lock" in line, line
        # proc's hint names the process that holds DVC's lock
        assert f"another DVC process holds the repository lock (PID {holder.pid}: " in line, line
        assert line.endswith("wait for it to finish and re-run, or end it if it is stale"), line
        assert md5(cand) == before
    finally:
        holder.kill()
        holder.wait()
    cp = sh(["dvc", "status", "--json", PROD + ".dvc"], cwd=repo)
    assert json.loads(cp.stdout or "{}") == {}  # DVC agrees: model.bin matches its .dvc


def test_prune_keeps_never_recorded_candidates_unless_include_untracked(dvc_repo):
    repo = dvc_repo
    ids = make_runs(repo, 3)
    sh(["dvc", "add", "-q", "models/candidates"], cwd=repo)
    sh(["dvc", "push", "-q", "models/candidates.dvc"], cwd=repo)
    from xetrack import Tracker

    t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.9.0"})
    t.log({"f1_score": 0.1})
    fresh = repo / f"models/candidates/e0.9.0--{t.track_id}.bin"
    fresh.write_bytes(b"trained, never dvc-added")
    out = mm(repo, "prune", "--keep", "1", "--metric", "f1_score", "--yes")
    assert [d["run_id"] for d in out["deleted"]] == [ids[1], ids[0]]
    assert [(k["run_id"], k["kept_because"]) for k in out["kept"]] == [
        (ids[2], "top"),
        (t.track_id, "not in the DVC cache (pass --include-untracked to delete it)")]
    assert fresh.read_bytes() == b"trained, never dvc-added"
    # prune's own `dvc add models/candidates` put it in the cache (not on the remote)
    out = mm(repo, "prune", "--keep", "1", "--metric", "f1_score", "--yes",
             "--include-untracked", "--force")
    assert [d["run_id"] for d in out["deleted"]] == [t.track_id] and not fresh.exists()


def test_a_killed_promotes_temp_files_are_removed_by_the_next(dvc_repo):
    """A promote killed while copying leaves a temp file next to model.bin and one in the
    DVC cache (as large as the model); the next promote/rollback removes them. A cache temp
    whose writer is alive, or that changed recently, may be another worktree's: kept."""
    import os

    repo = dvc_repo
    a, b = make_runs(repo, 2)
    mm(repo, "promote", "--run-id", a, "--reason", "a")
    prod = repo / PROD
    objs = repo / ".dvc/cache/files/md5"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    old = time.time() - 3600
    planted = {
        prod.with_name(".model.bin.ev-0123abcd"): False,  # checkout's temp: removed
        prod.with_name(".model.bin.ev-notmine1"): True,   # not a name checkout makes
        objs / f".ev-{gone}-{'a' * 32}.tmp": False,        # dead writer, old: removed
        objs / f".ev-{os.getpid()}-{'b' * 32}.tmp": True,  # live writer: kept
        objs / f".ev-{gone}-{'c' * 32}.tmp": True,          # dead writer, recent: kept
    }
    for p in planted:
        p.write_bytes(b"half a model")
        if p.name.startswith(".model") or "c" * 32 not in p.name:
            os.utime(p, (old, old))
    mm(repo, "promote", "--run-id", b, "--reason", "b")
    assert {p: p.exists() for p in planted} == planted
    assert md5(prod) == ledger(repo)[-1]["model"]["md5"]
    assert sorted(p.name for p in prod.parent.iterdir()) == [
        ".gitignore", ".model.bin.ev-notmine1", "ledger.jsonl", "model.bin", "model.bin.dvc"]
