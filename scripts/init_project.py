#!/usr/bin/env python3
"""Make a git repository ready for the bundle: DVC, a remote, ignore lines, settings, DuckDB.

Idempotent: a second run changes nothing. Steps (each only when needed): `dvc init`; the
default DVC remote (--remote PATH|URL adds one; a relative local path is made absolute,
because `dvc push -T` resolves it at older tags against the root of the file system; an
existing relative one is refused, or with --fix-remote made absolute in the untracked
.dvc/config.local); the bundle's lines appended to .gitignore and .dvcignore (your lines are
never changed); the settings file ev.yaml (results DB, production model, candidates folder,
ranking metric and mode, metric columns; kept if it exists, unless --force-settings); DuckDB's
sqlite extension installed from its PyPI wheel into DuckDB's own extension directory, so that
xetrack's engine='duckdb' and `INSTALL sqlite` work offline. It reports the DVC cache link
type and what it means for writing into tracked files. It commits nothing.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib.errors import REFUSED  # noqa: E402

PROG = "init_project.py"


def build():
    p = cli.parser(PROG, __doc__, "python scripts/init_project.py --remote /srv/dvc-store "
                   "--metric f1_score --json", codes=(REFUSED,), dry_run=True, code_notes={
                       REFUSED: "refused: the default remote is a relative path (see "
                                "--fix-remote), or --remote differs from the existing default "
                                "remote; nothing changed"})
    p.add_argument("--remote", default=None, metavar="PATH_OR_URL",
                   help="add it as the default DVC remote 'storage' when there is none")
    p.add_argument("--fix-remote", action="store_true",
                   help="make a relative default remote absolute (in .dvc/config.local)")
    p.add_argument("--metric", default=None, help="the ranking metric written to ev.yaml")
    p.add_argument("--mode", choices=("max", "min"), default="max",
                   help="max: higher metric is better; min: lower (default: max)")
    p.add_argument("--metrics", default=None, metavar="A,B",
                   help="the metric columns written to ev.yaml (default: recognised by name)")
    p.add_argument("--force-settings", action="store_true",
                   help="rewrite ev.yaml even though it exists")
    return p


def text(r: dict) -> str:
    head = "would change" if r["dry_run"] else "changed"
    lines = [f"{r['repo']}: {len(r['changes'])} change(s)" if r["changes"]
             else f"{r['repo']}: ready, nothing to change"]
    for ch in r["changes"]:
        lines.append(f"  {head}: {ch['what']}" + (f" ({', '.join(ch['lines'])})"
                                                  if ch.get("lines") else ""))
    rem = r["remote"]
    lines.append(f"  remote: {rem['default']} = {rem['url']}" if rem.get("default")
                 else "  remote: none")
    lines.append(f"  cache type {r['cache_type']}: {r['cache_type_means']}")
    lines += [f"  note: {n}" for n in r["notes"]]
    if r["changes"] and not r["dry_run"]:
        lines.append("next: git add -A && git commit -m 'experiment versioning set up'")
    return "\n".join(lines)


def handler(args) -> int:
    from _evlib import project

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics \
        else None
    report = project.plan(args.repo, remote=args.remote, fix_remote=args.fix_remote,
                          metric=args.metric, mode=args.mode, metrics=metrics,
                          force_settings=args.force_settings)
    report["dry_run"] = args.dry_run
    if not args.dry_run:
        project.apply(args.repo, report)
    for n in report["notes"]:
        cli.warn(PROG, n) if n.startswith("no default") else None
    cli.emit(args, report, lambda: text(report))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
