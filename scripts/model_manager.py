#!/usr/bin/env python3
"""Candidates, aliases (production, challenger, ...), promotion, rollback and their ledgers.

Candidates live in models/candidates/<version>--<run_id><suffix> (DVC-tracked as one
directory). An alias is a DVC-tracked model.bin with a git-tracked ledger.jsonl beside it:
production at ev.yaml's production_model (default models/production/model.bin), any other
alias at models/<alias>/model.bin. Every promote or rollback appends one ledger entry (seq,
reason, run, training commit, data md5s, metrics, the commit at the time). model.bin is
only ever replaced, never written into, so the DVC cache is never modified. Killed at any
point, the next promote/rollback/status of the alias completes or rolls back the change and
says which. Nothing is committed unless --commit (or `gto: true` in ev.yaml, which also
writes GTO's registry tags): the output says what to `git add`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib import models as m  # noqa: E402
from _evlib import registry as reg  # noqa: E402
from _evlib.dvcmeta import first_md5  # noqa: E402
from _evlib.errors import NOT_FOUND, REFUSED, USAGE, EVError, epilog_codes, refused_note  # noqa: E402
from _evlib.repo import find_repo, require_dvc  # noqa: E402

PROG = "model_manager.py"
EXAMPLE = ("python scripts/model_manager.py promote --db results/experiments.db "
           "--version e0.2.0 --run-id fuzzy-yak-8579 --reason 'best f1 of the C sweep' --json")


def git_add(a) -> str:
    return f"git add {a.dvc} {a.dir}/.gitignore {a.ledger}"


def _common(sp: argparse.ArgumentParser, *, writes: bool) -> None:
    cli.add_sub_common(sp, dry_run=writes)


def _db(sp):
    sp.add_argument("--db", metavar="PATH", default=None,
                    help="xetrack results DB (default: results_db in ev.yaml, else "
                         f"{m.DEFAULT_DB})")


def _rank(sp, default: str | None, optional: bool = False):
    sp.add_argument("--metric", metavar="COLUMN", default=default,
                    required=default is None and not optional,
                    help="column to rank runs by (a run's last non-null value)"
                    + ("; default: metric in ev.yaml, else f1_score" if optional else ""))
    sp.add_argument("--mode", choices=("max", "min"), default=None if optional else "max",
                    help="max: higher is better; min: lower is better (default: mode in "
                         "ev.yaml, else max)")


_S = "python scripts/model_manager.py"
EXAMPLES = {
    "add-candidate": f"{_S} add-candidate --run-id fuzzy-yak-8579 --model /tmp/model.onnx",
    "promote": EXAMPLE,
    "rollback": f"{_S} rollback --reason 'too many false positives' --json",
    "list": f"{_S} list --metric f1_score --mode max --version e0.2.0",
    "prune": f"{_S} prune --keep 3 --metric f1_score --yes",
    "status": f"{_S} status --at e0.2.0",
    "history": f"{_S} history --json",
    "get": f"{_S} get --version e0.2.0 -o /tmp/model-e0.2.0.bin",
}


# the flag that overrides each subcommand's safety check (its exit 4 line names only it)
OVERRIDE = {"add-candidate": "--force", "promote": "--force", "rollback": "--force",
            "get": "--force", "prune": "--force"}


def _add_parser(sub, name: str, help: str):
    notes = refused_note(OVERRIDE[name]) if name in OVERRIDE else None
    epilog = f"example:\n  {EXAMPLES[name]}\n\n{epilog_codes(REFUSED, NOT_FOUND, notes=notes)}"
    return sub.add_parser(name, help=help, description=help, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build() -> argparse.ArgumentParser:
    p = cli.parser(PROG, __doc__, EXAMPLE, codes=(REFUSED, NOT_FOUND),
                   code_notes=refused_note("--force", "--yes"))
    sub = cli.subparsers(p)

    sp = _add_parser(sub, "add-candidate", "copy a trained model into models/candidates/")
    _common(sp, writes=True)
    sp.add_argument("--run-id", required=True, help="the run's xetrack track_id")
    sp.add_argument("--model", required=True, metavar="PATH", help="the model file")
    sp.add_argument("--version", default=None, help="check the run has this version")
    _db(sp)
    sp.add_argument("--force", action="store_true",
                    help="replace an existing candidate of this run with different bytes")
    sp.add_argument("--no-track", action="store_true",
                    help="skip `dvc add models/candidates` (run it once after many adds)")

    sp = _add_parser(sub, "promote", "put a run's model in production, append to the ledger")
    _common(sp, writes=True)
    _db(sp)
    sp.add_argument("--run-id", default=None, help="the run to promote (its candidate file)")
    sp.add_argument("--version", default=None, help="check the run has this version")
    sp.add_argument("--model", metavar="PATH", default=None,
                    help="promote this file instead of the run's candidate (e.g. another "
                         "worktree's models/production/model.bin); without --run-id the "
                         "ledger records the path and no run")
    sp.add_argument("--force", action="store_true", help="go on when model.bin has changes "
                    "DVC has not recorded (they are saved to the DVC cache first)")
    sp.add_argument("--reason", default=None, help="why (recorded in the ledger)")
    _alias(sp)
    _commit(sp)

    sp = _add_parser(sub, "rollback", "restore the previous model of an alias, or any past "
                     "state (--to N, --run-id, --version, --tag)")
    _common(sp, writes=True)
    sp.add_argument("--reason", required=True, help="why (required; recorded in the ledger)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--to", type=int, default=None, metavar="N",
                   help="restore the state ledger entry N left (see `history`); undoes a "
                        "rollback when N is the entry before it")
    g.add_argument("--run-id", default=None, help="restore the last state holding this run")
    g.add_argument("--version", default=None,
                   help="restore the last state holding a run of this version")
    g.add_argument("--tag", default=None, metavar="REV",
                   help="restore the state committed at this tag or commit")
    sp.add_argument("--force", action="store_true",
                    help="go on when model.bin has changes DVC has not recorded (saved to the "
                         "DVC cache first), or was changed outside the ledger")
    _alias(sp)
    _commit(sp)

    sp = _add_parser(sub, "list", "runs ranked by a metric, with candidates and production")
    _common(sp, writes=False)
    _db(sp)
    _rank(sp, None, optional=True)
    sp.add_argument("--version", default=None, help="only runs of this version")

    sp = _add_parser(sub, "prune", "delete candidates of runs ranked below the top K")
    _common(sp, writes=True)
    _db(sp)
    sp.add_argument("--keep", type=int, required=True, metavar="K",
                    help="keep the K best candidates (plus production's)")
    _rank(sp, None)
    sp.add_argument("--version", default=None, help="only prune candidates of this version")
    sp.add_argument("--yes", action="store_true",
                    help="really delete (without it: a dry run that exits 0)")
    sp.add_argument("--include-untracked", action="store_true",
                    help="also delete candidates whose bytes are not in the DVC cache "
                         "(never dvc-added: they are nowhere else)")
    sp.add_argument("--force", action="store_true",
                    help="also delete candidates the default DVC remote lacks (refused "
                         "without it: they would be only in this machine's DVC cache)")

    sp = _add_parser(sub, "status", "an alias's model: run, hashes, DVC sync, the change that "
                     "put it there, what a rollback would restore")
    _common(sp, writes=False)
    sp.add_argument("--at", metavar="REV", default=None,
                    help="the alias as committed at a tag or commit")
    _alias(sp)

    sp = _add_parser(sub, "history", "every state of an alias with its reason (now or at a "
                     "tag); --tags: per tag")
    _common(sp, writes=False)
    sp.add_argument("--at", metavar="REV", default=None, help="the ledger at a tag or commit")
    sp.add_argument("--tags", action="store_true",
                    help="which run the alias held at each tag")
    _alias(sp)

    sp = _add_parser(sub, "get", "an alias's model at a tag, written to a file (the same "
                     "code as `experiments.py get TAG models/production/model.bin -o OUT`)")
    _common(sp, writes=True)
    sp.add_argument("--version", required=True, metavar="TAG", help="tag (or commit)")
    sp.add_argument("-o", "--out", required=True, metavar="PATH", help="output file")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _alias(sp)
    return p


def _alias(sp):
    sp.add_argument("--alias", default=None, metavar="NAME",
                    help="production (default), or another alias such as challenger "
                         "(models/NAME/model.bin, its own ledger)")


def _commit(sp):
    sp.add_argument("--commit", action="store_true",
                    help="git commit the alias's files (only those); implied by gto: true "
                         "in ev.yaml, which also writes GTO registry tags")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _db_path(args, repo):
    from _evlib import settings

    return cli.resolve_path(args.db) if args.db else repo / settings.load(repo).results_db


def cmd_add_candidate(args, repo) -> None:
    res = m.add_candidate(repo, db=_db_path(args, repo), run_id=args.run_id,
                          model=cli.resolve_path(args.model), version=args.version,
                          force=args.force, track=not args.no_track, dry_run=args.dry_run)
    verb = ("would add" if args.dry_run else "unchanged" if res["unchanged"] else "added")
    text = f"{verb} {res['candidate']} (run {res['run_id']}, version {res['version']}, " \
           f"sha256 {res['sha256'][:12]}, md5 {res['md5']})"
    if res["tracked"]:
        text += f"\nnext: git add {m.CANDIDATES}.dvc models/.gitignore && git commit"
    cli.emit(args, res, text)


def _recovered(res) -> str:
    r = res.get("recovered")
    return f"{r['recovered']} an interrupted {r['what']}\n" if r else ""


def _next(res, a) -> str:
    if res.get("committed"):
        return "next: git push && git push --tags && dvc push -T" if res["entry"].get("gto") \
            else "next: dvc push -T (and git push)"
    return f"next: {git_add(a)} && git commit"


def cmd_promote(args, repo) -> None:
    if args.run_id is None and args.model is None:
        raise EVError("promote needs --run-id ID or --model PATH", code=USAGE,
                      hint="see model_manager.py promote --help")
    a = reg.alias(repo, args.alias)
    run, source, src = m._run_for_promote(repo, _db_path(args, repo), args.run_id,
                                          args.version,
                                          cli.resolve_path(args.model) if args.model else None)
    res = reg.promote(repo, a, src_file=src, source=source, run=run, version=args.version,
                      reason=args.reason, force=args.force, dry_run=args.dry_run,
                      commit=args.commit)
    e = res["entry"]
    who = f"run {e['run_id']} ({e['version']})" if e["run_id"] else e["source"]
    prev = e["previous"] or {}
    if res["unchanged"]:
        text = f"{who} is already in {a.name} (md5 {e['model']['md5']}); nothing changed"
    else:
        verb = "would promote" if args.dry_run else "promoted"
        text = (f"{verb} {who} from {e['source']} to {a.model} (md5 {e['model']['md5']})"
                f"; previous: {prev.get('run_id') or prev.get('source') or '-'} "
                f"(md5 {prev.get('md5') or '-'})")
        if not args.dry_run:
            res["next"] = _next(res, a)
            text += f"; ledger entry {e['seq']}\n{res['next']}"
    cli.emit(args, res, _recovered(res) + text)


def cmd_rollback(args, repo) -> None:
    a = reg.alias(repo, args.alias)
    res = reg.rollback(repo, a, reason=args.reason, to=args.to, run_id=args.run_id,
                       version=args.version, tag=args.tag, force=args.force,
                       dry_run=args.dry_run, commit=args.commit)
    e = res["entry"]
    verb = "would roll back" if args.dry_run else "rolled back"
    text = (f"{verb} {a.model} from {e['previous']['run_id'] or e['previous']['source']}"
            f" (md5 {e['previous']['md5']}) to {e['run_id'] or e['source']} "
            f"(md5 {e['model']['md5']}, the state of ledger entry {e['restores']}): "
            f"{e['reason']}")
    if not args.dry_run:
        res["next"] = _next(res, a)
        text += (f" [bytes from the DVC {res['fetched_from']}]; ledger entry {e['seq']}"
                 f"\n{res['next']}")
    cli.emit(args, res, _recovered(res) + text)


def cmd_list(args, repo) -> None:
    from _evlib import settings

    s = settings.load(repo)
    args.metric = args.metric or s.metric or "f1_score"
    args.mode = args.mode or (s.mode if s.metric else "max")
    results = m.load_results(_db_path(args, repo))
    res = m.ranked_runs(repo, results, args.metric, args.mode, args.version)

    def text() -> str:
        rb = res["ranked_by"]
        lines = [f"ranked by {rb['column']} ({rb['mode']}; {rb['per_run']})",
                 f"rank  run_id  version  {args.metric}  candidate  production"]
        for r in res["runs"]:
            lines.append(f"{r['rank']}  {r['run_id']}  {_fmt(r['version'])}  "
                         f"{_fmt(r[args.metric])}  {_fmt(r['candidate'])}  "
                         f"{'*' if r['production'] else ''}".rstrip())
        for r in res["missing_models"]:
            lines.append(f"missing model file: run {r['run_id']} ({_fmt(r['version'])})"
                         + (f", logged model_path {r['model_path']}" if r["model_path"] else ""))
        for c in res["orphan_candidates"]:
            lines.append(f"candidate with no run in the DB: {c}")
        return "\n".join(lines)

    cli.emit(args, res, text)


def cmd_prune(args, repo) -> None:
    if args.keep < 0:
        raise EVError("--keep must be 0 or more", code=USAGE, hint="pass --keep K")
    results = m.load_results(_db_path(args, repo))
    yes = args.yes and not args.dry_run
    res = m.prune(repo, results=results, keep=args.keep, metric=args.metric, mode=args.mode,
                  version=args.version, yes=yes, include_untracked=args.include_untracked,
                  force=args.force)
    gone = res.get("deleted", res.get("would_delete"))

    def text() -> str:
        lines = [f"ranked by {args.metric} ({args.mode}); keeping {len(res['kept'])}: "
                 + (", ".join(f"{k['path']} [{k['kept_because']}]" for k in res["kept"])
                    or "-")]
        verb = "deleted" if yes else "would delete"
        lines += [f"{verb} {g['path']} ({args.metric} {_fmt(g[args.metric])})" for g in gone]
        if res["not_pushed"]:
            lines.append(f"not on {res['remote']}: {', '.join(res['not_pushed'])}"
                         + ("" if yes else " (--yes refuses them: dvc push first, or --force)"))
        if not yes:
            lines.append(f"dry run: {len(gone)} file(s) would be deleted; pass --yes to delete")
        elif res["tracked"]:
            lines.append(f"next: git add {m.CANDIDATES}.dvc && git commit")
        return "\n".join(lines)

    cli.emit(args, res, text)


def cmd_status(args, repo) -> None:
    a = reg.alias(repo, args.alias)
    if args.at:
        _rev(repo, args.at)
    info = reg.status(repo, a, args.at)

    def text() -> str:
        where = f" at {args.at}" if args.at else ""
        if info is None:
            return f"no {a.name} model{where}"
        lines = [f"{a.name}{where}: {a.model}",
                 f"run: {_fmt(info['run_id'])}  version: {_fmt(info['version'])}  "
                 f"source: {_fmt(info['source'])}",
                 f"md5: {_fmt(info['md5'])}  sha256: {_fmt(info['sha256'])}"]
        cb = info["changed_by"]
        if cb:
            lines.append(f"put there by: {cb['action']} (ledger entry {cb['seq']}) at "
                         f"{cb['time']}: {_fmt(cb['reason'])}")
        if info["metrics"]:
            lines.append("metrics: " + "  ".join(f"{k}={_fmt(v)}"
                                                 for k, v in info["metrics"].items()))
        if not args.at:
            if info["in_sync"]:
                state = "in sync (model.bin matches model.bin.dvc)"
            elif info["disk_md5"] is None:
                state = (f"model.bin is not in the workspace (run `dvc checkout {a.model}`, "
                         "or `dvc pull` in a fresh clone)")
            else:
                state = (f"OUT OF SYNC (disk md5 {_fmt(info['disk_md5'])}, .dvc md5 "
                         f"{_fmt(info['dvc_md5'])})")
            lines.append("dvc: " + state)
        if not info["in_ledger"]:
            lines.append("ledger: this model has no ledger entry (changed outside "
                         "model_manager.py)")
        rb = info["rollback_to"]
        lines.append(f"rollback would restore: {rb['run_id'] or rb['source']} (md5 {rb['md5']})"
                     if rb else "rollback: no previous model (restore any past state with "
                                "rollback --to N; see history)")
        if info["undo"]:
            u = info["undo"]["restores"] or {}
            lines.append(f"undo this rollback: model_manager.py {info['undo']['command']} "
                         f"--reason ... (restores {_fmt(u.get('run_id') or u.get('source'))})")
        if info.get("recovered"):
            r = info["recovered"]
            lines.insert(0, f"{r['recovered']} an interrupted {r['what']}")
        return "\n".join(lines)

    cli.emit(args, {"alias": a.name, "production": info, "rev": args.at}, text)


def _rev(repo, rev: str) -> str:
    from _evlib.repo import resolve_commit

    commit = resolve_commit(repo, rev)
    if commit is None:
        raise EVError(f"no tag or commit named {rev!r}", code=NOT_FOUND,
                      hint="list tags with `git tag -l -n1`")
    return commit


def cmd_history(args, repo) -> None:
    a = reg.alias(repo, args.alias)
    if args.tags:
        rows = []
        from _evlib.proc import git

        for tag in git(repo, "tag", "-l", "--sort=creatordate").split():
            info = reg.alias_info(repo, a, tag)
            rows.append({"tag": tag, "md5": info and info["md5"],
                         "run_id": info and info["run_id"],
                         "version": info and info["version"],
                         "in_ledger": bool(info and info["in_ledger"])})
        cli.emit(args, {"alias": a.name, "tags": rows}, lambda: "\n".join(
            f"{r['tag']}  {_fmt(r['run_id'])}  {_fmt(r['version'])}  {_fmt(r['md5'])}"
            + ("" if r["in_ledger"] or not r["md5"] else "  (not in the ledger)")
            for r in rows) or "no tags")
        return
    if args.at:
        _rev(repo, args.at)
    entries = reg.read_ledger(repo, a, args.at)
    stacks = reg.replay(entries)
    for e, st in zip(entries, stacks, strict=True):
        e["state_after"] = {"model": st[-1]["md5"] if st else None,
                            "run_id": st[-1]["run_id"] if st else None,
                            "rollback_would_restore": st[-2]["seq"] if len(st) > 1 else None}
    cli.emit(args, {"alias": a.name, "entries": entries, "rev": args.at}, lambda: "\n".join(
        f"{e['seq']}  {e.get('time')}  {e.get('action')}"
        + (f" (to {e['restores']})" if e.get("action") == "rollback" else "")
        + f"  {_fmt(e.get('run_id'))}  {_fmt(e.get('version'))}  md5 "
        f"{(e.get('model') or {}).get('md5')}  reason: {_fmt(e.get('reason'))}"
        for e in entries) or f"the {a.name} ledger is empty")


def cmd_get(args, repo) -> None:
    from _evlib import history

    a = reg.alias(repo, args.alias)
    commit = _rev(repo, args.version)
    md5 = first_md5(reg.show(repo, commit, a.dvc))
    if md5 is None:
        raise EVError(f"{args.version} has no {a.dvc}", code=NOT_FOUND,
                      hint=f"no model was in {a.name} there; see `model_manager.py history "
                           "--tags`")
    out = cli.resolve_path(args.out)
    if out.exists() and not args.force:
        raise EVError(f"{out} already exists", code=REFUSED,
                      hint="pass another -o path, or --force to replace it")
    stack = reg.replay(reg.read_ledger(repo, a, commit))
    entry = stack[-1][-1] if stack and stack[-1] and stack[-1][-1]["md5"] == md5 else None
    res = {"rev": args.version, "commit": commit, "md5": md5, "out": str(out),
           "dry_run": args.dry_run, "run_id": entry and entry["run_id"],
           "version": entry and entry["version"],
           "same_as": f"experiments.py get {args.version} {a.model} -o {out}"}
    if not args.dry_run:
        got = history.fetch(repo, commit, a.model, out)
        res["fetched_from"] = got["source"]
    verb = "would write" if args.dry_run else "wrote"
    where = "" if args.dry_run else f" [from the DVC {res['fetched_from']}]"
    cli.emit(args, res, f"{verb} {res['out']}: {a.name} model at {args.version} (run "
                        f"{_fmt(res['run_id'])}, md5 {res['md5']}){where}")


COMMANDS = {"add-candidate": cmd_add_candidate, "promote": cmd_promote,
            "rollback": cmd_rollback, "list": cmd_list, "prune": cmd_prune,
            "status": cmd_status, "history": cmd_history, "get": cmd_get}


def handler(args) -> int:
    repo = find_repo(args.repo)
    require_dvc(repo)
    COMMANDS[args.command](args, repo)
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
