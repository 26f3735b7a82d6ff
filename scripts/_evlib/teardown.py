"""Removing worktrees without losing work: experiment teardown and explore-cleanup.

teardown NAME refuses (exit 4, one item per thing) while anything would be lost: uncommitted
or ignored files that are neither DVC outputs nor known caches, DVC outputs not recorded,
tip without a tag, objects not on the default remote, results rows missing from main's
results DB, in the working copy or as committed at main's HEAD. Its writes (backup tag,
`git worktree remove`, `git branch -D`) follow a pending record in the common git dir, so a
teardown killed at any point is finished by the next run.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from . import dvcmeta
from .dvcmeta import Out, dir_entries, find_object, is_meta_file, object_path, parse_outs
from .errors import NOT_FOUND, REFUSED, EVError
from .proc import dvc_cloud_status, git, git_ok, git_to_file
from .repo import dirty_paths, find_repo, main_worktree, peel_commits, resolve_commit
from .sql import is_sqlite_file, quote_ident, sqlite_connect, sqlite_tables
from .worktree import (
    drop_pending,
    dvc_changes,
    main_cache_dir,
    output_files,
    read_marker,
    read_pending,
    tracked_outputs,
    validate_name,
    worktrees,
    write_pending,
)

# Ignored files teardown may delete: caches every tool rebuilds.
KNOWN_CACHES = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".mypy_cache",
                ".ruff_cache", ".hypothesis", ".DS_Store")


def find_experiment(repo: Path, name: str) -> tuple[Path, dict]:
    validate_name(name)
    main = main_worktree(repo)
    path = main.parent / f"exp-{name}"
    for wt in worktrees(repo):
        if wt["path"] == str(path):
            if wt["branch"] != f"exp/{name}":
                raise EVError(f"{path} is on {wt['branch'] or 'a detached HEAD'}, not exp/{name}",
                              code=REFUSED, hint="teardown only removes experiment worktrees")
            return path, wt
    hint = "list them with: worktree.py list"
    if resolve_commit(main, f"refs/heads/exp/{name}"):
        hint = (f"its branch exp/{name} is still there: tag it if you need it "
                f"(git tag NAME exp/{name}), then git branch -D exp/{name}")
    raise EVError(f"no experiment worktree {path}", code=NOT_FOUND, hint=hint)


def resume(repo: Path, name: str, dry_run: bool = False) -> dict | None:
    """Finish a teardown that was killed after `git worktree remove` (None if there is none).

    Only when its record says so and the branch still points where it did (or is gone)."""
    validate_name(name)
    main = main_worktree(repo)
    path = main.parent / f"exp-{name}"
    rec = read_pending(main, path, "teardown")
    if not rec or any(wt["path"] == str(path) for wt in worktrees(main)):
        return None  # nothing removed yet: the normal checks run again
    branch = rec["branch"]
    tip = resolve_commit(main, f"refs/heads/{branch}")
    if tip is not None and tip != rec["tip"]:
        if not dry_run:
            drop_pending(main, path, "teardown")  # the branch moved on: not this teardown's
        return None
    if not dry_run:
        git_ok(main, "worktree", "prune")
        if tip is not None:
            git(main, "branch", "-D", branch)
        drop_pending(main, path, "teardown")
    return _result(path, branch, rec["tip"], rec["tags"], rec.get("backup"),
                   recovered="completed: a teardown interrupted after git worktree remove "
                             "was finished")


def remote_info(wt: Path) -> tuple[str | None, str | None]:
    """(default remote name, its URL with a local path made absolute): DVC's config files."""
    return dvcmeta.default_remote(wt)


def _is_known_cache(rel: str) -> bool:
    parts = rel.split("/")
    return rel.startswith(".dvc/") or rel.endswith((".pyc", ".pyo")) or \
        any(p in KNOWN_CACHES for p in parts)


def ignored_files(wt: Path, dbs: list[Path]) -> list[str]:
    """Ignored files that are neither DVC outputs, known caches, nor results DBs whose rows
    are checked (with their -wal/-shm/-journal): teardown would delete them."""
    out = git(wt, "status", "--porcelain", "-z", "--ignored", "--untracked-files=all")
    ignored = [e[3:] for e in out.split("\0") if e.startswith("!! ")]
    outs = set(output_files(wt))
    dirs = [d.rstrip("/") + "/" for d in tracked_outputs(wt)]
    checked = set()
    for db in dbs:
        rel = db.relative_to(wt).as_posix()
        checked |= {rel, f"{rel}-wal", f"{rel}-shm", f"{rel}-journal"}
    lost = []
    for rel in ignored:
        if rel.endswith("/"):  # a whole ignored directory (git lists it when it has no files)
            continue
        if rel in outs or rel in checked or _is_known_cache(rel) or \
                any(rel.startswith(d) for d in dirs):
            continue
        lost.append(rel)
    return sorted(lost)


@contextlib.contextmanager
def committed_db(main: Path, mdb: Path):
    """main's results DB as committed at HEAD: (file or None, note). DVC-tracked: its cache
    object; git-tracked: a temp copy; not committed: None."""
    try:
        rel = mdb.resolve().relative_to(main).as_posix()
    except ValueError:
        yield None, "outside main"
        return
    head = resolve_commit(main, "HEAD")
    meta = f"{rel}.dvc"
    if head and git_ok(main, "cat-file", "-e", f"{head}:{meta}"):
        outs = [o for o in parse_outs(git(main, "show", f"{head}:{meta}"), meta) if o.path == rel]
        obj = find_object(main_cache_dir(main), outs[0].md5) if outs else None
        if obj is None:
            yield None, (f"its object ({outs[0].md5[:12] if outs else '?'}) is not in the cache: "
                         "run dvc pull in main")
            return
        yield obj, "ok"
        return
    if head and git_ok(main, "cat-file", "-e", f"{head}:{rel}"):
        with tempfile.TemporaryDirectory(prefix="ev-headdb-") as tmp:
            f = Path(tmp) / "head.db"
            git_to_file(main, f, "cat-file", "blob", f"{head}:{rel}")
            yield f, "ok"
        return
    yield None, "not committed"


def _commit_outs(wt: Path, commit: str) -> list[Out]:
    names = git(wt, "ls-tree", "-r", "-z", "--name-only", commit).split("\0")
    outs = []
    for f in filter(is_meta_file, names):
        outs += parse_outs(git(wt, "show", f"{commit}:{f}"), f)
    return outs


def _missing_on_local_remote(remote: Path, cache: Path, outs: list[Out]) -> list[tuple]:
    """(path, md5) of each object an output needs that the remote directory lacks."""
    missing = []
    for o in outs:
        if not object_path(remote, o.md5, o.legacy).is_file():
            missing.append((o.path, o.md5))
            continue
        if o.is_dir:
            entries = dir_entries(object_path(remote, o.md5, o.legacy))
            if entries is None:  # a listing that can't be read lists nothing safely
                missing.append((o.path, o.md5))
                continue
            for rel, md5 in entries:
                if not object_path(remote, md5, o.legacy).is_file():
                    missing.append((f"{o.path}/{rel}", md5))
    return missing


def missing_by_dvc_status(wt: Path, rname: str, label: str) -> list[str]:
    """For remotes that are not a local directory: `dvc status -c` of the checked-out tip
    (earlier tagged commits are not checked this way)."""
    st, cp = dvc_cloud_status(wt)
    if st is None:
        err = (cp.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"cannot check remote '{rname}': dvc status -c failed: {err}"]
    return [f"not on remote '{rname}': {p} ({state}) at {label}; run dvc push -T in {wt}"
            for p, state in sorted(st.items()) if state != "ok"]


def _results_dbs(wt: Path) -> list[Path]:
    root = wt / "results"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and is_sqlite_file(p))


def missing_rows(db: Path, main_db: Path) -> list[tuple[str, int]]:
    """(track_id, rows) of the db's events absent from main_db (by track_id, timestamp)."""
    con = sqlite_connect(db, readonly=True)
    try:
        if "default" not in sqlite_tables(con):
            return []
        t = quote_ident("default")
        if main_db.is_file() and is_sqlite_file(main_db):
            uri = "file:" + str(main_db.resolve()) + "?mode=ro"
            con.execute("ATTACH DATABASE ? AS m", (uri,))
            if "default" in sqlite_tables(con, "m"):
                q = (f"SELECT track_id, count(*) FROM main.{t} x WHERE NOT EXISTS "
                     f"(SELECT 1 FROM m.{t} y WHERE y.track_id = x.track_id "
                     f"AND y.timestamp = x.timestamp) GROUP BY track_id ORDER BY track_id")
                return [(str(r[0]), r[1]) for r in con.execute(q)]
        q = f"SELECT track_id, count(*) FROM {t} GROUP BY track_id ORDER BY track_id"
        return [(str(r[0]), r[1]) for r in con.execute(q)]
    finally:
        con.close()


def teardown_check(repo: Path, name: str, main_db: str | None = None) -> dict:
    """Everything that would be lost by removing exp-NAME: a list of one-line items."""
    path, wt = find_experiment(repo, name)
    main = main_worktree(repo)
    branch = wt["branch"]
    tip = git(main, "rev-parse", f"refs/heads/{branch}")
    items: list[str] = []
    where = path if path.is_dir() else main  # git questions that need no workspace
    marker = read_marker(path) if path.is_dir() else {}
    cache = Path(marker.get("cache_dir") or main_cache_dir(main))
    dbs = _results_dbs(path) if path.is_dir() else []
    if not path.is_dir():
        items.append(f"worktree directory {path} is missing: anything uncommitted in it is "
                     "already gone")
    else:
        for p in dirty_paths(path):
            if not _is_known_cache(p):  # an untracked __pycache__ is rebuilt, not lost
                items.append(f"uncommitted change: {p}")
        for p in ignored_files(path, dbs):
            items.append(f"ignored file, not a DVC output (teardown would delete it): {p}")
        try:
            for p in dvc_changes(path, cache):
                items.append(f"DVC output not committed: {p}")
        except EVError as exc:  # a half-made worktree: report it, let --force remove it
            if exc.code == 2:
                raise
            items.append(f"cannot check DVC outputs: {exc.line()}")
    tags: dict[str, list[str]] = {}
    rows = [line.split() for line in git(
        main, "for-each-ref", "refs/tags",
        "--format=%(refname:short) %(objectname) %(*objecttype) %(*objectname)").splitlines()]
    # a tag of a tag: %(*objectname) is the inner tag; peel it to its commit
    peeled = peel_commits(main, [p[-1] for p in rows if len(p) == 4 and p[2] == "tag"])
    for parts in rows:
        tags.setdefault(peeled.get(parts[-1], parts[-1]), []).append(parts[0])
    tip_tags = [t for t in tags.get(tip, []) if not t.startswith("backup/")]
    if not tip_tags:
        items.append(f"no tag points at {branch}'s last commit {tip[:12]}")
    own = git(main, "rev-list", f"refs/heads/{branch}", "--not",
              f"--exclude={branch}", "--branches").split()
    commits = {tip: ", ".join(tip_tags) or f"{branch} tip"}
    for c in own:
        if tags.get(c):
            commits[c] = ", ".join(tags[c])
    rname, url = remote_info(where)
    if url is None:
        items.append("no default DVC remote: nothing is pushed anywhere "
                     "(dvc remote add -d NAME URL)")
    elif "://" in url and not url.startswith("file://"):
        items += missing_by_dvc_status(where, rname, commits[tip])
    else:
        root = Path(url.removeprefix("file://"))
        seen: dict[tuple, list[str]] = {}
        for c, label in commits.items():
            for key in _missing_on_local_remote(root, cache, _commit_outs(where, c)):
                seen.setdefault(key, []).append(label)
        for (p, md5), labels in seen.items():
            items.append(f"not on remote '{rname}': {p} (md5 {md5[:12]}) "
                         f"at {' + '.join(labels)}; run dvc push -T in {where}")
    mdb = Path(main_db) if main_db else main / "results" / "experiments.db"
    if not mdb.is_absolute():
        mdb = main / mdb
    label = mdb.relative_to(main) if mdb.is_relative_to(main) else mdb
    with committed_db(main, mdb) as (head_db, note):
        for db in dbs:
            rel = db.relative_to(path)
            working = dict(missing_rows(db, mdb))
            for track_id, n in working.items():
                items.append(f"{n} results row(s) of run {track_id} in {rel} are not in "
                             f"main's {label}")
            if note == "outside main":
                continue
            if head_db is None and note != "not committed":
                items.append(f"cannot check main's committed {label}: {note}")
                continue
            for track_id, n in missing_rows(db, head_db or main / ".ev-none"):
                if track_id not in working:
                    items.append(f"{n} results row(s) of run {track_id} in {rel} are not in "
                                 f"main's {label} as committed at HEAD (commit it in main: "
                                 f"dvc add {label} && git commit)")
    return {"name": name, "path": str(path), "branch": branch, "tip": tip, "tags": tip_tags,
            "remote": rname, "items": items, "main": main}


def _result(path: Path, branch: str, tip: str, tags: list[str], backup: str | None,
            recovered: str | None = None) -> dict:
    out = {"removed": str(path), "branch_deleted": branch, "tip": tip, "tags": tags,
           "backup_tag": backup, "restore": f"git worktree add {path} -b {branch} "
                                            f"{tags[0] if tags else backup}"}
    if recovered:
        out["recovered"] = recovered
    return out


def teardown(check: dict) -> dict:
    main, path, branch, tip = check["main"], Path(check["path"]), check["branch"], check["tip"]
    backup = None
    if not check["tags"]:
        backup = f"backup/{branch}"
        at = resolve_commit(main, f"refs/tags/{backup}")
        if at is not None and at != tip:
            backup = f"backup/{branch}-{tip[:12]}"
            at = resolve_commit(main, f"refs/tags/{backup}")
        if at is None:
            git(main, "tag", backup, tip)
    # The record comes first: killed after `git worktree remove`, the next run finishes.
    write_pending(main, path, {"path": str(path), "branch": branch, "tip": tip,
                               "tags": check["tags"], "backup": backup}, "teardown")
    git(main, "worktree", "remove", "--force", str(path))
    git(main, "branch", "-D", branch)
    drop_pending(main, path)  # an interrupted create's record, if this tree was half-made
    drop_pending(main, path, "teardown")
    return _result(path, branch, tip, check["tags"], backup)


# --- explore-cleanup ------------------------------------------------------------------------

def explore_cleanup(repo_arg, tag: str | None, force: bool, dry_run: bool) -> dict:
    repo = find_repo(repo_arg)
    main = main_worktree(repo)
    mine = []
    for wt in worktrees(repo):
        p = Path(wt["path"])
        m = read_marker(p) if p.is_dir() else {}
        if m.get("kind") == "explore" and (tag is None or m.get("tag") == tag):
            mine.append((p, m))
    if tag is not None and not mine:
        raise EVError(f"no explore worktree of tag {tag!r}", code=NOT_FOUND,
                      hint="list them with: worktree.py list")
    changed = {}
    for p, m in mine:
        cache = Path(m.get("cache_dir") or main_cache_dir(main))
        found = dirty_paths(p) + [f"{x} (ignored)" for x in ignored_files(p, [])]
        found += [f"DVC output {x}" for x in dvc_changes(p, cache)]
        if found:
            changed[str(p)] = found
    if changed and not force:
        first = next(iter(changed))
        raise EVError(f"explore worktree {first} has {len(changed[first])} local change(s) "
                      f"(first: {changed[first][0]})", code=REFUSED,
                      hint="copy them elsewhere, or pass --force to discard them")
    removed = []
    for p, m in mine:
        if not dry_run:
            git(main, "worktree", "remove", "--force", str(p))
        removed.append({"path": str(p), "tag": m.get("tag"),
                        "discarded": changed.get(str(p), [])})
    return {"removed": removed, "dry_run": dry_run}
