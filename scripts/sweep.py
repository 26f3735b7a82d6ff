#!/usr/bin/env python3
"""Run a parameter sweep of a training command where every row lands.

Each run gets its params (env EV_PARAMS, JSON) and its own shard DB (env EV_SHARD_DB, under
<db dir>/shards/<version>/run-<hash of params>.db), plus EV_VERSION and EV_RUN_KEY. Runs go
N at a time; a failed run is recorded with its exit code and last stderr line in the ledger
(<shards>/sweep.json) and redone next time; runs already done are skipped. At the end the done
shards are merged into --db (idempotent) and the RUNS are ranked by --metric (aggregated per
track_id). Exits 1 if any run failed, after merging the others.

grid YAML: a mapping param: [values] (cartesian product; a scalar is fixed), or a list of
such mappings (their runs concatenated).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib.errors import CONFLICT, REFUSED, USAGE, EVError  # noqa: E402
from _evlib.repo import find_repo  # noqa: E402

PROG = "sweep.py"


def build():
    p = cli.parser(PROG, __doc__,
                   "python scripts/sweep.py --json --version e0.2.0 --grid grid.yaml --workers 2 "
                   "-- python train.py --version e0.2.0",
                   codes=(CONFLICT, REFUSED), dry_run=True)
    p.add_argument("--version", required=True, help="experiment version, e.g. e0.2.0")
    p.add_argument("--grid", required=True, metavar="YAML", help="the grid file (see above)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--db", default="results/experiments.db",
                   help="main results DB, relative to the repo (default: %(default)s)")
    p.add_argument("--metric", default="f1_score",
                   help="column ranking the runs (default: %(default)s)")
    p.add_argument("--mode", choices=("max", "min"), default="max",
                   help="best = max or min of the metric over a run's rows (default: max)")
    p.add_argument("--append-args", action="store_true",
                   help="also append --<param> <value> to the command (underscores -> dashes)")
    p.add_argument("command", nargs="*", metavar="-- COMMAND",
                   help="the training command, after --; it runs in the repo root")
    return p


def load_grid(path):
    import yaml
    from _evlib.sweep import expand_grid

    if not path.exists():
        raise EVError(f"grid file {path} does not exist", code=USAGE,
                      hint="write a YAML mapping param: [values]")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "a syntax error"
        raise EVError(f"grid file {path} is not valid YAML{where}: {problem}", code=USAGE,
                      hint="write a mapping of param: [values], e.g. 'C: [0.1, 1.0]', or a "
                           "list of such mappings") from exc
    return expand_grid(spec)


def text(report) -> str:
    if report.get("dry_run"):
        lines = [f"sweep {report['version']}: {len(report['runs'])} runs "
                 f"(command: {' '.join(report['command'])})"]
        lines += [f"  {r['status']:<12} run-{r['key']}  {r['params']}" for r in report["runs"]]
        return "\n".join(lines)
    c = report["counts"]
    lines = [f"sweep {report['version']}: {c['done']} ran, {c['skipped']} skipped (done before), "
             f"{c['failed']} failed; shards in {report['shards']}"]
    if report.get("merged") is not None:
        lines.append(f"merged into {report['db']}")
    for r in report["failed"]:
        lines.append(f"  FAILED run-{r['key']} {r['params']}: exit {r['exit_code']}: {r['error']}")
    rb = report.get("ranked_by")
    if rb:
        lines.append(f"runs ranked by {rb['column']} ({rb['aggregate']}, {rb['order']}):")
        for e in report["ranking"]:
            lines.append(f"  {e['rank']}. {e['track_id']}  {rb['column']}={e['value']}  "
                         f"{e.get('params', '')}")
    elif report.get("rank_error"):
        lines.append(f"not ranked: {report['rank_error']}")
    return "\n".join(lines)


def handler(args) -> int:
    repo = find_repo(args.repo)
    from _evlib.sweep import run_command_sweep

    if not args.command:
        raise EVError("no training command given", code=USAGE,
                      hint="put it after --, e.g. -- python train.py --version e0.2.0")
    grid = cli.resolve_path(args.grid)
    runs = load_grid(grid)
    db = cli.resolve_path(args.db, repo) if os.path.isabs(args.db) else repo / args.db
    report = run_command_sweep(
        repo, args.command, runs, version=args.version, db=db, workers=args.workers,
        append_args=args.append_args, dry_run=args.dry_run, metric=args.metric,
        metric_mode=args.mode,
        on_progress=None if args.json else (lambda m: cli.progress(PROG, m)))
    failed = bool(report.get("failed"))
    if failed:
        n = len(report["failed"])
        first = report["failed"][0]
        cli.warn(PROG, f"{n} run(s) failed, e.g. run-{first['key']}: {first['error']}; "
                       f"fix and re-run the same command (done runs are skipped)")
    if report.get("rank_error"):
        cli.warn(PROG, f"runs not ranked: {report['rank_error']}; pass --metric with a column "
                       f"the runs log")
    report["status"] = "failed" if failed else "ok"
    cli.emit(args, report, lambda: text(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
