"""The one place that runs git and dvc, turning failures into one-line EVErrors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import FAILED, EVError


def git_command() -> list[str]:
    """git, or the program EV_GIT names (the kill-point test harness wraps the real one)."""
    return [os.environ["EV_GIT"]] if os.environ.get("EV_GIT") else ["git"]


def dvc_command() -> list[str]:
    """dvc from this interpreter's environment first, so a venv's dvc wins over PATH.

    EV_DVC overrides it (the kill-point test harness wraps the real one).
    """
    if os.environ.get("EV_DVC"):
        return [os.environ["EV_DVC"]]
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return [str(beside)]
    import shutil

    found = shutil.which("dvc")
    if found:
        return [found]
    return [sys.executable, "-m", "dvc"]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["GIT_TERMINAL_PROMPT"] = "0"  # never prompt: an agent cannot answer
    if extra:
        env.update(extra)
    return env


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith(("ERROR:", "error:", "fatal:")):
            # DVC names what it is about on the line after a trailing colon ("blocked by:",
            # "failed for following targets:"): keep it in the one line
            if ln.endswith(":") and i + 1 < len(lines):
                return f"{ln} {lines[i + 1]}"
            return ln
    return lines[-1] if lines else ""


def _dvc_root(cwd: str | os.PathLike | None) -> Path | None:
    d = Path(cwd or os.getcwd()).resolve()
    for p in (d, *d.parents):
        if (p / ".dvc").is_dir():
            return p
    return None


def _process(pid: int) -> str | None:
    """'PID n: cmdline' of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return f"PID {pid}"
    cmd = " ".join(a for a in raw.decode(errors="replace").split("\0") if a)
    return f"PID {pid}: {cmd[:120]}" if cmd else f"PID {pid}"


def lock_holder(cwd: str | os.PathLike | None) -> str | None:
    """The live process holding DVC's repository lock (.dvc/tmp/lock, which zc.lockfile
    DVC uses writes its pid into) or named in .dvc/tmp/rwlock; None if none is found."""
    root = _dvc_root(cwd)
    if root is None:
        return None
    tmp = root / ".dvc" / "tmp"
    pids = []
    try:
        pids.append(int((tmp / "lock").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        rw = json.loads((tmp / "rwlock").read_text())
        for info in (rw.get("write") or {}).values():
            pids.append(int(info["pid"]))
        for infos in (rw.get("read") or {}).values():
            pids += [int(i["pid"]) for i in infos]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    for pid in dict.fromkeys(pids):
        if pid != os.getpid():
            found = _process(pid)
            if found:
                return found
    return None


def dvc_failure(cp: subprocess.CompletedProcess, cwd: str | os.PathLike | None,
                label: str) -> EVError:
    """One line for a failed dvc call: DVC's own first error line, then what to do."""
    msg = (_first_error_line(cp.stderr or "") or _first_error_line(cp.stdout or "")
           or f"exit {cp.returncode} and no message")
    hint = None
    low = msg.lower()
    if "unable to acquire lock" in low or "is busy" in low or "blocked by" in low:
        holder = lock_holder(cwd)
        hint = (f"another DVC process holds the repository lock ({holder}): wait for it to "
                "finish and re-run, or end it if it is stale" if holder else
                "another DVC process holds the repository lock: wait for it to finish and "
                "re-run (find it with: pgrep -af dvc); if none is running, the lock is stale "
                "and the re-run takes it")
    elif "checkout failed" in low or "missing cache files" in (cp.stderr or "").lower():
        hint = ("the data is neither in the DVC cache nor on the remote: push it from where it "
                "was made (dvc push -T), or pull from the remote that has it (dvc pull -r NAME)")
    return EVError(f"{label} failed: {msg}", code=FAILED, hint=hint)


def _is_dvc(cmd: list[str]) -> bool:
    return bool(cmd) and (cmd[:len(dvc_command())] == dvc_command()
                          or Path(cmd[0]).name == "dvc")


def _loud(args: tuple[str, ...]) -> tuple[str, ...]:
    """DVC's -q silences its ERROR lines too; its output is captured here anyway."""
    return tuple(a for a in args if a not in ("-q", "--quiet"))


def run(cmd: list[str], cwd: str | os.PathLike | None = None, *, check: bool = True,
        env: dict[str, str] | None = None, input: str | None = None,
        what: str | None = None) -> subprocess.CompletedProcess:
    if cmd and cmd[0] == "git":
        cmd = [*git_command(), *cmd[1:]]
    try:
        cp = subprocess.run(cmd, cwd=cwd, env=_env(env), input=input, text=True,
                            capture_output=True, stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EVError(f"{cmd[0]} is not installed or not on PATH",
                      hint="install the bundle's dependencies (python3 dev.py test sets them up)"
                      ) from exc
    if check and cp.returncode != 0:
        label = what or " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:3]))
        if _is_dvc(cmd):
            raise dvc_failure(cp, cwd, label)
        msg = _first_error_line(cp.stderr) or _first_error_line(cp.stdout) or f"exit {cp.returncode}"
        raise EVError(f"{label} failed: {msg}", code=FAILED)
    return cp


def git(repo: str | os.PathLike, *args: str, check: bool = True) -> str:
    """Run git in repo; return stdout without the trailing newline."""
    cp = run([*git_command(), *args], cwd=repo, check=check,
             what=f"git {args[0]}" if args else "git")
    return cp.stdout.rstrip("\n")


def git_ok(repo: str | os.PathLike, *args: str) -> bool:
    return run([*git_command(), *args], cwd=repo, check=False).returncode == 0


def dvc(repo: str | os.PathLike, *args: str, check: bool = True) -> str:
    """Run dvc in repo (never interactive); return stdout."""
    args = _loud(args)
    cp = run([*dvc_command(), *args], cwd=repo, check=check,
             what=f"dvc {args[0]}" if args else "dvc")
    return cp.stdout.rstrip("\n")


def dvc_run(repo: str | os.PathLike, *args: str) -> subprocess.CompletedProcess:
    """Run dvc without raising, for callers that inspect the exit code themselves
    (dvc_failure(cp, repo, label) turns a failure into the same one line dvc() raises)."""
    args = _loud(args)
    return run([*dvc_command(), *args], cwd=repo, check=False)


def dvc_cloud_status(repo: str | os.PathLike, *targets: str
                     ) -> tuple[dict | None, subprocess.CompletedProcess]:
    """`dvc status -c --json [targets]`: (path -> state, or None when dvc failed or printed
    no JSON object; the process, for its error line)."""
    cp = dvc_run(repo, "status", "-c", "--json", *targets)
    try:
        st = json.loads(cp.stdout or "{}") if cp.returncode == 0 else None
    except ValueError:
        st = None
    return (st if isinstance(st, dict) else None), cp


def git_popen(repo: str | os.PathLike, *args: str) -> subprocess.Popen:
    """A long-lived git process with binary pipes (for `cat-file --batch`): many objects,
    one process."""
    try:
        return subprocess.Popen([*git_command(), *args], cwd=repo, env=_env(None),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EVError("git is not installed or not on PATH",
                      hint="install git, then retry") from exc


def git_to_file(repo: str | os.PathLike, dest: str | os.PathLike, *args: str) -> None:
    """Run git in repo with stdout written to dest as bytes (a blob: `cat-file blob X`)."""
    with open(dest, "wb") as fh:
        cp = subprocess.run([*git_command(), *args], cwd=repo, env=_env(None), stdout=fh,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        msg = _first_error_line(cp.stderr.decode(errors="replace")) or f"exit {cp.returncode}"
        raise EVError(f"git {args[0] if args else ''} failed: {msg}", code=FAILED)
