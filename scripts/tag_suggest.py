#!/usr/bin/env python3
"""Suggest (and optionally create) the annotated tag for an experiment version.

The tag name is the version the runs were logged under (train.py --version e0.2.0), checked
against the bump inferred since the last e-tag: data (DVC md5s) or model type changed: major;
params changed (params.yaml, or the chosen run's param/config_ columns): minor; else patch.
`--kind exp --name NAME` gives the worktree sequence exp-NAME-v1, -v2, ...
The message is one line `model=... | params | METRIC=value | best of N runs | data=md5 |
description`, a blank line, then a JSON lineage block (commit, dirty, data hashes, the chosen
run's params and metrics). With --version omitted, the one untagged version in the results DB
is used.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import atomic, cli, history, tagging  # noqa: E402
from _evlib.errors import NOT_FOUND, REFUSED, USAGE, EVError  # noqa: E402
from _evlib.proc import git  # noqa: E402
from _evlib.repo import find_repo  # noqa: E402

PROG = "tag_suggest.py"


def build():
    p = cli.parser(PROG, __doc__, "python scripts/tag_suggest.py --version e0.2.0 "
                   "--description 'C sweep' --create --json",
                   codes=(REFUSED, NOT_FOUND), dry_run=True, code_notes={
                       REFUSED: "refused: the tag exists, or --create found uncommitted work "
                                "(commit it, or --allow-dirty); nothing tagged"})
    p.add_argument("--version", default=None,
                   help="the version the runs were logged under (default: the one untagged "
                        "version in the results DB; for --kind exp: exp-NAME)")
    p.add_argument("--tag", default=None, metavar="NAME",
                   help="tag name when it differs from the rows' version, e.g. an e-tag for "
                        "main after merging worktree runs (--version exp-forest --tag e1.0.0)")
    p.add_argument("--kind", choices=("e", "exp"), default="e",
                   help="e: e<major>.<minor>.<patch> (default); exp: exp-NAME-vN worktree tags")
    p.add_argument("--name", default=None, help="experiment name for --kind exp")
    p.add_argument("--db", default=None,
                   help="results DB, relative to the repository root (default: ev.yaml's "
                        f"results_db, else {history.DEFAULT_DB})")
    p.add_argument("--metric", default=None,
                   help="column that ranks runs (default: ev.yaml's metric, else f1_score if "
                        "present)")
    p.add_argument("--mode", choices=("max", "min"), default=None,
                   help="best run has the max or min metric (default: ev.yaml's mode, else "
                        "max)")
    p.add_argument("--bump", choices=("major", "minor", "patch"), default=None,
                   help="override the inferred bump level")
    p.add_argument("--description", default=None, help="the human part of the message")
    p.add_argument("--params", default=None, metavar="A,B",
                   help="params shown in the first line, short names (C,max_depth); "
                        "default: all of the chosen run's params (config_ prefix dropped)")
    p.add_argument("--create", action="store_true", help="run git tag -a with the message")
    p.add_argument("--allow-dirty", action="store_true",
                   help="with --create: tag even if the tree, DB or models are uncommitted")
    return p


def _same_lineage(repo, res) -> bool:
    info = history.all_tags(repo).get(res["name"])
    if info is None:
        return False
    old, new = info.lineage, res["lineage"]
    keys = ("version", "run", "kind", "ledger_seq", "commit")
    return all(old.get(k) == new.get(k) for k in keys)


def _next_free(repo, res) -> str:
    tags = history.all_tags(repo)
    name = res.get("expected") or res["name"]
    while name in tags and history.parse_e(name):
        name = history.bump_version(name, "patch")
    return name


def handler(args) -> int:
    repo = find_repo(args.repo)
    if args.name and args.kind == "e":
        args.kind = "exp"
    # ev.yaml's choices, as experiments.py, the ledger and the report use them: a tag
    # ranks runs the way the project says
    st = history.project_settings(repo)
    db = history.db_path(repo, args.db if args.db is not None else st.results_db)
    args.metric = args.metric if args.metric is not None else st.metric
    args.mode = args.mode or st.mode or "max"
    res = tagging.suggest(repo, version=args.version, tag_name=args.tag, kind=args.kind, name=args.name, db=db,
                          metric=args.metric, mode=args.mode, bump=args.bump,
                          description=args.description,
                          warn=lambda m: cli.warn(PROG, m),
                          show_params=[x.strip() for x in args.params.split(",") if x.strip()]
                          if args.params is not None else None)
    chosen = res.pop("_chosen")
    created = False
    res["unchanged"] = False
    head = git(repo, "rev-parse", "HEAD")
    if args.create and args.kind == "exp":
        # idempotent per commit: an exp tag of this experiment already on HEAD is the answer
        on_head = [t for t in git(repo, "tag", "--points-at", "HEAD").split()
                   if re.fullmatch(rf"exp-{re.escape(args.name or '')}-v\d+", t)]
        if on_head:
            res.update(name=on_head[-1], exists=True, unchanged=True)
    elif args.create and res["exists"] and \
            git(repo, "rev-parse", f"refs/tags/{res['name']}^{{commit}}") == head and \
            _same_lineage(repo, res):
        res["unchanged"] = True  # the re-run of a create that already happened
    if args.create and res["unchanged"]:
        pass
    elif args.create:
        if res["exists"]:
            raise EVError(f"tag {res['name']} already exists", code=REFUSED,
                          hint=f"pass --tag NAME for the new tag (next free: "
                               f"{_next_free(repo, res)}), or log new runs under a new "
                               "--version")
        changed = [c for c in res["lineage"].get("dvc_changed") or []
                   if not c.startswith(history.PRODUCT_DIRS)]  # data, not results/models
        if changed:
            raise EVError(f"not tagging {res['name']}: data differs from what is committed "
                          f"(dvc status): {', '.join(changed[:3])}", code=REFUSED,
                          hint="dvc add them (or dvc repro) and git commit, so the tag names "
                               "the data the runs read; --allow-dirty does not skip this")
        problems = tagging.create_checks(repo, db, chosen)
        if problems and not args.allow_dirty:
            raise EVError(f"not tagging {res['name']}: " + "; ".join(problems), code=REFUSED,
                          hint="commit them first (the tag must point at what produced the "
                               "rows), or pass --allow-dirty")
        if not args.dry_run:
            with tempfile.TemporaryDirectory(prefix="ev-tag-") as d:
                msg = Path(d) / "message.txt"
                atomic.write_text(msg, res["message"])
                git(repo, "tag", "-a", res["name"], "-F", str(msg), "--cleanup=verbatim")
            created = True
    elif res["exists"]:
        raise EVError(f"tag {res['name']} already exists", code=USAGE,
                      hint=f"pass --tag NAME for a new tag (next free: "
                           f"{_next_free(repo, res)}), or log new runs under a new --version")
    res["created"] = created
    res["dry_run"] = bool(args.dry_run)

    def text() -> str:
        top = f"{res['name']}  ({res['bump']}: {res['reason']})"
        tail = ""
        if res["unchanged"]:
            tail = f"\n{res['name']} already tags this commit; nothing changed"
        elif created:
            tail = f"\ncreated tag {res['name']}"
        elif args.create:
            tail = f"\ndry run: would run git tag -a {res['name']}"
        return f"{top}\n\n{res['message'].rstrip()}{tail}"

    cli.emit(args, res, text)
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
