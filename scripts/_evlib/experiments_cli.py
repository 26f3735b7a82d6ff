"""experiments.py's CLI: list, show, compare, get, sql, plot, report (the script is a stub,
so that `python scripts/experiments.py` compiles a few lines and imports the rest from
byte-compiled modules: a repeated list is answered by listfast before any of this loads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli, history
from .errors import NOT_FOUND, REFUSED, USAGE, EVError, epilog_codes, refused_note
from .repo import find_repo

PROG = "experiments.py"


def build(doc: str):
    p = cli.parser(PROG, doc, "python scripts/experiments.py list --sort metric --json",
                   codes=(REFUSED, NOT_FOUND), code_notes=refused_note("--force"))
    sub = cli.subparsers(p)

    def common(sp, dry=False, db=True, ranking=True):
        cli.add_sub_common(sp, dry_run=dry, dry_help="report what would be written and write nothing")
        if db:
            sp.add_argument("--db", default=None,
                            help="results DB path in the repo (default: ev.yaml's results_db, "
                                 f"else {history.DEFAULT_DB})")
        if ranking:
            sp.add_argument("--metric", default=None,
                            help="column that ranks runs (default: ev.yaml's metric, else "
                                 "f1_score if present)")
            sp.add_argument("--mode", choices=("max", "min"), default=None,
                            help="best run has the max or min metric (default: ev.yaml's "
                                 "mode, else max)")

    sp = sub.add_parser("list", help="one line per e-tag version (--kind exp: worktree tags)")
    common(sp)
    sp.add_argument("--kind", choices=("e", "exp", "all"), default="e",
                    help="e-tags (default), exp-NAME-vN worktree tags, or both")
    sp.add_argument("--sort", choices=("version", "metric"), default="version",
                    help="order by version (default) or by metric, best first")
    sp = sub.add_parser("show", help="one version in full")
    common(sp)
    sp.add_argument("version")
    sp = sub.add_parser("compare", help="what changed between two versions")
    common(sp)
    sp.add_argument("v1")
    sp.add_argument("v2")
    sp = sub.add_parser(
        "get", help="a tracked file as of a version, written to OUT",
        description="Write a DVC- or git-tracked file as of VERSION to OUT: the cache object\n"
                    "(md5-checked), else the DVC remote (fetched into the cache, so the next\n"
                    "get is a cache hit). The one way to get a past file, data or a model;\n"
                    "the working tree is not touched.",
        epilog="example:\n  python scripts/experiments.py get e0.1.0 "
               "models/candidates/e0.1.0--run.pkl -o /tmp/old.pkl\n\n"
               + epilog_codes(NOT_FOUND, notes=refused_note("--force")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common(sp, dry=True, db=False, ranking=False)
    sp.add_argument("version")
    sp.add_argument("path", help="repo-relative path of a DVC- (or git-) tracked file")
    sp.add_argument("-o", "--out", required=True, help="where to write it")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    sp = sub.add_parser(
        "sql", help="DuckDB query over the results DB (read-only)",
        description="Run one DuckDB query, offline and read-only, over the results DB\n"
                    "attached as `results`. Tables: results.\"default\" (xetrack's rows:\n"
                    "several per run), results.assets, results.keys, results.counts.\n"
                    "View `runs`: one row per run (track_id), every column its last non-null\n"
                    "value (the rule every script ranks by): rank `runs`, not rows.",
        epilog="example (the top 5 runs of a version):\n  python scripts/experiments.py sql "
               "\"SELECT track_id, model, f1_score FROM runs WHERE version = 'e0.2.0' "
               "ORDER BY f1_score DESC NULLS LAST LIMIT 5\"\n\n"
               + epilog_codes(NOT_FOUND),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common(sp, ranking=False)
    sp.add_argument("query", help="one DuckDB SQL statement")
    sp.add_argument("--version", default=None,
                    help="query the results DB as committed at this tag (default: working tree)")
    add_plot_parser(sub)
    add_report_parser(sub)
    return p


def _warn(msg):
    cli.warn(PROG, msg)


def _records(repo, args, warn=_warn):
    """(every listed version's record, whether all came from their tags' own DBs)."""
    tags = history.all_tags(repo)
    names = history.e_tags(tags, warn) if args.kind != "exp" else []
    if args.kind != "e":
        names += history.exp_tags(tags)
    with history.Reader(repo, args.db_rel, warn) as rd:
        rd.live = {t.commit for t in tags.values()}  # the cache keeps every tag's entries
        return rd.records([tags[n] for n in names], args.metric, args.mode), rd.own_only


def _record(repo, args, version, tags=None):
    tags = tags or history.all_tags(repo)
    if version not in tags:
        history.require_tag(repo, version)
    with history.Reader(repo, args.db_rel, _warn) as rd:
        return rd.record(tags[version], args.metric, args.mode, full=True)


def cmd_list(repo, args):
    warned: list[str] = []

    def warn(msg):
        warned.append(f"{PROG}: warning: {msg}\n")
        _warn(msg)

    recs, own_only = _records(repo, args, warn)
    if args.sort == "metric":
        sign = -1 if args.mode == "max" else 1
        recs.sort(key=lambda r: (history._num(r["value"]) is None,
                                 sign * (history._num(r["value"]) or 0)))
    rows = [history.public(r) for r in recs]
    for r in rows:
        r.pop("params"), r.pop("metrics")

    def text():
        from .summary import list_text

        return list_text(rows, args.kind)

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.emit(args, {"versions": rows}, text)
    sys.stdout.write(buf.getvalue())
    if own_only and args.fast is not None:  # the next identical list: from listfast
        args.fast.store(buf.getvalue(), "".join(warned))


def cmd_show(repo, args):
    tags = history.all_tags(repo)
    rec = _record(repo, args, args.version, tags)
    s = rec["_summary"]
    runs = [{"track_id": r.track_id, "rows": r.rows, "best": r is s.best,
             "params": history.run_params(r, s.metric_cols),
             "metrics": history.run_metrics(r, s.metric_cols)}
            for r in s.runs]
    arts = {p: o.md5 for p, o in sorted(rec["_outs"].items())}
    payload = {**history.public(rec), "message": tags[args.version].message,
               "lineage": tags[args.version].lineage,
               "run_list": runs, "artifacts": arts}

    def text():
        out = [f"{rec['tag']}  {rec['date']}  commit {rec['commit'][:12]}",
               f"message: {tags[args.version].subject}", f"runs ({len(runs)}, ranked by "
               f"{s.metric} {s.mode}):"]
        for r in runs:
            mark = "*" if r["best"] else " "
            ps = " ".join(f"{k}={history.fmt(v)}" for k, v in r["params"].items())
            ms = " ".join(f"{k}={history.fmt(v)}" for k, v in r["metrics"].items())
            out.append(f" {mark} {r['track_id']}  {ms}  |  {ps}")
        out.append("artifacts:")
        out += [f"  {p}  {m}" for p, m in arts.items()]
        return "\n".join(out)

    cli.emit(args, payload, text)


def cmd_compare(repo, args):
    tags = history.all_tags(repo)
    a, b = _record(repo, args, args.v1, tags), _record(repo, args, args.v2, tags)
    res = history.compare(a, b, repo)

    def text():
        out = [f"{res['from']} -> {res['to']}", "metrics:"]
        for k, d in res["metrics"].items():
            delta = "" if d["delta"] is None else f" ({d['delta']:+.4g})"
            out.append(f"  {k}: {history.fmt(d['from'])} -> {history.fmt(d['to'])}{delta}")
        out.append("params changed:" + ("" if res["params_changed"] else " none"))
        out += [f"  {k}: {history.fmt(d['from'])} -> {history.fmt(d['to'])}"
                for k, d in res["params_changed"].items()]
        out.append("artifacts changed:" + ("" if res["artifacts_changed"] else " none"))
        out += [f"  {k}: {(d['from'] or 'none')[:8]} -> {(d['to'] or 'none')[:8]}"
                for k, d in res["artifacts_changed"].items()]
        out.append("production changes:" + ("" if res["production_changed"] else " none"))
        for p, entries in res["production_changed"].items():
            out += [f"  {p}: " + " ".join(f"{k}={history.fmt(e[k])}" for k in
                                          ("action", "alias", "run_id", "version",
                                           "reason") if
                                          e.get(k) is not None) for e in entries]
        out.append("code:" + ("\n" + res["diffstat"] if res["diffstat"] else " no changes"))
        return "\n".join(out)

    cli.emit(args, res, text)


def cmd_get(repo, args):
    history.require_tag(repo, args.version)
    out = cli.resolve_path(args.out)
    if out.is_dir():
        out = out / Path(args.path).name
    if out.exists() and not args.force:
        raise EVError(f"{out} already exists", code=REFUSED,
                      hint="choose another -o, or pass --force to replace it")
    rel = history.repo_rel(repo, args.path)
    if args.dry_run:
        from .revfile import RevFiles

        with RevFiles(repo) as rf:
            loc = rf.locate(args.version, rel)
        cli.emit(args, {"version": args.version, "path": rel, "out": str(out),
                        "md5": loc.md5, "dry_run": True},
                 f"dry run: would write {rel} as of {args.version} to {out}")
        return
    res = history.fetch(repo, args.version, rel, out)
    cli.emit(args, {"version": args.version, "path": rel, "out": str(out), **res},
             f"wrote {rel} as of {args.version} to {out} (md5 {res['md5']}, from {res['source']})")


def cmd_sql(repo, args):
    from .sql import duckdb_attach_sqlite, duckdb_connect

    if args.version:
        history.require_tag(repo, args.version)
    with history.DBAt(repo, args.db_rel, args.version, snapshot=True) as db:
        if db is None:
            where = f"at {args.version}" if args.version else "in the working tree"
            raise EVError(f"no results DB {args.db_rel} {where}", code=NOT_FOUND,
                          hint="pass --db, or run training first")
        con = duckdb_connect()
        try:
            duckdb_attach_sqlite(con, db, "results", readonly=True)
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = "
                "'results'").fetchall()]
            if "default" in tables:
                history.create_runs_view(con, "results")
            # No new files from here on: the query can read what is attached, nothing else.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            try:
                cur = con.execute(args.query)
            except Exception as exc:  # duckdb's own errors: one line, a usage problem
                msg = " ".join(str(exc).split())
                raise EVError(f"query failed: {msg}", code=USAGE,
                              hint='tables: results."default" (or the view runs), '
                                   "results.assets, results.keys, results.counts") from exc
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = [list(r) for r in cur.fetchall()] if cols else []
        finally:
            con.close()

    def text():
        lines = ["\t".join(cols)]
        lines += ["\t".join("" if v is None else history.fmt(v) for v in r) for r in rows]
        return "\n".join(lines)

    cli.emit(args, {"columns": cols, "rows": rows, "count": len(rows)}, text)


# --- plot and report: charts (matplotlib, the `plots` extra) -------------------------------

def _chart_common(sp):
    cli.add_sub_common(sp, dry_run=True, dry_help="build it and say what it holds; write nothing")
    sp.add_argument("--db", default=None,
                    help="results DB path in the repo (default: ev.yaml's results_db)")
    sp.add_argument("--metric", default=None,
                    help="the column to chart (default: ev.yaml's metric, else f1_score; "
                         "curves: loss)")
    sp.add_argument("--mode", choices=("max", "min"), default=None,
                    help="best run has the max or min metric (default: ev.yaml's mode, max)")
    sp.add_argument("-o", "--out", required=True, help="file to write")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")


def _chart_epilog(*examples: str) -> dict:
    import argparse

    lines = "\n  ".join(examples)
    codes = epilog_codes(NOT_FOUND, notes=refused_note("--force"))
    return {"epilog": f"examples:\n  {lines}\n\n{codes}",
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_plot_parser(sub):
    sp = sub.add_parser("plot", help="one PNG chart (versions, sweep or curves)",
                        **_chart_epilog(
                            "python scripts/experiments.py plot -o versions.png --json",
                            "python scripts/experiments.py plot --kind sweep --version e0.2.0 "
                            "-o sweep.png",
                            "python scripts/experiments.py plot --kind curves --metric loss "
                            "-o curves.png"),
                        description="Write one PNG (1200 px wide). versions: the metric of "
                        "each version's best run, production starred, exp tags apart. sweep: "
                        "the metric of --version's runs against each param that varies. "
                        "curves: the metric per epoch/step, one line per run (--version: its "
                        "rows as tagged; omitted: every run in the working-tree DB). Fewer "
                        "than two points: exit 5 with the one value, no chart.")
    _chart_common(sp)
    sp.add_argument("--kind", choices=("versions", "sweep", "curves"), default="versions",
                    help="what to chart (default versions)")
    sp.add_argument("--version", default=None,
                    help="sweep: the tag (or a logged, untagged version); curves: a tag")
    sp.add_argument("--step", default=None,
                    help="curves: the step column (default: the first of "
                         "epoch, step, global_step, iteration, iter)")


def add_report_parser(sub):
    sub.add_parser("report", help="one self-contained HTML report of the history",
                   **_chart_epilog("python scripts/experiments.py report -o report.html "
                                   "--json"),
                   description="Write ONE HTML file (inline CSS, JS and PNG charts; no "
                   "network): the versions table (click a header to sort), the charts, any "
                   "two versions side by side, the production ledger, each version's "
                   "lineage. Open it from disk or keep it as a CI artifact.")
    _chart_common(sub.choices["report"])


def _chart_args(repo, args):
    from . import settings

    s = settings.load(repo)
    db_rel = history.repo_rel(repo, str(history.db_path(repo, args.db or s.results_db)))
    return s, db_rel, args.metric or s.metric, args.mode or s.mode


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise EVError(f"{out} already exists", code=REFUSED,
                      hint="choose another -o, or pass --force to replace it")


def cmd_plot(repo, args):
    from . import atomic, plots

    if args.kind == "versions" and args.version:
        raise EVError("--version is for --kind sweep or curves", code=USAGE,
                      hint="the versions chart shows every version; drop --version")
    if args.kind != "curves" and args.step:
        raise EVError("--step is for --kind curves", code=USAGE, hint="drop --step")
    s, db_rel, metric, mode = _chart_args(repo, args)
    plots.require_matplotlib()
    out = cli.resolve_path(args.out)
    _refuse_existing(out, args.force)
    warn = lambda m: cli.warn(PROG, m)  # noqa: E731
    ledger = plots.read_ledger_safe(repo, warn)
    info: dict = {"kind": args.kind}
    if args.kind == "versions":
        recs = plots.history_records(repo, db_rel, metric, mode, warn)
        metric = recs[0]["metric"] if recs else (metric or "f1_score")
        pts = plots.version_points(recs, ledger, plots.production_now(repo, ledger, warn))
        fig = plots.fig_versions(pts, metric, mode)
        scored = [p for p in pts if p.value is not None]
        info["points"] = len(scored)
        info["series"] = {p.tag: {"value": p.value, "run": p.run, "promoted": p.promoted,
                                  "production": p.production} for p in scored}
    elif args.kind == "sweep":
        if not args.version:
            raise EVError("--kind sweep needs --version", code=USAGE,
                          hint="e.g. plot --kind sweep --version e0.2.0 -o sweep.png")
        d = plots.sweep_for(repo, db_rel, args.version, metric, mode, s.split, ledger, warn)
        metric = d.metric
        fig = plots.fig_sweep(d)
        info.update(points=len(d.runs), params=list(d.params), marked_run=d.marked,
                    marked_is_promoted=d.marked_is_promoted, version=d.version)
    else:
        if args.version:
            history.require_tag(repo, args.version)
        metric = metric or "loss"
        c, title = plots.curves_for(repo, db_rel, args.version, metric, args.step)
        fig = plots.fig_curves(c, title, mode if metric == s.metric else None)
        info.update(step=c.step, lines=len(c.lines), runs=c.total_runs,
                    points=sum(len(x) for x, _ in c.lines.values()))
    data = plots.png_bytes(fig)
    w, h = (round(v * plots.DPI) for v in fig.get_size_inches())
    info.update(metric=metric, mode=mode, out=str(out), bytes=len(data), width_px=w,
                height_px=h, dry_run=args.dry_run)
    if not args.dry_run:
        atomic.write_bytes(out, data)
    verb = "would write" if args.dry_run else "wrote"
    cli.emit(args, info, f"{verb} {out} ({args.kind}: {info['points']} points of {metric}, "
                         f"{w}x{h} px, {len(data)} bytes)")


def cmd_report(repo, args):
    from . import atomic, plots, report

    s, db_rel, metric, mode = _chart_args(repo, args)
    plots.require_matplotlib()
    out = cli.resolve_path(args.out)
    _refuse_existing(out, args.force)
    res = report.build(repo, db_rel, metric, mode, s, lambda m: cli.warn(PROG, m))
    html = res.pop("html")
    data = html.encode("utf-8")
    if not args.dry_run:
        atomic.write_bytes(out, data)
    res.update(out=str(out), bytes=len(data), dry_run=args.dry_run)
    verb = "would write" if args.dry_run else "wrote"
    cli.emit(args, res, f"{verb} {out} ({len(data) // 1024} KiB: {res['versions']} versions, "
                        f"{len(res['charts'])} charts, {res['ledger_entries']} ledger entries)")


CHART_COMMANDS = {"plot": cmd_plot, "report": cmd_report}


def handler(args, argv: list[str]) -> int:
    repo = find_repo(args.repo)
    if args.command in CHART_COMMANDS:  # their --db defaults to ev.yaml's results_db
        CHART_COMMANDS[args.command](repo, args)
        return 0
    # the state listfast keys this list's answer by: taken before anything is read
    args.fast = None
    if args.command == "list":
        from . import listfast

        args.fast = listfast.Recorder(argv, repo)
    st = history.project_settings(repo)
    if getattr(args, "db", None) is None:
        args.db = st.results_db
    args.db_rel = history.repo_rel(repo, str(history.db_path(repo, args.db)))
    if getattr(args, "metric", None) is None:
        args.metric = st.metric
    if getattr(args, "mode", None) is None:
        args.mode = st.mode
    {"list": cmd_list, "show": cmd_show, "compare": cmd_compare, "get": cmd_get,
     "sql": cmd_sql}[args.command](repo, args)
    return 0


def main(doc: str, argv: list[str] | None = None) -> int:
    """experiments.py's CLI; doc: its docstring (the --help description). argv: the
    arguments (default sys.argv[1:]), also listfast's key for a list's answer."""
    argv = sys.argv[1:] if argv is None else argv
    return cli.main(PROG, lambda: build(doc), lambda args: handler(args, argv), argv)
