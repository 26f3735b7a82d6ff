"""Experiment and explore worktrees that share main's DVC cache without ever writing into it.

- create: ``../exp-NAME`` on branch ``exp/NAME``; its DVC cache is the cache main really uses
  (``dvc cache dir --local``, never the tracked config), linked with the cheapest link type;
  the files an experiment writes (results DBs, models) become private copies, the rest stay
  read-only links. Everything is validated first; a failure after ``git worktree add`` rolls
  back the worktree and the branch.
- teardown: removes an experiment worktree only when nothing would be lost (clean tree, DVC
  outputs committed and on the default remote, a tag at the tip, results rows in main's DB).
- explore: a detached, read-only worktree of a tag; explore-cleanup removes only those.

Never runs ``dvc gc``: with a shared cache, gc in one worktree deletes what others need.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path

from . import atomic
from .dvcmeta import Out, is_meta_file, object_path, parse_outs
from .errors import FAILED, NOT_FOUND, REFUSED, USAGE, EVError
from .proc import dvc, dvc_run, git, git_ok, run
from .repo import dirty_paths, find_repo, main_worktree, require_dvc, resolve_commit
from .sql import is_sqlite_file, quote_ident, sqlite_connect, sqlite_tables

DEFAULT_PRIVATE = ("results/*.db", "models/")
LINK_ORDER = "reflink,hardlink,symlink,copy"
MARKER = "ev-worktree.json"  # in the worktree's own git dir: git prunes it with the worktree
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FICLONE = 0x40049409  # Linux ioctl: reflink one file onto another


# --- small helpers ------------------------------------------------------------------------

def validate_name(name: str) -> None:
    if not NAME_RE.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise EVError(f"bad experiment name {name!r}", code=USAGE,
                      hint="use letters, digits, '.', '_' or '-' (start with a letter or digit)")


def worktrees(repo: Path) -> list[dict]:
    """`git worktree list --porcelain` as dicts: path, head, branch (or None), detached."""
    out, cur = [], None
    for line in git(repo, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            cur = {"path": str(Path(line[9:]).resolve()), "head": None, "branch": None,
                   "detached": False}
            out.append(cur)
        elif cur is not None and line.startswith("HEAD "):
            cur["head"] = line[5:]
        elif cur is not None and line.startswith("branch "):
            cur["branch"] = line[7:].removeprefix("refs/heads/")
        elif cur is not None and line == "detached":
            cur["detached"] = True
    return out


def git_dir(wt: Path) -> Path:
    p = Path(git(wt, "rev-parse", "--git-dir"))
    return (p if p.is_absolute() else wt / p).resolve()


def read_marker(wt: Path) -> dict:
    with contextlib.suppress(OSError, ValueError, EVError):
        return json.loads((git_dir(wt) / MARKER).read_text())
    return {}


def main_cache_dir(main: Path) -> Path:
    """The cache directory main really uses (its config, config.local and defaults applied)."""
    require_dvc(main)
    return Path(dvc(main, "cache", "dir").strip()).resolve()


def probe_link(cache_dir: Path, dest_dir: Path) -> str:
    """The first of reflink, hardlink, symlink that works from cache_dir to dest_dir."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    src = cache_dir / f".ev-probe-{os.getpid()}"
    dst = dest_dir / f".ev-probe-{os.getpid()}"
    src.write_bytes(b"probe")
    try:
        with contextlib.suppress(OSError, ImportError):
            import fcntl

            with open(src, "rb") as fs, open(dst, "wb") as fd:
                fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
            return "reflink"
        with contextlib.suppress(OSError):
            dst.unlink()
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return "hardlink"
        with contextlib.suppress(OSError):
            os.symlink(src, dst)
            return "symlink"
        return "copy"
    finally:
        for p in (dst, src):
            with contextlib.suppress(OSError):
                p.unlink()


def dvc_files(wt: Path) -> list[str]:
    """.dvc and dvc.lock files of the working tree (committed or not, not ignored)."""
    out = git(wt, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    return sorted({p for p in out.split("\0")
                   if p.endswith(".dvc") or os.path.basename(p) == "dvc.lock"})


def tracked_outputs(wt: Path) -> list[str]:
    """Worktree-relative paths of every DVC output (files or directories)."""
    paths = []
    for f in dvc_files(wt):
        with contextlib.suppress(OSError):
            paths += [o.path for o in parse_outs((wt / f).read_text(), f)]
    return sorted(set(paths))


def output_files(wt: Path) -> list[str]:
    """Every file inside the DVC outputs (a directory output contributes its files)."""
    files = []
    for rel in tracked_outputs(wt):
        p = wt / rel
        if p.is_dir() and not p.is_symlink():
            for root, _dirs, names in os.walk(p):
                files += [os.path.relpath(os.path.join(root, n), wt) for n in names]
        elif p.exists() or p.is_symlink():
            files.append(rel)
    return sorted(files)


def is_private(rel: str, patterns: list[str]) -> bool:
    rel = rel.replace(os.sep, "/")
    for pat in patterns:
        pat = pat.replace(os.sep, "/")
        pat = pat[2:] if pat.startswith("./") else pat
        if pat.endswith("/"):
            if rel.startswith(pat):
                return True
        elif fnmatch.fnmatch(rel, pat) or rel.startswith(pat.rstrip("/") + "/"):
            return True
    return False


def check_private_patterns(patterns: list[str]) -> list[str]:
    out = []
    for pat in patterns:
        if not pat or os.path.isabs(pat) or ".." in Path(pat).parts:
            raise EVError(f"--private {pat!r} must be a path relative to the repository root",
                          code=USAGE, hint="e.g. --private results/experiments.db --private models/")
        out.append(pat)
    return out


def link_kind(path: Path, cache_dir: Path, probed: str) -> str:
    if path.is_symlink():
        return "symlink"
    st = path.stat()
    if st.st_nlink > 1:
        return "hardlink"
    return "reflink" if probed == "reflink" else "copy"


def privatize(wt: Path, patterns: list[str]) -> dict:
    """Private, writable copies for files matching patterns; the other outputs read-only.

    A private copy is written as a new file (temp + os.replace), so the link into the cache
    is replaced, never written through.
    """
    private, readonly = [], []
    for rel in output_files(wt):
        p = wt / rel
        if not p.exists():  # a dangling link: nothing to copy (dvc checkout reports it)
            continue
        if is_private(rel, patterns):
            if p.is_symlink() or p.stat().st_nlink > 1:
                atomic.copy_file(p, p)  # reads through the link, replaces the directory entry
                private.append(rel)
            os.chmod(p, 0o644)
        else:
            if p.exists():
                mode = p.stat().st_mode
                if mode & 0o222:
                    os.chmod(p, stat.S_IMODE(mode) & ~0o222)
                readonly.append(rel)
    return {"private": private, "readonly": readonly}


def exposed_private(wt: Path, patterns: list[str]) -> list[str]:
    """Private paths that are links into the cache again (after `dvc add`, say)."""
    out = []
    for rel in output_files(wt):
        p = wt / rel
        if is_private(rel, patterns) and p.exists() and (p.is_symlink()
                                                         or p.stat().st_nlink > 1):
            out.append(rel)
    return out


def _copy_local_config(main: Path, wt: Path) -> None:
    """Main's untracked .dvc/config.local (remotes, credentials) applies to the new tree too."""
    src = main / ".dvc" / "config.local"
    if src.is_file():
        atomic.copy_file(src, wt / ".dvc" / "config.local")


def _share_cache(main: Path, wt: Path, cache: Path) -> None:
    _copy_local_config(main, wt)
    dvc(wt, "cache", "dir", "--local", str(cache))
    dvc(wt, "config", "--local", "cache.type", LINK_ORDER)


def _checkout(wt: Path) -> str:
    """dvc checkout from the shared cache; pull from the remote what the cache lacks."""
    if dvc_run(wt, "checkout", "-q").returncode == 0:
        return "cache"
    dvc(wt, "pull", "-q")
    return "remote"


def _remove_worktree(main: Path, path: Path, branch: str | None) -> None:
    git_ok(main, "worktree", "remove", "--force", str(path))
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    git_ok(main, "worktree", "prune")
    if branch:
        git_ok(main, "branch", "-D", branch)


# --- create -------------------------------------------------------------------------------

def plan_create(repo_arg, name: str, base: str | None, private: list[str] | None) -> dict:
    repo = find_repo(repo_arg)
    require_dvc(repo)
    validate_name(name)
    patterns = check_private_patterns(list(private) if private else list(DEFAULT_PRIVATE))
    main = main_worktree(repo)
    path = main.parent / f"exp-{name}"
    branch = f"exp/{name}"
    for wt in worktrees(repo):
        if wt["path"] == str(path) or wt["branch"] == branch:
            raise EVError(f"name {name!r} is already used by the worktree {wt['path']}",
                          code=USAGE, hint="pick another name, or tear that one down first")
    if git_ok(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}"):
        raise EVError(f"branch {branch} already exists", code=USAGE,
                      hint="pick another name, or delete the branch after tagging it")
    if path.exists() or path.is_symlink():
        raise EVError(f"path {path} already exists", code=USAGE,
                      hint="pick another name, or move that directory away")
    base_ref = base or "HEAD"
    base_commit = resolve_commit(repo, base_ref)
    if base_commit is None:
        raise EVError(f"--base {base_ref} is not a commit in {repo}", code=NOT_FOUND,
                      hint="pass a branch, tag or commit that exists (git log --oneline)")
    if base is None:  # an explicit --base asks for a committed state: local edits don't matter
        dirty = dirty_paths(repo)
        if dirty:
            raise EVError(f"{repo} has {len(dirty)} uncommitted change(s) (first: {dirty[0]}) "
                          "that would not be in the new worktree", code=REFUSED,
                          hint="commit them (git add -A && git commit) or stash them, "
                               "or pass --base REF")
        changed = _dvc_changes(repo)
        if changed:
            raise EVError(f"{repo} has {len(changed)} DVC-tracked change(s) not recorded "
                          f"with dvc add (first: {changed[0]}) that would not be in the new "
                          "worktree", code=REFUSED,
                          hint="run dvc add on them and commit, or pass --base REF")
    cache = main_cache_dir(main)
    return {"repo": repo, "main": main, "path": path, "branch": branch, "base": base_ref,
            "base_commit": base_commit, "cache": cache, "private": patterns}


def _dvc_changes(wt: Path) -> list[str]:
    """Outputs whose workspace copy differs from what the .dvc files record."""
    cp = dvc_run(wt, "status", "--json")
    if cp.returncode != 0:
        raise EVError(f"dvc status failed in {wt}: "
                      f"{(cp.stderr.strip().splitlines() or ['?'])[-1]}", code=FAILED)
    try:
        data = json.loads(cp.stdout or "{}")
    except ValueError:
        return []
    out = []
    for stage, entries in data.items():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                out.append(f"{stage} ({entry})")
                continue
            for what, outs in entry.items():
                if isinstance(outs, dict):
                    for p, state in outs.items():
                        if state in ("modified", "new"):
                            out.append(f"{p} ({state})")
                else:
                    out.append(f"{stage} ({what})")
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def create(plan: dict) -> dict:
    main, path, branch, cache = plan["main"], plan["path"], plan["branch"], plan["cache"]
    t0 = time.monotonic()
    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill (not -9) still rolls back
    try:
        git(plan["repo"], "worktree", "add", "-q", "-b", branch, str(path),
            plan["base_commit"])
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):  # killed mid-add: git may have made part of it
            _remove_worktree(main, path, branch)
        signal.signal(signal.SIGTERM, old_term)
        raise
    try:
        _share_cache(main, path, cache)
        source = _checkout(path)
        probed = probe_link(cache, path)
        done = privatize(path, plan["private"])
        link = probed
        if done["readonly"]:
            link = link_kind(path / done["readonly"][0], cache, probed)
        marker = {"kind": "experiment", "name": path.name[4:], "branch": branch,
                  "base": plan["base"], "base_commit": plan["base_commit"],
                  "cache_dir": str(cache), "link_type": link, "private": plan["private"]}
        atomic.write_text(git_dir(path) / MARKER, json.dumps(marker, indent=1) + "\n")
    except BaseException:
        _remove_worktree(main, path, branch)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return {"path": str(path), "branch": branch, "base": plan["base"],
            "base_commit": plan["base_commit"], "cache_dir": str(cache), "link_type": link,
            "data_from": source, "private": done["private"], "private_patterns": plan["private"],
            "readonly": len(done["readonly"]), "seconds": round(time.monotonic() - t0, 3)}


# --- teardown -----------------------------------------------------------------------------

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
    raise EVError(f"no experiment worktree {path}", code=NOT_FOUND,
                  hint="list them with: worktree.py list")


def remote_info(wt: Path) -> tuple[str | None, str | None]:
    """(default remote name, its URL with a local path made absolute)."""
    cp = dvc_run(wt, "config", "--list", "--show-origin")
    name, urls = None, {}
    for line in cp.stdout.splitlines():
        origin, _, kv = line.partition("\t")
        key, _, value = kv.partition("=")
        if key == "core.remote":
            name = value
        m = re.match(r"remote\.(.+)\.url$", key)
        if m:
            urls[m.group(1)] = (origin, value)
    if not name or name not in urls:
        return name, None
    origin, url = urls[name]
    if "://" not in url and not os.path.isabs(url):
        base = Path(origin) if os.path.isabs(origin) else wt / origin.lstrip("/")
        url = str((base.parent / url).resolve())
    return name, url


def _commit_outs(wt: Path, commit: str) -> list[Out]:
    names = git(wt, "ls-tree", "-r", "-z", "--name-only", commit).split("\0")
    outs = []
    for f in filter(is_meta_file, names):
        text = run(["git", "show", f"{commit}:{f}"], cwd=wt, what="git show").stdout
        outs += parse_outs(text, f)
    return outs


def _missing_on_local_remote(remote: Path, cache: Path, outs: list[Out]) -> list[tuple]:
    """(path, md5) of each object an output needs that the remote directory lacks."""
    missing = []
    for o in outs:
        if not object_path(remote, o.md5, o.legacy).is_file():
            missing.append((o.path, o.md5))
            continue
        if o.is_dir:
            entries = json.loads(object_path(remote, o.md5, o.legacy).read_text())
            for e in entries:
                if not object_path(remote, e["md5"], o.legacy).is_file():
                    missing.append((os.path.join(o.path, e["relpath"]), e["md5"]))
    return missing


def missing_by_dvc_status(wt: Path, rname: str, label: str) -> list[str]:
    """For remotes that are not a local directory: `dvc status -c` of the checked-out tip
    (earlier tagged commits are not checked this way)."""
    cp = dvc_run(wt, "status", "-c", "--json")
    try:
        st = json.loads(cp.stdout or "{}") if cp.returncode == 0 else None
    except ValueError:
        st = None
    if not isinstance(st, dict):
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
    where = path if path.is_dir() else main  # git and dvc questions that need no workspace
    if not path.is_dir():
        items.append(f"worktree directory {path} is missing: anything uncommitted in it is "
                     "already gone")
    else:
        for p in dirty_paths(path):
            items.append(f"uncommitted change: {p}")
        try:
            for p in _dvc_changes(path):
                items.append(f"DVC output not committed: {p}")
        except EVError as exc:  # a half-made worktree: report it, let --force remove it
            items.append(f"cannot check DVC outputs: {exc.line()}")
    tags = {}
    for line in git(main, "for-each-ref", "refs/tags",
                    "--format=%(refname:short) %(objectname) %(*objectname)").splitlines():
        parts = line.split()
        tags.setdefault(parts[-1], []).append(parts[0])
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
    cache = Path((read_marker(path) if path.is_dir() else {}).get("cache_dir")
                 or main_cache_dir(main))
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
    for db in _results_dbs(path):
        rel = db.relative_to(path)
        for track_id, n in missing_rows(db, mdb):
            items.append(f"{n} results row(s) of run {track_id} in {rel} are not in "
                         f"main's {mdb.relative_to(main) if mdb.is_relative_to(main) else mdb}")
    return {"name": name, "path": str(path), "branch": branch, "tip": tip, "tags": tip_tags,
            "remote": rname, "items": items, "main": main}


def teardown(check: dict) -> dict:
    main, path, branch, tip = check["main"], Path(check["path"]), check["branch"], check["tip"]
    backup = None
    if not check["tags"]:
        backup = f"backup/{branch}"
        if git_ok(main, "rev-parse", "--verify", "-q", f"refs/tags/{backup}"):
            backup = f"backup/{branch}-{tip[:12]}"
        if not git_ok(main, "rev-parse", "--verify", "-q", f"refs/tags/{backup}"):
            git(main, "tag", backup, tip)
    git(main, "worktree", "remove", "--force", str(path))
    git(main, "branch", "-D", branch)
    return {"removed": str(path), "branch_deleted": branch, "tip": tip, "tags": check["tags"],
            "backup_tag": backup, "restore": f"git worktree add {path} -b {branch} "
                                             f"{check['tags'][0] if check['tags'] else backup}"}


# --- explore ------------------------------------------------------------------------------

def explore_path(main: Path, tag: str) -> Path:
    return main.parent / ("explore-" + re.sub(r"[^A-Za-z0-9._-]", "-", tag))


def explore(repo_arg, tag: str, dry_run: bool = False) -> dict:
    repo = find_repo(repo_arg)
    require_dvc(repo)
    commit = resolve_commit(repo, f"refs/tags/{tag}")
    if commit is None:
        raise EVError(f"no tag {tag!r}", code=NOT_FOUND,
                      hint="list tags with: git tag -l -n9")
    main = main_worktree(repo)
    path = explore_path(main, tag)
    for wt in worktrees(repo):
        if wt["path"] == str(path):
            m = read_marker(path)
            if m.get("kind") == "explore" and m.get("commit") == commit:
                return {"path": str(path), "tag": tag, "commit": commit, "existing": True,
                        "cache_dir": m.get("cache_dir"), "link_type": m.get("link_type")}
            raise EVError(f"{path} is already a worktree that explore did not make for {tag}",
                          code=USAGE, hint="remove or move it first")
    if path.exists() or path.is_symlink():
        raise EVError(f"path {path} already exists", code=USAGE,
                      hint="remove or move it first")
    cache = main_cache_dir(main)
    result = {"path": str(path), "tag": tag, "commit": commit, "cache_dir": str(cache),
              "existing": False}
    if dry_run:
        return result
    git(repo, "worktree", "add", "-q", "--detach", str(path), commit)
    try:
        _share_cache(main, path, cache)
        source = _checkout(path)
        probed = probe_link(cache, path)
        files = output_files(path)
        link = link_kind(path / files[0], cache, probed) if files else probed
        # Read-only bits do not stop root: re-running training in an exploration would write
        # through the links into the cache. The paths experiments write become private copies.
        privatize(path, list(DEFAULT_PRIVATE))
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d != ".dvc"]
            for n in names:
                p = Path(root) / n
                if not p.is_symlink() and p.name != ".git":
                    mode = stat.S_IMODE(p.stat().st_mode)
                    if mode & 0o222:
                        os.chmod(p, mode & ~0o222)
        marker = {"kind": "explore", "tag": tag, "commit": commit, "cache_dir": str(cache),
                  "link_type": link}
        atomic.write_text(git_dir(path) / MARKER, json.dumps(marker, indent=1) + "\n")
    except BaseException:
        _remove_worktree(main, path, None)
        raise
    result.update(link_type=link, data_from=source, files=len(files))
    return result


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
    changed = {str(p): dirty_paths(p) for p, _m in mine}
    dirty = {k: v for k, v in changed.items() if v}
    if dirty and not force:
        first = next(iter(dirty))
        raise EVError(f"explore worktree {first} has {len(dirty[first])} local change(s) "
                      f"(first: {dirty[first][0]})", code=REFUSED,
                      hint="copy them elsewhere, or pass --force to discard them")
    removed = []
    for p, m in mine:
        if not dry_run:
            git(main, "worktree", "remove", "--force", str(p))
        removed.append({"path": str(p), "tag": m.get("tag")})
    return {"removed": removed, "dry_run": dry_run}


# --- list ---------------------------------------------------------------------------------

def list_worktrees(repo_arg) -> list[dict]:
    repo = find_repo(repo_arg)
    main = main_worktree(repo)
    out = []
    for wt in worktrees(repo):
        p = Path(wt["path"])
        m = read_marker(p) if p.is_dir() else {}
        kind = "main" if p == main else m.get("kind") or (
            "experiment" if (wt["branch"] or "").startswith("exp/") else "other")
        row = {"path": str(p), "kind": kind, "branch": wt["branch"], "head": wt["head"]}
        if m.get("tag"):
            row["tag"] = m["tag"]
        if kind == "experiment" and p.is_dir():
            row["exposed_private"] = exposed_private(p, m.get("private") or
                                                     list(DEFAULT_PRIVATE))
        out.append(row)
    return out
