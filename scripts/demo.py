#!/usr/bin/env python3
"""Run the bundle's workflows end to end in a throwaway project and show what a user sees."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib.errors import EVError  # noqa: E402
from _evlib.proc import dvc, git, run  # noqa: E402

PROG = "demo.py"
SKILL = Path(__file__).resolve().parents[1]


def build():
    p = cli.parser(PROG, __doc__, "python scripts/demo.py --keep /tmp/ev-demo", repo=False)
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="build the project in DIR (must not exist) and leave it there")
    return p


class Demo:
    def __init__(self, root: Path, quiet: bool):
        self.root = root
        self.proj = root / "project"
        self.quiet = quiet
        self.summary: dict = {}

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def step(self, title: str) -> None:
        self.say(f"\n=== {title} ===")

    def py(self, script: Path, *args: str, cwd: Path | None = None) -> str:
        cp = run([sys.executable, str(script), *args], cwd=cwd or self.proj,
                 what=f"{script.name} {' '.join(args[:1])}")
        return cp.stdout

    def setup(self) -> None:
        self.step("project: git + dvc + local-directory remote")
        self.proj.mkdir(parents=True)
        git(self.proj, "init", "-q", "-b", "main")
        git(self.proj, "config", "user.name", "Demo")
        git(self.proj, "config", "user.email", "demo@example.com")
        dvc(self.proj, "init", "-q")
        dvc(self.proj, "config", "core.analytics", "false")
        dvc(self.proj, "remote", "add", "-d", "storage", str(self.root / "dvc-remote"))
        for name in ("train.py", "prepare_data.py"):
            shutil.copy(SKILL / "assets" / name, self.proj / name)
        self.py(self.proj / "prepare_data.py")
        dvc(self.proj, "add", "data/train.parquet", "data/test.parquet")
        git(self.proj, "add", "-A")
        git(self.proj, "commit", "-q", "-m", "project skeleton")
        self.say(f"project at {self.proj}")

    def sequential(self) -> None:
        self.step("workflow 1: sequential experiment e0.1.0")
        out = self.py(self.proj / "train.py", "--version", "e0.1.0", "--model", "logreg")
        self.say(out.strip())
        dvc(self.proj, "add", "results/experiments.db")
        git(self.proj, "add", "-A")
        git(self.proj, "commit", "-q", "-m", "experiment: e0.1.0 - logreg baseline")
        git(self.proj, "tag", "-a", "e0.1.0", "-m", "model=logreg | baseline")
        dvc(self.proj, "push")
        self.say(git(self.proj, "tag", "-l", "e*", "-n9"))
        self.summary["tags"] = git(self.proj, "tag", "-l").split()

    def run_all(self) -> dict:
        start = time.time()
        self.setup()
        self.sequential()
        self.summary["seconds"] = round(time.time() - start, 1)
        self.summary["project"] = str(self.proj)
        return self.summary


def handler(args) -> int:
    if args.keep:
        root = Path(args.keep).resolve()
        if root.exists():
            raise EVError(f"--keep {root} already exists", code=2,
                          hint="name a folder that does not exist yet")
        root.mkdir(parents=True)
        summary = Demo(root, args.json).run_all()
    else:
        with tempfile.TemporaryDirectory(prefix="ev-demo-") as tmp:
            summary = Demo(Path(tmp), args.json).run_all()
    cli.emit(args, summary, f"\ndemo finished in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
