"""A small tagged history with known values, for the chart and report tests (built once).

Real git, real dvc (local remote), real xetrack rows (one row per epoch, so curves have
data), tags made by tag_suggest.py --create, and a production ledger (uncommitted, as a
promote without --commit leaves it) with reasons, an alias, a rollback and a field this
version does not know; model.bin.dvc names the model the rollback restored:

  e0.1.0         1 run   C=1.0  solver=lbfgs      f1 0.80                 promoted (baseline)
  e0.2.0         4 runs  C=0.01..10, lbfgs/liblinear, f1 0.70 0.84 0.88 0.86
                                                  best C=1.0 promoted, production after rollback
  exp-forest-v1  1 run   model=forest             f1 0.83
  e1.0.0         1 run   data changed             f1 0.91  promoted, then rolled back
Every run logs EPOCHS rows: epoch 1..5, loss = LOSS0 / epoch, f1 rising to its final value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import init_dvc, init_git, run_script, sh

DB = "results/experiments.db"
DATA1 = b"x,label\n1,0\n2,1\n"
DATA2 = b"x,label\n1,0\n2,1\n3,1\n"
EPOCHS = 5
SWEEP = [(0.01, "lbfgs", 0.70), (0.1, "liblinear", 0.84), (1.0, "lbfgs", 0.88),
         (10.0, "liblinear", 0.86)]
F1 = {"e0.1.0": 0.80, "e0.2.0": 0.88, "exp-forest-v1": 0.83, "e1.0.0": 0.91}
COMMAND = "python train.py --version e1.0.0 --C 1.0"
PROD_DVC = "outs:\n- md5: {md5}\n  size: 10\n  hash: md5\n  path: model.bin\n"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()  # noqa: S324 - DVC's object names


def f1_at(final: float, epoch: int) -> float:
    return round(final - 0.02 * (EPOCHS - epoch), 6)


def loss_at(c: float, epoch: int) -> float:
    return round((1.0 + c / 100) / epoch, 6)


def log_run(repo: Path, version: str, model: str, c: float, solver: str, f1: float,
            extra: dict | None = None) -> str:
    from xetrack import Tracker

    t = Tracker(str(repo / DB), params={"version": version, "model": model, "C": c,
                                         "solver": solver, **(extra or {})})
    for epoch in range(1, EPOCHS + 1):
        t.log({"epoch": epoch, "loss": loss_at(c, epoch), "f1_score": f1_at(f1, epoch)})
    return t.track_id


def _tag(repo: Path, *args: str) -> dict:
    sh(["dvc", "add", "-q", "data/train.csv", DB], cwd=repo)
    sh("git add -A && git commit -q -m step", cwd=repo)
    cp = run_script("tag_suggest.py", "--json", "--create", "--params", "C,solver", *args,
                    cwd=repo)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def build_history(root: Path) -> dict:
    repo = init_dvc(init_git(root / "proj"), root / "remote")
    (repo / "data").mkdir()
    (repo / "data" / "train.csv").write_bytes(DATA1)
    runs: dict[str, list[str]] = {}
    runs["e0.1.0"] = [log_run(repo, "e0.1.0", "logreg", 1.0, "lbfgs", F1["e0.1.0"])]
    _tag(repo, "--description", "baseline")
    runs["e0.2.0"] = [log_run(repo, "e0.2.0", "logreg", c, s, f) for c, s, f in SWEEP]
    _tag(repo, "--description", "C and solver sweep")
    runs["exp-forest-v1"] = [log_run(repo, "exp-forest", "forest", 1.0, "lbfgs",
                                     F1["exp-forest-v1"])]
    _tag(repo, "--kind", "exp", "--name", "forest", "--description", "a forest")
    (repo / "data" / "train.csv").write_bytes(DATA2)
    runs["e1.0.0"] = [log_run(repo, "e1.0.0", "logreg", 1.0, "lbfgs", F1["e1.0.0"],
                              {"ev_command": COMMAND})]
    _tag(repo, "--description", "more data")
    best_sweep = runs["e0.2.0"][2]
    ledger = [
        {"time": "2026-01-01T10:00:00Z", "action": "promote", "version": "e0.1.0",
         "run_id": runs["e0.1.0"][0], "reason": "baseline", "model": {"md5": "a" * 32},
         "metrics": {"f1_score": F1["e0.1.0"]}},
        {"time": "2026-01-02T10:00:00Z", "action": "promote", "version": "e0.2.0",
         "run_id": best_sweep, "reason": "sweep winner", "alias": "champion",
         "model": {"md5": "b" * 32}, "metrics": {"f1_score": F1["e0.2.0"]},
         "previous": {"md5": "a" * 32, "run_id": runs["e0.1.0"][0], "version": "e0.1.0"}},
        {"time": "2026-01-03T10:00:00Z", "action": "promote", "version": "e1.0.0",
         "run_id": runs["e1.0.0"][0], "model": {"md5": "c" * 32},
         "metrics": {"f1_score": F1["e1.0.0"]}, "future_field": {"x": 1}},
        {"time": "2026-01-04T10:00:00Z", "action": "rollback", "version": "e0.2.0",
         "run_id": best_sweep, "reason": "regression in prod", "model": {"md5": "b" * 32}},
    ]
    led = repo / "models" / "production" / "ledger.jsonl"
    led.parent.mkdir(parents=True)
    led.write_text("".join(json.dumps(e) + "\n" for e in ledger))
    # production holds the rolled-back-to model, as `model_manager.py status` reads it
    (led.parent / "model.bin.dvc").write_text(PROD_DVC.format(md5="b" * 32))
    commits = {t: sh(["git", "rev-parse", f"{t}^{{commit}}"], cwd=repo).stdout.strip()
               for t in F1}
    return {"repo": repo, "runs": runs, "best_sweep": best_sweep, "ledger": ledger,
            "commits": commits}


@pytest.fixture(scope="session")
def charts_hist(tmp_path_factory) -> dict:
    """The history above, built once per session (test_plots and test_report share it)."""
    return build_history(tmp_path_factory.mktemp("charts"))
