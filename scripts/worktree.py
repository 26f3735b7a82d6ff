#!/usr/bin/env python3
"""Experiment worktrees sharing main's DVC cache: create, teardown (refuses to lose work),
explore a tag read-only, clean up, list.

create NAME   ../exp-NAME on branch exp/NAME (from --base, default HEAD); DVC cache = main's
              cache (--local config only), cheapest link type, written files private copies
              (made before dvc checkout: never a writable link into the cache). Killed, the
              next create NAME finishes the half-made worktree or removes and redoes it, and
              says which ("recovered" in --json).
teardown NAME removes ../exp-NAME and branch exp/NAME only if nothing would be lost: clean
              tree, no ignored files other than DVC outputs and caches (__pycache__ ...),
              DVC outputs committed and on the default remote, a tag at the tip, results
              rows in main's results/experiments.db (working copy and as committed at HEAD);
              --force removes anyway (a backup tag keeps the commits). Never runs dvc gc.
              Killed, the next teardown NAME finishes it.
privatize     re-make private copies in the current experiment worktree (after dvc add);
              in a half-made worktree (create was interrupted) it finishes the create
explore TAG   detached read-only worktree ../explore-TAG with the tag's DVC data
explore-cleanup [TAG]  removes only worktrees made by explore
list          every worktree with its kind (main, experiment, explore, other)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib import teardown as tdlib  # noqa: E402
from _evlib import worktree as wtlib  # noqa: E402
from _evlib.errors import NOT_FOUND, REFUSED, USAGE, EVError, refused_note  # noqa: E402
from _evlib.repo import find_repo, main_worktree  # noqa: E402

PROG = "worktree.py"


def _sub(sp, name: str, help_: str, example: str, dry_run: bool = True):
    p = sp.add_parser(name, help=help_, description=help_,
                      epilog=f"example:\n  {example}",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_sub_common(p, dry_run=dry_run, dry_run_default=argparse.SUPPRESS,
                       dry_help="check and report, change nothing")
    return p


def build():
    p = cli.parser(PROG, __doc__, 'python "$SKILL/scripts/worktree.py" create transformer-pii',
                   codes=(REFUSED, NOT_FOUND), dry_run=True,
                   code_notes=refused_note("--force"))
    sp = cli.subparsers(p)
    c = _sub(sp, "create", "create ../exp-NAME on branch exp/NAME sharing main's DVC cache",
             "worktree.py create transformer-pii --base e0.1.0 --private results/ --json")
    c.add_argument("name", help="experiment name: letters, digits, '.', '_', '-'")
    c.add_argument("--base", metavar="REF", default=None,
                   help="branch, tag or commit to start from (default: HEAD)")
    c.add_argument("--private", metavar="PATH", action="append", default=None,
                   help="a tracked path the experiment writes (repeat); a trailing / means a "
                        "directory, globs allowed (default: results/*.db and models/)")
    t = _sub(sp, "teardown", "remove ../exp-NAME and branch exp/NAME if nothing would be lost",
             "worktree.py teardown transformer-pii --json")
    t.add_argument("name")
    t.add_argument("--force", action="store_true",
                   help="remove even if work would be lost (the list is printed first)")
    t.add_argument("--main-db", metavar="PATH", default=None,
                   help="main's results DB the rows must be in, relative to main "
                        "(default: results/experiments.db)")
    pv = _sub(sp, "privatize", "make the private paths of this experiment worktree private "
                               "copies again (run after dvc add)", "worktree.py privatize")
    pv.add_argument("--private", metavar="PATH", action="append", default=None,
                    help="paths to privatize (default: those given at create)")
    e = _sub(sp, "explore", "check out a tag read-only in ../explore-TAG (detached)",
             "worktree.py explore e0.1.0 --json")
    e.add_argument("tag")
    ec = _sub(sp, "explore-cleanup", "remove explore worktrees (all, or the one of TAG)",
              "worktree.py explore-cleanup e0.1.0")
    ec.add_argument("tag", nargs="?", default=None)
    ec.add_argument("--force", action="store_true",
                    help="remove even if files were changed in the explore worktree")
    _sub(sp, "list", "list worktrees and their kind", "worktree.py list --json", dry_run=False)
    return p


def _create(args) -> int:
    plan = wtlib.plan_create(args.repo, args.name, args.base, args.private)
    if args.dry_run:
        out = {"dry_run": True, "path": str(plan["path"]), "branch": plan["branch"],
               "base": plan["base"], "base_commit": plan["base_commit"],
               "cache_dir": str(plan["cache"]), "private_patterns": plan["private"]}
        cli.emit(args, out, f"would create {out['path']} on {out['branch']} "
                            f"(cache {out['cache_dir']})")
        return 0
    r = wtlib.create(plan)
    if r.get("recovered"):
        cli.warn(PROG, r["recovered"])
    text = (f"created {r['path']}\n  branch:    {r['branch']} (from {r['base']} "
            f"{r['base_commit'][:12]})\n  cache dir: {r['cache_dir']}\n"
            f"  link type: {r['link_type']}\n  private:   {', '.join(r['private']) or '-'}\n"
            f"next: cd {r['path']}")
    cli.emit(args, r, text)
    return 0


def _refuse(args, check: dict) -> int:
    items = check["items"]
    msg = (f"teardown of {Path(check['path']).name} refused: {len(items)} thing(s) would be "
           "lost (listed below); commit, tag, dvc push -T and merge the results into main, "
           "or pass --force")
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    for it in items:
        print(f"{PROG}: would lose: {it}", file=sys.stderr)
    if args.json:
        print(json.dumps({"status": "error", "code": REFUSED, "error": msg, "items": items}))
    return REFUSED


def _teardown(args) -> int:
    repo = find_repo(args.repo)
    done = tdlib.resume(repo, args.name, args.dry_run)
    if done:
        cli.warn(PROG, done["recovered"])
        if args.dry_run:
            cli.emit(args, {"dry_run": True, **done}, f"would finish: {done['recovered']}")
            return 0
        cli.emit(args, {**done, "forced": False, "lost": []},
                 f"removed {done['removed']} and branch {done['branch_deleted']}")
        return 0
    check = tdlib.teardown_check(repo, args.name, args.main_db)
    items = check["items"]
    if items and not args.force:
        return _refuse(args, check)
    if args.dry_run:
        cli.emit(args, {"dry_run": True, "path": check["path"], "branch": check["branch"],
                        "items": items}, f"would remove {check['path']} ({check['branch']})")
        return 0
    for it in items:
        cli.warn(PROG, f"--force: removing anyway, this is lost: {it}")
    r = tdlib.teardown(check)
    r["forced"] = bool(items)
    r["lost"] = items
    text = (f"removed {r['removed']} and branch {r['branch_deleted']}\n"
            f"  kept by: {', '.join(r['tags']) or r['backup_tag']}\n  restore: {r['restore']}")
    cli.emit(args, r, text)
    return 0


def _privatize(args) -> int:
    repo = find_repo(args.repo)
    marker = wtlib.read_marker(repo)
    if repo == main_worktree(repo):
        raise EVError(f"{repo} is the main worktree", code=USAGE,
                      hint="run privatize inside an experiment worktree")
    patterns = wtlib.check_private_patterns(args.private or marker.get("private")
                                            or list(wtlib.DEFAULT_PRIVATE))
    if args.dry_run:
        out = wtlib.exposed_private(repo, patterns)
        cli.emit(args, {"dry_run": True, "would_privatize": out}, "\n".join(out) or "nothing")
        return 0
    finished = wtlib.finish_half_made(repo)
    if finished:
        cli.warn(PROG, finished)
    r = wtlib.privatize(repo, patterns)
    cli.emit(args, {"private": r["private"], "readonly": len(r["readonly"]),
                    **({"recovered": finished} if finished else {})},
             f"private copies made: {', '.join(r['private']) or 'none needed'}")
    return 0


def _explore(args) -> int:
    r = wtlib.explore(args.repo, args.tag, args.dry_run)
    if r.get("recovered"):
        cli.warn(PROG, r["recovered"])
    verb = "would create" if args.dry_run else ("exists" if r["existing"] else "created")
    cli.emit(args, {**r, "dry_run": args.dry_run},
             f"{verb}: {r['path']} (tag {r['tag']}, read-only, "
             f"link type {r.get('link_type', '-')})")
    return 0


def _explore_cleanup(args) -> int:
    r = tdlib.explore_cleanup(args.repo, args.tag, args.force, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    cli.emit(args, r, "\n".join(f"{verb} {x['path']}" for x in r["removed"])
             or "no explore worktrees")
    return 0


def _list(args) -> int:
    rows = wtlib.list_worktrees(args.repo)
    text = "\n".join(f"{r['kind']:<10} {r['path']}  {r.get('branch') or r.get('tag') or ''}"
                     for r in rows)
    cli.emit(args, {"worktrees": rows}, text)
    return 0


def handler(args) -> int:
    for key in ("json", "repo", "dry_run"):
        if not hasattr(args, key):
            setattr(args, key, None if key == "repo" else False)
    return {"create": _create, "teardown": _teardown, "privatize": _privatize,
            "explore": _explore, "explore-cleanup": _explore_cleanup,
            "list": _list}[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
