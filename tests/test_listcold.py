"""listcold: a first plain `experiments.py list` in two git processes, the DB objects read in
place. Its output must be the full list's, byte for byte (text and --json), on every
project shape; in any doubt the full list runs and says what it says.

One module-scoped origin (real git, dvc, xetrack DBs, pushed to a local-directory remote):
two data .dvc files, a tag before the DB was tracked (its rows: the working tree's), an
annotated tag with a message, a lightweight tag, a tag whose lineage block names its rows'
version, a non-ASCII description, an exp tag.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import init_dvc, init_git, run_script, sh
from killpoints import call_log, wrappers

DB = "results/experiments.db"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def log(repo: Path, version: str, f1: float) -> None:
    from xetrack import Tracker

    t = Tracker(str(repo / DB), params={"version": version, "model": "logreg"})
    t.log({"f1_score": f1, "precision": 0.5, "epoch": 3})


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("listcold")
    repo = init_dvc(init_git(root / "origin"), root / "remote")
    (repo / "data").mkdir()
    (repo / "results").mkdir()
    (repo / "data" / "a.csv").write_text("a\n1\n")
    (repo / "data" / "b.csv").write_text("b\n1\n")
    sh(["dvc", "add", "-q", "data/a.csv", "data/b.csv"], cwd=repo)
    sh("git add -A && git commit -q -m data", cwd=repo)
    sh(["git", "tag", "-a", "e0.0.1", "-m", "before the DB | no DB yet"], cwd=repo)
    log(repo, "e0.1.0", 0.7)
    log(repo, "e0.1.0", 0.8)
    sh(["dvc", "add", "-q", DB], cwd=repo)
    sh("git add -A && git commit -q -m v1", cwd=repo)
    sh(["git", "tag", "-a", "e0.1.0", "-m", "model=logreg | f1_score=0.8 | first é"], cwd=repo)
    log(repo, "e0.2.0", 0.85)
    (repo / "data" / "b.csv").write_text("b\n2\n")
    sh(["dvc", "add", "-q", DB, "data/b.csv"], cwd=repo)
    sh("git add -A && git commit -q -m v2", cwd=repo)
    sh(["git", "tag", "e0.2.0"], cwd=repo)  # lightweight
    log(repo, "e0.3.0", 0.9)
    sh(["dvc", "add", "-q", DB], cwd=repo)
    sh("git add -A && git commit -q -m v3", cwd=repo)
    msg = "model=logreg | f1_score=0.9 | merged\n\n" + json.dumps({"version": "e0.3.0"})
    sh(["git", "tag", "-a", "e1.0.0", "-m", msg], cwd=repo)
    sh(["git", "tag", "exp-foo-v1"], cwd=repo)
    sh(["dvc", "push", "-q", "-T"], cwd=repo)
    return repo, root / "remote"


def clone(origin, tmp_path: Path, name: str = "clone") -> Path:
    dest = tmp_path / name
    sh(["git", "clone", "-q", str(origin[0]), str(dest)])
    return dest


def reference(cwd: Path, *args: str):
    """The full list with every cache off."""
    return run_script("experiments.py", *args, cwd=cwd, env={"EV_HISTORY_CACHE": "0"})


def outcome(cp) -> tuple:
    return cp.returncode, cp.stdout, cp.stderr


def objects(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file())


def db_md5(repo: Path, tag: str) -> str:
    text = sh(["git", "show", f"{tag}:{DB}.dvc"], cwd=repo).stdout
    return next(ln.split()[-1] for ln in text.splitlines() if "md5:" in ln)


ARGS = [("list",), ("--json", "list"), ("list", "--json")]


def gits(counter: Path) -> list[str]:
    """The git subcommand of each call (after a `-C DIR`)."""
    out = []
    for ln in call_log(counter):
        args = ln.split()[2:]
        out.append(args[2] if args[:1] == ["-C"] else args[0])
    return out


@pytest.mark.parametrize("args", ARGS)
def test_first_list_is_the_full_lists_bytes_in_two_git_processes(origin, tmp_path, args):
    repo = clone(origin, tmp_path)
    env, counter = wrappers(tmp_path / "w")
    cp = run_script("experiments.py", *args, cwd=repo, env=env)
    assert cp.returncode == 0 and cp.stderr == ""
    # listcold's: for-each-ref and one cat-file, no rev-parse, no dvc; nothing copied into
    # the cache; e0.0.1 read the working tree's rows, so no answer stored for listfast
    assert sorted(gits(counter)) == ["cat-file", "for-each-ref"]  # started at once
    assert objects(repo) == []
    assert not (repo / ".dvc" / "tmp" / "ev-list.txt").exists()
    assert outcome(cp) == outcome(reference(repo, *args))
    if "--json" in args:
        got = {v["tag"]: (v["version"], v["runs"], v["value"]) for v in
               json.loads(cp.stdout)["versions"]}
        assert got == {"e0.0.1": ("e0.0.1", 0, None), "e0.1.0": ("e0.1.0", 2, 0.8),
                       "e0.2.0": ("e0.2.0", 1, 0.85), "e1.0.0": ("e0.3.0", 1, 0.9)}


def test_answer_stored_for_listfast_when_every_version_read_its_own_db(origin, tmp_path):
    repo = clone(origin, tmp_path)
    sh(["git", "tag", "-d", "e0.0.1"], cwd=repo)
    for args in ARGS:
        env, counter = wrappers(tmp_path / f"w{len(args)}{args[0]}")
        cp = run_script("experiments.py", *args, cwd=repo, env=env)
        assert sorted(gits(counter)) == ["cat-file", "for-each-ref"]  # listcold's
        assert outcome(cp) == outcome(reference(repo, *args))
        shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)  # (the reference's)
    assert (repo / ".dvc" / "tmp" / "ev-list.txt").is_file()
    env, counter = wrappers(tmp_path / "w")
    for args in ARGS:  # now listfast's: no git at all, the same bytes
        cp = run_script("experiments.py", *args, cwd=repo, env=env)
        assert outcome(cp) == outcome(reference(repo, *args))
    assert call_log(counter) == []


def test_objects_in_the_cache_are_read_there(origin, tmp_path):
    repo = clone(origin, tmp_path)
    sh(["dvc", "fetch", "-q", "-T", DB], cwd=repo)
    sh(["dvc", "remote", "modify", "--local", "storage", "url", str(tmp_path / "nowhere")],
       cwd=repo)
    before = {p: p.stat().st_mtime_ns for p in objects(repo)}
    env, counter = wrappers(tmp_path / "w")
    cp = run_script("experiments.py", "--json", "list", cwd=repo, env=env)
    assert outcome(cp) == outcome(reference(repo, "--json", "list"))
    assert sorted(gits(counter)) == ["cat-file", "for-each-ref"]  # started at once
    assert {p: p.stat().st_mtime_ns for p in objects(repo)} == before


def test_a_missing_object_is_the_full_lists_warning(origin, tmp_path):
    repo = clone(origin, tmp_path)
    remote = tmp_path / "remote-copy"
    shutil.copytree(origin[1], remote)
    sh(["dvc", "remote", "modify", "--local", "storage", "url", str(remote)], cwd=repo)
    h = db_md5(repo, "e0.2.0")
    (remote / "files" / "md5" / h[:2] / h[2:]).unlink()
    for args in ARGS:
        cp = run_script("experiments.py", *args, cwd=repo)
        assert outcome(cp) == outcome(reference(repo, *args))
        assert "is in neither the local DVC cache nor the remote" in cp.stderr


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\0 but not that DB"])
def test_a_wrong_cache_object_is_refused_in_one_line(origin, tmp_path, content):
    """DVC trusts its cache objects; the bundle hashes a DB object before it reads it: an
    empty or wrong object is an error (exit 1), never an empty history."""
    repo = clone(origin, tmp_path)
    h = db_md5(repo, "e0.1.0")
    victim = repo / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]
    victim.parent.mkdir(parents=True)
    victim.write_bytes(content)
    for args in ARGS:
        cp = run_script("experiments.py", *args, cwd=repo)
        assert outcome(cp) == outcome(reference(repo, *args))
        assert cp.returncode == 1
        err = [ln for ln in cp.stderr.splitlines() if ln]
        assert len(err) == 1 and f"DVC cache object {victim} is damaged" in err[0]


def test_settings_or_options_take_the_full_list(origin, tmp_path):
    repo = clone(origin, tmp_path)
    for args in [("list", "--sort", "metric"), ("list", "--kind", "all"),
                 ("--repo", str(repo), "list")]:
        env, counter = wrappers(tmp_path / "w")
        cp = run_script("experiments.py", *args, cwd=repo, env=env)
        assert outcome(cp) == outcome(reference(repo, *args))
        assert "rev-parse" in gits(counter)
    (repo / "ev.yaml").write_text("metric: precision\nmode: min\n")
    env, counter = wrappers(tmp_path / "w2")
    cp = run_script("experiments.py", "--json", "list", cwd=repo, env=env)
    assert outcome(cp) == outcome(reference(repo, "--json", "list"))
    assert "rev-parse" in gits(counter)


def test_imports_no_history_revfile_subprocess_or_json(origin, tmp_path):
    repo = clone(origin, tmp_path)
    cmd = [sys.executable, "-X", "importtime", str(SCRIPTS / "experiments.py"), "--json",
           "list"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cp = sh(cmd, cwd=repo, check=False, env=env)
    assert cp.returncode == 0, cp.stderr
    imported = {ln.split("|")[-1].strip() for ln in cp.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "_evlib.listcold" in imported
    assert sorted(imported & {"_evlib.history", "_evlib.revfile", "_evlib.proc", "argparse",
                              "subprocess", "json", "pathlib", "urllib.parse", "yaml",
                              "dvc", "typing", "dataclasses"}) == []


@pytest.mark.parametrize("args", [("list",), ("--json", "list")])
def test_ctrl_c_during_a_first_list_is_one_line_and_exit_130(origin, tmp_path, args):
    """Ctrl-C while listcold waits on git: the full list's one line (and JSON object), exit
    130, no traceback, nothing stored for listfast."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import SCRIPTS

    repo = clone(origin, tmp_path)
    started = tmp_path / "git-started"
    slow = tmp_path / "slow-git"
    # it never runs git; its stderr off the test's pipe; its pid, to stop it after
    slow.write_text(f"#!/bin/sh\necho $$ >> {started}\nexec sleep 30 2>/dev/null\n")
    slow.chmod(0o755)
    p = subprocess.Popen([sys.executable, str(SCRIPTS / "experiments.py"), *args], cwd=repo,
                         env={**os.environ, "EV_GIT": str(slow)}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        for _ in range(300):  # bounded: 30 s
            if started.exists():
                break
            time.sleep(0.1)
        assert started.exists()
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group, git too
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        for pid in started.read_text().split() if started.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    line = "interrupted; nothing was left half-written, re-run to finish"
    assert (p.returncode, err) == (130, f"experiments.py: error: {line}\n")
    if "--json" in args:
        assert json.loads(out) == {"status": "error", "code": 130, "error": line}
    else:
        assert out == ""
    assert not (repo / ".dvc" / "tmp" / "ev-list.txt").exists()


def test_first_list_imports_neither_re_nor_configparser(origin, tmp_path):
    """Their imports (re with enum, configparser) were ~20 ms of a ~100 ms first list: names
    are matched and .dvc/config read without them (test_namematch: the same languages)."""
    repo = clone(origin, tmp_path)
    cp = run_script("experiments.py", "list", cwd=repo, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert cp.returncode == 0
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in cp.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "_evlib.listcold" in imported and "_evlib.experiments_cli" not in imported
    assert not imported & {"re", "enum", "configparser"}, imported & {"re", "configparser"}
    assert cp.stdout == reference(repo, "list").stdout


def test_first_list_imports_neither_sqlite3_datetime_functools_nor_contextlib(origin, tmp_path):
    """The sqlite3 package (datetime), functools (collections, operator) and contextlib
    were ~10 ms of a ~55 ms first list: _sqlite3 is loaded without them (listcold's
    stand-in lru_cache), atomic.write_bytes needs no context manager."""
    repo = clone(origin, tmp_path)
    sh(["git", "tag", "-d", "e0.0.1"], cwd=repo)  # every version its own DB: an answer stored
    cp = run_script("experiments.py", "--json", "list", cwd=repo,
                    env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert cp.returncode == 0
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in cp.stderr.splitlines()
                if ln.startswith("import time:")}
    assert {"_evlib.listcold", "_sqlite3", "_evlib.atomic"} <= imported
    assert not imported & {"sqlite3", "datetime", "functools", "collections", "contextlib"}
    assert (repo / ".dvc" / "tmp" / "ev-list.txt").is_file()
    ref = reference(repo, "--json", "list")
    assert (cp.returncode, cp.stdout) == (ref.returncode, ref.stdout)


def test_sqlite_loaded_without_functools_then_everything_as_usual(tmp_path):
    """After listcold's _light_sqlite: functools is the real module once imported, and the
    sqlite3 package works as always (statements re-run while a cursor is open, its date
    adapter, errors), with or without the statement cache."""
    code = f"""
import sys
sys.path.insert(0, {str(SCRIPTS)!r})
from _evlib import listcold
listcold._light_sqlite()
assert "_sqlite3" in sys.modules and "functools" not in sys.modules
import functools, datetime, sqlite3
assert functools.reduce(lambda a, b: a + b, [1, 2, 3]) == 6
con = sqlite3.connect({str(tmp_path / "t.db")!r})
con.execute("CREATE TABLE t (a)")
con.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
q = "SELECT a FROM t ORDER BY a"
outer = con.execute(q)
first = next(outer)
assert [r for r in con.execute(q)] == [(1,), (2,), (3,)]
assert [first, *outer] == [(1,), (2,), (3,)]
assert con.execute("SELECT ?", (datetime.date(2020, 1, 2),)).fetchone() == ("2020-01-02",)
try:
    con.execute("SELECT nope FROM t")
except sqlite3.OperationalError as e:
    assert "nope" in str(e)
else:
    raise AssertionError("no error")
print("ok")
"""
    cp = sh([sys.executable, "-c", code], check=False)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "ok\n", "")


def test_cat_file_requests_above_a_page_and_below(origin, tmp_path):
    """_batch: one write for a request of at most a page, select for a larger one (200
    names: ~9 KB); the same answers either way, in order, a missing name as None."""
    repo = clone(origin, tmp_path)
    sys.path.insert(0, str(SCRIPTS))
    from _evlib import listcold

    commits = sh(["git", "rev-list", "--all"], cwd=repo).stdout.split()
    names = [f"{c}^{{tree}}" for c in commits]
    cat = listcold._Git(str(repo), ["cat-file", "--batch"], True)
    try:
        small = listcold._batch(cat, [*names, "0" * 40])
        big_names = (names * (200 // len(names) + 1))[:200]
        assert len("".join(n + "\n" for n in big_names).encode()) > listcold.SMALL_REQUEST
        big = listcold._batch(cat, big_names)
    finally:
        assert cat.close() == 0
    assert small[-1] is None and all(s[1] == "tree" for s in small[:-1])
    by_name = dict(zip(names, small, strict=False))
    assert big == [by_name[n] for n in big_names]
    import subprocess

    for n, got in by_name.items():
        assert got[2] == subprocess.run(["git", "cat-file", "tree", n], cwd=repo,
                                        capture_output=True, check=True).stdout


@pytest.mark.parametrize("with_atexit", [False, True])
def test_exit_now_skips_teardown_only_when_it_would_do_nothing(tmp_path, with_atexit):
    """pipe.exit_now (after a served list): stdout's buffered bytes still reach a pipe and
    the exit code is 0; with an atexit callback registered it returns, so the ordinary
    exit runs the callback as before."""
    code = f"""
import atexit, sys
sys.path.insert(0, {str(SCRIPTS)!r})
from _evlib import pipe
if {with_atexit}:
    atexit.register(lambda: print("atexit ran"))
sys.stdout.write("answer\\n" * 1000)
sys.stderr.write("warned\\n")
pipe.exit_now()
print("returned")
"""
    cp = sh([sys.executable, "-c", code], check=False)
    tail = "returned\natexit ran\n" if with_atexit else ""
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "answer\n" * 1000 + tail, "warned\n")
