"""Run one training command, unchanged, for one run, and collect what it wrote.

The command runs in a per-run sandbox: a folder (inside the repository, so the command's own
``git``/``dvc`` calls find it) that mirrors the repository with symlinks, except the run's
output paths (the results DB, the model paths), which are private: absent at the start and
written into the sandbox. A script that writes the fixed paths ``results/experiments.db`` and
``models/production/model.bin`` therefore writes its own copies, and N of them can run at once.
Nothing else it writes may reach the project through a link (see ``guard``): files linked to a
DVC cache object are private copies, and a run that changed any other linked file fails.

Afterwards the run's results DB (its "shard") gets the bundle's lineage columns
(``settings.LINEAGE_COLS``: ``ev_run``, ``ev_command``, ``ev_commit``, ``ev_dirty``,
``ev_data_md5``, ``ev_params``, ``ev_gpus``, ``ev_seconds``, plus ``version``) on every row,
and the model files become candidates ``<candidates>/<version>--<track_id><ext>``.

Public API (stable; the Dask helper calls it on a worker):

    spec = RunSpec(command=[...], version="e0.1.0", key="a1b2c3d4e5f6", params={...})
    lin = lineage(repo, settings.load(repo))          # once per commit, not per run
    res = execute(repo, spec, workdir, lineage=lin)   # runs it; touches nothing but workdir
    res.ok, res.error, res.shard, res.models, res.track_ids, res.rows
    collect_models(res, repo / "models/candidates")   # then merge res.shard into the DB

`execute` is pure with respect to the project: it reads the repository, writes only under
`workdir`, and returns paths inside `workdir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import EVENTS_TABLE, guard
from . import lineage as lineage_mod
from .errors import FAILED, USAGE, EVError
from .sql import add_columns, quote_ident, sqlite_columns, sqlite_connect, sqlite_tables

SANDBOX_ROOT = ".ev"  # <repo>/.ev/: per-run sandboxes (git- and dvc-ignored)
# Never mirrored into a sandbox: the repository's own metadata (the command's git and dvc
# calls find the real ones above the sandbox), and DVC stage files, which DVC would
# otherwise find twice when it walks the workspace.
_SKIP_TOP = {".git", ".dvc", SANDBOX_ROOT}
_SKIP_ANY_SUFFIX = (".dvc",)
_SKIP_ANY_NAME = {"dvc.yaml", "dvc.lock"}
DB_SIDE = ("-journal", "-wal", "-shm")
STATE = "state.json"
RC_FILE = "rc"
LOG_FILE = "log"


@dataclass
class RunSpec:
    command: list[str]  # final argv (placeholders already filled in)
    version: str
    key: str  # the run key (ev_run): a sweep's hash of params, or run.py's own id
    params: dict = field(default_factory=dict)  # recorded as ev_params
    results_db: str = "results/experiments.db"  # repo-relative: where the command logs
    model_outputs: list[str] = field(default_factory=list)  # repo-relative model paths
    require_models: bool = True  # a model output the command did not write is an error
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES for this run (None: not set)
    cwd: str = "."  # repo-relative directory the command starts in
    env: dict = field(default_factory=dict)  # extra environment
    export_params: bool = True  # set EV_PARAMS (a sweep's values); run.py's are only recorded
    protect: list[str] = field(default_factory=list)  # also private, never collected (the
    # production model: a script that writes it writes its own copy, which is dropped)
    candidates_dir: str = ""  # a real folder in the sandbox (never a link to the project's):
    # a file the command writes there is one of the run's models, collected only if it is good

    @property
    def private(self) -> list[str]:
        return list(dict.fromkeys([self.results_db, *self.model_outputs, *self.protect]))

    @property
    def real_dir(self) -> str:
        """The candidates folder, unless it is (inside) a private output already."""
        c = os.path.normpath(self.candidates_dir).replace(os.sep, "/") if self.candidates_dir \
            else ""
        if not c or any(c == q or c.startswith(q + "/") for q in
                        (os.path.normpath(p).replace(os.sep, "/") for p in self.private)):
            return ""
        return c

    def to_dict(self) -> dict:
        # By hand, not dataclasses.asdict (a deep copy through every value): it is written
        # into each run's state, on a sweep's hot path. Fields are JSON-like already.
        return {f: getattr(self, f) for f in _SPEC_FIELDS}


_SPEC_FIELDS = tuple(RunSpec.__dataclass_fields__)


@dataclass
class RunResult:
    spec: RunSpec
    workdir: str
    exit_code: int | None = None
    error: str | None = None  # one line; None when the run is good
    error_code: int = FAILED  # the exit code that error maps to (USAGE: bad input)
    shard: str | None = None  # the run's results DB, lineage stamped (inside workdir)
    rows: int = 0
    track_ids: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # output path -> file in workdir
    log: str | None = None
    seconds: float = 0.0
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


# Part of this module's API (the Dask executor and sweeps call runner.lineage).
lineage = lineage_mod.lineage
dvc_outs = lineage_mod.dvc_outs


# --- the sandbox --------------------------------------------------------------------------

def _private_names(private: list[str]) -> set[str]:
    out = set()
    for p in private:
        out.add(p)
        out.update(p + side for side in DB_SIDE)
    return out


def mirror(repo: Path, tree: Path, private: list[str], cwd: str = ".", real: str = "", *,
           copies: list[str] = (), hide: set = frozenset()) -> None:
    """tree/ = the repository as symlinks, with the private paths (and their parents) and the
    folder `real` (the candidates folder: its files linked one by one) real. copies: files
    left out here (prepare puts private copies there; their folders are real); hide: paths
    not shown at all (guard.MOVED).

    On an existing tree (a reused sandbox) only the missing links are added.
    """
    private = [os.path.normpath(p).replace(os.sep, "/") for p in private]
    names = _private_names(private) | set(copies) | set(hide)
    parents = _parents(private, cwd, real, copies)

    def walk(src: Path, dst: Path, prefix: str) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        have = set(os.listdir(dst))
        with os.scandir(src) as it:
            for entry in it:
                rel = prefix + entry.name
                if (not prefix and entry.name in _SKIP_TOP) or rel in names:
                    continue
                if entry.name in _SKIP_ANY_NAME or entry.name.endswith(_SKIP_ANY_SUFFIX):
                    continue
                if rel in parents and entry.is_dir(follow_symlinks=False):
                    if (dst / entry.name).is_symlink():  # now real (a copy inside it)
                        (dst / entry.name).unlink()
                    walk(Path(entry.path), dst / entry.name, rel + "/")
                elif entry.name not in have:
                    os.symlink(entry.path, dst / entry.name)

    walk(repo, tree, "")
    for p in private:
        (tree / p).parent.mkdir(parents=True, exist_ok=True)
    if real:
        (tree / real).mkdir(parents=True, exist_ok=True)


def clean(result_tree: Path, private: list[str], cwd: str = ".", real: str = "", *,
          extra: bool = True) -> None:
    """Empty a reused sandbox: the private outputs and (extra) whatever else a run created
    there."""
    import shutil

    fake = RunResult(spec=RunSpec(command=[], version="", key="", results_db=private[0],
                                  protect=private[1:], cwd=cwd, candidates_dir=real),
                     workdir=str(result_tree.parent))
    for rel in [*(extras(fake) if extra else []), *sorted(_private_names(private))]:
        p = result_tree / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()


def _stat(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _proc_start(pid: int) -> float | None:
    """When the process with this pid started (epoch seconds), from /proc; None if none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


_BOOT: list[float] = []


def _boot_time() -> float:
    if not _BOOT:
        with open("/proc/stat", encoding="ascii") as fh:
            _BOOT.append(next(float(ln.split()[1]) for ln in fh if ln.startswith("btime ")))
    return _BOOT[0]


def owner() -> dict:
    """This process, as a state's owner_pid/owner_started (see alive)."""
    return {"owner_pid": os.getpid(), "owner_started": _proc_start(os.getpid())}


def owner_alive(state: dict) -> bool:
    return alive({"pid": state.get("owner_pid"), "started": state.get("owner_started")})


def alive(state: dict) -> bool:
    """The run's process still lives: its pid exists and started when the state says (a
    reused pid started later). The start is read only here, never on the hot path."""
    pid, started = state.get("pid"), state.get("started")
    if not pid or started is None:
        return False
    start = _proc_start(pid)
    return start is not None and abs(start - float(started)) < 3.0


def read_state(workdir: Path) -> dict:
    try:
        return json.loads((Path(workdir) / STATE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(workdir: Path, state: dict, *, in_place: bool = False) -> None:
    """in_place: the sandbox is reused run after run (a sweep's): the state is rewritten in
    its own inode (atomic.rewrite_small) instead of replaced by a new file."""
    from .atomic import rewrite_small, write_bytes

    # Atomic (never torn) but not fsynced: a state lost to a power cut means a redone run.
    data = (json.dumps(state, sort_keys=True, default=str) + "\n").encode("utf-8")
    if in_place:
        rewrite_small(Path(workdir) / STATE, data)
    else:
        write_bytes(Path(workdir) / STATE, data, durable=False)


def kill_group(state: dict, wait_s: float = 10.0) -> bool:
    """End a run's whole process group (it runs in its own session). True if it is gone."""
    pid = state.get("pid")
    if not alive(state):
        return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s / 2
        while time.monotonic() < deadline:
            if not alive(state):
                return True
            try:  # reap it if it is our own child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
    return not alive(state)


# --- running ------------------------------------------------------------------------------

def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def tail(path: Path, n: int = 65536) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tee(pipe, log, stream) -> None:
    for chunk in iter(lambda: pipe.read1(65536), b""):
        log.write(chunk)
        try:
            stream.write(chunk.decode("utf-8", "replace"))
            stream.flush()
        except (OSError, ValueError):
            pass
    pipe.close()


def shell_code(code: int) -> int:
    """The command's exit code as Python reports it: -N when a signal N ended it (the
    wrapping sh reports 128+N)."""
    return -(code - 128) if 128 < code < 128 + 65 else code


def read_rc(workdir: Path, key: str | None = None) -> int | None:
    """The exit code the wrapper recorded (a run whose parent died), or None. The file's
    first line is "<code> <run key>"; with key, a code another run left is None."""
    try:
        first = (Path(workdir) / RC_FILE).read_text().split("\n", 1)[0].split()
        if key is not None and first[1:] != [key]:
            return None
        return shell_code(int(first[0]))
    except (OSError, ValueError, IndexError):
        return None


def describe_exit(code: int) -> str:
    if code < 0 or code > 128:
        num = -code if code < 0 else code - 128
        try:
            return f"killed by {signal.Signals(num).name}"
        except ValueError:
            return f"killed by signal {num}"
    return f"exit {code}"


def execute(repo: Path, spec: RunSpec, workdir: Path, *, lineage: dict,
            stream=None, on_start=None, reuse: bool = False,
            state_extra: dict | None = None, log: Path | None = None) -> RunResult:
    """Run spec.command in a sandbox under workdir; stamp its rows; find its model files.

    The command's stdout+stderr go to workdir/log; with stream (a text file object such as
    sys.stderr) also to it, as they come. on_start(state) is called
    once the process runs (state has pid and start time). reuse=True: workdir may hold the
    sandbox of an earlier run (of the same outputs), which is emptied and reused: a worker
    that runs many runs pays for its sandbox once. log: where the output goes (default
    workdir/log). Never raises for a failed run: check result.ok / result.error.
    = prepare + launch + wait + complete (a sweep calls the steps itself, to overlap runs).
    """
    prepare(repo, spec, workdir, reuse=reuse)
    run = launch(repo, spec, workdir, lineage=lineage, stream=stream, reuse=reuse,
                 state_extra=state_extra, log=log)
    if run.proc is None:
        return run.result
    if on_start:
        on_start(run.state)
    try:
        code = run.proc.wait()
    except BaseException:  # interrupted: end the run too, never leave it writing
        kill_group(run.state)
        run.proc.wait()
        run.close()
        raise
    return complete(run, code)


def prepare(repo: Path, spec: RunSpec, workdir: Path, *, reuse: bool = False,
            collected: bool = False) -> None:
    """Make workdir/tree the run's sandbox (see execute); with reuse, empty an earlier run's.
    collected: that run was landed (its extra files moved out by collect_extras), so only
    its private paths are left to remove: the tree is not walked again for extras."""
    repo, workdir = Path(repo).resolve(), Path(workdir)
    tree = workdir / "tree"
    private = spec.private
    if workdir.exists() and not reuse:
        raise EVError(f"run directory {workdir} exists already", code=FAILED,
                      hint="remove it (a run left by a killed process), then re-run")
    if reuse and tree.is_dir():
        clean(tree, private, spec.cwd, spec.real_dir, extra=not collected)
        # The rc file is left: it names its run (read_rc), and the next run's shell writes
        # over it in place (ext4 pays for each file created, truncated or removed).
        with contextlib.suppress(FileNotFoundError):
            (workdir / LOG_FILE).unlink()
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
    mirror(repo, tree, private, spec.cwd, spec.real_dir, copies=copies, hide=hide)
    for rel in copies:  # a private copy, fresh unless it and its source are as copied
        src, old = guard.ident(repo / rel), rec["copies"].get(rel)
        if old is None or old[0] != src or guard.ident(tree / rel) != old[1]:
            rec["copies"][rel] = (src, guard.copy_in(repo / rel, tree / rel))
    if copies or rec["copies"]:
        guard.save_copies(workdir, rec)
    rec["snap"] = snap


@dataclass
class Launched:
    """A started run: wait for proc, then complete(launched, exit status)."""
    result: RunResult
    proc: Any  # subprocess.Popen or _Spawned; None: it could not start (result says why)
    state: dict
    out: Any
    log_path: Path
    watched: dict
    repo: Path
    lineage: dict
    t0: float
    linked: dict = field(default_factory=dict)  # guard's identities of the linked files
    tee: threading.Thread | None = None
    reuse: bool = False  # a sweep's reused sandbox (its state is rewritten in place)

    def close(self) -> None:
        if self.tee is not None:
            self.tee.join(timeout=10)
            self.tee = None
        self.out.close()


def launch(repo: Path, spec: RunSpec, workdir: Path, *, lineage: dict, stream=None,
           reuse: bool = False, state_extra: dict | None = None,
           log: Path | None = None) -> Launched:
    """Start spec.command in its prepared sandbox (prepare) and record its state."""
    repo, workdir = Path(repo).resolve(), Path(workdir)
    tree = workdir / "tree"
    cwd = tree / spec.cwd if spec.cwd not in ("", ".") else tree
    if not cwd.is_dir() or cwd.is_symlink():
        cwd = tree
    db = tree / spec.results_db
    env = dict(os.environ)
    env.update({"EV_VERSION": spec.version, "EV_RUN_KEY": spec.key,
                "EV_SHARD_DB": str(db), "EV_RUN_DIR": str(tree), "PWD": str(cwd)})
    env.pop("EV_PARAMS", None)
    if spec.export_params:
        env["EV_PARAMS"] = json.dumps(spec.params, sort_keys=True, default=str)
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpus
    env.update({k: str(v) for k, v in spec.env.items()})
    env.setdefault("DVC_NO_ANALYTICS", "1")
    rc_file = workdir / RC_FILE
    env["EV_RC_FILE"] = str(rc_file)
    watched = {p: _stat(repo / p) for p in spec.private}
    result = RunResult(spec=spec, workdir=str(workdir))
    # sh records the exit code and the run key in a file, so a run whose parent was killed
    # can still be judged; its own session lets a whole run (with its children) be ended at
    # once. `1<>` writes over the file without truncating it (a reused sandbox's rc file:
    # only the first line counts).
    wrapped = ["/bin/sh", "-c", '"$@"; rc=$?; printf "%s %s\\n" "$rc" "$EV_RUN_KEY" '
               '1<>"$EV_RC_FILE"; exit "$rc"', "sh", *spec.command]
    log_path = Path(log) if log is not None else workdir / LOG_FILE
    out = open(log_path, "wb")  # noqa: SIM115 - closed by Launched.close
    run = Launched(result=result, proc=None, state={}, out=out, log_path=log_path,
                   watched=watched, repo=repo, lineage=lineage, t0=time.monotonic(),
                   linked=guard.box(workdir).get("snap") or {}, reuse=reuse)
    try:
        if stream is None:
            run.proc = _spawn(wrapped, cwd, env, out)
        else:
            run.proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
    except OSError as exc:
        run.close()
        result.exit_code, result.error = 127, f"cannot start the command: {exc}"
        return run
    try:
        if stream is not None:
            run.tee = threading.Thread(target=_tee, args=(run.proc.stdout, out, stream),
                                       daemon=True)
            run.tee.start()
        run.state = {"pid": run.proc.pid, "key": spec.key,
                     "version": spec.version, "phase": "running", "started": time.time(),
                     "spec": spec.to_dict(), "lineage": lineage, **(state_extra or {})}
        result.pid = run.proc.pid
        write_state(workdir, run.state, in_place=reuse)
    except BaseException:  # never leave a command running unrecorded
        kill_group({"pid": run.proc.pid, "started": _proc_start(run.proc.pid)})
        run.proc.wait()
        run.close()
        raise
    return run


class _Spawned:
    """A child started by os.posix_spawn, with the part of Popen's interface runs use."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _spawn(argv: list[str], cwd: Path, env: dict, out) -> _Spawned:
    """argv (a /bin/sh wrapper) in its own session, stdin /dev/null, stdout+stderr to out,
    started in cwd by the shell itself. os.posix_spawn, not subprocess.Popen: one C call,
    so a sweep's collector thread holding the GIL never delays a start (Popen waits for
    the GIL several times per start: 8 ms each with a busy thread, against 0.4 ms here).
    Every file the bundle opens is close-on-exec, so the command inherits none of them
    (descriptors the script's own caller passed it stay open, as for a command a shell
    runs)."""
    argv = [argv[0], argv[1], 'cd -- "$1" || exit 127; shift; ' + argv[2], argv[3],
            str(cwd), *argv[4:]]
    fa = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
          (os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
    # As Popen's restore_signals: Python ignores SIGPIPE and SIGXFSZ, a command must not.
    return _Spawned(os.posix_spawn(argv[0], argv, env, file_actions=fa, setsid=True,
                                   setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)))


def complete(run: Launched, code: int) -> RunResult:
    """After the command exited with (Popen) status code: judge it, stamp its rows."""
    run.close()
    result, spec = run.result, run.result.spec
    result.seconds = time.monotonic() - run.t0
    result.exit_code = shell_code(code)
    code = result.exit_code
    result.log = str(run.log_path)
    changed = [p for p in spec.private if _stat(run.repo / p) != run.watched[p]]
    if changed:
        result.error = (f"the command wrote {changed[0]} in the repository itself, not in its "
                        f"run directory (an absolute path?); write it relative to the current "
                        f"directory, or to $EV_SHARD_DB")
        return result
    through = guard.changed(run.repo, run.linked)
    if not through:
        guard.box(Path(result.workdir))["clean"] = True
    if through:
        more = f" (and {len(through) - 1} other files)" if len(through) > 1 else ""
        result.error = (f"the command changed the project's {through[0]}{more} through its "
                        f"sandbox's link; nothing was collected; restore it "
                        f"({guard.restore_hint(run.repo, through[0])}) and make the command "
                        f"write new files instead of changing the project's")
        return result
    if code != 0:
        result.rows, result.track_ids = _shard_info(
            Path(result.workdir) / "tree" / spec.results_db)
        last = last_line(tail(run.log_path))
        result.error = (f"the command failed ({describe_exit(code)})"
                        + (f": {last}" if last else "") + "; nothing was collected")
        return result
    return finish(result, run.lineage, state=run.state if run.reuse else None)


def finish(result: RunResult, lineage: dict, *, state: dict | None = None) -> RunResult:
    """After a good exit: stamp the rows with lineage, find the model files.

    state: the run's state in a sweep's reused sandbox. The stamp then keeps its rollback
    journal in memory (no journal file created and deleted per run) and the state says
    "stamping" while it runs: a sweep killed mid-stamp may leave a torn shard, and its
    next run redoes such a run instead of collecting it (see cmdsweep)."""
    spec = result.spec
    tree = Path(result.workdir) / "tree"
    db = tree / spec.results_db
    con = _open_shard(db)  # one connection reads the rows and stamps them
    try:
        rows, tids = _shard_info(db, con)
        if not rows:
            result.error = (f"the command exited 0 but logged no run to {spec.results_db} "
                            f"(no xetrack rows in its run directory); log with xetrack to "
                            f"{spec.results_db} relative to the current directory, or to "
                            f"$EV_SHARD_DB")
            return result
        try:
            if state is not None:
                write_state(result.workdir, {**state, "phase": "stamping"}, in_place=True)
            # (no "stamped" after it: the shard is renamed into place moments later, and a
            # kill in between costs only a redone run)
            stamp(db, spec, lineage, result.seconds, con=con, journal=state is None)
        except EVError as exc:
            result.error, result.error_code = exc.line(), exc.code
            return result
    finally:
        if con is not None:
            con.close()
    result.shard, result.rows, result.track_ids = str(db), rows, tids
    for p in spec.model_outputs:
        f = tree / p
        if f.exists() and not f.is_symlink():
            result.models[p] = str(f)
        elif spec.require_models:
            result.error = (f"the command exited 0 but wrote nothing at --model-output {p}; "
                            f"check the path it saves its model to")
            return result
    cdir = tree / spec.real_dir if spec.real_dir else None
    if cdir is not None and cdir.is_dir():  # files it wrote into the candidates folder itself
        for e in sorted(os.scandir(cdir), key=lambda e: e.name):
            rel = f"{spec.real_dir}/{e.name}"
            if not e.is_symlink() and rel not in result.models and rel not in spec.private:
                result.models[rel] = e.path
    if result.models and len(tids) != 1:
        result.error = (f"the command logged {len(tids)} runs (track_ids) but its model "
                        f"files can be one run's candidates only; log one run per command")
    return result


def _open_shard(db: Path) -> sqlite3.Connection | None:
    if not db.is_file():
        return None
    try:
        return sqlite_connect(db)
    except sqlite3.DatabaseError:
        return None


def _shard_info(db: Path, con: sqlite3.Connection | None = None) -> tuple[int, list[str]]:
    """(rows, track_ids) of a run's results DB; (0, []) if it is missing or not a DB.
    con: an open connection to db (left open), else one is opened and closed here."""
    own = con is None
    if own:
        con = _open_shard(db)
    if con is None:
        return 0, []
    try:
        if EVENTS_TABLE not in sqlite_tables(con):
            return 0, []
        t = quote_ident(EVENTS_TABLE)
        rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        tids = [r[0] for r in con.execute(
            f"SELECT DISTINCT track_id FROM {t} WHERE track_id IS NOT NULL ORDER BY 1")]
        return rows, tids
    except sqlite3.DatabaseError:
        return 0, []
    finally:
        if own:
            con.close()


def lineage_values(spec: RunSpec, lineage: dict, seconds: float | None = None) -> dict:
    return {"ev_run": spec.key, "ev_command": shlex.join(spec.command),
            "ev_commit": lineage.get("ev_commit"),
            "ev_dirty": 1 if lineage.get("ev_dirty") else 0,
            "ev_data_md5": lineage.get("ev_data_md5") or "{}",
            "ev_params": json.dumps(spec.params, sort_keys=True, default=str),
            "ev_gpus": spec.gpus if spec.gpus is not None else "",
            "ev_seconds": round(seconds, 3) if seconds is not None else None}


_TYPES = {"ev_dirty": "INTEGER", "ev_seconds": "REAL"}


def stamp(db: Path, spec: RunSpec, lineage: dict, seconds: float | None = None, *,
          con: sqlite3.Connection | None = None, journal: bool = True) -> None:
    """Write the lineage columns (and version) on every row of the run's results DB.
    con: an open connection to db to use (left open). journal=False: the rollback journal
    in memory, for a caller that marks the stamp as under way (a kill may tear the file)."""
    values = lineage_values(spec, lineage, seconds)
    own = con is None
    if own:
        con = sqlite_connect(db)
    # One transaction, not fsynced: the file is the run's own until it is renamed into the
    # shards folder, and a shard that a power cut tore reads as not done (the run is redone).
    level = con.isolation_level
    con.isolation_level = None
    con.execute("PRAGMA synchronous=OFF")
    if not journal and con.execute("PRAGMA journal_mode").fetchone()[0] == "delete":
        con.execute("PRAGMA journal_mode=MEMORY")  # this connection only; WAL is left as is
    try:
        t = quote_ident(EVENTS_TABLE)
        cols = {c[0] for c in sqlite_columns(con, EVENTS_TABLE)}
        if "version" in cols:
            other = [r[0] for r in con.execute(
                f"SELECT DISTINCT version FROM {t} WHERE version IS NOT NULL "
                f"AND CAST(version AS TEXT) != ?", [spec.version])]
            if other:
                raise EVError(f"the command logged version {other[0]!r} but the run is "
                              f"--version {spec.version}", code=USAGE,
                              hint="pass the same version to both, or let the bundle set it")
        con.execute("BEGIN IMMEDIATE")
        try:
            add_columns(con, EVENTS_TABLE, [(name, _TYPES.get(name, "TEXT"))
                                            for name in [*values, "version"]
                                            if name not in cols])
            sets = ", ".join(f"{quote_ident(k)} = ?" for k in values)
            con.execute(f"UPDATE {t} SET {sets}, version = ?", [*values.values(), spec.version])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        if own:
            con.close()
        else:
            con.isolation_level = level


# --- collecting ---------------------------------------------------------------------------

def candidate_names(result: RunResult) -> dict[str, str]:
    """{output path: candidate file name} for the run's model files."""
    spec = result.spec
    if not result.models:
        return {}
    tid = result.track_ids[0]
    many = len(spec.model_outputs) > 1
    out = {}
    for p in result.models:
        name = os.path.basename(p.rstrip("/"))
        if p not in spec.model_outputs:  # its own file in the candidates folder: name kept
            own = f"{spec.version}--{tid}"  # (already named after the run: as it is)
            out[p] = name if name == own or name.startswith(own + ".") else f"{own}.{name}"
            continue
        stem, dot, ext = name.partition(".")
        suffix = (f".{stem}" if many else "") + (f".{ext}" if dot else "")
        out[p] = f"{spec.version}--{tid}{suffix}"
    return out


def collect_models(result: RunResult, candidates_dir: Path, names: dict | None = None
                   ) -> dict[str, str]:
    """Move the run's model files into candidates_dir (idempotent). {output: candidate}."""
    import filecmp

    names = names or candidate_names(result)
    candidates_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for p, name in names.items():
        src, dest = Path(result.models[p]), candidates_dir / name
        if src.exists():
            if dest.exists():
                same = src.is_file() and dest.is_file() and filecmp.cmp(src, dest, False)
                if not same:
                    raise EVError(f"candidate {dest} exists already with other content",
                                  code=FAILED, hint="move it aside, then re-run")
            else:
                try:
                    os.replace(src, dest)  # same file system: a rename, no copy
                except OSError:
                    import shutil
                    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
                    (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
                    os.replace(tmp, dest)
        elif not dest.exists():
            raise EVError(f"model file {src} is gone and {dest} does not exist", code=FAILED)
        done[p] = str(dest)
    return done


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
    tree = Path(result.workdir) / "tree"
    private = spec.private
    copies = guard.copies_of(result.workdir)
    names = _private_names(private) | set(copies)
    parents = _parents(private, spec.cwd, spec.real_dir, copies)
    names |= set(result.models)  # the run's models are collected as candidates, not extras
    found: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink() or rel in names or e.name == "__pycache__":
                    continue
                if e.is_dir(follow_symlinks=False) and (rel in parents or not prefix and
                                                        rel == "."):
                    walk(Path(e.path), rel + "/")
                else:
                    found.append(rel)

    if tree.is_dir():
        walk(tree, "")
    return sorted(found)


_EXTRAS_LOCK = threading.Lock()


def collect_extras(result: RunResult, repo: Path, spill: Path | None) -> dict:
    """Move the run's extra files into the repository where nothing is there yet (folders
    are merged); the others (another run wrote the same path) go under spill/."""
    moved, kept = [], []
    tree = Path(result.workdir) / "tree"

    def put(src: Path, rel: str) -> None:
        dest = Path(repo) / rel
        if src.is_dir() and not src.is_symlink() and dest.is_dir() and not dest.is_symlink():
            for child in sorted(os.listdir(src)):
                put(src / child, f"{rel}/{child}")
        elif not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved.append(rel)
        elif spill is not None:
            (spill / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, spill / rel)
            kept.append(str(spill / rel))

    with _EXTRAS_LOCK:
        for rel in extras(result):
            put(tree / rel, rel)
        guard.MOVED.setdefault(str(Path(repo).resolve()), set()).update(moved)
    return {"moved": moved, "kept": kept}


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
