"""init_project.py: any git repository made ready, idempotently, never overwriting a line."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from conftest import init_git, run_script, sh


def _tree(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(".git/") or rel == ".git" or not p.is_file():
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_init_a_repo_then_nothing_to_change(tmp_path):
    proj = init_git(tmp_path / "proj")
    (proj / ".gitignore").write_text("my.log\n*.pyc")  # no final newline: kept as written
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    dry = run_script("init_project.py", "--json", "--dry-run", "--remote", "../store",
                     "--metric", "auc", cwd=proj, env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [c["what"] for c in plan["changes"]] == [
        "dvc init", "append to .gitignore", "append to .dvcignore",
        f"mkdir {tmp_path / 'store'}", f"dvc remote add -d storage {tmp_path / 'store'}",
        "write ev.yaml",
        f"install DuckDB's sqlite extension from {plan['duckdb_sqlite']['wheel']}"]
    assert plan["changes"][1]["lines"][0] == "__pycache__/" and "*.pyc" not in \
        plan["changes"][1]["lines"]
    assert _tree(proj) == {".gitignore": hashlib.sha256(b"my.log\n*.pyc").hexdigest(),
                           "README.md": _tree(proj)["README.md"]}
    assert not (tmp_path / "store").exists() and not (home / ".duckdb").exists()
    cp = run_script("init_project.py", "--json", "--remote", "../store", "--metric", "auc",
                    cwd=proj, env=env)
    assert cp.returncode == 0, cp.stderr
    done = json.loads(cp.stdout)
    assert [c["what"] for c in done["changes"]] == [c["what"] for c in plan["changes"]]
    lines = (proj / ".gitignore").read_text().splitlines()
    assert lines[:4] == ["my.log", "*.pyc", "",
                         "# added by init_project.py (experiment-versioning bundle)"]
    assert "/.ev/" in lines and lines.count("*.pyc") == 1
    assert ".tmp-*" in (proj / ".dvcignore").read_text().splitlines()
    # dvc remote list wraps a line at the terminal's width (80 columns when piped)
    assert sh(["dvc", "remote", "list"], cwd=proj, env={"COLUMNS": "4000"}).stdout.split() == [
        "storage", str(tmp_path / "store"), "(default)"]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from _evlib import settings
    s = settings.load(proj)
    assert (s.metric, s.mode, s.results_db, s.metrics) == ("auc", "max",
                                                          "results/experiments.db", None)
    ext = Path(done["duckdb_sqlite"]["wheel"])
    installed = list((home / ".duckdb").rglob("sqlite_scanner.duckdb_extension"))
    assert len(installed) == 1 and installed[0].read_bytes() == ext.read_bytes()
    # code written like the original document: xetrack engine='duckdb', INSTALL sqlite
    code = ("import duckdb\nfrom xetrack import Tracker\n"
            "t = Tracker('x.db', engine='duckdb', params={'version': 'e0'})\n"
            "t.log({'f1_score': 0.5})\n"
            "c = duckdb.connect(); c.execute('INSTALL sqlite; LOAD sqlite')\n"
            "print(c.execute(\"SELECT f1_score FROM sqlite_scan('x.db', 'default')\")"
            ".fetchall())\n")
    out = sh([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert out.stdout.strip() == "[(0.5,)]"
    before = _tree(proj)
    again = run_script("init_project.py", "--json", "--remote", "../store", cwd=proj, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changes"] == []
    assert _tree(proj) == before


def test_a_relative_remote_is_refused_or_fixed_and_push_T_stays_inside(tmp_path):
    proj = init_git(tmp_path / "proj")
    name = f"ev-probe-{os.getpid()}-{tmp_path.name}"[:60]
    sh(f"dvc init -q && dvc remote add -d storage ../{name} && echo a > f.txt && "
       "dvc add -q f.txt && git add -A && git commit -qm a && git tag v1 && echo b > f.txt && "
       "dvc add -q f.txt && git add -A && git commit -qm b", cwd=proj)
    cp = run_script("init_project.py", cwd=proj)
    assert cp.returncode == 4
    assert cp.stderr == (
        f"init_project.py: error: default remote storage is a relative path (../../{name}): "
        f"dvc push -T resolves it at older tags against the root of the file system, so "
        f"their objects land outside it; re-run with --fix-remote (sets {tmp_path / name} "
        f"in the untracked .dvc/config.local), or: dvc remote modify storage url "
        f"{tmp_path / name}\n")
    assert not (proj / "ev.yaml").exists()
    cp = run_script("init_project.py", "--fix-remote", cwd=proj)
    assert cp.returncode == 0, cp.stderr
    assert sh(["git", "status", "--porcelain", ".dvc"], cwd=proj).stdout == ""  # untracked
    sh(["dvc", "push", "-q", "-T"], cwd=proj)
    assert not Path("/", name).exists()
    assert len([p for p in (tmp_path / name).rglob("*") if p.is_file()]) == 2
