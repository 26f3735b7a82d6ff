"""A run's state in its sandbox: state.json (pid, start time, spec, lineage), the exit-code
file its shell wrapper writes (rc), liveness of its process and ending its process group.
Split out of runner.py (re-exported there)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

STATE = "state.json"
RC_FILE = "rc"
LOG_FILE = "log"


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


_MARK = "\0ev-phase\0"


def phase_template(state: dict) -> tuple[bytes, bytes] | None:
    """write_state's bytes for state with any "phase", as (before, after) the phase's JSON
    text: a run's state is written twice ("running", then "stamping") and encoded once.
    None if the marker occurs elsewhere in the state (then write_state encodes it)."""
    text = json.dumps({**state, "phase": _MARK}, sort_keys=True, default=str) + "\n"
    parts = text.split(json.dumps(_MARK))
    if len(parts) != 2:
        return None
    return parts[0].encode("utf-8"), parts[1].encode("utf-8")


def write_phase(workdir: Path, template: tuple[bytes, bytes], phase: str) -> None:
    """write_state(workdir, {**state, "phase": phase}, in_place=True), state being the one
    phase_template(state) made template of: the same bytes."""
    from .atomic import rewrite_small

    rewrite_small(Path(workdir) / STATE, template[0] + json.dumps(phase).encode() + template[1])


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
