"""merge_artifacts.py's CLI: the parser, the text report and the handler (the script is a
stub, so that each start compiles a few lines and imports the rest byte-compiled).
"""

from __future__ import annotations

from pathlib import Path

from . import cli, merge
from .errors import CONFLICT, REFUSED, USAGE, EVError, refused_note
from .repo import find_repo

PROG = "merge_artifacts.py"
EXAMPLE = ("python scripts/merge_artifacts.py --strategy merge --base-db results/experiments.db "
           "--exp-db a.db b.db --output-db results/experiments.db --json")


# The options after cli.parser's common ones (--json, --repo, --dry-run), in --help order:
# one table for the parser and for cli.quick_parse (a plain merge is parsed without argparse).
OPTIONS: list[tuple[str, dict]] = [
    ("--strategy", {"choices": ("merge", "rebase"), "default": "merge",
                    "help": "merge (union, default) or rebase (experiment rows win by key)"}),
    ("--data-strategy", {"choices": ("merge", "rebase"), "default": None,
                         "help": "strategy for the data files (default: --strategy)"}),
    ("--base-db", {"metavar": "DB", "help": "the results DB to merge into"}),
    ("--exp-db", {"metavar": "DB", "nargs": "+", "default": [],
                  "help": "experiment/shard results DBs, merged in the order given"}),
    ("--output-db", {"metavar": "DB", "help": "where to write (default: --base-db)"}),
    ("--base-data", {"metavar": "PARQUET", "help": "the data file to merge into"}),
    ("--exp-data", {"metavar": "PARQUET", "nargs": "+", "default": [],
                    "help": "experiment data files, in order (a later file wins on rebase)"}),
    ("--output-data", {"metavar": "PARQUET", "help": "where to write (default: --base-data)"}),
    ("--table", {"metavar": "NAME", "action": "append", "default": None,
                 "help": "DB table to merge (repeatable; default: the tables xetrack wrote: "
                         "default, assets, keys, counts)"}),
    ("--key-columns", {"metavar": "COL", "nargs": "+", "default": None,
                       "help": "columns identifying a row (DB rebase, data rebase, keyed data "
                               "merge)"}),
    ("--on-conflict", {"choices": ("keep-base", "keep-exp"), "default": None,
                       "help": "which row wins when a key has different values in a DB or "
                               "a keyed data merge (default: exit 3)"}),
    ("--new-base", {"action": "store_true",
                    "help": "--base-db may not exist yet: start it from the experiment DBs "
                            "(without this flag a missing base is an error: a typo must not "
                            "create a new DB)"}),
    ("--force", {"action": "store_true",
                 "help": "replace an existing --output-db/--output-data that is not the base"}),
    ("--full-check", {"action": "store_true",
                      "help": "check the merged DB with PRAGMA integrity_check (default: row "
                              "counts + PRAGMA quick_check, half the cost on large DBs)"}),
]


def quick_options() -> list[tuple[str, dict]]:
    """Every option of build()'s parser, for cli.main(quick=...)."""
    return cli.common_options(dry_run=True) + OPTIONS


def build(doc: str):
    p = cli.parser(PROG, doc, EXAMPLE, codes=(CONFLICT, REFUSED), dry_run=True,
                   code_notes=refused_note("--force"))
    cli.add_options(p, OPTIONS)
    return p


def _text(reports: list[dict]) -> str:
    out = []
    for r in reports:
        dry = " (dry run: nothing written)" if r["dry_run"] else ""
        out.append(f"{r['kind']} {r['strategy']}: {r['base']} -> {r['output']}{dry}")
        if r.get("note"):
            out.append(f"  note: {r['note']}")
        if r["kind"] == "db":
            for inp in r["inputs"]:
                for t, s in inp["tables"].items():
                    if not s["read"] and t != "default":
                        continue
                    cols = ", ".join(f"{c['column']} {c['type']}".strip()
                                     for c in s["columns_added"])
                    out.append(f"  {inp['path']} [{t}]: read {s['read']}, added {s['added']}, "
                               f"replaced {s['replaced']}, already present {s['skipped']}, "
                               f"conflicts {s['conflicts']}"
                               + (f", columns added: {cols}" if cols else "")
                               + (f", filled in {s['filled']} row(s)" if s.get("filled") else ""))
            if r.get("combined"):
                out.append(f"  {r['combined']['inputs']} inputs combined first (counts above are "
                           "against earlier inputs)")
            if r["rows_out"] is not None:
                out.append("  rows out: " + ", ".join(f"{t}={n}"
                                                      for t, n in r["rows_out"].items()))
            else:
                out.append("  rows added: " + ", ".join(f"{t}={n}"
                                                        for t, n in r["rows_added"].items()))
        else:
            for inp in r["inputs"]:
                extra = "".join(f", {k} {inp[k]}" for k in ("added", "skipped") if k in inp)
                if inp.get("conflicts"):  # (a keyed merge with --on-conflict)
                    extra += f", conflicts {inp['conflicts']}, replaced {inp['replaced']}"
                cols = ", ".join(f"{c['column']} {c['type']}" for c in inp["columns_added"])
                out.append(f"  {inp['path']}: read {inp['read']}{extra}"
                           + (f", columns added: {cols}" if cols else ""))
            for k in ("added", "skipped", "replaced", "superseded_by_later_exp"):
                if k in r and not (r["strategy"] == "merge" and len(r["inputs"]) == 1):
                    out.append(f"  {k.replace('_', ' ')}: {r[k]}")
            for w in r["type_widenings"]:
                out.append(f"  widened {w['column']} in {w['file']}: {w['from']} -> {w['to']}")
            out.append(f"  rows out: {r['rows_out']}")
        if r.get("backup"):
            out.append(f"  backup of the old output: {r['backup']} (restore: {r['restore']})")
    return "\n".join(out)


def handler(args) -> int:
    repo = find_repo(args.repo)
    if not args.base_db and not args.base_data:
        raise EVError("nothing to merge", code=USAGE,
                      hint="pass --base-db with --exp-db, and/or --base-data with --exp-data")
    if bool(args.base_db) != bool(args.exp_db):
        raise EVError("--base-db and --exp-db go together", code=USAGE,
                      hint="pass both (a base that does not exist yet needs --new-base)")
    if bool(args.base_data) != bool(args.exp_data):
        raise EVError("--base-data and --exp-data go together", code=USAGE, hint="pass both")
    path = cli.resolve_path
    data_strategy = args.data_strategy or args.strategy
    if args.base_db and not path(args.base_db).exists() and not args.new_base:
        raise EVError(f"base DB {path(args.base_db)} does not exist", code=USAGE,
                      hint="check the path; to start a new results DB from the experiment "
                           "DBs, pass --new-base")
    # Every input is checked before anything is written.
    prechecked = None
    if args.base_db:
        prechecked = merge.precheck_db(path(args.base_db), [path(e) for e in args.exp_db],
                                       args.strategy)
    if args.base_data:
        merge.precheck_data(path(args.base_data), [path(e) for e in args.exp_data])

    def recoverable(p: Path) -> bool:
        return merge.dvc_recoverable(repo, p)

    def data(dry_run: bool) -> dict:
        return merge.merge_data(
            path(args.base_data), [path(e) for e in args.exp_data],
            path(args.output_data or args.base_data), strategy=data_strategy,
            key_columns=args.key_columns, dry_run=dry_run, recoverable=recoverable,
            force=args.force, on_conflict=args.on_conflict)

    reports = []
    if args.base_db and args.base_data and not args.dry_run:
        data(True)  # a data conflict or refusal must stop the command before the DB is written
    if args.base_db:
        reports.append(merge.merge_dbs(
            path(args.base_db), [path(e) for e in args.exp_db],
            path(args.output_db or args.base_db), strategy=args.strategy,
            on_conflict=args.on_conflict, tables=args.table, key_columns=args.key_columns,
            dry_run=args.dry_run, recoverable=recoverable,
            check="full" if args.full_check else "quick", force=args.force,
            new_base_dirs=args.new_base, prechecked=prechecked))
    if args.base_data:
        reports.append(data(args.dry_run))
    payload = {"status": "ok", "dry_run": args.dry_run}
    for r in reports:
        payload[r["kind"]] = r
    cli.emit(args, payload, _text(reports))
    return 0

