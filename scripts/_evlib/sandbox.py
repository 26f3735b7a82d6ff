"""A run's sandbox: <workdir>/tree mirrors the repository with symlinks, its private outputs
real (see runner's module doc); prepared once and emptied for each run of a sweep that
reuses it. Split out of runner.py (re-exported there)."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from . import guard
from .errors import FAILED, EVError
from .runspec import RunResult, RunSpec

SANDBOX_ROOT = ".ev"  # <repo>/.ev/: per-run sandboxes (git- and dvc-ignored)
# Never mirrored into a sandbox: the repository's own metadata (the command's git and dvc
# calls find the real ones above the sandbox), and DVC stage files, which DVC would
# otherwise find twice when it walks the workspace.
_SKIP_TOP = {".git", ".dvc", SANDBOX_ROOT}
_SKIP_ANY_SUFFIX = (".dvc",)
_SKIP_ANY_NAME = {"dvc.yaml", "dvc.lock"}
DB_SIDE = ("-journal", "-wal", "-shm")


_RESOLVED: dict[str, Path] = {}


def resolved(repo) -> Path:
    """Path(repo).resolve(), for an absolute path once per process (a sweep's runs ask it
    three times each: a stat per path component every time)."""
    key = os.fspath(repo)
    if not os.path.isabs(key):
        return Path(key).resolve()
    out = _RESOLVED.get(key)
    if out is None:
        out = _RESOLVED[key] = Path(key).resolve()
    return out


def _private_names(private: list[str]) -> set[str]:
    out = set()
    for p in private:
        out.add(p)
        out.update(p + side for side in DB_SIDE)
    return out


def mirror(repo: Path, tree: Path, private: list[str], cwd: str = ".", real: str = "", *,
           copies: list[str] = (), hide: set = frozenset(), record: dict | None = None) -> None:
    """tree/ = the repository as symlinks, with the private paths (and their parents) and the
    folder `real` (the candidates folder: its files linked one by one) real. copies: files
    left out here (prepare puts private copies there; their folders are real); hide: paths
    not shown at all (guard.MOVED). record: filled with {folder: (its identity before it was
    read, the names put in its copy)} for every repository folder walked (see mirrored).

    On an existing tree (a reused sandbox) only the missing links are added.
    """
    private = [os.path.normpath(p).replace(os.sep, "/") for p in private]
    names = _private_names(private) | set(copies) | set(hide)
    parents = _parents(private, cwd, real, copies)

    def walk(src: Path, dst: Path, prefix: str) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        have = set(os.listdir(dst))
        placed: set = set()
        if record is not None:
            record[prefix[:-1]] = (guard.ident(src), placed)
        with os.scandir(src) as it:
            for entry in it:
                rel = prefix + entry.name
                if (not prefix and entry.name in _SKIP_TOP) or rel in names:
                    continue
                if entry.name in _SKIP_ANY_NAME or entry.name.endswith(_SKIP_ANY_SUFFIX):
                    continue
                placed.add(entry.name)
                if rel in parents and entry.is_dir(follow_symlinks=False):
                    if (dst / entry.name).is_symlink():  # now real (a copy inside it)
                        (dst / entry.name).unlink()
                    walk(Path(entry.path), dst / entry.name, rel + "/")
                elif entry.name not in have:
                    os.symlink(entry.path, dst / entry.name)

    walk(repo, tree, "")
    _real_dirs(tree, private, real)


def _real_dirs(tree: Path, private: list[str], real: str) -> None:
    base = os.fspath(tree)
    for d in [os.path.dirname(os.path.join(base, p)) for p in private] + (
            [os.path.join(base, real)] if real else []):
        if not os.path.isdir(d):  # (one stat when it is there, as it is in a reused tree)
            Path(d).mkdir(parents=True, exist_ok=True)


def mirrored(repo: Path, tree: Path, record: dict) -> bool:
    """The tree still mirrors what mirror(record=...) recorded: no repository folder it
    walked has changed since (one stat each: an entry added, removed or renamed changes its
    folder's mtime), and every name it put in the tree is still there (one listdir per
    folder: a run that removed a link gets it back). Then mirror would add nothing."""
    repo_s, tree_s = os.fspath(repo), os.fspath(tree)
    for rel, (ident, placed) in record.items():
        src, dst = (os.path.join(repo_s, rel), os.path.join(tree_s, rel)) if rel else (
            repo_s, tree_s)
        if ident is None or guard.ident(src) != ident:
            return False
        try:
            if not placed <= set(os.listdir(dst)):
                return False
        except OSError:
            return False
    return True


def clean(result_tree: Path, private: list[str], cwd: str = ".", real: str = "", *,
          extra: bool = True) -> None:
    """Empty a reused sandbox: the private outputs and (extra) whatever else a run created
    there."""
    import shutil

    rels = sorted(_private_names(private))
    if extra:
        fake = RunResult(spec=RunSpec(command=[], version="", key="", results_db=private[0],
                                      protect=private[1:], cwd=cwd, candidates_dir=real),
                         workdir=str(result_tree.parent))
        rels = [*extras(fake), *rels]
    base = os.fspath(result_tree)
    for rel in rels:
        p = os.path.join(base, rel)
        # One lstat per path (was is_dir + is_symlink + lexists): a real folder is removed
        # whole, anything else (a file, a link, to a folder too) unlinked, nothing: skipped.
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def prepare(repo: Path, spec: RunSpec, workdir: Path, *, reuse: bool = False,
            collected: bool = False) -> None:
    """Make workdir/tree the run's sandbox (see execute); with reuse, empty an earlier run's.
    collected: that run was landed (its extra files moved out by collect_extras), so only
    its private paths are left to remove: the tree is not walked again for extras."""
    repo, workdir = resolved(repo), Path(workdir)
    tree = workdir / "tree"
    private = spec.private
    if workdir.exists() and not reuse:
        raise EVError(f"run directory {workdir} exists already", code=FAILED,
                      hint="remove it (a run left by a killed process), then re-run")
    if reuse and tree.is_dir():
        clean(tree, private, spec.cwd, spec.real_dir, extra=not collected)
        # The rc file is left: it names its run (read_rc), and the next run's shell writes
        # over it in place (ext4 pays for each file created, truncated or removed). So is the
        # log: its run's caller moved it out if it wanted it (a sweep keeps non-empty ones),
        # and the next launch truncates it in place.
    hide = guard.MOVED.get(str(repo), set())
    db_dir = os.path.dirname(os.path.normpath(spec.results_db).replace(os.sep, "/"))
    skip = _private_names(private) | hide | {f"{db_dir}/shards" if db_dir else "shards"}
    rec = guard.box(workdir)
    last = rec.get("survey")
    # The last survey still holds if its run found no linked file changed and no folder
    # gained or lost an entry since (a sweep's reused sandbox: one stat per folder).
    if last and rec.pop("clean", False) and last[0] == skip and not guard.changed(repo,
                                                                                 last[3]):
        snap, copies = last[1], last[2]
    else:
        snap, copies, dirs = guard.survey(repo, skip, _SKIP_TOP, _SKIP_ANY_NAME,
                                          _SKIP_ANY_SUFFIX, spec.real_dir)
        rec["survey"] = (skip, snap, copies, dirs)
    if set(copies) != set(rec["copies"]) and tree.is_dir():
        import shutil  # other folders become real: built again

        shutil.rmtree(tree)
        rec["copies"] = {}
    # A reused sandbox whose tree still mirrors the repository (the usual case in a sweep)
    # is not walked again.
    mkey = (tuple(private), spec.cwd, spec.real_dir, tuple(copies), frozenset(hide))
    last_mirror = rec.get("mirror")
    if (reuse and last_mirror and last_mirror[0] == mkey and tree.is_dir()
            and mirrored(repo, tree, last_mirror[1])):
        _real_dirs(tree, [os.path.normpath(p).replace(os.sep, "/") for p in private],
                   spec.real_dir)
    else:
        walked: dict = {}
        mirror(repo, tree, private, spec.cwd, spec.real_dir, copies=copies, hide=hide,
               record=walked)
        rec["mirror"] = (mkey, walked)
    for rel in copies:  # a private copy, fresh unless it and its source are as copied
        src, old = guard.ident(repo / rel), rec["copies"].get(rel)
        if old is None or old[0] != src or guard.ident(tree / rel) != old[1]:
            rec["copies"][rel] = (src, guard.copy_in(repo / rel, tree / rel))
    if copies or rec["copies"]:
        guard.save_copies(workdir, rec)
    rec["snap"] = snap


def _parents(private: list[str], cwd: str = ".", real: str = "", copies=()) -> set[str]:
    """Folders that are real in a sandbox: the private paths' and the copies' parents, `real`
    with its parents, and the directory the command starts in with its parents (so that `..`
    from there stays in the sandbox)."""
    private = [os.path.normpath(p).replace(os.sep, "/") for p in [*private, *copies]]
    if real:
        private.append(os.path.normpath(real).replace(os.sep, "/") + "/_")
    out = {"/".join(p.split("/")[:i]) for p in private for i in range(1, p.count("/") + 1)}
    c = os.path.normpath(cwd or ".").replace(os.sep, "/")
    if c != ".":
        out |= {"/".join(c.split("/")[:i]) for i in range(1, c.count("/") + 2)}
    return out


def extras(result: RunResult) -> list[str]:
    """Paths the command created in its sandbox besides its declared outputs (repo-relative):
    files written into a folder that is private to the run (e.g. a plot beside the model)."""
    spec = result.spec
    tree = os.path.join(result.workdir, "tree")
    names, parents = _walk_sets(tuple(spec.private), spec.cwd, spec.real_dir,
                                tuple(guard.copies_of(result.workdir)))
    models = result.models  # the run's models are collected as candidates, not extras
    found: list[str] = []

    def walk(d: str, prefix: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink() or rel in names or rel in models or e.name == "__pycache__":
                    continue
                if e.is_dir(follow_symlinks=False) and (rel in parents or not prefix and
                                                        rel == "."):
                    walk(e.path, rel + "/")
                else:
                    found.append(rel)

    if os.path.isdir(tree):
        walk(tree, "")
    return sorted(found)


@functools.lru_cache(maxsize=256)  # a sweep's runs share one value
def _walk_sets(private: tuple, cwd: str, real: str, copies: tuple) -> tuple:
    """(the names extras leaves out, the real folders it walks): pure functions of the
    run's outputs, computed once per value."""
    return (frozenset(_private_names(list(private)) | set(copies)),
            frozenset(_parents(list(private), cwd, real, list(copies))))


def remove_workdir(workdir: Path) -> None:
    import shutil

    guard.forget(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def ensure_ignored(repo: Path) -> None:
    """Make <repo>/.ev/ ignored by git (info/exclude: nothing tracked changes)."""
    from .proc import git, git_ok

    if git_ok(repo, "check-ignore", "-q", f"{SANDBOX_ROOT}/x"):
        return
    common = Path(git(repo, "rev-parse", "--git-common-dir"))
    if not common.is_absolute():
        common = repo / common
    exclude = common / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a", encoding="utf-8") as fh:
        fh.write(f"\n/{SANDBOX_ROOT}/\n")
