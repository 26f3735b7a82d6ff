"""History read in one process: a teammate's fresh clone (empty cache), the objects fetched
into the cache in one batch, the summary cache (second list identical, nothing re-read,
invalidated by content), DVC's Python API for remotes the fast path does not take, damaged
objects refused, kill points; plus sql's `runs` view, compare's production changes, and
get/sql options.

One module-scoped origin project (real git, real dvc, real xetrack DBs, three tags, pushed
to a local-directory remote); each test works in its own `git clone` of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import init_dvc, init_git, run_script, sh
from killpoints import calls, killed, wrappers

DB = "results/experiments.db"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
F1 = {"e0.1.0": 0.81, "e0.2.0": 0.87, "e1.0.0": 0.84}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


def log(repo: Path, version: str, f1: float, model_path: str | None = None) -> str:
    from xetrack import Tracker

    t = Tracker(str(repo / DB), params={"version": version, "model": "logreg"})
    t.log({"f1_score": f1, "precision": 0.5})
    if model_path:
        t.log({"model_path": model_path})
    return t.track_id


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcache")
    repo = init_dvc(init_git(root / "origin"), root / "remote")
    (repo / "data").mkdir()
    (repo / "models" / "candidates").mkdir(parents=True)
    ids = {}
    for i, (v, f1) in enumerate(F1.items()):
        (repo / "data" / "train.csv").write_text(f"x\n{i}\n")
        (repo / "models" / "candidates" / f"{v}--m.pkl").write_bytes(f"model {v}".encode())
        ids[v] = [log(repo, v, f1 - 0.01), log(repo, v, f1, f"models/candidates/{v}--m.pkl")]
        sh(["dvc", "add", "-q", "data/train.csv", "models/candidates", DB], cwd=repo)
        sh(f"git add -A && git commit -q -m {v}", cwd=repo)
        cp = run_script("tag_suggest.py", "--version", v, "--create", cwd=repo)
        assert cp.returncode == 0, cp.stderr
    sh(["dvc", "push", "-q", "-T"], cwd=repo)
    listing = json.loads(run_script("experiments.py", "--json", "list", cwd=repo).stdout)
    return repo, root / "remote", ids, listing


def clone(origin, tmp_path: Path, name: str = "clone") -> Path:
    repo = origin[0]
    dest = tmp_path / name
    sh(["git", "clone", "-q", str(repo), str(dest)])
    return dest


def xp(repo: Path, *args: str, env=None):
    return run_script("experiments.py", "--json", *args, cwd=repo, env=env)


def cache_files(repo: Path) -> dict[str, Path]:
    return {p.parent.name + p.name: p for p in (repo / ".dvc" / "cache").rglob("*")
            if p.is_file()}


def db_md5s(repo: Path) -> set[str]:
    out = set()
    for v in F1:
        text = sh(["git", "show", f"{v}:{DB}.dvc"], cwd=repo).stdout
        out.add(next(ln.split()[-1] for ln in text.splitlines() if "md5:" in ln))
    return out


def test_fresh_clone_lists_from_remote_then_from_the_summary_cache(origin, tmp_path):
    repo = clone(origin, tmp_path)
    assert not (repo / ".dvc" / "cache").exists()
    env, counter = wrappers(tmp_path / "w", kill_at=0)
    cp = xp(repo, "list", env=env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr == ""
    first = json.loads(cp.stdout)
    assert first == origin[3]  # exactly what the origin (with its full cache) lists
    assert [(v["tag"], v["value"], v["runs"]) for v in first["versions"]] == \
        [(v, f1, 2) for v, f1 in F1.items()]
    # git: rev-parse (find the repo), for-each-ref, one cat-file --batch; no dvc process
    log = Path(f"{counter}.log").read_text().splitlines()
    assert [ln.split()[1:3] for ln in log] == [["git", "rev-parse"], ["git", "for-each-ref"],
                                               ["git", "cat-file"]]
    # exactly the three DB objects were fetched, into the cache, checked and read-only
    got = cache_files(repo)
    assert set(got) == db_md5s(repo)
    for name, p in got.items():
        assert md5(p.read_bytes()) == name and (p.stat().st_mode & 0o777) == 0o444
    summary = repo / ".dvc" / "tmp" / "ev-history.json"
    assert summary.is_file()
    assert sh(["git", "status", "--porcelain"], cwd=repo).stdout == ""
    # the second list reads nothing it read before: no git process at all (listfast's
    # answer file, the refs unchanged), same bytes out
    env2, counter2 = wrappers(tmp_path / "w2", kill_at=0)
    cp2 = xp(repo, "list", env=env2)
    assert cp2.returncode == 0 and cp2.stdout == cp.stdout and cp2.stderr == ""
    assert Path(f"{counter2}.log").read_text() == ""
    # without that file: the summary cache, no cat-file
    (repo / ".dvc" / "tmp" / "ev-list.txt").unlink()
    cp2 = xp(repo, "list", env=env2)
    assert cp2.returncode == 0 and cp2.stdout == cp.stdout and cp2.stderr == ""
    log2 = Path(f"{counter2}.log").read_text().splitlines()
    assert [ln.split()[1:3] for ln in log2] == [["git", "rev-parse"], ["git", "for-each-ref"]]
    text1 = run_script("experiments.py", "list", "--sort", "metric", cwd=repo).stdout
    shutil.rmtree(repo / ".dvc" / "tmp")
    text2 = run_script("experiments.py", "list", "--sort", "metric", cwd=repo).stdout
    assert text1 == text2 and text1.split()[0] == "e0.2.0"


def test_summary_cache_follows_content(origin, tmp_path):
    repo = clone(origin, tmp_path)
    before = json.loads(xp(repo, "list").stdout)["versions"]
    # a different --metric is a different summary, not the cached one
    prec = json.loads(xp(repo, "list", "--metric", "precision").stdout)["versions"]
    assert {v["metric"] for v in prec} == {"precision"} and {v["value"] for v in prec} == {0.5}
    # re-point e1.0.0 at a commit whose DB says otherwise: the tag's new commit misses
    # (the clone never pulled the DB: this one holds the new run only)
    log(repo, "e1.0.0", 0.99)
    sh(["dvc", "add", "-q", DB], cwd=repo)
    sh("git add -A && git commit -q -m redo && git tag -f -a e1.0.0 -m 'redo | moved'",
       cwd=repo)
    after = json.loads(xp(repo, "list").stdout)["versions"]
    assert after[:2] == before[:2]
    assert (after[2]["value"], after[2]["runs"], after[2]["description"]) == \
        (0.99, 1, "moved")
    assert after[2]["commit"] != before[2]["commit"]
    # the cache file only holds entries of commits some tag names now
    data = json.loads((repo / ".dvc" / "tmp" / "ev-history.json").read_text())
    tags = {sh(["git", "rev-parse", f"{t}^{{commit}}"], cwd=repo).stdout.strip() for t in F1}
    assert set(data["outs"]) == tags
    # a damaged or foreign cache file is ignored and rebuilt
    (repo / ".dvc" / "tmp" / "ev-history.json").write_text("{not json")
    assert json.loads(xp(repo, "list").stdout)["versions"] == after
    (repo / ".dvc" / "tmp" / "ev-history.json").write_text('{"format": 99}')
    assert json.loads(xp(repo, "list").stdout)["versions"] == after


def test_remote_through_dvc_python_api(origin, tmp_path):
    """A remote with options (here config.local's jobs) goes through DVC's own API."""
    repo = clone(origin, tmp_path)
    sh(["dvc", "remote", "modify", "--local", "storage", "jobs", "2"], cwd=repo)
    env, counter = wrappers(tmp_path / "w", kill_at=0)
    cp = xp(repo, "list", env=env)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == origin[3]
    # in-process: no dvc process, the same three git processes
    assert [ln.split()[1] for ln in Path(f"{counter}.log").read_text().splitlines()] == \
        ["git"] * 3
    assert set(cache_files(repo)) == db_md5s(repo)
    cp = sh([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from _evlib.revfile import RevFiles; "
             "print(RevFiles(sys.argv[2])._local_remote())", str(SCRIPTS), str(repo)])
    assert cp.stdout == "None\n"  # the options sent it through DVC's API, not the copy
    # a file inside a tracked directory: the listing first, then only that file
    out = json.loads(xp(repo, "get", "e0.2.0", "models/candidates/e0.2.0--m.pkl",
                        "-o", str(tmp_path / "m.pkl")).stdout)
    assert out["source"] == "remote" and (tmp_path / "m.pkl").read_bytes() == b"model e0.2.0"
    names = set(cache_files(repo))
    assert any(n.endswith(".dir") for n in names) and md5(b"model e0.2.0") in names
    assert md5(b"model e0.1.0") not in names
    out = json.loads(xp(repo, "get", "e0.2.0", "models/candidates/e0.2.0--m.pkl",
                        "-o", str(tmp_path / "m2.pkl")).stdout)
    assert out["source"] == "cache"


def test_damaged_cache_object_is_refused_not_used(origin, tmp_path):
    repo = clone(origin, tmp_path)
    assert xp(repo, "list").returncode == 0
    shutil.rmtree(repo / ".dvc" / "tmp")
    victim = next(p for n, p in cache_files(repo).items())
    victim.chmod(0o644)
    victim.write_bytes(b"not sqlite")
    cp = xp(repo, "list")
    assert cp.returncode == 1
    err = json.loads(cp.stdout)["error"]
    assert err.startswith(f"DVC cache object {victim} is damaged (its md5 is "
                          f"{md5(b'not sqlite')}, not ")
    assert err.endswith(f"remove it (rm {victim}) and rerun: it is then fetched from the "
                        "remote")
    victim.unlink()
    cp = xp(repo, "list")
    assert cp.returncode == 0 and json.loads(cp.stdout) == origin[3]


def test_object_missing_everywhere_warns_and_uses_working_tree(origin, tmp_path):
    repo = clone(origin, tmp_path)
    remote = tmp_path / "remote-copy"
    shutil.copytree(origin[1], remote)
    sh(["dvc", "remote", "modify", "--local", "storage", "url", str(remote)], cwd=repo)
    sh(["dvc", "remote", "modify", "--local", "storage", "jobs", "1"], cwd=repo)
    first_db = sorted(db_md5s(repo))[0]
    (remote / "files" / "md5" / first_db[:2] / first_db[2:]).unlink()
    cp = xp(repo, "list")
    assert cp.returncode == 0
    assert "is in neither the local DVC cache nor the remote" in cp.stderr
    assert "from the working-tree results/experiments.db" in cp.stderr
    # nothing about that version was cached: the next list says so again
    cp2 = xp(repo, "list")
    assert "is in neither the local DVC cache nor the remote" in cp2.stderr


def test_killed_at_any_git_call_the_next_list_completes_identically(origin, tmp_path):
    probe = clone(origin, tmp_path, "probe")
    env, counter = wrappers(tmp_path / "w0", kill_at=0)
    clean = xp(probe, "list", env=env)
    total = calls(counter)
    assert total == 3
    for n in range(1, total + 1):
        repo = clone(origin, tmp_path, f"k{n}")
        envk, _ = wrappers(tmp_path / f"w{n}", kill_at=n)
        assert killed(xp(repo, "list", env=envk))
        again = xp(repo, "list")
        assert again.returncode == 0 and again.stdout == clean.stdout, n
        assert not [p for p in (repo / ".dvc").rglob("*.tmp*")], n


def test_show_and_compare_production_changes(origin, tmp_path):
    repo = clone(origin, tmp_path)
    ledger = repo / "models" / "production" / "ledger.jsonl"
    ledger.parent.mkdir(parents=True)
    entry = {"action": "promote", "run_id": "r1", "version": "e1.0.0", "reason": "best"}
    ledger.write_text(json.dumps(entry) + "\n")
    (repo / "code.py").write_text("x = 1\n")
    sh("git add -A && git commit -q -m promote && git tag -a e1.0.1 -m 'promoted'", cwd=repo)
    out = json.loads(xp(repo, "compare", "e1.0.0", "e1.0.1").stdout)
    assert out["production_changed"] == {"models/production/ledger.jsonl": [entry]}
    assert "code.py" in out["diffstat"] and "ledger" not in out["diffstat"]
    txt = run_script("experiments.py", "compare", "e1.0.0", "e1.0.1", cwd=repo).stdout
    assert ("production changes:\n  models/production/ledger.jsonl: action=promote "
            "run_id=r1 version=e1.0.0 reason=best\n") in txt
    out = json.loads(xp(repo, "compare", "e0.1.0", "e0.2.0").stdout)
    assert out["production_changed"] == {}
    show = json.loads(xp(repo, "show", "e0.2.0").stdout)
    assert [r["best"] for r in show["run_list"]] == [False, True]
    assert show["run_list"][1]["track_id"] == origin[2]["e0.2.0"][1]


def test_sql_runs_view_is_one_row_per_run(origin, tmp_path):
    repo = clone(origin, tmp_path)
    v = "e0.2.0"
    q = ("SELECT track_id, f1_score, model_path FROM runs WHERE version = 'e0.2.0' "
         "ORDER BY f1_score DESC")
    out = json.loads(xp(repo, "sql", "--version", v, q).stdout)
    good, other = origin[2][v][1], origin[2][v][0]
    # the better run logged model_path on a second row: its run row has both values
    assert out["rows"] == [[good, F1[v], f"models/candidates/{v}--m.pkl"],
                           [other, round(F1[v] - 0.01, 2), None]]
    rows = json.loads(xp(repo, "sql", "--version", v,
                         'SELECT count(*) FROM results."default"').stdout)["rows"]
    runs = json.loads(xp(repo, "sql", "--version", v, "SELECT count(*) FROM runs").stdout)
    assert rows == [[6]] and runs["rows"] == [[4]]
    help_text = run_script("experiments.py", "sql", "--help", cwd=repo).stdout
    assert "View `runs`: one row per run (track_id)" in help_text
    assert 'example (the top 5 runs of a version):\n  python scripts/experiments.py sql "' \
        "SELECT track_id, model, f1_score FROM runs WHERE version = 'e0.2.0' ORDER BY " \
        'f1_score DESC NULLS LAST LIMIT 5"' in help_text
    assert "--metric" not in help_text and "--mode" not in help_text
    # the help's example runs as printed
    ex = json.loads(xp(repo, "sql", "--version", v,
                       "SELECT track_id, model, f1_score FROM runs WHERE version = 'e0.2.0' "
                       "ORDER BY f1_score DESC NULLS LAST LIMIT 5").stdout)
    assert [r[0] for r in ex["rows"]] == [good, other]


def test_get_has_no_ranking_options(origin, tmp_path):
    repo = clone(origin, tmp_path)
    cp = run_script("experiments.py", "get", "e0.1.0", DB, "-o", str(tmp_path / "x.db"),
                    "--metric", "f1_score", cwd=repo)
    assert cp.returncode == 2 and "unrecognized arguments: --metric f1_score" in cp.stderr
    help_text = run_script("experiments.py", "get", "--help", cwd=repo).stdout
    assert "--metric" not in help_text and "--mode" not in help_text and "--db" not in \
        help_text
    out = json.loads(xp(repo, "get", "e0.1.0", DB, "-o", str(tmp_path / "x.db")).stdout)
    assert out["source"] == "remote"
    con = sqlite3.connect(tmp_path / "x.db")
    assert con.execute('SELECT count(DISTINCT track_id) FROM "default"').fetchone() == (2,)
    con.close()
    assert md5((tmp_path / "x.db").read_bytes()) == out["md5"]


def test_revfiles_api(origin, tmp_path):
    """The primitive other modules call: outs at many revs in one git process, prefetch in
    one batch, write by path or by md5, a git-tracked file, refusals."""
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.errors import EVError
    from _evlib.revfile import RevFiles, object_to

    repo = clone(origin, tmp_path)
    with RevFiles(repo) as rf:
        outs = {v: rf.outs_at(v) for v in F1}
        assert {p for o in outs.values() for p in o} == {"data/train.csv",
                                                         "models/candidates", DB}
        rf.prefetch([(v, DB) for v in F1])
        assert sorted(rf.fetched) == sorted(db_md5s(repo))
        res = rf.write("e0.1.0", "data/train.csv", tmp_path / "t.csv")
        assert res == {"md5": md5(b"x\n0\n"), "source": "remote"}
        assert rf.write("e0.1.0", "README.md", tmp_path / "r.md")["source"] == "git"
        with pytest.raises(EVError) as e:
            rf.write("e0.1.0", "../etc/passwd", tmp_path / "p")
        assert e.value.code == 2
        with pytest.raises(EVError) as e:
            rf.write("e0.1.0", "nope.txt", tmp_path / "n")
        assert e.value.code == 5
        with pytest.raises(EVError) as e:
            rf.outs_at("no-such-tag")
        assert e.value.code == 5
    assert object_to(repo, md5(b"x\n1\n"), tmp_path / "o")["source"] == "remote"
    assert (tmp_path / "o").read_bytes() == b"x\n1\n"
    assert object_to(repo, md5(b"x\n1\n"), tmp_path / "o2")["source"] == "cache"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert os.environ.get("EV_GIT") is None
