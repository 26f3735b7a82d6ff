"""The one place that runs git and dvc, turning failures into one-line EVErrors."""

from __future__ import annotations

import os
import shutil
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
    for ln in lines:
        if ln.startswith(("ERROR:", "error:", "fatal:")):
            return ln
    return lines[-1] if lines else ""


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
    cp = run([*dvc_command(), *args], cwd=repo, check=check,
             what=f"dvc {args[0]}" if args else "dvc")
    return cp.stdout.rstrip("\n")


def dvc_run(repo: str | os.PathLike, *args: str) -> subprocess.CompletedProcess:
    """Run dvc without raising, for callers that inspect the exit code themselves."""
    return run([*dvc_command(), *args], cwd=repo, check=False)


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
