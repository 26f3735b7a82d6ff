"""The one place that writes files: a temp file in the destination's directory, fsync,
then os.replace. A reader (or a crash) sees the old file or the complete new one.

Replacing the directory entry (never writing into the existing inode) also matters for
DVC: a tracked file may be a hardlink or symlink into the shared cache, and writing into it
would silently rewrite the cache object.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # pathlib (~5 ms) is imported where a Path is handed out
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# tempfile and shutil cost ~8 ms of start-up (random, bz2, lzma, ...): a fresh
# `experiments.py list` needs only a new file's name, made here as mkstemp makes it.
_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)


def _mkstemp(directory: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """(fd, path) of a new file (mode 0600) in directory, as tempfile.mkstemp."""
    for _ in range(100):
        p = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(p, _TMP_FLAGS, 0o600), p
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name in {directory}")


def scratch_dir(prefix: str) -> str:
    """A new private (0700) directory in the temp dir, as tempfile.mkdtemp (TMPDIR, TEMP,
    TMP, then /tmp, /var/tmp, /usr/tmp): the caller removes it (remove_tree)."""
    env = [os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")]
    for base in [b for b in env if b] + ["/tmp", "/var/tmp", "/usr/tmp"]:
        for _ in range(100):
            p = os.path.join(base, f"{prefix}{os.urandom(6).hex()}")
            try:
                os.mkdir(p, 0o700)
                return os.path.abspath(p)
            except FileExistsError:
                continue
            except OSError:
                break  # not usable: the next candidate
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a scratch directory (empty: one rmdir; else shutil's rmtree), never raising."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process pid still runs (a temp file named by its writer's pid is a killed
    run's once this is False; another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _contextmanager(fn):
    """contextlib.contextmanager(fn), made at its first call: contextlib's import pulls
    collections, functools and operator (~3 ms of a first `list`, whose only write is
    write_bytes, which needs none of them)."""
    made = None

    def call(*args, **kwargs):
        nonlocal made
        if made is None:
            import contextlib

            made = contextlib.contextmanager(fn)
        return made(*args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    call.__wrapped__ = fn
    return call


def _fsync_dir(path: Path) -> None:
    try:  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def current_umask() -> int:
    """The process umask, read without changing it (os.umask sets it: racy with threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode_for(dest: str | os.PathLike) -> int:
    """The mode a file the bundle writes at dest gets: a new file 0666 & ~umask; a replaced
    file keeps its mode, made writable by its owner (DVC leaves tracked files read-only)."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    return (st.st_mode & 0o7777 & ~0o6000) | 0o200  # never carry setuid/setgid over


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _new_temp(dest: str, suffix: str) -> tuple[str, str]:
    """(dest's directory, made if missing; a new empty temp file's path in it)."""
    parent = os.path.dirname(dest) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = _mkstemp(parent, f".{os.path.basename(dest)}.", f".tmp{suffix}")
    os.close(fd)
    return parent, tmp


def _install(tmp: str, dest: str, parent: str, durable: bool, mode: int | None) -> None:
    """The complete temp file moved over dest (its mode set, fsynced if durable)."""
    os.chmod(tmp, file_mode_for(dest) if mode is None else mode)
    if durable:
        fsync_file(tmp)
    os.replace(tmp, dest)
    if durable:
        _fsync_dir(parent)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@_contextmanager
def _atomic_file(dest: str, suffix: str = "", *, durable: bool = True,
                 mode: int | None = None) -> Iterator[str]:
    """atomic_path on strings: the temp file's path as a str."""
    parent, tmp = _new_temp(dest, suffix)
    try:
        yield tmp
        _install(tmp, dest, parent, durable, mode)
    except BaseException:
        _discard(tmp)
        raise


@_contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "", *, durable: bool = True,
                mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path next to dest; on success fsync it and move it over dest.

    On any exception the temp file is removed and dest is untouched. The caller writes the
    complete file to the yielded path (and may validate it) inside the with block. The new
    file's mode is `mode`, else file_mode_for(dest) (mkstemp's 0600 never survives).
    durable=False skips the fsyncs (still all-or-nothing against a kill): for copies of
    content that lives elsewhere and is md5-checked on every use (DVC itself never fsyncs
    its cache), or a cache of this bundle's own that is rebuilt when unreadable.
    """
    from pathlib import Path

    with _atomic_file(os.fspath(dest), suffix, durable=durable, mode=mode) as tmp:
        yield Path(tmp)


def write_bytes(dest: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    dest = os.fspath(dest)  # _atomic_file's steps, without a context manager (contextlib)
    parent, tmp = _new_temp(dest, "")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        _install(tmp, dest, parent, durable, None)
    except BaseException:
        _discard(tmp)
        raise


def write_text(dest: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    write_bytes(dest, text.encode("utf-8"), durable=durable)


def rewrite_small(dest: str | os.PathLike, data: bytes) -> None:
    """Rewrite a small JSON or text state file (under 4 KiB) in its own inode with ONE
    pwrite at offset 0, padded with spaces to the file's current length (JSON and
    line-based readers ignore trailing blanks). A kill cannot tear it: one write syscall of
    one page completes or never starts. Not durable (a power cut may tear it): only for
    state whose loss means redone work, such as a sweep sandbox's run state, rewritten once
    per run, where creating a new file each time costs more (ext4's inode allocation scans
    the inodes just freed)."""
    if len(data) > 4096:
        raise ValueError("rewrite_small is for files under 4 KiB; use write_bytes")
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size > 4096:  # not one of ours: replace it whole
            os.close(fd)
            fd = -1
            write_bytes(dest, data, durable=False)
            return
        if len(data) < size:
            data += b" " * (size - len(data))
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(f"short write to {dest}")
    finally:
        if fd >= 0:
            os.close(fd)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy src's bytes to dest as a new file (dest's old inode is never written)."""
    with atomic_path(dest) as tmp:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            import shutil

            shutil.copyfileobj(fi, fo, 1 << 20)


def append_line(dest: str | os.PathLike, line: str) -> None:
    """Append one line to a small text file (a ledger) by rewriting it atomically."""
    from pathlib import Path

    dest = Path(dest)
    old = dest.read_bytes() if dest.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_bytes(dest, old + line.rstrip("\n").encode("utf-8") + b"\n")


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: str | os.PathLike) -> str:
    """DVC's content hash of a file."""
    from .dvcmeta import hash_copy

    return hash_copy(path)


@_contextmanager
def held_lock(path: str | os.PathLike, *, wait_s: float, message: str, hint: str
              ) -> Iterator[None]:
    """Hold an flock on path (a directory, or an empty lock file made if missing).

    The kernel drops it when the holder dies, even by SIGKILL: nothing stale to clean up.
    Not acquired within wait_s seconds (0: try once): EVError(message, REFUSED, hint).
    """
    import fcntl
    import time
    from pathlib import Path

    from .errors import REFUSED, EVError

    p = Path(path)
    if p.is_dir():
        fd = os.open(p, os.O_RDONLY)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)  # never written: only locked
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EVError(message, code=REFUSED, hint=hint) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock
