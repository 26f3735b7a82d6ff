#!/usr/bin/env python3
"""Run a parameter sweep of your training command, unchanged, where every row lands.

Each run is the command with its values filled in: `{param}` placeholders
(`-- python train.py --lr {learning_rate}`), and/or --append-args (--<param> <value>), and
EV_PARAMS (JSON) in its environment. Every run has its own sandbox: it sees the repository's
files, but the results DB and the model paths (--model-output; default: ev.yaml's
production_model) are its own, so a script with fixed output paths runs N at a time. A run
is done when it exits 0 having logged rows: its results DB, stamped with the bundle's lineage
columns (ev_run = the run key, ev_commit, ev_dirty, ev_data_md5, ev_params, ev_gpus), becomes
<db dir>/shards/<version>/run-<key>.db and its model files candidates
models/candidates/<version>--<track_id><ext>. At the end new shards are merged into the
results DB and the runs ranked by --metric (per run). A failed run is recorded in the ledger
(<shards>/sweep.jsonl: exit code, last output line; output, if any, in run-<key>.log) and
redone on the next invocation; done runs are skipped: re-running a finished sweep runs
nothing.

--gpus 0,1 gives each concurrent run its own CUDA_VISIBLE_DEVICES (workers default to the
number of GPUs; never two runs on one GPU). Runs of an earlier sweep of the version that
are still alive (the sweep was killed alone) make it refuse, unless --kill-stale.

--executor dask --scheduler ADDRESS runs each run as a task on a Dask cluster whose workers
share no files with this machine: they check out HEAD from the git remote and pull the
DVC-tracked inputs (--dvc-input; default: all) from the DVC remote, so the sweep refuses
(exit 4) while HEAD is not pushed, the tree is dirty, or an input is not on the DVC remote.
Results come back through Dask, or through the DVC remote above --transfer-threshold.
--gpus-per-run N asks each run for N of a worker's GPUs (workers started with
--resources GPU=k); the task sets CUDA_VISIBLE_DEVICES. See references/parallel-sweeps.md.

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
                   "python scripts/sweep.py --json --version e0.2.0 --grid grid.yaml "
                   "--workers 2 -- python train.py --version e0.2.0 --lr {learning_rate}",
                   codes=(CONFLICT, REFUSED), dry_run=True, code_notes={
                       1: "a run or an operation failed (the others are merged; re-run to "
                          "redo only the failed ones)",
                       CONFLICT: "a run's rows conflict with rows already in the results DB "
                                 "(same key, different values); nothing merged",
                       REFUSED: "refused: another sweep of this version is running, or runs "
                                "of an earlier one are still alive (see --kill-stale); with "
                                "--executor dask: HEAD not pushed, tree dirty, a DVC input "
                                "not on the remote, or no worker with --gpus-per-run GPUs"})
    p.add_argument("--version", required=True, help="experiment version, e.g. e0.2.0")
    p.add_argument("--grid", required=True, metavar="YAML", help="the grid file (see above)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at a time (default: the number of --gpus, else 1)")
    p.add_argument("--gpus", default=None, metavar="IDS",
                   help="GPU ids, e.g. 0,1: one per concurrent run, as CUDA_VISIBLE_DEVICES")
    p.add_argument("--model-output", action="append", metavar="PATH", default=None,
                   help="a file (or folder) the command writes its model to; repeatable "
                        "(default: ev.yaml's production_model, collected if written)")
    p.add_argument("--db", default=None,
                   help="main results DB, relative to the repo (default: ev.yaml's "
                        "results_db)")
    p.add_argument("--metric", default=None,
                   help="column ranking the runs (default: ev.yaml's metric, else f1_score)")
    p.add_argument("--mode", choices=("max", "min"), default=None,
                   help="best = max or min of the metric (default: ev.yaml's mode)")
    p.add_argument("--append-args", action="store_true",
                   help="also append --<param> <value> to the command (underscores -> dashes)")
    p.add_argument("--kill-stale", action="store_true",
                   help="end the still-running runs of an earlier, killed sweep of this "
                        "version first (they are redone)")
    d = p.add_argument_group("Dask cluster (--executor dask)")
    d.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="where runs execute: local processes (default) or a Dask cluster")
    d.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="the Dask scheduler, e.g. tcp://127.0.0.1:8786 (with --executor dask)")
    d.add_argument("--gpus-per-run", type=int, default=0, metavar="N",
                   help="GPUs each run needs (Dask resource GPU; default 0)")
    d.add_argument("--dvc-input", action="append", metavar="PATH", default=None,
                   help="a DVC-tracked input the runs read; repeatable (default: every "
                        "DVC-tracked path but the results DB and the models)")
    d.add_argument("--transfer-threshold", type=int, metavar="BYTES", default=None,
                   help="results above this size come back through the DVC remote, not "
                        "through Dask (default: 16 MiB)")
    d.add_argument("--git-remote", metavar="NAME", default=None,
                   help="git remote the workers clone (default: the branch's, else origin)")
    d.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for the scheduler (default: %(default)s)")
    p.add_argument("command", nargs="*", metavar="-- COMMAND",
                   help="the training command, after --; it runs in the repo root")
    return p


def load_grid(path):
    import yaml
    from _evlib.sweep import expand_grid

    if not path.exists():
        raise EVError(f"grid file {path} does not exist", code=USAGE,
                      hint="write a YAML mapping param: [values]")
    text = path.read_text()
    try:
        # libyaml's parser where PyYAML has it (the same SafeConstructor builds the values:
        # 6x faster on a 1,000-value grid); a document it refuses is read, or its error
        # reported, by the pure-Python parser, as before.
        try:
            spec = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            spec = yaml.safe_load(text)
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


def _inside(repo, path) -> list[str]:
    """[path relative to repo] if it is inside repo, else []."""
    try:
        return [path.resolve().relative_to(repo.resolve()).as_posix()]
    except ValueError:
        return []


def handler(args) -> int:
    from _evlib import settings, training
    from _evlib.cmdsweep import parse_gpus, run_command_sweep

    repo = find_repo(args.repo)
    if not args.command:
        raise EVError("no training command given", code=USAGE,
                      hint="put it after --, e.g. -- python train.py --version e0.2.0")
    s = settings.load(repo)
    grid = cli.resolve_path(args.grid)
    runs = load_grid(grid)
    db_rel = args.db or s.results_db
    db = cli.resolve_path(db_rel, repo) if os.path.isabs(db_rel) else repo / db_rel
    outs = [training.rel_inside(repo, p, "--model-output") for p in args.model_output or []]
    executor = None
    if args.executor == "dask":
        from _evlib.dask_exec import DEFAULT_THRESHOLD, DaskExecutor

        if not args.scheduler:
            raise EVError("--executor dask needs --scheduler ADDRESS", code=USAGE,
                          hint="e.g. --scheduler tcp://127.0.0.1:8786")
        executor = DaskExecutor(
            repo, args.scheduler, settings=s, gpus_per_run=args.gpus_per_run,
            threshold=(DEFAULT_THRESHOLD if args.transfer_threshold is None
                       else args.transfer_threshold),
            dvc_inputs=args.dvc_input, git_remote=args.git_remote,
            timeout=args.connect_timeout, own_outputs=outs or [s.production_model],
            max_in_flight=args.workers, ignore_dirty=_inside(repo, grid))
    elif args.scheduler or args.gpus_per_run or args.dvc_input:
        raise EVError("--scheduler, --gpus-per-run and --dvc-input are for --executor dask",
                      code=USAGE, hint="add --executor dask")
    report = run_command_sweep(
        repo, args.command, runs, version=args.version, db=db, workers=args.workers,
        append_args=args.append_args, dry_run=args.dry_run,
        metric=args.metric or s.metric or "f1_score", metric_mode=args.mode or s.mode,
        model_outputs=outs or None, require_models=bool(outs), gpus=parse_gpus(args.gpus),
        kill_stale=args.kill_stale, settings=s, executor=executor,
        on_progress=None if args.json else (lambda m: cli.progress(PROG, m)),
        on_warn=lambda m: cli.warn(PROG, m))  # a recovery: always said, like run.py's
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
