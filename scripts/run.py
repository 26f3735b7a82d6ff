#!/usr/bin/env python3
"""Run one training command, unchanged, so that its run lands right.

The command runs in a sandbox that shows the repository's files but keeps its outputs
private: the results DB (ev.yaml's results_db, or --db) and the model paths (--model-output;
default: ev.yaml's production_model). Then: the run's rows get the bundle's lineage columns
(ev_run, ev_command, ev_commit, ev_dirty, ev_data_md5, ev_params, ev_gpus, ev_seconds,
version) and are merged into the results DB exactly once; each model file becomes the run's
candidate models/candidates/<version>--<track_id><ext>; production is never written.
Commit your code before running: ev_commit is the commit the run was trained at.

A command that exits non-zero, or exits 0 without logging a run (xetrack rows), is an error
(exit 1) and nothing is collected; its output is kept under .ev/logs/. A run.py killed while
collecting is completed by the next run.py; killed while the command ran, the next run.py
removes the leftover and says so.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib.errors import REFUSED, USAGE, EVError  # noqa: E402
from _evlib.repo import find_repo  # noqa: E402

PROG = "run.py"


def build():
    p = cli.parser(PROG, __doc__,
                   "python scripts/run.py --json --version e0.1.0 -- python train.py "
                   "--version e0.1.0 --lr 0.01", dry_run=True, codes=(REFUSED,), code_notes={
                       1: "the command failed or logged no run (nothing collected; its output "
                          "is in .ev/logs/), or collecting failed",
                       2: "usage error, or the command logged another version than --version",
                       REFUSED: "refused: another merge into the results DB held its lock "
                                "too long; re-run"})
    p.add_argument("--version", required=True, help="experiment version, e.g. e0.1.0")
    p.add_argument("--model-output", action="append", metavar="PATH", default=None,
                   help="a file (or folder) the command writes its model to; repeatable "
                        "(default: ev.yaml's production_model, collected if written)")
    p.add_argument("--db", default=None,
                   help="the results DB the command logs to (default: ev.yaml's results_db)")
    p.add_argument("--run-key", default=None, help="the run's key (ev_run; default: random)")
    p.add_argument("command", nargs="*", metavar="-- COMMAND",
                   help="the training command, after --; it starts in the current directory")
    return p


def text(r: dict) -> str:
    if r.get("dry_run"):
        return "\n".join([f"run {r['run_key']} (version {r['version']}) would:",
                          *[f"  {w}" for w in r["would"]]])
    lines = [f"run {r['run_key']} (version {r['version']}): track_id {r['track_id']}, "
             f"{r['rows']} rows merged into {r['db']} ({r['seconds']} s)"]
    lines += [f"  candidate {c}" for c in r["candidates"].values()]
    lin = r["lineage"]
    lines.append(f"  commit {lin['ev_commit']}{' (dirty)' if lin['ev_dirty'] else ''}")
    return "\n".join(lines)


def handler(args) -> int:
    from _evlib import settings, training

    repo = find_repo(args.repo)
    if not args.command:
        raise EVError("no training command given", code=USAGE,
                      hint="put it after --, e.g. -- python train.py --version e0.1.0")
    s = settings.load(repo)
    db_rel = training.rel_inside(repo, args.db, "--db") if args.db else s.results_db
    outs = [training.rel_inside(repo, p, "--model-output") for p in args.model_output or []]
    require = bool(outs)
    if not outs:
        outs = [s.production_model]
    cwd = os.path.realpath(os.getcwd())
    root = os.path.realpath(repo)
    cwd_rel = os.path.relpath(cwd, root) if (cwd + "/").startswith(root + "/") else "."
    report = training.run(
        repo, s, args.command, version=args.version, db_rel=db_rel, model_outputs=outs,
        require_models=require, run_key=args.run_key, cwd_rel=cwd_rel, dry_run=args.dry_run,
        stream=sys.stderr, on_progress=lambda m: cli.warn(PROG, m))  # recovery: always said
    cli.emit(args, report, lambda: text(report))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
