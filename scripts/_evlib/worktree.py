"""Experiment and explore worktrees that share main's DVC cache without ever writing into it.

- create: ``../exp-NAME`` on branch ``exp/NAME``; its DVC cache is the cache main really uses
  (``dvc cache dir --local``, never the tracked config), linked with the cheapest link type;
  the files an experiment writes (results DBs, models) become private copies, the rest stay
  read-only links. Everything is validated first; a failure after ``git worktree add`` rolls
  back the worktree and the branch.
- crash safety: a pending record (``<git common dir>/ev-pending/exp-NAME.json``) is written
  before ``git worktree add``; private outputs are copied out of the cache *before*
  ``dvc checkout`` (which then leaves them alone), so a writable link never exists; the marker
  is written last and the record removed after it. A re-run of create (or privatize inside the
  tree) finishes a half-made worktree whose checkout is at its base commit, or removes it and
  starts again otherwise; list shows it as ``half-made``. Killed anywhere, SIGKILL included.
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

from . import atomic, dvcmeta
from .dvcmeta import find_object, parse_outs
from .errors import NOT_FOUND, REFUSED, USAGE, EVError
from .proc import dvc, dvc_failure, dvc_run, git, git_ok
from .repo import common_dir, dirty_paths, find_repo, main_worktree, require_dvc, resolve_commit

DEFAULT_PRIVATE = ("results/*.db", "models/")
LINK_ORDER = "reflink,hardlink,symlink,copy"
MARKER = "ev-worktree.json"  # in the worktree's own git dir: git prunes it with the worktree
PENDING = "ev-pending"  # in the common git dir: one record per create/teardown under way
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
    """The cache directory main really uses (`dvc cache dir`, read from DVC's config files:
    no DVC start-up)."""
    require_dvc(main)
    return dvcmeta.cache_dir(main)


def pending_path(repo: Path, path: Path, what: str = "create") -> Path:
    suffix = "" if what == "create" else f".{what}"
    return common_dir(repo) / PENDING / f"{path.name}{suffix}.json"


def read_pending(repo: Path, path: Path, what: str = "create") -> dict:
    with contextlib.suppress(OSError, ValueError):
        rec = json.loads(pending_path(repo, path, what).read_text())
        if isinstance(rec, dict) and rec.get("path") == str(path):
            return rec
    return {}


def write_pending(repo: Path, path: Path, rec: dict, what: str = "create") -> None:
    f = pending_path(repo, path, what)
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(f, json.dumps(rec, indent=1) + "\n")


def drop_pending(repo: Path, path: Path, what: str = "create") -> None:
    with contextlib.suppress(FileNotFoundError):
        pending_path(repo, path, what).unlink()


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


def outs_of(wt: Path) -> list[dvcmeta.Out]:
    """Every output the working tree's .dvc files and dvc.lock record (paths checked to stay
    inside wt, symlinks included: EVError exit 2 otherwise)."""
    outs = []
    for f in dvc_files(wt):
        with contextlib.suppress(OSError):
            outs += parse_outs((wt / f).read_text(), f, root=wt)
    return outs


def tracked_outputs(wt: Path) -> list[str]:
    """Worktree-relative paths of every DVC output (files or directories)."""
    return sorted({o.path for o in outs_of(wt)})


def output_files(wt: Path) -> list[str]:
    """Every file inside the DVC outputs (a directory output contributes its files)."""
    files = []
    for rel in tracked_outputs(wt):
        p = wt / rel
        if p.is_dir() and not p.is_symlink():
            top = len(str(wt)) + 1  # os.walk yields paths under str(wt): slice, not relpath
            for root, _dirs, names in os.walk(p):
                files += [os.path.join(root, n)[top:] for n in names]
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
            os.chmod(p, 0o644, follow_symlinks=False)
        else:
            if p.is_symlink():  # a link into the cache: DVC keeps the object read-only
                readonly.append(rel)
                continue
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


def _share_cache(main: Path, wt: Path, cache: Path) -> None:
    """Main's untracked .dvc/config.local (remotes, credentials) plus the shared cache dir and
    link order, written as `dvc cache dir --local` / `dvc config --local` would."""
    dvcmeta.write_worktree_config(main / ".dvc" / "config.local", wt / ".dvc" / "config.local",
                                  cache, LINK_ORDER, atomic.write_text)


def _private_first(wt: Path, cache: Path, patterns: list[str]) -> list[str]:
    """Private copies of the private outputs straight from the cache, before `dvc checkout`
    (which leaves a file that already matches alone): no writable link ever exists. Outputs
    whose object is not in the cache yet are left to checkout + privatize."""
    done = []
    for o in outs_of(wt):
        if o.is_dir:
            man = find_object(cache, o.md5)
            if man is None:
                continue
            entries = dvcmeta.dir_entries(man)
            if entries is None:
                continue
            items = [(dvcmeta.safe_out_path(rel, o.path, o.source), md5)
                     for rel, md5 in entries]
        else:
            items = [(o.path, o.md5)]
        for rel, md5 in items:
            if not is_private(rel, patterns):
                continue
            dvcmeta.safe_out_path(rel, "", o.source, wt)  # through no symlink out of wt
            p = wt / rel
            if p.exists() and not p.is_symlink() and p.stat().st_nlink == 1:
                continue  # already private (a finished step of an interrupted create)
            obj = find_object(cache, md5)
            if obj is None:
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            _copy_verified(obj, md5, p)
            os.chmod(p, 0o644)
            done.append(rel)
    return done


def _copy_verified(obj: Path, md5: str, dest: Path) -> None:
    """obj's bytes to dest (atomically), hashed on the way: DVC trusts the objects in its
    cache, so a zeroed or wrong one would become the experiment's DB; refused instead."""
    with atomic.atomic_path(dest) as tmp:
        got = dvcmeta.hash_copy(obj, tmp)
        if got != md5:
            raise EVError(f"DVC cache object {obj} is damaged (its md5 is {got}, "
                          f"not {md5}); nothing was copied",
                          hint=f"remove it (rm {obj}) and rerun: it is then fetched from the "
                               "remote")


def _checkout(wt: Path, cache: Path, patterns: list[str]) -> tuple[str, list[str]]:
    """dvc checkout from the shared cache; fetch from the remote what the cache lacks first
    (then copy the private outputs out of the cache before checkout links anything).
    Returns (where the data came from, the private copies made)."""
    made = _private_first(wt, cache, patterns)
    cp = dvc_run(wt, "checkout")
    if cp.returncode == 0:
        return "cache", made
    fetched = dvc_run(wt, "fetch")
    if fetched.returncode != 0:
        raise dvc_failure(fetched, wt, "dvc fetch (the cache lacks objects of this commit)")
    made += _private_first(wt, cache, patterns)
    dvc(wt, "checkout")
    return "remote", made


def _remove_worktree(main: Path, path: Path, branch: str | None,
                     branch_at: str | None = None) -> None:
    """Remove a (half-made) worktree and its branch; with branch_at, the branch only while it
    still points there (an interrupted create's branch has no commits of its own)."""
    git_ok(main, "worktree", "remove", "--force", "--force", str(path))
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    git_ok(main, "worktree", "prune")
    if branch:
        tip = resolve_commit(main, f"refs/heads/{branch}")
        if tip is not None and (branch_at is None or tip == branch_at):
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
    half = half_made(main, path)
    for wt in worktrees(repo):
        if half and wt["path"] == str(path):
            continue  # an interrupted create: create() finishes or redoes it
        if wt["path"] == str(path) or wt["branch"] == branch:
            how = ("it was not made by worktree.py create" if not read_marker(Path(wt["path"]))
                   else "it is a finished experiment worktree")
            raise EVError(f"name {name!r} is already used by the worktree {wt['path']} ({how})",
                          code=USAGE, hint="pick another name, or tear that one down first "
                                           f"(worktree.py teardown {name})")
    if half:
        return _plan_from(half, repo, main, base, patterns)
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
        changed = dvc_changes(repo, main_cache_dir(main))
        if changed:
            raise EVError(f"{repo} has {len(changed)} DVC-tracked change(s) not recorded "
                          f"with dvc add (first: {changed[0]}) that would not be in the new "
                          "worktree", code=REFUSED,
                          hint="run dvc add on them and commit, or pass --base REF")
    cache = main_cache_dir(main)
    return {"repo": repo, "main": main, "path": path, "branch": branch, "base": base_ref,
            "base_commit": base_commit, "cache": cache, "private": patterns, "half_made": None}


def half_made(main: Path, path: Path) -> dict:
    """The pending record of an interrupted create of path ({} if none or it finished)."""
    rec = read_pending(main, path)
    key = "commit" if rec.get("kind") == "explore" else "base_commit"
    if rec and rec.get(key) and path.is_dir() and read_marker(path).get(key) == rec[key]:
        return {**rec, "finished": True}  # killed after the marker: only the record is left
    return rec


def _plan_from(rec: dict, repo: Path, main: Path, base: str | None, patterns: list[str]) -> dict:
    """Plan for a re-run of an interrupted create: same base, same private paths."""
    base_commit = resolve_commit(repo, base) if base else rec["base_commit"]
    if base_commit is None:
        raise EVError(f"--base {base} is not a commit in {repo}", code=USAGE,
                      hint="pass a branch, tag or commit that exists (git log --oneline)")
    return {"repo": repo, "main": main, "path": Path(rec["path"]), "branch": rec["branch"],
            "base": base or rec["base"], "base_commit": base_commit,
            "cache": main_cache_dir(main), "private": patterns, "half_made": rec}


def _resumable(main: Path, plan: dict) -> bool:
    """An interrupted create can be finished in place: its worktree is registered on the
    branch, checked out at the planned base commit, with no commit of its own."""
    rec = plan["half_made"]
    if rec.get("base_commit") != plan["base_commit"] or not plan["path"].is_dir():
        return False
    for wt in worktrees(main):
        if wt["path"] == str(plan["path"]):
            return wt["branch"] == plan["branch"] and wt["head"] == plan["base_commit"] \
                and (plan["path"] / ".git").exists() and (plan["path"] / ".dvc").is_dir()
    return False


def dvc_changes(wt: Path, cache: Path) -> list[str]:
    """DVC outputs whose workspace copy differs from what the .dvc files record: in-process
    when that is exact and cheap (dvcmeta.output_changes), else `dvc status`."""
    found = dvcmeta.output_changes(wt, cache, outs_of(wt))
    return found if found is not None else _dvc_changes(wt)


def _dvc_changes(wt: Path) -> list[str]:
    """Outputs whose workspace copy differs from what the .dvc files record."""
    cp = dvc_run(wt, "status", "--json")
    if cp.returncode != 0:
        raise dvc_failure(cp, wt, f"dvc status in {wt}")
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


def _build(main: Path, path: Path, cache: Path, patterns: list[str]) -> tuple[str, dict, str]:
    """Shared cache, private copies, checkout, read-only links: every step re-runnable."""
    _share_cache(main, path, cache)
    source, made = _checkout(path, cache, patterns)
    probed = probe_link(cache, path)
    done = privatize(path, patterns)
    done["private"] = sorted(set(made) | set(done["private"]))
    link = probed
    if done["readonly"]:
        link = link_kind(path / done["readonly"][0], cache, probed)
    return source, done, link


def create(plan: dict) -> dict:
    main, path, branch, cache = plan["main"], plan["path"], plan["branch"], plan["cache"]
    t0 = time.monotonic()
    rec = plan.get("half_made") or {}
    recovered = None
    if rec.get("finished"):  # killed after its marker: it is complete
        drop_pending(main, path)
        m = read_marker(path)
        return {"path": str(path), "branch": branch, "base": m.get("base"),
                "base_commit": m.get("base_commit"), "cache_dir": m.get("cache_dir"),
                "link_type": m.get("link_type"), "data_from": "cache", "private": [],
                "private_patterns": m.get("private"), "readonly": None,
                "recovered": "completed: an interrupted create had finished all but its record",
                "seconds": round(time.monotonic() - t0, 3)}
    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill (not -9) still rolls back
    made_now = False  # roll back only what this run made: a tree being finished stays
    try:
        if rec and _resumable(main, plan):
            recovered = "finished: the half-made worktree of an interrupted create was completed"
        else:
            if rec:
                _refuse_if_used(main, path, branch, rec)
                recovered = ("redone: the half-made worktree of an interrupted create was "
                             "removed and created again")
                _remove_worktree(main, path, branch, branch_at=rec.get("base_commit"))
            made_now = True
            write_pending(main, path, {"kind": "experiment", "path": str(path),
                                       "branch": branch, "base": plan["base"],
                                       "base_commit": plan["base_commit"],
                                       "private": plan["private"]})
            git(plan["repo"], "worktree", "add", "-q", "-b", branch, str(path),
                plan["base_commit"])
        source, done, link = _build(main, path, cache, plan["private"])
        marker = {"kind": "experiment", "name": path.name[4:], "branch": branch,
                  "base": plan["base"], "base_commit": plan["base_commit"],
                  "cache_dir": str(cache), "link_type": link, "private": plan["private"]}
        atomic.write_text(git_dir(path) / MARKER, json.dumps(marker, indent=1) + "\n")
        drop_pending(main, path)
    except BaseException:
        if made_now:
            _remove_worktree(main, path, branch, branch_at=plan["base_commit"])
            drop_pending(main, path)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    out = {"path": str(path), "branch": branch, "base": plan["base"],
           "base_commit": plan["base_commit"], "cache_dir": str(cache), "link_type": link,
           "data_from": source, "private": done["private"], "private_patterns": plan["private"],
           "readonly": len(done["readonly"]), "seconds": round(time.monotonic() - t0, 3)}
    if recovered:
        out["recovered"] = recovered
    return out


def _refuse_if_used(main: Path, path: Path, branch: str, rec: dict) -> None:
    """A half-made tree someone worked in (commits on its branch, changed files) is never
    removed by a re-run of create: exit 4, say how to keep or drop the work."""
    tip = resolve_commit(main, f"refs/heads/{branch}")
    why = None
    if tip is not None and tip != rec.get("base_commit"):
        why = f"{branch} has commits of its own ({tip[:12]})"
    elif path.is_dir() and (path / ".git").exists():
        with contextlib.suppress(EVError):
            dirty = dirty_paths(path)
            if dirty:
                why = f"it has {len(dirty)} changed file(s) (first: {dirty[0]})"
    if why:
        raise EVError(f"{path} is a half-made worktree (create was interrupted) and {why}",
                      code=REFUSED, hint=f"keep the work (commit and tag it), then remove the "
                                         f"tree with: worktree.py teardown {path.name[4:]} "
                                         "(--force if needed), and create again")


def finish_half_made(wt: Path) -> str | None:
    """privatize inside a half-made worktree: finish its create (None if it is not one)."""
    main = main_worktree(wt)
    rec = read_pending(main, wt)
    if not rec or rec.get("kind") != "experiment":
        return None
    plan = _plan_from(rec, wt, main, None, rec.get("private") or list(DEFAULT_PRIVATE))
    if not _resumable(main, plan):
        raise EVError(f"{wt} is a half-made worktree (create was interrupted) that cannot be "
                      "finished in place", code=REFUSED,
                      hint=f"from main, run: worktree.py create {wt.name[4:]} (it removes it "
                           "and creates it again)")
    create(plan)
    return "finished: the half-made worktree of an interrupted create was completed"


# --- explore ------------------------------------------------------------------------------

def explore_path(main: Path, tag: str) -> Path:
    return main.parent / ("explore-" + re.sub(r"[^A-Za-z0-9._-]", "-", tag))


def _make_read_only(path: Path) -> None:
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".dvc"]
        for n in names:
            p = Path(root) / n
            if not p.is_symlink() and p.name != ".git":
                mode = stat.S_IMODE(p.stat().st_mode)
                if mode & 0o222:
                    os.chmod(p, mode & ~0o222)


def explore(repo_arg, tag: str, dry_run: bool = False) -> dict:
    repo = find_repo(repo_arg)
    require_dvc(repo)
    commit = resolve_commit(repo, f"refs/tags/{tag}")
    if commit is None:
        raise EVError(f"no tag {tag!r}", code=NOT_FOUND,
                      hint="list tags with: git tag -l -n9")
    main = main_worktree(repo)
    path = explore_path(main, tag)
    half = read_pending(main, path)
    for wt in worktrees(repo):
        if wt["path"] == str(path):
            m = read_marker(path)
            if m.get("kind") == "explore" and m.get("commit") == commit:
                if not dry_run:
                    drop_pending(main, path)
                return {"path": str(path), "tag": tag, "commit": commit, "existing": True,
                        "cache_dir": m.get("cache_dir"), "link_type": m.get("link_type")}
            if not half:
                raise EVError(f"{path} is already a worktree that explore did not make for "
                              f"{tag}", code=USAGE, hint="remove or move it first")
    if (path.exists() or path.is_symlink()) and not half:
        raise EVError(f"path {path} already exists", code=USAGE,
                      hint="remove or move it first")
    cache = main_cache_dir(main)
    result = {"path": str(path), "tag": tag, "commit": commit, "cache_dir": str(cache),
              "existing": False}
    if dry_run:
        return result
    if half:  # an interrupted explore: nothing in it is anyone's work
        _remove_worktree(main, path, None)
        result["recovered"] = ("redone: the half-made tree of an interrupted explore was "
                               "removed and made again")
    write_pending(main, path, {"kind": "explore", "path": str(path), "tag": tag,
                               "commit": commit})
    try:
        git(repo, "worktree", "add", "-q", "--detach", str(path), commit)
        # Read-only bits do not stop root: re-running training in an exploration would write
        # through the links into the cache. The paths experiments write become private copies.
        source, _done, link = _build(main, path, cache, list(DEFAULT_PRIVATE))
        files = output_files(path)
        _make_read_only(path)
        marker = {"kind": "explore", "tag": tag, "commit": commit, "cache_dir": str(cache),
                  "link_type": link}
        atomic.write_text(git_dir(path) / MARKER, json.dumps(marker, indent=1) + "\n")
        drop_pending(main, path)
    except BaseException:
        _remove_worktree(main, path, None)
        drop_pending(main, path)
        raise
    result.update(link_type=link, data_from=source, files=len(files))
    return result


# --- list ---------------------------------------------------------------------------------

def list_worktrees(repo_arg) -> list[dict]:
    repo = find_repo(repo_arg)
    main = main_worktree(repo)
    out, seen = [], set()
    for wt in worktrees(repo):
        p = Path(wt["path"])
        seen.add(str(p))
        m = read_marker(p) if p.is_dir() else {}
        half = half_made(main, p) if p != main else {}
        kind = "main" if p == main else ("half-made" if half and not half.get("finished")
                                         else m.get("kind")) or (
            "experiment" if (wt["branch"] or "").startswith("exp/") else "other")
        row = {"path": str(p), "kind": kind, "branch": wt["branch"], "head": wt["head"]}
        if kind == "half-made":
            row["next"] = _half_next(half)
        if m.get("tag"):
            row["tag"] = m["tag"]
        if kind in ("experiment", "half-made") and p.is_dir():
            row["exposed_private"] = exposed_private(p, m.get("private") or half.get("private")
                                                     or list(DEFAULT_PRIVATE))
        out.append(row)
    pend = common_dir(repo) / PENDING
    for f in sorted(pend.glob("*.json")) if pend.is_dir() else []:
        rec = {}
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(f.read_text())
        if isinstance(rec, dict) and rec.get("path") and rec["path"] not in seen \
                and not f.name.endswith(".teardown.json"):
            out.append({"path": rec["path"], "kind": "half-made", "branch": rec.get("branch"),
                        "head": None, "next": _half_next(rec)})
    return out


def _half_next(rec: dict) -> str:
    if rec.get("kind") == "explore":
        return f"worktree.py explore {rec.get('tag')} (removes it and makes it again)"
    return (f"worktree.py create {Path(rec['path']).name[4:]} finishes it (or removes and "
            "re-creates it); privatize inside it finishes it too")
