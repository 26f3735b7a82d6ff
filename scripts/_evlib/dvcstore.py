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

from .atomic import write_text
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


def store_object(repo: Path, src: Path, *, move: bool = False,
                 stage: Path | None = None) -> tuple[str, str, int]:
    """Put src's bytes into the DVC cache under their md5 (hashed while copied, fsynced).

    move=True: src is a complete temp file of ours: hashed, then renamed in when it can be.
    stage: a workspace path the object is about to be checked out to; with a copy/reflink
    cache its copy is written to staged(stage) while the object is fsynced (the two
    overlap instead of adding up), for checkout() to rename in. Whoever passes stage
    removes staged(stage) if checkout() does not consume it.
    Returns (md5, sha256, size). An object already there is kept (DVC objects are immutable).
    """
    from .atomic import _fsync_dir, fsync_file

    cache = cache_dir(repo)
    base = cache / "files" / "md5"
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".ev-{uuid.uuid4().hex}.tmp"
    if stage is not None:  # whatever is there is not this call's copy
        with contextlib.suppress(FileNotFoundError):
            staged(stage).unlink()
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
        if stage is not None and _cache_type(repo) not in ("hardlink", "symlink"):
            _fsync_while_staging(tmp, staged(stage))
        else:
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


def staged(dest: Path) -> Path:
    """Where store_object(stage=dest) writes dest's next copy (one name per workspace file:
    one promote or rollback of an alias runs at a time, under its lock)."""
    return dest.with_name(f".{dest.name}.ev-staged")


def _fsync_while_staging(tmp: Path, stage: Path) -> None:
    """fsync tmp (the new cache object) in a thread while it is copied to stage: the flush
    to disk and the copy through the page cache run at once instead of one after the other."""
    import threading

    from .atomic import fsync_file

    err: list[BaseException] = []

    def flush() -> None:
        try:
            fsync_file(tmp)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            err.append(exc)

    t = threading.Thread(target=flush, name="ev-fsync")
    t.start()
    try:
        shutil.copyfile(tmp, stage)
        os.chmod(stage, 0o644)
    except OSError:  # no staged copy: checkout() copies from the object instead
        with contextlib.suppress(FileNotFoundError):
            stage.unlink()
    finally:
        t.join()
    if err:
        with contextlib.suppress(FileNotFoundError):
            stage.unlink()
        raise err[0]


def checkout(repo: Path, md5: str, dest: Path, *, use_staged: bool = False) -> None:
    """Make dest the cache object md5 the way DVC's cache.type would (new inode or link).

    use_staged: the caller's own store_object(stage=dest) call of this process just staged
    md5's copy (copied from the object's hashed bytes): rename it in if it is whole. A
    staged file is never trusted otherwise (a killed run's): it is removed."""
    obj = cache_object(repo, md5)
    kind = _cache_type(repo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = staged(dest)
    if use_staged and kind not in ("hardlink", "symlink"):
        with contextlib.suppress(FileNotFoundError):
            if st.stat().st_size == obj.stat().st_size:
                os.replace(st, dest)
                return
    with contextlib.suppress(FileNotFoundError):
        st.unlink()
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


