"""Kill-point harness: SIGKILL a script right after its N-th git or dvc call.

The bundle runs git and dvc only through `_evlib.proc`, which honours EV_GIT and EV_DVC.
`wrappers(tmp, kill_at=N)` writes two wrapper programs that run the real git/dvc, count
every call in a shared counter file and, once the N-th call has finished, SIGKILL the
process that started them (the script under test) before it sees the result. With
kill_at=0 nothing is killed and the counter says how many calls a clean run makes, so a
test can walk N = 1..calls and re-run the same command after each kill:

    env, counter = wrappers(tmp_path / "w", kill_at=0)
    run_script("model_manager.py", "promote", ..., env=env)
    total = calls(counter)
    for n in range(1, total + 1):
        ... fresh project ...
        env, _ = wrappers(tmp_path / f"w{n}", kill_at=n)
        killed = run_script(..., env=env)   # returncode -9
        again = run_script(...)             # plain re-run: completes or rolls back
        ... compare with the clean run ...
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

_WRAPPER = """#!/usr/bin/env bash
# kill-point wrapper around {real}
counter={counter}
exec 9>>"$counter.lock"
flock 9
n=$(( $(cat "$counter" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$counter"
echo "$n {name} $*" >> "$counter.log"
flock -u 9
{real} "$@"
rc=$?
if [ "$n" -eq {kill_at} ]; then
  kill -9 "$PPID"
  exit 137
fi
exit $rc
"""


def real_dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def wrappers(where: Path, kill_at: int = 0) -> tuple[dict[str, str], Path]:
    """(env to pass to the script, counter file). kill_at=0: count only, never kill."""
    where.mkdir(parents=True, exist_ok=True)
    counter = where / "calls"
    counter.write_text("0\n")
    (where / "calls.log").write_text("")
    env = {}
    for name, real in (("git", shutil.which("git") or "git"), ("dvc", real_dvc())):
        w = where / name
        w.write_text(_WRAPPER.format(real=shlex.quote(real), counter=shlex.quote(str(counter)),
                                     kill_at=int(kill_at), name=name))
        w.chmod(0o755)
        env[f"EV_{name.upper()}"] = str(w)
    return env, counter


def calls(counter: Path) -> int:
    return int(counter.read_text().strip() or 0)


def call_log(counter: Path) -> list[str]:
    """One line per call: 'N git|dvc ARGS...' (what each kill point was after)."""
    return Path(f"{counter}.log").read_text().splitlines()


def killed(cp) -> bool:
    """True when the script was SIGKILLed by the harness (-9) rather than exiting."""
    return cp.returncode in (-9, 137)

