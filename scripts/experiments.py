#!/usr/bin/env python3
"""Read experiment history: every e-tag version as it was recorded at its tag.

  list                  one line per e-tag: tag, date, model, metric, runs, data, description
  show VERSION          runs (params, metrics), tag message, tracked artifacts with md5s
  compare V1 V2         metric deltas, changed params, changed artifacts, code diffstat
  get VERSION PATH -o OUT   a DVC- or git-tracked file (data, a model, the DB) as of
                        VERSION (cache, else remote); the working tree is not touched
  sql "QUERY"           DuckDB, offline, read-only: the results DB attached as `results`
                        (xetrack's rows: results."default"), plus a view `runs`: one row
                        per run (track_id), each column its last non-null value

A past version's runs come from the results DB committed (DVC-tracked) at its tag, so
history stays right after the current DB changes. --db is relative to the repository root.
Parsed summaries are cached by tag commit and DB md5 (.dvc/tmp/ev-history.json), so a
second `list` reads nothing it read before.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli, history  # noqa: E402
from _evlib.errors import NOT_FOUND, REFUSED, USAGE, EVError, epilog_codes  # noqa: E402
from _evlib.repo import find_repo  # noqa: E402

PROG = "experiments.py"


def build():
    p = cli.parser(PROG, __doc__, "python scripts/experiments.py list --sort metric --json",
                   codes=(REFUSED, NOT_FOUND))
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
               + epilog_codes(REFUSED, NOT_FOUND),
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
    return p


def _warn(msg):
    cli.warn(PROG, msg)


def _records(repo, args):
    tags = history.all_tags(repo)
    names = history.e_tags(tags, _warn) if args.kind != "exp" else []
    if args.kind != "e":
        names += history.exp_tags(tags)
    with history.Reader(repo, args.db_rel, _warn) as rd:
        rd.live = {t.commit for t in tags.values()}  # the cache keeps every tag's entries
        return rd.records([tags[n] for n in names], args.metric, args.mode)


def _record(repo, args, version, tags=None):
    tags = tags or history.all_tags(repo)
    if version not in tags:
        history.require_tag(repo, version)
    with history.Reader(repo, args.db_rel, _warn) as rd:
        return rd.record(tags[version], args.metric, args.mode, full=True)


def cmd_list(repo, args):
    recs = _records(repo, args)
    if args.sort == "metric":
        sign = -1 if args.mode == "max" else 1
        recs.sort(key=lambda r: (history._num(r["value"]) is None,
                                 sign * (history._num(r["value"]) or 0)))
    rows = [history.public(r) for r in recs]
    for r in rows:
        r.pop("params"), r.pop("metrics")

    def text():
        if not rows:
            what = {"e": "experiment tags (e<major>.<minor>.<patch>)",
                    "exp": "worktree tags (exp-NAME-vN)", "all": "experiment tags"}[args.kind]
            return f"no {what} yet"
        lines = []
        width = max(10, *(len(r["tag"]) for r in rows))
        for r in rows:
            metric = f"{r['metric']}={history.fmt(r['value'])}" if r["value"] is not None \
                else f"{r['metric']}=-"
            lines.append(f"{r['tag']:<{width}} {r['date'][:10]}  {r['model'] or '-':<10} {metric:<18}"
                         f" runs={r['runs']:<3} data={r['data']}  {r['description']}")
        return "\n".join(lines)

    cli.emit(args, {"versions": rows}, text)


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
        from _evlib.revfile import RevFiles

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
    from _evlib.sql import duckdb_attach_sqlite, duckdb_connect

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


def handler(args) -> int:
    repo = find_repo(args.repo)
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


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
