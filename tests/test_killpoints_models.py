"""Kill model_manager.py (and tag creation) after each of its git/dvc calls, re-run the same
command, and compare ledger, model.bin, .dvc, cache re-hash, tags and git status with a
clean run. No re-run may record a false ledger entry or lose the previous model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_script, sh
from killpoints import call_log, calls, killed, wrappers
from test_registry import make_runs

PROD = "models/production/model.bin"
LEDGER = "models/production/ledger.jsonl"


def cache_bad(repo: Path) -> list[str]:
    bad = []
    for obj in (repo / ".dvc/cache/files/md5").rglob("*"):
        if obj.is_file() and not obj.name.startswith(".") and not obj.name.endswith(".dir"):
            if hashlib.md5(obj.read_bytes()).hexdigest() != obj.parent.name + obj.name:  # noqa: S324
                bad.append(str(obj))
    return bad


def snapshot(repo: Path) -> dict:
    """What must match a clean run: ledger (less time/id/commit), bytes, .dvc, tags, status."""
    led = []
    if (repo / LEDGER).exists():
        for line in (repo / LEDGER).read_text().splitlines():
            e = json.loads(line)
            led.append((e["seq"], e["action"], e["run_id"], e["model"]["md5"], e.get("reason"),
                        e.get("restores"), (e.get("previous") or {}).get("md5"),
                        (e.get("gto") or {}).get("version")))
    p = repo / PROD
    tags = sh(["git", "for-each-ref", "--format=%(refname:strip=2) %(*objectname:short)",
               "refs/tags"], cwd=repo).stdout.split("\n")
    tags = sorted(t.split()[0] for t in tags if t.strip())
    return {"ledger": led,
            "model": hashlib.md5(p.read_bytes()).hexdigest() if p.exists() else None,  # noqa: S324
            "dvc": (repo / (PROD + ".dvc")).read_text() if (repo / (PROD + ".dvc")).exists()
            else None,
            "tags": tags,
            "status": sh(["git", "status", "--porcelain"], cwd=repo).stdout,
            "commits": int(sh(["git", "rev-list", "--count", "HEAD"], cwd=repo).stdout),
            "cache_bad": cache_bad(repo)}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, list[str]]:
    """A project with gto on, 2 runs committed, run A promoted (and committed)."""
    from conftest import init_dvc, init_git

    root = tmp_path_factory.mktemp("kp")
    repo = init_dvc(init_git(root / "proj"), root / "remote")
    (repo / "ev.yaml").write_text("gto: true\nmetric: f1_score\n")
    ids = make_runs(repo, 3)
    sh(["dvc", "add", "-q", "models/candidates", "results/experiments.db"], cwd=repo)
    sh("git add -A && git commit -qm runs", cwd=repo)
    cp = run_script("model_manager.py", "promote", "--run-id", ids[0], "--reason", "A",
                    cwd=repo)
    assert cp.returncode == 0, cp.stderr
    cp = run_script("model_manager.py", "promote", "--run-id", ids[1], "--reason", "B",
                    cwd=repo)
    assert cp.returncode == 0, cp.stderr
    sh(["dvc", "push", "-q", "-T"], cwd=repo)
    return repo, ids


def fresh(base_repo: Path, where: Path) -> Path:
    """A copy of the base project (its remote stays the shared absolute one)."""
    shutil.copytree(base_repo, where, symlinks=True)
    return where


def walk(base, tmp_path: Path, args: list[str], prepare=None, script="model_manager.py",
         only=None):
    """Clean run, then a kill after every git/dvc call (or those `only(log)` picks) + a
    plain re-run; compare snapshots."""
    repo0, _ = base
    clean = fresh(repo0, tmp_path / "clean")
    if prepare:
        prepare(clean)
    env, counter = wrappers(tmp_path / "w0", kill_at=0)
    cp = run_script(script, *args, cwd=clean, env=env)
    assert cp.returncode == 0, cp.stderr
    total = calls(counter)
    want = snapshot(clean)
    assert want["cache_bad"] == []
    log = call_log(counter)
    outcomes = []
    for n in (only(log) if only else range(1, total + 1)):
        repo = fresh(repo0, tmp_path / f"k{n}")
        if prepare:
            prepare(repo)
        env, _ = wrappers(tmp_path / f"w{n}", kill_at=n)
        cp = run_script(script, *args, cwd=repo, env=env)
        assert killed(cp), (n, log[n - 1], cp.returncode, cp.stderr)
        again = run_script(script, "--json", *args, cwd=repo)
        assert again.returncode == 0, (n, log[n - 1], again.stderr)
        got = snapshot(repo)
        assert got == want, (n, log[n - 1])
        outcomes.append((json.loads(again.stdout).get("recovered") or {}).get("recovered"))
        shutil.rmtree(repo)
    return total, log, outcomes


def test_promote_killed_after_each_git_dvc_call(base, tmp_path):
    _, ids = base
    total, log, outcomes = walk(base, tmp_path, ["promote", "--run-id", ids[2], "--reason",
                                                 "C is better"])
    # the calls that write (commit, tags) are among those covered
    assert any(" git commit " in x for x in log) and sum(" git tag " in x for x in log) == 2
    assert "completed" in outcomes  # killed after the intent: the re-run finished it
    print(f"promote: {total} kill points")


def test_rollback_killed_after_each_git_dvc_call(base, tmp_path):
    total, log, outcomes = walk(base, tmp_path, ["rollback", "--reason", "false positives"])
    assert any(" git commit " in x for x in log) and "completed" in outcomes
    print(f"rollback: {total} kill points")


def test_rollback_from_the_remote_killed_after_each_call(base, tmp_path):
    def lose_a(repo: Path):  # A's bytes only on the remote: rollback fetches them
        e = json.loads((repo / LEDGER).read_text().splitlines()[0])
        m = e["model"]["md5"]
        (repo / ".dvc/cache/files/md5" / m[:2] / m[2:]).unlink()

    total, log, outcomes = walk(base, tmp_path, ["rollback", "--reason", "false positives"],
                                prepare=lose_a)
    # the one "file at a revision" primitive reads a local-directory remote in-process:
    # no `dvc get` start-up; every git call around the fetch is a kill point
    assert not any(" dvc get " in x for x in log)
    assert any(" git commit " in x for x in log) and "completed" in outcomes
    print(f"rollback from the remote: {total} kill points")


def test_add_candidate_and_prune_killed_after_each_call(base, tmp_path):
    _, ids = base
    model = tmp_path / "new.bin"
    model.write_bytes(b"a retrained model\n" * 100)
    total_a, log, _ = walk(base, tmp_path / "add", ["add-candidate", "--run-id", ids[2],
                                                    "--model", str(model), "--force"])
    assert any(" dvc add " in x for x in log)
    total_p, log, _ = walk(base, tmp_path / "prune", ["prune", "--keep", "0", "--metric",
                                                      "f1_score", "--yes"])
    print(f"add-candidate: {total_a} kill points; prune: {total_p}")


def test_tag_create_killed_after_each_call(base, tmp_path):
    total, log, _ = walk(base, tmp_path, ["--version", "e0.1.0", "--create"],
                         script="tag_suggest.py")
    assert any(" git tag -a e0.1.0 " in x for x in log)
    print(f"tag_suggest --create: {total} kill points")


# --- kills between the file writes (no git/dvc call there: the harness cannot reach them) --

_KILL_IN = """
import os, runpy, sys
sys.path.insert(0, {scripts!r})
from _evlib import registry
def die(*a, **k):
    os.kill(os.getpid(), 9)
setattr(registry, {name!r}, die)
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def run_killed_in(repo: Path, step: str, *args):
    """Run model_manager.py with registry.<step> replaced by a SIGKILL of the process."""
    import sys

    from conftest import SCRIPTS

    code = _KILL_IN.format(scripts=str(SCRIPTS), name=step,
                           script=str(SCRIPTS / "model_manager.py"))
    return sh([sys.executable, "-c", code, *args], cwd=repo, check=False)


@pytest.mark.parametrize("step", ["_apply", "remember", "ensure_gitignore", "append_line"])
def test_promote_killed_between_file_writes_is_completed_by_the_rerun(base, tmp_path, step):
    repo0, ids = base
    args = ["promote", "--run-id", ids[2], "--reason", "C", "--commit"]
    clean = fresh(repo0, tmp_path / "clean")
    (clean / "ev.yaml").write_text("metric: f1_score\n")  # gto off: plain --commit
    sh("git commit -qam 'gto off'", cwd=clean)
    repo = fresh(clean, tmp_path / "k")
    assert run_script("model_manager.py", *args, cwd=clean).returncode == 0
    want = snapshot(clean)
    cp = run_killed_in(repo, step, *args)
    assert killed(cp), (cp.returncode, cp.stderr)
    again = run_script("model_manager.py", "--json", *args, cwd=repo)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["recovered"]["recovered"] == "completed"
    assert snapshot(repo) == want


def test_an_intent_whose_object_is_gone_is_rolled_back(base, tmp_path):
    repo0, ids = base
    repo = fresh(repo0, tmp_path / "k")
    before = snapshot(repo)
    cp = run_killed_in(repo, "ensure_gitignore", "promote", "--run-id", ids[2],
                       "--reason", "C")
    assert killed(cp)
    assert snapshot(repo)["dvc"] != before["dvc"]  # half-made: the .dvc names C already
    intent = json.loads((repo / ".dvc/tmp/ev/production.intent.json").read_text())
    m = intent["md5"]
    (repo / ".dvc/cache/files/md5" / m[:2] / m[2:]).unlink()  # e.g. a `dvc gc` since
    st = run_script("model_manager.py", "--json", "status", cwd=repo)
    out = json.loads(st.stdout)
    assert out["production"]["recovered"]["recovered"] == "rolled back"
    after = snapshot(repo)
    assert {k: after[k] for k in ("ledger", "model", "dvc", "tags", "commits")} == {
        k: before[k] for k in ("ledger", "model", "dvc", "tags", "commits")}
    assert not (repo / ".dvc/tmp/ev/production.intent.json").exists()
