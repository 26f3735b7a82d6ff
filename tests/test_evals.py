"""The eval tasks (evals/evals.json) and their graders, tested both ways.

For every task: the reference solution (evals/solutions/TASK.sh, commands SKILL.md documents)
must pass every expectation; the untouched starting project and a deliberately wrong solution
(evals/wrong/TASK.sh) must fail the expectations that matter. A grader that passes an
untouched project is a defect. No agent runs here (see evals/README.md for that).

All starting projects are built once (make_project.py), copied for the reference and the
wrong solution, and the solutions run a few at a time to keep the module near two minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVALS = ROOT / "evals"
sys.path.insert(0, str(EVALS))

import grade  # noqa: E402
import make_project  # noqa: E402

TASKS = list(make_project.TASKS)

# The expectations each broken end state must fail (ids from grade.py). Others may fail too.
MUST_FAIL_UNTOUCHED = {
    "sequential-baseline": {"runs", "production-best", "ledger", "tag-e0.1.0", "remote"},
    "sweep-lr": {"runs", "ledger", "tag-e0.2.0"},
    "sweep-crash-resume": {"runs", "not-redone", "ledger", "tag-e0.2.0", "dvc-status"},
    "worktree-experiment": {"exp-merged", "production-best", "ledger", "tag-exp-poly",
                            "tag-main"},
    "worktree-worse": {"exp-merged", "tag-exp-quick", "tag-main"},
    "rollback-production": {"production", "ledger", "reason", "tag-new"},
    "what-changed": {"answer-metric", "answer-param", "answer-data"},
    "adopt-own-train": {"data-tracked", "runs-1", "runs-2", "candidates", "production-best",
                        "ledger", "tag-e0.1.0", "tag-e0.2.0", "clean"},
}
MUST_FAIL_WRONG = {
    "sequential-baseline": {"tag-e0.1.0", "tag-e0.1.0-production", "remote"},  # no tag/push
    "sweep-lr": {"production-best", "ledger"},  # the worst run promoted
    "sweep-crash-resume": {"not-redone"},  # shards thrown away, finished runs redone
    "worktree-experiment": {"ledger", "tag-exp-poly"},  # no worktree, cp into production
    "worktree-worse": {"production", "ledger"},  # the worse model promoted
    "rollback-production": {"ledger", "cache", "dvc-status"},  # cp into a hardlinked file
    "what-changed": {"untouched", "bytes-unchanged"},  # git checkout of the old tag
    "adopt-own-train": {"gitignore", "candidates", "production-best", "ledger", "tag-e0.1.0",
                        "tag-e0.2.0"},  # the original document's recipe
}


def env() -> dict:
    e = dict(os.environ)
    e.update(make_project.ENV)
    e["SKILL"] = str(ROOT)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


def grade_cli(task: str, project: Path, *extra: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(EVALS / "grade.py"), task, str(project), *extra])


def solve(kind: str, task: str, project: Path) -> subprocess.CompletedProcess:
    return run(["bash", str(EVALS / kind / f"{task}.sh")], cwd=project)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evals")

    def build(task: str) -> Path:
        cp = run([sys.executable, str(EVALS / "make_project.py"), task, str(root / task)])
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == str(root / task / "project")
        return root / task

    def attempt(args: tuple[str, str]) -> dict:
        task, kind = args
        proj = make_project.copy_workspace(root / task, root / f"{task}-{kind}")
        cp = solve(kind, task, proj)
        return {"solution": cp, "project": proj}

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(build, TASKS))
        runs = dict(zip([(t, k) for t in TASKS for k in ("solutions", "wrong")],
                        pool.map(attempt, [(t, k) for t in TASKS for k in ("solutions",
                                                                            "wrong")]),
                        strict=True))
    out = {}
    for task in TASKS:
        out[task] = {"untouched": {"project": root / task / "project"},
                     "reference": runs[(task, "solutions")], "wrong": runs[(task, "wrong")]}
    return out


def graded(state: dict, task: str) -> tuple[int, dict]:
    cp = grade_cli(task, state["project"], "--json")
    return cp.returncode, json.loads(cp.stdout)


def failed_ids(res: dict) -> set[str]:
    return {e["id"] for e in res["expectations"] if not e["passed"]}


@pytest.mark.parametrize("task", TASKS)
def test_task_graded_both_ways(outcomes, task):
    o = outcomes[task]
    ref = o["reference"]["solution"]
    assert ref.returncode == 0, f"reference solution failed:\n{ref.stdout}\n{ref.stderr}"
    code, res = graded(o["reference"], task)
    assert (code, res["status"]) == (0, "pass"), [e for e in res["expectations"]
                                                 if not e["passed"]]
    assert res["summary"] == {"passed": len(res["expectations"]), "failed": 0,
                              "total": len(res["expectations"]), "pass_rate": 1.0}

    code, res = graded(o["untouched"], task)
    assert (code, res["status"]) == (1, "fail")
    assert MUST_FAIL_UNTOUCHED[task] <= failed_ids(res), res["expectations"]

    wrong = o["wrong"]["solution"]
    assert wrong.returncode == 0, f"wrong solution did not run:\n{wrong.stderr}"
    code, res = graded(o["wrong"], task)
    assert (code, res["status"]) == (1, "fail")
    assert MUST_FAIL_WRONG[task] <= failed_ids(res), res["expectations"]


def test_text_output_is_one_pass_or_fail_line_per_expectation(outcomes):
    task = "rollback-production"
    cp = grade_cli(task, outcomes[task]["wrong"]["project"])
    assert cp.returncode == 1
    lines = cp.stdout.splitlines()
    verdicts = [x for x in lines if re.match(r"^(PASS|FAIL)  ", x)]
    assert len(verdicts) == len(grade.TASKS[task])
    cache = verdicts[[c[0] for c in grade.TASKS[task]].index("cache")]
    assert cache.startswith("FAIL  Every object in the DVC cache re-hashes to its name")
    assert lines[-1] == f"{task}: 6/9 passed -> FAIL"
    # each verdict is followed by its evidence, indented: here the object that was rewritten
    evidence = lines[lines.index(cache) + 1]
    assert re.fullmatch(r"      [0-9a-f]{2}/[0-9a-f]{30} re-hashes to [0-9a-f]{32}", evidence)


def test_crash_fixture_left_a_half_finished_sweep(outcomes):
    proj = outcomes["sweep-crash-resume"]["untouched"]["project"]
    start = json.loads((proj / ".git" / make_project.START).read_text())
    done = start["done_before_crash"]
    assert 2 <= len(done) < len(make_project.SWEEP_GRID)
    assert sorted(make_project.done_runs(proj / "results" / "shards" / "e0.2.0")) == done
    # nothing of the sweep was merged yet: the results DB has e0.1.0's run only
    assert set(grade.read_db(proj / "results" / "experiments.db")) == set(start["run_rows"])


def test_evals_json_is_the_agent_skills_format():
    spec = json.loads((EVALS / "evals.json").read_text())
    name = re.search(r"^name:\s*(\S+)", (ROOT / "SKILL.md").read_text(), re.M).group(1)
    assert spec["skill_name"] == name
    evals = spec["evals"]
    assert len(evals) >= 8
    assert [e["id"] for e in evals] == list(range(1, len(evals) + 1))
    assert sorted(e["name"] for e in evals) == sorted(TASKS)
    for e in evals:
        assert e["prompt"].strip() and e["expected_output"].strip()
        for f in e["files"]:
            assert (ROOT / f).is_file(), f
        # the expectations ARE the grader's checks, word for word, in order
        assert e["expectations"] == grade.expectations(e["name"]), e["name"]


def test_usage_errors_exit_2(tmp_path):
    cp = grade_cli("no-such-task", tmp_path)
    assert cp.returncode == 2 and cp.stderr.startswith("grade.py: unknown task 'no-such-task'")
    cp = grade_cli("sweep-lr", tmp_path)
    assert cp.returncode == 2 and "not a project made by make_project.py" in cp.stderr
    cp = run([sys.executable, str(EVALS / "make_project.py"), "no-such-task", str(tmp_path / "x")])
    assert cp.returncode == 2 and "unknown task 'no-such-task'; see --list" in cp.stderr
    cp = run([sys.executable, str(EVALS / "make_project.py"), "sweep-lr", str(tmp_path)])
    assert cp.returncode == 2 and "already exists" in cp.stderr
    cp = run([sys.executable, str(EVALS / "make_project.py"), "--list"])
    assert cp.returncode == 0 and [x.split()[0] for x in cp.stdout.splitlines()] == TASKS


def test_grading_the_wrong_task_is_refused(outcomes):
    cp = grade_cli("sweep-lr", outcomes["what-changed"]["untouched"]["project"])
    assert cp.returncode == 2
    assert "was made for task 'what-changed', not 'sweep-lr'" in cp.stderr


def test_remote_check_agrees_with_dvc_status_c(outcomes):
    """grade.py's own remote walk says what `dvc status -c` says (here for HEAD; the grader
    also walks every tag)."""
    for state, in_sync in (("reference", True), ("untouched", False)):
        proj = outcomes["sequential-baseline"][state]["project"]
        cp = run(["dvc", "status", "-c", "--json"], cwd=proj)
        assert cp.returncode == 0, cp.stderr
        assert (json.loads(cp.stdout or "{}") == {}) is in_sync
        _, res = graded(outcomes["sequential-baseline"][state], "sequential-baseline")
        assert next(e for e in res["expectations"] if e["id"] == "remote")["passed"] is in_sync
