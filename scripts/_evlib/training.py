"""run.py's logic: one training command, one run, collected into the project.

Steps, each re-runnable: (1) lineage of the tree as it is now; (2) the command in its sandbox
(`runner.execute`), state "running"; (3) state "collecting": model files moved to their
candidate names, then the run's rows merged into the results DB (idempotent by xetrack's key);
(4) the sandbox removed. A run.py killed in (2) leaves a sandbox whose process is gone: the
next run.py removes it and says so (the run is not collected: run it again). Killed in (3),
the next run.py completes the collection and says so. Rows land exactly once either way.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from pathlib import Path

from . import runner
from .errors import USAGE, EVError

RUNS_DIR = f"{runner.SANDBOX_ROOT}/runs"
LOGS_DIR = f"{runner.SANDBOX_ROOT}/logs"


def check_version(version: str) -> str:
    from .models import check_name

    return check_name(version, "version")


def rel_inside(repo: Path, path: str, flag: str) -> str:
    """A repo-relative path for a user path (relative to the cwd, or absolute) inside repo."""
    p = Path(path)
    full = (p if p.is_absolute() else Path.cwd() / p).resolve()
    try:
        rel = full.relative_to(repo.resolve())
    except ValueError:
        raise EVError(f"{flag} {path} is outside the repository {repo}", code=USAGE,
                      hint="give a path inside the project") from None
    if not rel.parts or rel.parts[0] in (".git", ".dvc", runner.SANDBOX_ROOT):
        raise EVError(f"{flag} {path} is not a path the command can write", code=USAGE,
                      hint="give a file path inside the project, e.g. models/model.pt")
    return rel.as_posix()


def command_params(command: list[str]) -> dict:
    """The command's own --flag value pairs (a record beside the exact command line)."""
    out: dict = {}
    i = 0
    while i < len(command):
        a = command[i]
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a[2:].partition("=")
            if not eq:
                nxt = command[i + 1] if i + 1 < len(command) else None
                if nxt is not None and not nxt.startswith("--"):
                    val, i = nxt, i + 1
                else:
                    val = True
            out[name.replace("-", "_")] = val
        i += 1
    return out


def recover(repo: Path, s, on_progress=None) -> list[dict]:
    """Finish or remove what a killed run.py left; runs whose process is alive are left."""
    base = repo / RUNS_DIR
    done = []
    if not base.is_dir():
        return done
    for wd in sorted(base.iterdir()):
        state = runner.read_state(wd)
        if runner.alive(state) or runner.owner_alive(state):
            continue  # still running, or its run.py is still collecting it
        if state.get("phase") == "collecting":
            res = _result_from_state(wd, state)
            collected = collect(repo, s, res, Path(state["db"]), names=state.get("names"))
            done.append({"run_key": state.get("key"), "action": "completed",
                         "track_ids": res.track_ids, "candidates": collected["candidates"]})
            msg = (f"completed the collection of run {state.get('key')} "
                   f"(version {state.get('version')}) left by a killed run.py")
        else:
            runner.remove_workdir(wd)
            done.append({"run_key": state.get("key"), "action": "removed"})
            msg = (f"removed run {state.get('key') or wd.name} left unfinished by a killed "
                   f"run.py (not collected: run it again)")
        if on_progress:
            on_progress(msg)
    return done


def _result_from_state(wd: Path, state: dict) -> runner.RunResult:
    spec = runner.RunSpec(**state["spec"])
    res = runner.RunResult(spec=spec, workdir=str(wd), exit_code=0)
    res.shard, res.track_ids, res.rows = state["shard"], state["track_ids"], state["rows"]
    res.models = state.get("models") or {}
    return res


def collect(repo: Path, s, res: runner.RunResult, db: Path, names: dict | None = None) -> dict:
    """Candidates first (a rename each), then the rows (merge, idempotent), then cleanup."""
    from .merge import merge_dbs

    cands = runner.collect_models(res, repo / s.candidates_dir, names)
    extra = runner.collect_extras(res, repo, repo / runner.SANDBOX_ROOT / "kept" /
                                  Path(res.workdir).name)
    # new_base_dirs: a project's first run makes results/ (run.py is how it gets its DB)
    merged = (merge_dbs(db, [Path(res.shard)], db, strategy="merge", new_base_dirs=True)
              if res.shard else None)
    runner.remove_workdir(Path(res.workdir))
    return {"candidates": cands, "merged": merged, "extras": extra}


def run(repo: Path, s, command: list[str], *, version: str, db_rel: str,
        model_outputs: list[str], require_models: bool, run_key: str | None = None,
        cwd_rel: str = ".", dry_run: bool = False, stream=None, on_progress=None) -> dict:
    check_version(version)
    if not command:
        raise EVError("no training command given", code=USAGE,
                      hint="put it after --, e.g. -- python train.py --version e0.1.0")
    key = run_key or uuid.uuid4().hex[:12]
    if run_key:
        from .models import check_name
        check_name(run_key, "run key")
    db = repo / db_rel
    spec = runner.RunSpec(command=list(command), version=version, key=key,
                          params=command_params(command), results_db=db_rel,
                          model_outputs=model_outputs, require_models=require_models,
                          cwd=cwd_rel, export_params=False, candidates_dir=s.candidates_dir,
                          protect=[s.production_model] if s.production_model not in
                          model_outputs else [])
    if dry_run:
        return {"dry_run": True, "version": version, "run_key": key, "command": command,
                "db": str(db), "private": [db_rel, *model_outputs],
                "candidates_dir": s.candidates_dir,
                "would": [f"run {shlex.join(command)} in {RUNS_DIR}/{version}--{key}/tree "
                          f"(the repository as links; {', '.join([db_rel, *model_outputs])} "
                          f"private)",
                          f"stamp its rows with {', '.join(sorted(runner.lineage_values(spec, {})))}",
                          f"move its model files to {s.candidates_dir}/{version}--<track_id>.<ext>",
                          f"merge its rows into {db_rel}"]}
    runner.ensure_ignored(repo)
    recovered = recover(repo, s, on_progress)
    lin = runner.lineage(repo, s, extra_outputs=model_outputs)
    wd = repo / RUNS_DIR / f"{version}--{key}"
    wd.parent.mkdir(parents=True, exist_ok=True)
    res = runner.execute(repo, spec, wd, lineage=lin, stream=stream,
                         state_extra=runner.owner())
    report = {"version": version, "run_key": key, "command": command, "db": str(db),
              "exit_code": res.exit_code, "seconds": round(res.seconds, 3),
              "lineage": {k: v for k, v in lin.items()}, "recovered": recovered}
    if not res.ok:
        log = None
        if res.log and Path(res.log).exists():
            logs = repo / LOGS_DIR
            logs.mkdir(parents=True, exist_ok=True)
            log = logs / f"{version}--{key}.log"
            os.replace(res.log, log)
        runner.remove_workdir(wd)
        raise EVError(res.error + (f"; its output: {log.relative_to(repo)}" if log else ""),
                      code=res.error_code, **report)
    names = runner.candidate_names(res)
    state = runner.read_state(wd)
    state.update(phase="collecting", db=str(db), shard=res.shard, track_ids=res.track_ids,
                 rows=res.rows, models=res.models, names=names, collecting=time.time())
    runner.write_state(wd, state)
    collected = collect(repo, s, res, db, names)
    merged = collected["merged"] or {}
    table = ((merged.get("inputs") or [{}])[0].get("tables") or {}).get("default", {})
    report.update(track_ids=res.track_ids, track_id=res.track_ids[0] if res.track_ids else None,
                  rows=res.rows, candidates={k: str(Path(v).relative_to(repo))
                                             for k, v in collected["candidates"].items()},
                  merged={"added": table.get("added"), "skipped": table.get("skipped")},
                  extras=collected["extras"])
    return report

