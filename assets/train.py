"""Training template: one run = one xetrack track_id, one candidate model tied to it.

Copy into your project and replace `train_and_evaluate`. What the template gets right:
- the Tracker's params carry the version, the git commit, whether the tree was dirty, and the
  DVC hash of the training data, so every row says exactly what produced it;
- `tracker.track(train_and_evaluate, args=[config])` on a frozen dataclass writes the config
  as columns prefixed with the argument name (`config_C`, `config_model`), plus the returned
  metrics as columns (`f1_score`, ...);
- the model is written as a candidate named after its run, `models/candidates/<version>--<track_id>.pkl`,
  via a temp file and os.replace (never written into a file DVC may have linked to its cache).

Usage (from the project root):
    python train.py --version e0.1.0 --model logreg --C 1.0
    python train.py --version e0.2.0 --C 0.1 --db results/shards/run-3.db   # a sweep shard
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    model: str = "logreg"  # logreg | forest
    C: float = 1.0  # inverse regularisation (logreg)
    max_depth: int = 4  # tree depth (forest)
    n_estimators: int = 20  # trees (forest)
    seed: int = 0


def _git(*args: str) -> str:
    cp = subprocess.run(["git", *args], capture_output=True, text=True)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def data_hash(path: str) -> str:
    """The DVC md5 of a tracked file (from its .dvc file), else the file's own md5."""
    dvc_file = Path(path + ".dvc")
    if dvc_file.exists():
        import yaml

        outs = yaml.safe_load(dvc_file.read_text()).get("outs") or []
        if outs and outs[0].get("md5"):
            return outs[0]["md5"]
    h = hashlib.md5()  # noqa: S324 - same hash DVC uses
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_xy(path: str):
    import pandas as pd

    df = pd.read_parquet(path)
    return df.drop(columns=["id", "label"], errors="ignore").to_numpy(), df["label"].to_numpy()


def train_and_evaluate(config: Config) -> dict:
    """Fit on data/train.parquet, score on data/test.parquet; return metrics and the model."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = load_xy("data/train.parquet")
    x_test, y_test = load_xy("data/test.parquet")
    if config.model == "logreg":
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=config.C, max_iter=500))
    elif config.model == "forest":
        clf = RandomForestClassifier(n_estimators=config.n_estimators,
                                     max_depth=config.max_depth, random_state=config.seed)
    else:
        raise ValueError(f"unknown model {config.model!r}")
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    train_and_evaluate.last_model = clf  # handed to save_candidate, not logged as a column
    return {
        "f1_score": round(float(f1_score(y_test, pred)), 6),
        "precision": round(float(precision_score(y_test, pred)), 6),
        "recall": round(float(recall_score(y_test, pred)), 6),
        "accuracy": round(float(accuracy_score(y_test, pred)), 6),
    }


def save_candidate(model, version: str, track_id: str, out_dir: str = "models/candidates") -> str:
    """Write the model as a new file (temp + fsync + os.replace) named after its run."""
    os.makedirs(out_dir, exist_ok=True)
    dest = os.path.join(out_dir, f"{version}--{track_id}.pkl")
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(model, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", required=True)
    p.add_argument("--db", default="results/experiments.db",
                   help="results DB (a sweep gives each run its own shard)")
    p.add_argument("--model", default=Config.model)
    p.add_argument("--C", type=float, default=Config.C)
    p.add_argument("--max-depth", type=int, default=Config.max_depth)
    p.add_argument("--n-estimators", type=int, default=Config.n_estimators)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--params-json", default=None,
                   help="config as JSON (what scripts/sweep.py passes in EV_PARAMS)")
    a = p.parse_args(argv)

    from xetrack import Tracker

    fields = {"model": a.model, "C": a.C, "max_depth": a.max_depth,
              "n_estimators": a.n_estimators, "seed": a.seed}
    raw = a.params_json or os.environ.get("EV_PARAMS")
    if raw:
        fields.update(json.loads(raw))
    config = Config(**fields)
    db = os.environ.get("EV_SHARD_DB") or a.db
    os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
    tracker = Tracker(db, params={
        "version": a.version,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "data_hash": data_hash("data/train.parquet"),
        "model": config.model,
    })
    metrics = tracker.track(train_and_evaluate, args=[config])
    path = save_candidate(train_and_evaluate.last_model, a.version, tracker.track_id)
    tracker.log({"model_path": path})  # a second row of the same run: rank runs, not rows
    print(json.dumps({"status": "ok", "track_id": tracker.track_id, "model_path": path,
                      "config": asdict(config), **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
