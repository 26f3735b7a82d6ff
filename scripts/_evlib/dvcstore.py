"""Writing DVC's own state directly: cache objects, single-file `.dvc` files, checkouts.

promote/rollback use this instead of `dvc add` (one read of the model instead of three,
and no repository lock another dvc may hold): an object is copied into the cache under its
md5 while md5 and sha256 are computed, fsynced and renamed into place read-only, as DVC
does; the workspace file is made from the object per `cache.type` (a new inode for copy/
reflink, a link for hardlink/symlink) and renamed over the old one, never written into;
the `.dvc` file is the one `dvc add` writes (DVC 3 layout, other keys kept).
A file whose inode/size/mtime we recorded when we wrote it is not hashed again (the same
idea as DVC's state DB), so a status or promote never re-reads an unchanged large model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import pid_alive, write_text
from .dvcmeta import cache_dir, load_yaml, object_path

if TYPE_CHECKING:
    from .registry import Alias

_BUF = 4 << 20


def _hash_stream(fi, fo=None) -> tuple[str, str, int]:
    """md5 and sha256 of a stream (copied to fo if given) in one read.

    md5, sha256 and the write run in parallel threads on each chunk (hashlib and file I/O
    release the GIL), so two digests cost about what one does.
    """
    from concurrent.futures import ThreadPoolExecutor

    md5, sha = hashlib.md5(), hashlib.sha256()  # noqa: S324 - md5 is DVC's object name
    size = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list = []
        while chunk := fi.read(_BUF):
            for f in pending:  # the previous chunk's work, while this one was read
                f.result()
            pending = [pool.submit(md5.update, chunk), pool.submit(sha.update, chunk)]
            if fo is not None:
                fo.write(chunk)
            size += len(chunk)
        for f in pending:
            f.result()
    return md5.hexdigest(), sha.hexdigest(), size


def copy_hashing(src: Path, dest: Path) -> tuple[str, str, int]:
    """Copy src to dest (a new file) in one read; return (md5, sha256, size)."""
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        return _hash_stream(fi, fo)


def hashes(path: Path) -> tuple[str, str]:
    with open(path, "rb") as fh:
        md5, sha, _ = _hash_stream(fh)
    return md5, sha


def cache_object(repo: Path, md5: str) -> Path:
    return object_path(cache_dir(repo), md5)


def _cache_type(repo: Path) -> str:
    import configparser

    found = "copy"
    for name in ("config", "config.local"):
        p = repo / ".dvc" / name
        if p.is_file():
            cp = configparser.ConfigParser(interpolation=None, strict=False)
            with contextlib.suppress(configparser.Error, OSError):
                cp.read_string(p.read_text())
                if cp.has_option("cache", "type"):
                    found = cp.get("cache", "type").split(",")[0].strip().strip("'\"")
    return found


def store_object(repo: Path, src: Path, *, move: bool = False) -> tuple[str, str, int]:
    """Put src's bytes into the DVC cache under their md5 (hashed while copied, fsynced).

    move=True: src is a complete temp file of ours: hashed, then renamed in when it can be.
    Returns (md5, sha256, size). An object already there is kept (DVC objects are immutable).
    """
    from .atomic import _fsync_dir, fsync_file

    cache = cache_dir(repo)
    base = cache / "files" / "md5"
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".ev-{os.getpid()}-{uuid.uuid4().hex}.tmp"  # the pid: see remove_temps
    try:
        if move:
            md5, sha = hashes(src)
            size = src.stat().st_size
            try:
                os.replace(src, tmp)
            except OSError:  # another filesystem
                copy_hashing(src, tmp)
                src.unlink()
        else:
            md5, sha, size = copy_hashing(src, tmp)
        obj = object_path(cache, md5)
        if obj.is_file() and obj.stat().st_size == size:
            tmp.unlink()
            return md5, sha, size
        fsync_file(tmp)
        os.chmod(tmp, 0o444)  # DVC keeps cache objects read-only
        obj.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, obj)
        _fsync_dir(obj.parent)
        return md5, sha, size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


STALE_S = 600  # a temp file unchanged this long whose writer is gone: a killed run's


def remove_temps(repo: Path, dest: Path) -> list[str]:
    """Remove what a killed promote/rollback of dest left: checkout()'s temp files next to
    dest (the caller holds dest's alias lock, so none is being written), and store_object's
    temp files in the cache whose writing process is gone and that have not changed for
    STALE_S (the cache may be shared with other worktrees). Returns the names removed."""
    import time

    removed = []
    pre = f".{dest.name}.ev-"
    hexdigits = set("0123456789abcdef")
    with contextlib.suppress(OSError), os.scandir(dest.parent) as it:
        for e in it:
            tail = e.name[len(pre):]
            if e.name.startswith(pre) and len(tail) == 8 and set(tail) <= hexdigits:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                    removed.append(e.name)
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(cache_dir(repo) / "files" / "md5") as it:
        for e in it:
            parts = e.name.split("-")
            if not (e.name.startswith(".ev-") and e.name.endswith(".tmp") and len(parts) == 3
                    and parts[1].isdigit()):
                continue
            with contextlib.suppress(OSError):
                if now - e.stat(follow_symlinks=False).st_mtime < STALE_S or \
                        pid_alive(int(parts[1])):
                    continue  # recent, or its writer (or a process with its pid) is alive
                os.unlink(e.path)
                removed.append(e.name)
    return removed


def checkout(repo: Path, md5: str, dest: Path) -> None:
    """Make dest the cache object md5 the way DVC's cache.type would (new inode or link)."""
    obj = cache_object(repo, md5)
    kind = _cache_type(repo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.ev-{uuid.uuid4().hex[:8]}")
    try:
        if kind == "hardlink":
            os.link(obj, tmp)
        elif kind == "symlink":
            os.symlink(obj, tmp)
        else:  # reflink/copy: a separate file, so editing it never touches the object
            shutil.copyfile(obj, tmp)
            os.chmod(tmp, 0o644)
        # Not fsynced: the durable copy is the (fsynced) cache object; a workspace file a
        # crash truncates no longer matches its recorded size, so status reports it out of
        # sync and `dvc checkout` (or the next promote's recovery) remakes it.
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def dvc_text(old: str | None, md5: str, size: int, name: str) -> str:
    """The .dvc file DVC 3 writes for one file, keeping any other keys of the old one."""
    import yaml

    doc = load_yaml(old)
    outs = doc.get("outs") if isinstance(doc.get("outs"), list) and doc["outs"] else [{}]
    out = dict(outs[0]) if isinstance(outs[0], dict) else {}
    for k in ("md5", "size", "hash", "path", "nfiles", "isexec"):
        out.pop(k, None)
    new = {"md5": md5, "size": size, "hash": "md5", "path": name, **out}
    doc["outs"] = [new]
    return yaml.safe_dump(doc, sort_keys=False)


def ensure_gitignore(repo: Path, a: Alias) -> None:
    p = repo / a.dir / ".gitignore"
    line = "/" + os.path.basename(a.model)
    old = p.read_text() if p.exists() else ""
    if line not in old.splitlines():
        write_text(p, old + ("" if not old or old.endswith("\n") else "\n") + line + "\n")


def ev_tmp(repo: Path) -> Path:
    d = repo / ".dvc" / "tmp" / "ev"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _stat_key(p: Path) -> list | None:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def remember(repo: Path, a: Alias, md5: str) -> None:
    key = _stat_key(repo / a.model)
    if key:
        write_text(ev_tmp(repo) / f"{a.name}.stat.json", json.dumps({"key": key, "md5": md5}))


def disk_md5(repo: Path, a: Alias, dvc_md5: str | None) -> tuple[str | None, str | None]:
    """(md5, sha256 or None) of the alias's model.bin; None when absent.

    A link to the object dvc_md5, or a file whose inode/size/mtime we recorded when we
    wrote it, is not read again (sha256 None then); anything else is hashed.
    """
    p = repo / a.model
    key = _stat_key(p)
    if key is None:
        return None, None
    if dvc_md5:
        obj = cache_object(repo, dvc_md5)
        if p.is_symlink() and Path(os.path.realpath(p)) == obj.resolve():
            return dvc_md5, None
        with contextlib.suppress(OSError):
            if not p.is_symlink() and os.path.samefile(p, obj):
                return dvc_md5, None
    with contextlib.suppress(OSError, ValueError):
        seen = json.loads((ev_tmp(repo) / f"{a.name}.stat.json").read_text())
        if seen["key"] == key:
            return seen["md5"], None
    if p.is_symlink() and not p.exists():
        return "broken-link", None
    return hashes(p)


