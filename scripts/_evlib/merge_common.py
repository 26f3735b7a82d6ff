"""What the SQLite and the parquet merge share: output checks, temp files that a killed run's
successor removes, the directory lock, the one backup per output, live-writer lookup, and
the DVC way back.

Temp files and directories are named `.<output>.<random>.tmp.evmerge<pid>` (plus SQLite's
`-journal`/`-wal`/`-shm` of a temp DB): the next merge into the same directory removes every
one whose pid is dead. A dry run builds nothing beside the output: it only reads.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from .atomic import atomic_path, held_lock, pid_alive
from .errors import REFUSED, USAGE, EVError

TMP_TAG = ".evmerge"
LOCK_WAIT_S = 600
BACKUP_SUFFIX = ".bak"  # one backup per output: <output>.bak, replaced by the next one


def sweep_stale_temps(output: Path) -> list[str]:
    """Remove temp files/dirs a killed merge left beside output (their writer pid is dead)."""
    removed: list[str] = []
    prefix = f".{output.name}."
    pat = re.compile(re.escape(prefix) + r".*\.tmp" + re.escape(TMP_TAG)
                     + r"(\d+)(?:-journal|-wal|-shm)?$")
    if not output.parent.is_dir():
        return removed
    # Names only (no Path per entry): a results directory can hold many files.
    for name in os.listdir(output.parent):
        if not name.startswith(prefix):
            continue
        m = pat.match(name)
        p = output.parent / name
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir() and not p.is_symlink():
                    import shutil  # stale temp dirs are rare: not imported on every start

                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p.name)
    return sorted(removed)


def dir_lock(directory: Path):
    """Serialise merges into one directory (flock on the directory: no lock file to leave)."""
    return held_lock(directory, wait_s=LOCK_WAIT_S,
                     message=f"another merge into {directory} has run for over {LOCK_WAIT_S} s",
                     hint="wait for it to finish, then re-run")


@contextlib.contextmanager
def output_temp(output: Path):
    """A temp file beside output, moved over it on success (atomic.atomic_path: fsync, mode)."""
    with atomic_path(output, suffix=f"{TMP_TAG}{os.getpid()}") as tmp:
        yield tmp


@contextlib.contextmanager
def scratch_dir(output: Path):
    """A private work directory beside output (DuckDB spill files), removed on exit; a killed
    run's is removed by the next merge's sweep_stale_temps."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=f".tmp{TMP_TAG}{os.getpid()}",
                              dir=output.parent))
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


# --- checks ---------------------------------------------------------------------------------

def same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_not_input(output: Path, exps: list[Path], flag: str) -> None:
    # One stat per input (not a path resolution each: a sweep merges 1,000 shards). An
    # output that does not exist yet is no existing input; a missing input is refused later.
    try:
        out = os.stat(output)
    except OSError:
        out = None
    for e in exps:
        try:
            st = os.stat(e)
        except OSError:
            st = None
        if (out is not None and st is not None and (st.st_dev, st.st_ino) == (out.st_dev,
                                                                              out.st_ino)) \
                or (st is None and same_file(output, e)):
            raise EVError(f"--output-{flag} {output} is also an experiment input ({e})",
                          code=REFUSED,
                          hint=f"write to the base or a new path, never over an --exp-{flag} file")


def check_output(output: Path, base: Path, flag: str, force: bool) -> None:
    """The output is the base, or a new file in an existing directory (or --force)."""
    if not output.parent.is_dir():
        raise EVError(f"--output-{flag} {output}: directory {output.parent} does not exist",
                      code=USAGE, hint="create it first, or pass a path in an existing directory")
    if output.is_dir():
        raise EVError(f"--output-{flag} {output} is a directory", code=USAGE,
                      hint="pass a file path")
    if (output.exists() or output.is_symlink()) and not same_file(output, base) and not force:
        raise EVError(f"--output-{flag} {output} exists and is not the base", code=REFUSED,
                      hint="pass a new path or the base; --force replaces it")


def require_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise EVError(f"{flag} {path}: no such file", code=USAGE,
                      hint="check the path (relative paths are from the current directory)")
    if not path.is_file():
        raise EVError(f"{flag} {path} is not a file", code=USAGE, hint="pass a file path")


def is_linked(path: Path) -> bool:
    """A symlink or a file with other hard links (a DVC cache link): never write into it."""
    try:
        return path.is_symlink() or path.stat().st_nlink > 1
    except FileNotFoundError:
        return False


def _open_nowhere(path: Path) -> bool:
    """True when no open file anywhere refers to path's inode and it has no -wal/-journal:
    the kernel grants a write lease (F_SETLEASE) only then, and it is dropped at once (an
    open() by another process meanwhile waits those microseconds). False: not known (a
    -wal/-journal, a lease refused or unsupported, not the main thread): scan /proc."""
    if os.path.lexists(f"{path}-wal") or os.path.lexists(f"{path}-journal"):
        return False
    import _signal  # signal's C half: the module itself builds enums (~1 ms of a start)
    import fcntl

    old = _signal.getsignal(_signal.SIGIO)
    if old is None:  # a handler not set from Python: leave it alone
        return False
    try:
        # A lease break would send this process SIGIO, whose default action is to exit.
        _signal.signal(_signal.SIGIO, _signal.SIG_IGN)
    except ValueError:  # not the main thread: no handler can be set
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        _signal.signal(_signal.SIGIO, old)


def open_by(path: Path) -> list[dict]:
    """Other processes with path (or its -wal/-journal) open: [{pid, cmd}] via /proc/*/fd
    (none at all, when the kernel says so at once: _open_nowhere)."""
    if _open_nowhere(path):
        return []
    targets = set()
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
        with contextlib.suppress(OSError):
            targets.add(str(p.resolve()))
    found = []
    me = os.getpid()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == me:
            continue
        # Each link read relative to the open fd directory (no path walk per descriptor).
        try:
            dfd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            hit = False
            for fd in os.listdir(dfd):
                try:
                    if os.readlink(fd, dir_fd=dfd) in targets:
                        hit = True
                        break
                except OSError:
                    continue
        except OSError:
            continue
        finally:
            os.close(dfd)
        if not hit:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = " ".join(a.decode(errors="replace") for a in fh.read().split(b"\0") if a)
        except OSError:
            cmd = "?"
        found.append({"pid": pid, "cmd": cmd})
    return found


def describe_procs(procs: list[dict]) -> str:
    return "; ".join(f"pid {p['pid']}: {p['cmd'][:120]}" for p in procs[:3])


# --- backups --------------------------------------------------------------------------------

def backup_path(output: Path, backup_dir: Path | None) -> Path:
    return (backup_dir or output.parent) / f"{output.name}{BACKUP_SUFFIX}"


def shq(p) -> str:
    import shlex

    return shlex.quote(str(p))


def backup_report(report: dict, backup: Path | None, output: Path) -> None:
    if backup:
        report["backup"] = str(backup)
        report["restore"] = f"cp {shq(backup)} {shq(output)}"


def dvc_recoverable(repo: Path, path: Path) -> bool:
    """True when path's current bytes are the version DVC tracks in a committed .dvc file or
    dvc.lock (so `git checkout` + `dvc checkout`/`dvc pull` brings them back)."""
    from .atomic import md5_file
    from .dvcmeta import parse_outs
    from .proc import git_ok

    path = path.resolve()
    try:
        rel = path.relative_to(repo).as_posix()
    except ValueError:
        return False
    metas = [path.with_name(path.name + ".dvc")]
    d = path.parent
    while True:
        metas.append(d / "dvc.lock")
        if d == repo or d == d.parent:
            break
        d = d.parent
    md5 = None
    for meta in metas:
        if not meta.exists():
            continue
        rel_meta = meta.relative_to(repo).as_posix()
        if not (git_ok(repo, "ls-files", "--error-unmatch", "--", rel_meta)
                and git_ok(repo, "diff", "--quiet", "HEAD", "--", rel_meta)):
            continue
        try:
            outs = parse_outs(meta.read_text(), rel_meta)
        except OSError:
            continue
        for out in outs:
            if out.path == rel:
                md5 = md5 or md5_file(path)
                if out.md5 == md5:
                    return True
    return False
