"""The bundle's own promises: layout, skill validity, offline DuckDB, script conventions."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from conftest import ROOT, SCRIPTS, copy_tree, run_script, run_script_closed_stdout, sh

USER_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("*.py") if not p.name.startswith("_"))
DOCS = [ROOT / "SKILL.md", *sorted((ROOT / "references").glob("*.md"))]


def test_skill_validates_with_skills_ref(tmp_path):
    skill = copy_tree(ROOT, tmp_path / "experiment-versioning")
    from skills_ref.validator import validate

    assert validate(skill) == []
    # And a folder with another name is rejected: the check really looks at the name.
    other = copy_tree(ROOT, tmp_path / "other-name")
    assert any("name" in e.lower() for e in validate(other))


def test_skill_md_under_500_lines_with_frontmatter():
    text = (ROOT / "SKILL.md").read_text()
    assert text.startswith("---\n")
    assert len(text.splitlines()) < 500
    front = text.split("---\n")[1]
    assert re.search(r"^name: experiment-versioning$", front, re.M)
    desc = re.search(r"^description: (.+)$", front, re.M).group(1)
    assert 50 < len(desc) <= 1024


def test_every_path_the_docs_mention_exists():
    missing = []
    for doc in DOCS + [ROOT / "README.md"]:
        for m in re.findall(r"(?<![\w/.-])((?:scripts|references|assets)/[A-Za-z0-9_./-]+)",
                            doc.read_text()):
            path = m.rstrip(".,:;)")
            if not (ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert missing == []


def test_references_are_one_level_deep_and_linked_from_skill_md():
    skill = (ROOT / "SKILL.md").read_text()
    for ref in (ROOT / "references").rglob("*"):
        assert ref.parent == ROOT / "references", f"nested reference: {ref}"
        assert f"references/{ref.name}" in skill, f"SKILL.md does not link {ref.name}"


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_script_help_has_example_and_exit_codes_from_any_directory(script, tmp_path):
    cp = run_script(script, "--help", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert "example:" in cp.stdout and "exit codes:" in cp.stdout
    assert "--json" in cp.stdout


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_script_outside_a_repo_is_one_line_usage_error(script, tmp_path):
    if script == "demo.py":
        pytest.skip("the demo makes its own repository")
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    cp = run_script(script, "--json", "--repo", str(outside), *_minimal_args(script),
                    cwd=tmp_path)
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert "not a git repository" in cp.stderr
    assert json.loads(cp.stdout)["status"] == "error"


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_a_usage_error_with_json_prints_one_error_object(script, tmp_path):
    cp = run_script(script, "--json", "--no-such-flag", cwd=tmp_path)
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    (line,) = cp.stdout.splitlines()
    out = json.loads(line)
    (err,) = cp.stderr.splitlines()
    assert (out["status"], out["code"]) == ("error", 2)
    assert err == f"{script}: error: {out['error']}"
    assert "--no-such-flag" in out["error"] or "required" in out["error"]


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_a_closed_stdout_changes_no_exit_code_and_prints_no_traceback(script, tmp_path):
    """`script.py ... | head -1`: the output nobody reads is dropped; the exit code and the
    stderr lines are the command's own (BrokenPipe used to be exit 1 and its own line)."""
    cp = run_script_closed_stdout(script, "--help", cwd=tmp_path)
    assert (cp.returncode, cp.stderr) == (0, "")
    cp = run_script_closed_stdout(script, "--json", "--no-such-flag", cwd=tmp_path)
    (err,) = cp.stderr.splitlines()
    assert cp.returncode == 2 and err.startswith(f"{script}: error: "), cp.stderr


def test_json_after_the_command_separator_is_the_commands_not_the_scripts(tmp_path):
    cp = run_script("run.py", "--", "python", "--json", cwd=tmp_path)
    assert cp.returncode == 2 and cp.stdout == ""  # --version missing; no --json of its own


def test_interrupted_and_unexpected_errors_print_one_json_object(capsys):
    from _evlib import cli

    def build():
        return cli.parser("x.py", "test", "x.py --json")

    def interrupted(args):
        raise KeyboardInterrupt

    def broken(args):
        raise RuntimeError("boom")

    assert cli.main("x.py", build, interrupted, ["--json"]) == 130
    assert json.loads(capsys.readouterr().out) == {
        "status": "error", "code": 130,
        "error": "interrupted; nothing was left half-written, re-run to finish"}
    assert cli.main("x.py", build, broken, ["--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "status": "error", "code": 1, "error": "RuntimeError: boom"}


def _minimal_args(script: str) -> list[str]:
    """Enough arguments for each script to get past argparse to the repo check."""
    return {
        "merge_artifacts.py": ["--base-db", "a.db", "--exp-db", "b.db"],
        "model_manager.py": ["status"],
        "tag_suggest.py": [],
        "experiments.py": ["list"],
        "sweep.py": ["--version", "e0.1.0", "--grid", "g.yaml", "--", "true"],
        "run.py": ["--version", "e0.1.0", "--", "true"],
        "worktree.py": ["list"],
    }.get(script, [])


def test_duckdb_sqlite_extension_installs_offline_with_empty_home(tmp_path):
    """Fresh HOME, extension not installed: the duckdb engine logs and DuckDB reads back."""
    home = tmp_path / "home"
    home.mkdir()
    code = f"""
import sys; sys.path.insert(0, {str(SCRIPTS)!r})
import duckdb
con = duckdb.connect()
before = con.execute("SELECT installed FROM duckdb_extensions() WHERE extension_name='sqlite_scanner'").fetchone()[0]
from _evlib.sql import ensure_duckdb_sqlite, duckdb_connect, duckdb_attach_sqlite
ensure_duckdb_sqlite()
from xetrack import Tracker
t = Tracker('r/exp.db', engine='duckdb', params={{'version': 'e0.1.0'}})
t.log({{'f1_score': 0.75}})
c = duckdb_connect()
duckdb_attach_sqlite(c, 'r/exp.db', 'results')
print(before, c.execute('SELECT version, f1_score FROM results."default"').fetchall())
"""
    env = {"HOME": str(home), "http_proxy": "http://127.0.0.1:9", "https_proxy":
           "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}  # any download attempt would fail
    cp = sh([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert cp.stdout.strip() == "False [('e0.1.0', 0.75)]"
    assert list(home.rglob("sqlite_scanner.duckdb_extension"))


def test_quote_ident_survives_hostile_names(tmp_path):
    from _evlib.sql import quote_ident, sqlite_connect

    con = sqlite_connect(tmp_path / "x.db")
    for name in ['select', 'my col', 'a"b', "it's", "naïve"]:
        con.execute(f"CREATE TABLE {quote_ident(name)} ({quote_ident(name)} INTEGER)")
        con.execute(f"INSERT INTO {quote_ident(name)} VALUES (1)")
        assert con.execute(f"SELECT {quote_ident(name)} FROM {quote_ident(name)}"
                           ).fetchone() == (1,)


def test_atomic_copy_never_writes_into_a_hardlinked_file(tmp_path):
    """A DVC-style hardlink: replacing the file must leave the other link's bytes alone."""
    from _evlib.atomic import copy_file

    cache_obj = tmp_path / "cache-object"
    cache_obj.write_bytes(b"original")
    work = tmp_path / "model.bin"
    os.link(cache_obj, work)
    new = tmp_path / "new.bin"
    new.write_bytes(b"replacement")
    copy_file(new, work)
    assert work.read_bytes() == b"replacement"
    assert cache_obj.read_bytes() == b"original"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_atomic_path_leaves_old_file_when_writer_fails(tmp_path):
    from _evlib.atomic import atomic_path

    dest = tmp_path / "out.db"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.db"]


def test_git_failure_is_one_line_with_gits_own_message(git_repo):
    from _evlib.errors import EVError
    from _evlib.proc import git

    with pytest.raises(EVError) as exc:
        git(git_repo, "rev-parse", "--verify", "no-such-ref")
    assert exc.value.line().startswith("git rev-parse failed: fatal: ")
    assert "\n" not in exc.value.line()


def test_dvc_failure_is_one_line_with_dvcs_own_message(git_repo):
    from _evlib.errors import EVError
    from _evlib.proc import dvc

    with pytest.raises(EVError) as exc:
        dvc(git_repo, "add", "missing.bin")
    assert exc.value.line().startswith("dvc add failed: ERROR: ")
