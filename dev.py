#!/usr/bin/env python3
"""Set up this bundle's own virtual environment, then run the demo or the test suite.

    python3 dev.py demo [--keep DIR]     # the three workflows end to end, in a throwaway project
    python3 dev.py test [PYTEST_ARGS]    # ruff, shellcheck, then the whole pytest suite
                                         # (2 pytest-xdist workers; EV_TEST_WORKERS=1: one)
    python3 dev.py bench NAME [ARGS]     # a benchmark from bench/ (bench/NAME.py)

Needs only python3 (3.10+) and git. The environment lives in .venv/ (or $EV_VENV) and is
reinstalled only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("EV_VENV") or ROOT / ".venv")
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> None:
    stamp_file = VENV / ".ev-installed"
    if PY.exists() and stamp_file.exists() and stamp_file.read_text() == _stamp():
        return
    if not PY.exists():
        print(f"dev.py: creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing the bundle's dependencies (one resolve, see pyproject.toml)",
          file=sys.stderr)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", f"{ROOT}[test,s3,demo,plots,dask]"],
                   check=True)
    stamp_file.write_text(_stamp())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["VIRTUAL_ENV"] = str(VENV)
    e.setdefault("DVC_NO_ANALYTICS", "1")
    e.pop("PYTHONHOME", None)
    return e


def run(cmd: list[str]) -> int:
    return subprocess.run(cmd, cwd=ROOT, env=env()).returncode


def _workers(extra: list[str]) -> list[str]:
    """pytest-xdist's options, unless the caller gave their own (-n, --dist, -p no:xdist): the
    suite's tests mostly wait on git, dvc and Python start-ups, so 2 processes (EV_TEST_WORKERS)
    use 2 cores where one leaves one idle. --dist loadfile keeps a file's tests in one worker:
    their module-scoped fixtures (a Dask cluster, a built history) are made once."""
    if any(a.startswith(("-n", "--numprocesses", "--dist")) or a == "no:xdist" for a in extra):
        return []
    n = os.environ.get("EV_TEST_WORKERS", "2")
    return [] if n in ("0", "1") else ["-n", n, "--dist", "loadfile"]


def cmd_test(extra: list[str]) -> int:
    shell_files = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("scripts/*.sh"))
    shell_files += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("evals/*/*.sh"))
    shell_files += [".ci/run"]
    py_paths = [p for p in ("scripts", "tests", "bench", "assets", "evals", "dev.py")
                if (ROOT / p).exists()]
    steps = [
        [str(BIN / "ruff"), "check", *py_paths],
        [str(BIN / "shellcheck"), *shell_files],
    ]
    for step in steps:
        print("$", " ".join(step[:1] + [a for a in step[1:]]), file=sys.stderr)
        rc = run(step)
        if rc:
            print(f"dev.py: {Path(step[0]).name} failed (exit {rc})", file=sys.stderr)
            return rc
    rc = run([str(PY), "-m", "pytest", *_workers(extra), *extra])
    if rc == 5:
        print("dev.py: pytest collected no tests: treated as a failure", file=sys.stderr)
        return 1
    return rc


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    what, extra = argv[0], argv[1:]
    if what not in ("demo", "test", "bench"):
        print(f"dev.py: unknown command {what!r}; use demo, test or bench", file=sys.stderr)
        return 2
    ensure_env()
    if what == "test":
        return cmd_test(extra)
    if what == "demo":
        return run([str(PY), str(ROOT / "scripts" / "demo.py"), *extra])
    if not extra:
        print("dev.py: bench needs a name, e.g. python3 dev.py bench merge", file=sys.stderr)
        return 2
    return run([str(PY), str(ROOT / "bench" / f"{extra[0]}.py"), *extra[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
