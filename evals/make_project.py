#!/usr/bin/env python3
"""Build the starting project of one eval task (see evals/evals.json).

    python evals/make_project.py TASK DIR      # DIR must not exist
    python evals/make_project.py --list

DIR/project is the project the agent works in (git, DVC, data, a training script written by
the "user"); DIR/dvc-store is its DVC remote, configured by ABSOLUTE path; worktrees the agent
makes land beside them (DIR/exp-NAME). What the grader needs to know about the start (hashes,
ledger, tags, the runs a crashed sweep finished) is written to the project's git directory,
`.git/evals-start.json`, where it is out of the working tree.

The history a task starts from (earlier versions, promotions, tags) is made with the skill's
own scripts, as a project that used the skill would have it. Exit codes: 0 built, 1 a step
failed, 2 usage (unknown task, DIR exists).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKILL = HERE.parent
SCRIPTS = SKILL / "scripts"
PY = sys.executable
START = "evals-start.json"

ENV = {"GIT_AUTHOR_NAME": "Dana User", "GIT_AUTHOR_EMAIL": "dana@example.com",
       "GIT_COMMITTER_NAME": "Dana User", "GIT_COMMITTER_EMAIL": "dana@example.com",
       "GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}

SWEEP_GRID = [0.01, 0.05, 0.1, 0.5, 1.0, 2.0]

TASKS = {
    "sequential-baseline": "nothing trained yet; train.py, data tracked by DVC",
    "sweep-lr": "e0.1.0 trained (lr 0.05), promoted, tagged, pushed",
    "sweep-crash-resume": "e0.1.0 done; a sweep of version e0.2.0 over 6 learning rates "
                          "SIGKILLed after 2 of its runs finished",
    "worktree-experiment": "e0.1.0 (lr 0.1, linear features) in production",
    "worktree-worse": "e0.1.0 (lr 0.5) in production",
    "rollback-production": "e0.1.0 (lr 0.5) then e0.2.0 (lr 2.0) promoted and tagged; "
                           "the DVC cache links files (cache.type hardlink)",
    "what-changed": "e0.1.0 (lr 0.05, 400 training rows) and e0.2.0 (lr 0.5, 440 rows) tagged",
    "adopt-own-train": "a project with its own train.py (fixed paths, --version/--lr, its own "
                       "xetrack logging, writes models/production/model.bin); DVC initialised, "
                       "nothing tracked",
}


class BuildError(Exception):
    pass


def env() -> dict:
    e = dict(os.environ)
    e.update(ENV)
    bindir = str(Path(PY).parent)
    if not e.get("PATH", "").startswith(bindir):
        e["PATH"] = bindir + os.pathsep + e.get("PATH", "")
    for k in ("EV_GIT", "EV_DVC", "EV_PARAMS", "EV_SHARD_DB", "EV_VERSION", "EV_RUN_KEY"):
        e.pop(k, None)
    return e


def sh(cwd: Path, *cmd: str) -> str:
    cp = subprocess.run(list(cmd), cwd=cwd, env=env(), capture_output=True, text=True)
    if cp.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} exited {cp.returncode}: "
                         f"{(cp.stderr or cp.stdout).strip()[-800:]}")
    return cp.stdout


def script(cwd: Path, name: str, *args: str) -> str:
    return sh(cwd, PY, str(SCRIPTS / name), *args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- data --------------------------------------------------------------------------------

def dataset(n: int = 700):
    """Deterministic tabular data: 6 features on different scales, a binary label."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, 6)) * np.array([3.0, 1.0, 1.0, 0.3, 1.0, 1.0])
    logit = (0.5 * x[:, 0] - 1.5 * x[:, 1] + 1.0 * (x[:, 2] ** 2 - 1) + 5.0 * x[:, 3] + 0.8
             + rng.normal(scale=0.6, size=n))
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)]).round(6)
    df.insert(0, "id", range(n))
    df["label"] = (logit > 0).astype("int64")
    return df


def write_data(proj: Path, train_rows: int = 400) -> None:
    df = dataset()
    (proj / "data").mkdir(exist_ok=True)
    for name, frame in (("train", df.iloc[:train_rows]), ("test", df.iloc[500:700])):
        dest = proj / "data" / f"{name}.parquet"
        tmp = dest.with_name(f".{name}.parquet.tmp")
        frame.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, dest)  # a new file: never write into one DVC linked to its cache


# --- project steps -----------------------------------------------------------------------

def init_repo(ws: Path, *, cache_type: str | None = None) -> Path:
    proj = ws / "project"
    proj.mkdir(parents=True)
    remote = (ws / "dvc-store").resolve()
    remote.mkdir()
    sh(proj, "git", "init", "-q", "-b", "main")
    sh(proj, "git", "config", "user.name", ENV["GIT_AUTHOR_NAME"])
    sh(proj, "git", "config", "user.email", ENV["GIT_AUTHOR_EMAIL"])
    sh(proj, "dvc", "init", "-q")
    sh(proj, "dvc", "config", "core.analytics", "false")
    sh(proj, "dvc", "remote", "add", "-d", "storage", str(remote))
    if cache_type:
        sh(proj, "dvc", "config", "cache.type", cache_type)
    return proj


def skill_ready(ws: Path, *, cache_type: str | None = None) -> Path:
    """A project that followed the skill's setup: ignore files, data tracked, train.py."""
    proj = init_repo(ws, cache_type=cache_type)
    shutil.copy(SKILL / "assets" / "gitignore.starter", proj / ".gitignore")
    shutil.copy(SKILL / "assets" / "dvcignore.starter", proj / ".dvcignore")
    shutil.copy(HERE / "files" / "train.py", proj / "train.py")
    (proj / "README.md").write_text("# churn model\n\n`python train.py --version V --lr LR`\n")
    write_data(proj)
    sh(proj, "dvc", "add", "-q", "data/train.parquet", "data/test.parquet")
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-q", "-m", "project: training code, data tracked by DVC")
    return proj


def train(proj: Path, version: str, *args: str) -> str:
    out = sh(proj, PY, "train.py", "--version", version, *args)
    return json.loads(out.strip().splitlines()[-1])["track_id"]


def version_done(proj: Path, version: str, run: str, description: str) -> None:
    """What SKILL.md's workflow 1 does after training: promote, DVC, commit, tag, push."""
    script(proj, "model_manager.py", "promote", "--version", version, "--run-id", run)
    sh(proj, "dvc", "add", "-q", "results/experiments.db", "models/candidates")
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-q", "-m", f"experiment: {version} - {description}")
    script(proj, "tag_suggest.py", "--version", version, "--params", "lr,epochs,features",
           "--description", description, "--create")
    sh(proj, "dvc", "push", "-q", "-T")


def done_runs(shards: Path) -> list[str]:
    """track_ids of the runs a sweep's ledger calls done (sweep.jsonl: one JSON object per
    line, a run's latest fields win; the older sweep.json: one object)."""
    runs: dict[str, dict] = {}
    try:
        runs = dict(json.loads((shards / "sweep.json").read_text())["runs"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        lines = (shards / "sweep.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            runs.setdefault(rec["key"], {}).update(rec)
    return [r["track_id"] for r in runs.values() if r.get("status") == "done"
            and r.get("track_id")]


def crashed_sweep(proj: Path, version: str, done_before_kill: int = 2) -> list[str]:
    """Start sweep.py with one worker, SIGKILL its whole process group once `done_before_kill`
    runs are done (as a machine that reboots would); return the track_ids of the done runs."""
    (proj / "grid.yaml").write_text("lr: [" + ", ".join(map(str, SWEEP_GRID)) + "]\n")
    sh(proj, "git", "add", "grid.yaml")
    sh(proj, "git", "commit", "-q", "-m", "grid for the learning-rate sweep")
    ledger = proj / "results" / "shards" / version / "sweep.jsonl"
    cmd = [PY, str(SCRIPTS / "sweep.py"), "--version", version, "--grid", "grid.yaml",
           "--workers", "1", "--metric", "f1_score", "--", "python", "train.py", "--version", version,
           "--lr", "{lr}"]
    proc = subprocess.Popen(cmd, cwd=proj, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    done: list[str] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = done_runs(ledger.parent)
            if len(done) >= done_before_kill:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    done = done_runs(ledger.parent)  # what the ledger says now that nothing runs
    if len(done) < done_before_kill or len(done) >= len(SWEEP_GRID):
        raise BuildError(f"the sweep was not stopped half-way ({len(done)} runs done)")
    return sorted(done)


# --- tasks -------------------------------------------------------------------------------

def build_sequential(ws: Path) -> dict:
    skill_ready(ws)
    return {}


def base_e010(ws: Path, lr: str, **kw) -> tuple[Path, str]:
    proj = skill_ready(ws, **kw)
    run = train(proj, "e0.1.0", "--lr", lr)
    version_done(proj, "e0.1.0", run, f"logreg baseline lr={lr}")
    return proj, run


def build_sweep(ws: Path) -> dict:
    base_e010(ws, "0.05")
    return {"grid": SWEEP_GRID}


def build_sweep_crash(ws: Path) -> dict:
    proj, _ = base_e010(ws, "0.05")
    done = crashed_sweep(proj, "e0.2.0")
    return {"grid": SWEEP_GRID, "done_before_crash": done}


def build_worktree(ws: Path) -> dict:
    base_e010(ws, "0.1")
    return {}


def build_worktree_worse(ws: Path) -> dict:
    base_e010(ws, "0.5")
    return {}


def build_rollback(ws: Path) -> dict:
    proj, _ = base_e010(ws, "0.5", cache_type="hardlink")
    # SKILL.md's pitfall: xetrack appends in place, so a linked DB is unprotected first
    sh(proj, "dvc", "unprotect", "results/experiments.db")
    run = train(proj, "e0.2.0", "--lr", "2.0")
    version_done(proj, "e0.2.0", run, "lr=2.0")
    # as a fresh `dvc pull` with this cache type leaves it: tracked files are cache links
    sh(proj, "dvc", "checkout", "-q", "--relink")
    return {}


def build_what_changed(ws: Path) -> dict:
    proj, run1 = base_e010(ws, "0.05")
    write_data(proj, train_rows=440)
    sh(proj, "dvc", "add", "-q", "data/train.parquet")
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-q", "-m", "data: 40 more labelled rows")
    run2 = train(proj, "e0.2.0", "--lr", "0.5")
    version_done(proj, "e0.2.0", run2, "more data, lr=0.5")
    md5s = {}
    for version in ("e0.1.0", "e0.2.0"):
        dvc_text = sh(proj, "git", "show", f"{version}:data/train.parquet.dvc")
        md5s[version] = dvc_text.split("md5:")[1].split()[0]
    return {"runs": {"e0.1.0": run1, "e0.2.0": run2}, "metrics": metrics_of(proj, run1, run2),
            "train_rows": {"e0.1.0": 400, "e0.2.0": 440}, "train_md5": md5s}


def metrics_of(proj: Path, *runs: str) -> dict:
    import sqlite3

    con = sqlite3.connect(f"file:{proj / 'results' / 'experiments.db'}?mode=ro", uri=True)
    try:
        out = {}
        for run in runs:
            version, f1 = con.execute(
                'SELECT version, f1_score FROM "default" WHERE track_id = ? AND f1_score IS '
                'NOT NULL', (run,)).fetchone()
            out[version] = f1
        return out
    finally:
        con.close()


def build_adopt(ws: Path) -> dict:
    proj = init_repo(ws)
    shutil.copy(HERE / "files" / "own_train.py", proj / "train.py")
    (proj / ".gitignore").write_text("# ours\n*.log\nnotebooks/scratch/\n.env\n")
    (proj / "models" / "production").mkdir(parents=True)
    (proj / "models" / "production" / ".gitkeep").write_text("")
    (proj / "README.md").write_text("# churn model\n\n`python train.py --version V --lr LR`\n")
    write_data(proj)
    sh(proj, "git", "add", "-A", ".gitignore", "train.py", "README.md", "models", ".dvc",
       ".dvcignore")
    sh(proj, "git", "commit", "-q", "-m", "churn model: training script")
    return {"user_gitignore": ["*.log", "notebooks/scratch/", ".env"]}


BUILDERS = {
    "sequential-baseline": build_sequential, "sweep-lr": build_sweep,
    "sweep-crash-resume": build_sweep_crash, "worktree-experiment": build_worktree,
    "worktree-worse": build_worktree_worse, "rollback-production": build_rollback,
    "what-changed": build_what_changed, "adopt-own-train": build_adopt,
}


def snapshot(proj: Path) -> dict:
    """The start state the grader compares with."""
    def out(*cmd: str) -> str:
        return subprocess.run(list(cmd), cwd=proj, env=env(), capture_output=True,
                              text=True).stdout.strip()

    files = {}
    for rel in ("train.py", ".gitignore", "data/train.parquet", "data/test.parquet",
                "models/production/model.bin", "results/experiments.db", "grid.yaml"):
        if (proj / rel).is_file():
            files[rel] = sha256(proj / rel)
    ledger = proj / "models" / "production" / "ledger.jsonl"
    rows: dict[str, int] = {}
    db = proj / "results" / "experiments.db"
    if db.exists():
        import sqlite3

        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = dict(con.execute('SELECT track_id, count(*) FROM "default" GROUP BY 1'))
        finally:
            con.close()
    return {"head": out("git", "rev-parse", "HEAD"),
            "branch": out("git", "rev-parse", "--abbrev-ref", "HEAD"),
            "tags": sorted(out("git", "tag", "-l").split()),
            "files": files,
            "ledger": ledger.read_text().splitlines() if ledger.exists() else [],
            "run_rows": rows}


def build(task: str, ws: Path) -> Path:
    if task not in BUILDERS:
        raise KeyError(task)
    ws = ws.resolve()
    if ws.exists():
        raise FileExistsError(str(ws))
    ws.mkdir(parents=True)
    extra = BUILDERS[task](ws)
    proj = ws / "project"
    start = {"task": task, "workspace": str(ws), "remote": str(ws / "dvc-store"),
             **snapshot(proj), **extra}
    (proj / ".git" / START).write_text(json.dumps(start, indent=1, sort_keys=True) + "\n")
    return proj


def copy_workspace(src: Path, dest: Path) -> Path:
    """Copy a freshly built workspace (no worktrees yet) to dest, re-pointing the absolute
    remote and every recorded path at the copy. Cheaper than building twice."""
    src, dest = src.resolve(), dest.resolve()
    shutil.copytree(src, dest, symlinks=True)
    proj = dest / "project"
    for path in [proj / ".git" / START, *(proj / "results" / "shards").glob("*/sweep.json*")]:
        if path.exists():
            path.write_text(path.read_text().replace(str(src), str(dest)))
    # The tracked .dvc/config keeps its committed URL; the copy's own remote goes into the
    # untracked config.local, which overrides it (and worktree.py copies it into worktrees).
    sh(proj, "dvc", "remote", "modify", "--local", "storage", "url", str(dest / "dvc-store"))
    if "cache.type" in (proj / ".dvc" / "config").read_text().replace("[cache]\n    type",
                                                                      "cache.type"):
        sh(proj, "dvc", "checkout", "-q", "--relink")  # copying broke the links: remake them
    return proj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_project.py", description=__doc__.split("\n\n")[0],
                                epilog="example: python evals/make_project.py sweep-lr "
                                       "/tmp/eval-sweep  (then work in /tmp/eval-sweep/project)")
    p.add_argument("task", nargs="?", help="task name (evals.json `name`)")
    p.add_argument("dir", nargs="?", help="workspace to create (must not exist)")
    p.add_argument("--list", action="store_true", help="list the tasks and what they start from")
    a = p.parse_args(argv)
    if a.list:
        for name, what in TASKS.items():
            print(f"{name:22} {what}")
        return 0
    if not a.task or not a.dir:
        p.print_usage(sys.stderr)
        print("make_project.py: give TASK and DIR (or --list)", file=sys.stderr)
        return 2
    try:
        proj = build(a.task, Path(a.dir))
    except KeyError:
        print(f"make_project.py: unknown task {a.task!r}; see --list", file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"make_project.py: {e} already exists; name a folder that does not exist yet",
              file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"make_project.py: {e}", file=sys.stderr)
        return 1
    print(proj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
