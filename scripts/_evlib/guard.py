"""What a run's sandbox shows of the project, and proof afterwards that the command changed none
of it.

A sandbox shows the repository through symlinks (runner.mirror), so a command that opens an
existing file it sees there (appends to a log, rewrites params.yaml) writes the project's own
file. Two defences, both cheap enough for a sweep's reused sandboxes:

- Files that share their inode with a DVC cache object (cache.type hardlink or symlink: a
  hard link, or a symlink to a cache object) are never shown as links: each sandbox gets its
  own copy (a reflink where the file system has them), refreshed before a run if the last run
  wrote it. Writing such a file through a link would corrupt the cache object, and root
  ignores its read-only bits.
- Every other file shown through a link is remembered by identity (inode, size, mtime_ns) when
  the sandbox is prepared and checked after the run: a run that changed, replaced or removed
  one fails (runner.complete), naming the file and how to restore it.

New files a command creates inside a folder it sees through a link land in the project, as
before (MLflow's mlruns/, a logs/ folder); only existing files are guarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

COPIES_FILE = "copies.json"  # in a run directory: the sandbox's private copies
# A DVC cache object's path ends in <2 hex>/<hex...> (DVC 2 and 3, files and .dir lists).
_CACHE_OBJECT = re.compile(r"/[0-9a-f]{2}/[0-9a-f]{30,}(\.dir)?$")
_FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (btrfs, xfs); ext4 copies
_NEVER = {"__pycache__"}  # Python rewrites its bytecode through links: not the project's data

# Per run directory (this process): {"copies": {rel: [src_id, copy_id]}, "snap": {rel: id}}
_BOXES: dict[str, dict] = {}
# Per repository (this process): paths a run's extra files were moved to (collect_extras).
# Later sandboxes do not show them, so the next run writes its own file, never the earlier
# run's through a link.
MOVED: dict[str, set] = {}


def ident(path) -> tuple | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def project_files(repo: Path) -> tuple[set, list]:
    """(the files git shows: tracked, or untracked and not ignored; the DVC outputs' paths).
    Files git ignores and DVC does not track (caches, virtualenvs, old outputs) are not the
    project's: not guarded, never copied (a uv virtualenv is hard links throughout)."""
    from . import lineage
    from .proc import git

    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    try:
        outs = [o.path.rstrip("/") for o in lineage.dvc_outs(repo)]
    except Exception:  # noqa: BLE001 - a bad .dvc file is reported where it is read
        outs = []
    return set(filter(None, listed.split("\0"))), outs


def survey(repo: Path, skip: set, skip_top: set, skip_name: set, skip_suffix: tuple,
           untracked: str = "") -> tuple[dict, list, dict]:
    """({rel: identity} of every project file (project_files) a sandbox shows through a link,
    [rel of those that must be private copies: (links to) DVC cache objects], {folder:
    identity} of the folders walked but `untracked`'s (the candidates folder: the bundle adds
    files there)). skip: repo-relative paths not to remember (private outputs, the sweep's
    own folders); the other rules are mirror's. One stat per file (two for a symlink)."""
    snap: dict = {}
    copies: list = []
    dirs: dict = {"": ident(repo)}
    files, outs = project_files(repo)
    outs_under = tuple(o + "/" for o in outs)
    outs = set(outs)
    walked = {"/".join(p.split("/")[:i]) for p in [*files, *outs] for i in range(1, p.count("/") + 1)}

    def wanted(rel: str, is_dir: bool) -> bool:
        if rel in outs or rel.startswith(outs_under):
            return True
        return rel in walked if is_dir else rel in files

    def walk(d: str, prefix: str) -> None:
        try:
            it = os.scandir(d)
        except OSError:
            return
        with it:
            for e in it:
                rel = prefix + e.name
                if (not prefix and e.name in skip_top) or rel in skip or e.name in _NEVER:
                    continue
                if e.name in skip_name or e.name.endswith(skip_suffix):
                    continue
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    if not wanted(rel, is_dir):
                        continue
                    if is_dir:
                        if rel != untracked:
                            dirs[rel] = ident(e.path)
                        walk(e.path, rel + "/")
                        continue
                    # Old candidates (models, maybe large, maybe many) stay links, checked
                    # like any other file: a run never writes their names.
                    copy = not untracked or prefix[:-1] != untracked
                    if e.is_symlink():
                        st = os.stat(e.path)
                        if copy and _CACHE_OBJECT.search(os.path.realpath(e.path)):
                            copies.append(rel)
                            continue
                        if not stat.S_ISREG(st.st_mode):
                            continue  # (a symlink to a folder outside: not walked)
                    else:
                        st = e.stat(follow_symlinks=False)
                        if copy and st.st_nlink > 1:  # a hard link: the cache object itself
                            copies.append(rel)
                            continue
                except OSError:
                    continue
                snap[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)

    walk(str(repo), "")
    return snap, sorted(copies), dirs


def copy_in(src: Path, dst: Path) -> tuple:
    """dst = a private copy of src (a reflink if the file system can); its identity."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.ev-copy")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        try:
            import fcntl

            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
        except (OSError, ImportError):
            shutil.copyfileobj(fi, fo, 1 << 20)
    os.replace(tmp, dst)
    return ident(dst)


def box(workdir: Path) -> dict:
    """The run directory's record (this process's, else the copies file it left)."""
    key = str(workdir)
    rec = _BOXES.get(key)
    if rec is None:
        rec = {"copies": {}, "snap": {}}
        with contextlib.suppress(OSError, ValueError):
            rec["copies"] = {k: [tuple(a) if a else None for a in v] for k, v in json.loads(
                (Path(workdir) / COPIES_FILE).read_text()).items()}
        _BOXES[key] = rec
    return rec


def save_copies(workdir: Path, rec: dict) -> None:
    from .atomic import write_bytes

    data = json.dumps(rec["copies"], sort_keys=True).encode("utf-8")
    path = Path(workdir) / COPIES_FILE
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    write_bytes(path, data, durable=False)


def copies_of(workdir: Path) -> list[str]:
    return list(box(workdir)["copies"])


def forget(workdir: Path) -> None:
    _BOXES.pop(str(workdir), None)


def changed(repo: Path, snap: dict) -> list[str]:
    """The remembered files whose identity is not what it was."""
    return [rel for rel, i in snap.items() if ident(os.path.join(repo, rel)) != i]


def restore_hint(repo: Path, rel: str) -> str:
    """How to get the project's file back: dvc checkout, git checkout, or by hand."""
    from . import lineage
    from .proc import git_ok

    with contextlib.suppress(Exception):
        for o in lineage.dvc_outs(repo):
            if rel == o.path or rel.startswith(o.path.rstrip("/") + "/"):
                return f"dvc checkout --force {o.path}"
    if git_ok(repo, "ls-files", "--error-unmatch", "--", rel):
        return f"git checkout -- {rel}"
    return "from your own copy: neither git nor DVC tracks it"
