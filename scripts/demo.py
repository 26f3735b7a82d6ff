#!/usr/bin/env python3
"""Run the bundle's three workflows end to end in a throwaway project and show what a user sees.

A real project (git, DVC, a local-directory remote), real data (scikit-learn's breast-cancer
set), real fitted models and real metrics, all through the bundle's own scripts:
  1. a sequential experiment, tagged with a suggested message;
  2. a parameter sweep in parallel (one shard DB per run, merged), the best run promoted and
     the rest kept as candidates;
  3. two worktree experiments (a forest model; more training data with a finer C) merged back
     into main, the best run overall promoted (it came from a worktree), both worktrees torn
     down only once nothing would be lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _evlib import cli  # noqa: E402
from _evlib.errors import USAGE, EVError  # noqa: E402
from _evlib.proc import dvc, git, run  # noqa: E402

PROG = "demo.py"
SKILL = Path(__file__).resolve().parents[1]
SCRIPTS = SKILL / "scripts"


def build():
    p = cli.parser(PROG, __doc__, "python scripts/demo.py --keep /tmp/ev-demo", repo=False)
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="build the project in DIR (must not exist) and leave it there")
    return p


class Demo:
    def __init__(self, root: Path, quiet: bool, charts_dir: Path | None = None):
        self.root = root
        self.charts_dir = charts_dir or root
        self.proj = root / "project"
        self.quiet = quiet
        self.summary: dict = {"merges": [], "tags": {}}

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def step(self, title: str) -> None:
        self.say(f"\n=== {title} ===")

    def py(self, script: Path | str, *args: str, cwd: Path | None = None) -> str:
        cp = run([sys.executable, str(script), *args], cwd=cwd or self.proj,
                 what=f"{Path(script).name} {' '.join(args[:1])}")
        return cp.stdout

    def tool(self, name: str, *args: str, cwd: Path | None = None) -> dict:
        """Run a bundle script with --json, as an agent would; fail on a non-zero exit."""
        args = list(args)
        at = args.index("--") if "--" in args else len(args)  # before a wrapped command
        out = self.py(SCRIPTS / name, *args[:at], "--json", *args[at:], cwd=cwd)
        return json.loads(out)

    def commit(self, msg: str, cwd: Path | None = None) -> None:
        git(cwd or self.proj, "add", "-A")
        git(cwd or self.proj, "commit", "-q", "-m", msg)

    def tag(self, version: str, description: str, cwd: Path | None = None, *extra: str) -> str:
        params = "max_depth,n_estimators" if "forest" in version else "C"
        res = self.tool("tag_suggest.py", "--version", version, "--metric", "f1_score",
                        "--params", params, "--description", description, "--create", *extra,
                        cwd=cwd)
        first = res["message"].splitlines()[0]
        self.summary["tags"][res["name"]] = first
        self.say(f"tag {res['name']}: {first}")
        return res["name"]

    # --- the project ---------------------------------------------------------------------
    def setup(self) -> None:
        self.step("project: git + dvc + local-directory remote")
        self.proj.mkdir(parents=True)
        git(self.proj, "init", "-q", "-b", "main")
        git(self.proj, "config", "user.name", "Demo")
        git(self.proj, "config", "user.email", "demo@example.com")
        for name in ("train.py", "prepare_data.py"):
            shutil.copy(SKILL / "assets" / name, self.proj / name)
        shutil.copy(SKILL / "assets" / "gitignore.starter", self.proj / ".gitignore")
        shutil.copy(SKILL / "assets" / "dvcignore.starter", self.proj / ".dvcignore")
        shutil.copy(SKILL / "assets" / "params.yaml", self.proj / "params.yaml")
        self.py(self.proj / "prepare_data.py")
        # the documented setup: DVC, an absolute remote, ignore lines, ev.yaml (SKILL.md)
        self.tool("init_project.py", "--remote", str(self.root / "dvc-remote"),
                  "--metric", "f1_score")
        dvc(self.proj, "config", "core.analytics", "false")
        dvc(self.proj, "add", "data/train.parquet", "data/test.parquet")
        self.commit("project skeleton: training code, data tracked by DVC")
        self.say(f"project at {self.proj}")

    # --- workflow 1 ----------------------------------------------------------------------
    def sequential(self) -> None:
        self.step("workflow 1: sequential experiment e0.1.0")
        run_ = self.tool("run.py", "--version", "e0.1.0", "--", sys.executable, "train.py",
                         "--version", "e0.1.0")
        (ranked,) = self.tool("model_manager.py", "list", "--version", "e0.1.0")["runs"]
        self.say(f"run {run_['track_id']}: f1={ranked['f1_score']}")
        dvc(self.proj, "add", "results/experiments.db", "models/candidates")
        self.commit("experiment: e0.1.0 - logreg baseline")
        self.tool("model_manager.py", "promote", "--version", "e0.1.0", "--run-id",
                  run_["track_id"], "--reason", "baseline")
        self.commit(f"promote e0.1.0 ({run_['track_id']})")
        self.tag("e0.1.0", "logreg baseline")
        dvc(self.proj, "push", "-T")

    # --- workflow 2 ----------------------------------------------------------------------
    def sweep(self) -> None:
        self.step("workflow 2: parameter sweep e0.2.0 (4 runs, 2 at a time)")
        grid = self.proj / "grid.yaml"
        grid.write_text("C: [0.01, 1.0, 3.0, 10.0]\n")
        res = self.tool("sweep.py", "--version", "e0.2.0", "--grid", "grid.yaml", "--workers",
                        "2", "--", sys.executable, "train.py", "--version", "e0.2.0")
        ranked, col = res["ranking"], res["ranked_by"]["column"]
        self.say(f"runs ranked by {col} ({res['ranked_by']['aggregate']}):")
        for r in ranked:
            self.say(f"  {r['rank']}. {r['track_id']}: {col}={r['value']} {r.get('params', '')}")
        best = ranked[0]["track_id"]
        self.summary["merges"].append({"what": "sweep shards", **(res.get("merged") or {})})
        dvc(self.proj, "add", "results/experiments.db", "models/candidates")
        self.commit("sweep: e0.2.0 - 4 configs")
        self.tool("model_manager.py", "promote", "--version", "e0.2.0", "--run-id", best,
                  "--reason", f"best {col} of the C sweep")
        self.commit(f"promote e0.2.0 ({best})")
        self.tag("e0.2.0", "C sweep, best promoted")
        dvc(self.proj, "push", "-T")

    # --- workflow 3 ----------------------------------------------------------------------
    def worktrees(self) -> None:
        self.step("workflow 3: two worktree experiments")
        for name in ("forest", "more-data"):
            res = self.tool("worktree.py", "create", name)
            self.say(f"worktree {res['path']} on {res['branch']} "
                     f"(cache {res['cache_dir']}, {res['link_type']})")
        forest = self.root / "exp-forest"
        more = self.root / "exp-more-data"
        # forest: a different model
        out = self.tool("run.py", "--version", "exp-forest", "--", sys.executable, "train.py",
                        "--version", "exp-forest", "--model", "forest", cwd=forest)
        self.summary["forest_run"] = out["track_id"]
        dvc(forest, "add", "results/experiments.db", "models/candidates")
        self.tool("worktree.py", "privatize", cwd=forest)
        self.commit("exp: random forest", cwd=forest)
        self.tag("exp-forest", "random forest", forest, "--kind", "exp", "--name", "forest")
        dvc(forest, "push", "-T")
        # more-data: 30 held-back samples added to the training set
        self.py(more / "prepare_data.py", "--extra", "30", cwd=more)
        dvc(more, "add", "data/train.parquet")
        self.tool("run.py", "--version", "exp-more-data", "--", sys.executable, "train.py",
                  "--version", "exp-more-data", "--C", "0.1", cwd=more)
        dvc(more, "add", "results/experiments.db", "models/candidates")
        self.tool("worktree.py", "privatize", cwd=more)
        self.commit("exp: 30 more training samples", cwd=more)
        self.tag("exp-more-data", "30 more samples", more, "--kind", "exp", "--name",
                 "more-data")
        dvc(more, "push", "-T")

        self.step("merge back into main")
        exp_dbs = [str(w / "results" / "experiments.db") for w in (forest, more)]
        self.say(self.py(SCRIPTS / "merge_artifacts.py", "--strategy", "merge",
                         "--base-db", "results/experiments.db", "--exp-db", *exp_dbs).rstrip())
        again = self.tool("merge_artifacts.py", "--dry-run", "--base-db",
                          "results/experiments.db", "--exp-db", *exp_dbs)["db"]
        readded = sum(t["added"] for i in again["inputs"] for t in i["tables"].values())
        self.say(f"the same merge again would add {readded} rows (idempotent)")
        self.summary["merges"].append({"what": "worktree results", "re_merge_added": readded,
                                       **again})
        self.say(self.py(SCRIPTS / "merge_artifacts.py", "--strategy", "merge",
                         "--key-columns", "id", "--base-data", "data/train.parquet",
                         "--exp-data", str(more / "data" / "train.parquet")).rstrip())
        # Promote only a run that beats every other, production included.
        best = self.tool("model_manager.py", "list", "--metric", "f1_score")["runs"][0]
        self.say(f"best run overall: {best['run_id']} ({best['version']}, "
                 f"f1_score={best['f1_score']})")
        if best["version"] not in ("exp-forest", "exp-more-data"):
            raise EVError(f"no worktree run beats production ({best['run_id']})",
                          hint="the demo's data should make exp-more-data win; report this")
        wt = forest if best["version"] == "exp-forest" else more
        self.summary["promoted_from_worktree"] = best["run_id"]
        self.tool("model_manager.py", "add-candidate", "--run-id", best["run_id"],
                  "--version", best["version"], "--model",
                  str(wt / "models" / "candidates" / f"{best['version']}--{best['run_id']}.pkl"))
        dvc(self.proj, "add", "results/experiments.db", "data/train.parquet",
            "models/candidates")
        self.commit(f"merge worktree experiments (best run: {best['run_id']})")
        self.tool("model_manager.py", "promote", "--run-id", best["run_id"],
                  "--version", best["version"], "--reason",
                  f"best f1_score of every run ({best['f1_score']})")
        self.commit(f"promote {best['version']} ({best['run_id']})")
        self.tag(best["version"], f"{best['version']} promoted, 2 experiments merged", None,
                 "--tag", "e1.0.0")
        dvc(self.proj, "push", "-T")
        for name in ("forest", "more-data"):
            self.tool("worktree.py", "teardown", name)
            self.say(f"worktree exp-{name} removed (nothing would be lost)")

    def report(self) -> None:
        self.step("experiments")
        self.say(self.py(SCRIPTS / "experiments.py", "list").rstrip())
        self.step("tags")
        self.say(git(self.proj, "tag", "-l", "-n1"))
        self.step("production model")
        st = self.tool("model_manager.py", "status")
        self.summary["production"] = st
        self.say(self.py(SCRIPTS / "model_manager.py", "status").rstrip())

    def charts(self) -> None:
        """The history as a picture and as one HTML file, outside the project (clean tree)."""
        import importlib.util

        self.step("charts: the history as a PNG and a one-file HTML report")
        if importlib.util.find_spec("matplotlib") is None:
            self.summary["charts"] = None
            self.say("charts skipped: matplotlib is not installed (pip install matplotlib)")
            return
        png, page = self.charts_dir / "versions.png", self.charts_dir / "report.html"
        chart = self.tool("experiments.py", "plot", "--kind", "versions", "-o", str(png))
        rep = self.tool("experiments.py", "report", "-o", str(page))
        self.summary["charts"] = {"chart": chart["out"], "report": rep["out"],
                                  "report_bytes": rep["bytes"], "report_charts": rep["charts"]}
        self.say(f"chart:  {chart['out']}  ({chart['points']} versions; open it to compare)")
        self.say(f"report: {rep['out']}  ({rep['bytes'] // 1024} KiB, open in a browser)")

    def run_all(self) -> dict:
        start = time.time()
        self.setup()
        self.sequential()
        self.sweep()
        self.worktrees()
        self.report()
        self.charts()
        self.summary["seconds"] = round(time.time() - start, 1)
        self.summary["project"] = str(self.proj)
        return self.summary


def handler(args) -> int:
    if args.keep:
        root = Path(args.keep).resolve()
        if root.exists():
            raise EVError(f"--keep {root} already exists", code=USAGE,
                          hint="name a folder that does not exist yet")
        root.mkdir(parents=True)
        summary = Demo(root, args.json).run_all()
    else:
        # the charts outlive the throwaway project: their paths are printed at the end
        charts = Path(tempfile.mkdtemp(prefix="ev-demo-charts-"))
        with tempfile.TemporaryDirectory(prefix="ev-demo-") as tmp:
            summary = Demo(Path(tmp), args.json, charts).run_all()
    cli.emit(args, summary, f"\ndemo finished in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(PROG, build, handler))
