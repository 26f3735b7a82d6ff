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

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import guard
from . import lineage as lineage_mod

# The parts split out of this module, re-exported: runner.X is the API callers use.
from .candidates import _EXTRAS_LOCK, candidate_names, collect_extras, collect_models  # noqa: F401
from .errors import EVError
from .runspec import _SPEC_FIELDS, RunResult, RunSpec  # noqa: F401
from .runstate import (  # noqa: F401
    LOG_FILE,
    RC_FILE,
    STATE,
    _boot_time,
    _proc_start,
    _stat,
    alive,
    describe_exit,
    kill_group,
    owner,
    owner_alive,
    phase_template,
    read_rc,
    read_state,
    shell_code,
    write_phase,
    write_state,
)
from .sandbox import (  # noqa: F401
    _SKIP_ANY_NAME,
    _SKIP_ANY_SUFFIX,
    _SKIP_TOP,
    DB_SIDE,
    SANDBOX_ROOT,
    _parents,
    _private_names,
    clean,
    ensure_ignored,
    extras,
    mirror,
    prepare,
    remove_workdir,
    resolved,
)
from .shard import _TYPES, _open_shard, _shard_info, lineage_values, stamp  # noqa: F401
from .shard import snapshot as shard_snapshot

# Part of this module's API (the Dask executor and sweeps call runner.lineage).
lineage = lineage_mod.lineage
dvc_outs = lineage_mod.dvc_outs


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
        run.state_template = None  # (it may have changed the state: encoded again)
    try:
        code = run.proc.wait()
    except BaseException:  # interrupted: end the run too, never leave it writing
        kill_group(run.state)
        run.proc.wait()
        run.close()
        raise
    return complete(run, code)


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
    state_template: tuple | None = None  # runstate.phase_template(state), with reuse

    def close(self) -> None:
        if self.tee is not None:
            self.tee.join(timeout=10)
            self.tee = None
        self.out.close()


def launch(repo: Path, spec: RunSpec, workdir: Path, *, lineage: dict, stream=None,
           reuse: bool = False, state_extra: dict | None = None,
           log: Path | None = None) -> Launched:
    """Start spec.command in its prepared sandbox (prepare) and record its state."""
    repo, workdir = resolved(repo), Path(workdir)
    tree = workdir / "tree"
    cwd = tree / spec.cwd if spec.cwd not in ("", ".") else tree
    if cwd is not tree and (not cwd.is_dir() or cwd.is_symlink()):  # (tree: as it is)
        cwd = tree
    db = tree / spec.results_db
    env = _base_env()
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
    repo_s = os.fspath(repo)
    watched = {p: _stat(os.path.join(repo_s, p)) for p in spec.private}
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
        run.state_template = phase_template(run.state) if reuse else None
        if run.state_template is not None:
            write_phase(workdir, run.state_template, "running")
        else:
            write_state(workdir, run.state, in_place=reuse)
    except BaseException:  # never leave a command running unrecorded
        kill_group({"pid": run.proc.pid, "started": _proc_start(run.proc.pid)})
        run.proc.wait()
        run.close()
        raise
    return run


_ENV: list = []  # [(os.environ's encoded items when decoded, the decoded copy)]


def _base_env() -> dict:
    """A copy of os.environ. Decoded once while it stays the same (dict(os.environ) decodes
    every variable: 50 us a run in a sweep); any change to it is seen (its encoded items,
    compared whole, one C-level dict comparison)."""
    raw = getattr(os.environ, "_data", None)
    if not isinstance(raw, dict):
        return dict(os.environ)
    if not _ENV or _ENV[0][0] != raw:
        _ENV[:] = [(dict(raw), dict(os.environ))]
    return dict(_ENV[0][1])


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


def complete(run: Launched, code: int, *, snapshot: bool = False) -> RunResult:
    """After the command exited with (Popen) status code: judge it, stamp its rows.
    snapshot: see finish."""
    run.close()
    result, spec = run.result, run.result.spec
    result.seconds = time.monotonic() - run.t0
    result.exit_code = shell_code(code)
    code = result.exit_code
    result.log = str(run.log_path)
    repo_s = os.fspath(run.repo)
    changed = [p for p in spec.private if _stat(os.path.join(repo_s, p)) != run.watched[p]]
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
    return finish(result, run.lineage, state=run.state if run.reuse else None,
                  snapshot=snapshot, state_template=run.state_template)


def finish(result: RunResult, lineage: dict, *, state: dict | None = None,
           snapshot: bool = False, state_template: tuple | None = None) -> RunResult:
    """After a good exit: stamp the rows with lineage, find the model files.

    state: the run's state in a sweep's reused sandbox. The stamp then keeps its rollback
    journal in memory (no journal file created and deleted per run) and the state says
    "stamping" while it runs: a sweep killed mid-stamp may leave a torn shard, and its
    next run redoes such a run instead of collecting it (see cmdsweep).
    snapshot: also read the stamped rows, through the same connection, into
    result.snapshot (shard.snapshot; None if it could not), for a sweep's pack.
    state_template: runstate.phase_template(state), to write the "stamping" state with."""
    spec = result.spec
    tree = Path(result.workdir) / "tree"
    db = tree / spec.results_db
    # one connection reads the rows and stamps them; in a sweep's sandbox the shard is this
    # run's alone (its command has exited): held exclusively (shard._open_shard)
    con = _open_shard(db, exclusive=state is not None)
    try:
        rows, tids = _shard_info(db, con)
        if not rows:
            result.error = (f"the command exited 0 but logged no run to {spec.results_db} "
                            f"(no xetrack rows in its run directory); log with xetrack to "
                            f"{spec.results_db} relative to the current directory, or to "
                            f"$EV_SHARD_DB")
            return result
        try:
            if state is not None and state_template is not None:
                write_phase(result.workdir, state_template, "stamping")
            elif state is not None:
                write_state(result.workdir, {**state, "phase": "stamping"}, in_place=True)
            # (no "stamped" after it: the shard is renamed into place moments later, and a
            # kill in between costs only a redone run)
            stamp(db, spec, lineage, result.seconds, con=con, journal=state is None)
        except EVError as exc:
            result.error, result.error_code = exc.line(), exc.code
            return result
        if snapshot:  # (an attribute, not a field: never in the result's dict)
            from .sweeppack import SNAPSHOT_ROWS

            result.snapshot = shard_snapshot(con, SNAPSHOT_ROWS)
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
