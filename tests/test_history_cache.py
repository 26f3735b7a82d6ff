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
    # the full list (a plain first list is listcold's: test_listcold.py)
    cp = xp(repo, "list", env={**env, "EV_LIST_COLD": "0"})
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
    cp2 = xp(repo, "list", env={**env2, "EV_LIST_COLD": "0"})
    assert cp2.returncode == 0 and cp2.stdout == cp.stdout and cp2.stderr == ""
    log2 = Path(f"{counter2}.log").read_text().splitlines()
    assert [ln.split()[1:3] for ln in log2] == [["git", "rev-parse"], ["git", "for-each-ref"]]
    text1 = run_script("experiments.py", "list", "--sort", "metric", cwd=repo).stdout
    shutil.rmtree(repo / ".dvc" / "tmp")
    text2 = run_script("experiments.py", "list", "--sort", "metric", cwd=repo).stdout
    assert text1 == text2 and text1.split()[0] == "e0.2.0"


def test_summary_cache_follows_content(origin, tmp_path, monkeypatch):
    monkeypatch.setenv("EV_LIST_COLD", "0")  # the full list's summary cache
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
    assert xp(repo, "list", env={"EV_LIST_COLD": "0"}).returncode == 0  # fills the cache
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


@pytest.mark.parametrize("cold", ["1", "0"])  # listcold's 2 git processes, the full list's 3
def test_killed_at_any_git_call_the_next_list_completes_identically(origin, tmp_path, cold):
    probe = clone(origin, tmp_path, "probe")
    env, counter = wrappers(tmp_path / "w0", kill_at=0)
    clean = xp(probe, "list", env={**env, "EV_LIST_COLD": cold})
    total = calls(counter)
    assert total == (2 if cold == "1" else 3)
    for n in range(1, total + 1):
        repo = clone(origin, tmp_path, f"k{n}")
        envk, _ = wrappers(tmp_path / f"w{n}", kill_at=n)
        assert killed(xp(repo, "list", env={**envk, "EV_LIST_COLD": cold}))
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


# --- listfast: a repeated list on an unchanged history, answered without git ---------------

FAST = Path(".dvc") / "tmp" / "ev-list.txt"


class Counted:
    """experiments.py under the EV_GIT/EV_DVC counting wrappers (a fresh counter each run):
    (the process, how many git/dvc processes it started)."""

    def __init__(self, tmp: Path):
        self.tmp, self.n = tmp, 0

    def __call__(self, cwd: Path, *args: str, env: dict | None = None):
        self.n += 1
        wenv, counter = wrappers(self.tmp / f"count{self.n}", kill_at=0)
        cp = run_script("experiments.py", *args, cwd=cwd, env={**wenv, **(env or {})})
        return cp, calls(counter)


def reference(cwd: Path, *args: str):
    """The answer with every cache off (EV_HISTORY_CACHE=0): what any list must print."""
    return run_script("experiments.py", *args, cwd=cwd, env={"EV_HISTORY_CACHE": "0"})


def same(a, b) -> bool:
    return (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def tags_of(cp) -> dict[str, dict]:
    return {v["tag"]: v for v in json.loads(cp.stdout)["versions"]}


def test_listfast_prints_the_full_lists_bytes_and_starts_no_git(origin, tmp_path):
    repo = clone(origin, tmp_path)
    run = Counted(tmp_path)
    sh(["git", "tag", "e9"], cwd=repo)  # malformed: its stderr warning is replayed too
    variants = [("--json", "list"), ("list",), ("list", "--sort", "metric"),
                ("list", "--json", "--metric", "precision", "--mode", "min"),
                ("--json", "list", "--kind", "exp"), ("list", "--kind", "all")]
    for args in variants:
        ref = reference(repo, *args)
        first, n1 = run(repo, *args)
        again, n2 = run(repo, *args)
        assert ref.returncode == 0 and same(first, ref) and same(again, ref), args
        assert n1 >= 2 and n2 == 0, (args, n1, n2)
    assert again.stderr == "experiments.py: warning: ignoring malformed experiment tag 'e9' " \
        "(expected e<major>.<minor>.<patch>)\n"
    assert again.stdout.split("\n")[0].split()[:2] == ["e0.1.0", sh(
        ["git", "log", "-1", "--format=%cs", "e0.1.0"], cwd=repo).stdout.strip()]
    # --repo from elsewhere: its own answer (keyed by cwd and argv), no git either
    args = ("--json", "list", "--repo", str(repo))
    first, _ = run(tmp_path, *args)
    again, n = run(tmp_path, *args)
    assert same(first, reference(repo, "--json", "list")) and same(again, first) and n == 0
    # an abbreviated option is argparse's to read: never answered from the file
    again, n = run(repo, "--json", "list", "--so", "metric")
    assert again.returncode == 0 and n >= 2
    # a commit moves a branch, not a tag: still no git
    sh(["git", "commit", "-q", "--allow-empty", "-m", "later"], cwd=repo)
    again, n = run(repo, "--json", "list")
    assert same(again, reference(repo, "--json", "list")) and n == 0
    # GIT_DIR (and the like) set: git's discovery decides, never the file
    got, n = run(repo, "--json", "list", env={"GIT_DIR": str(repo / ".git")})
    assert same(got, reference(repo, "--json", "list")) and n >= 2
    # --help, usage errors and exit codes: the full CLI's, with the file present
    helped, n = run(repo, "list", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: experiments.py list")
    bad, _ = run(repo, "--json", "list", "--bogus")
    assert bad.returncode == 2 and json.loads(bad.stdout)["status"] == "error"
    assert bad.stderr == "experiments.py: error: unrecognized arguments: --bogus; see " \
        "experiments.py --help\n"
    # a damaged or foreign file is ignored (the full list runs) and rebuilt
    for junk in (b"ev-list 1 0123\nE 9 9 9\nshort", b"\x00\xff", b""):
        (repo / FAST).write_bytes(junk)
        got, n = run(repo, "--json", "list")
        assert same(got, reference(repo, "--json", "list")) and n >= 2
        again, n = run(repo, "--json", "list")
        assert same(again, got) and n == 0


def test_listfast_sees_every_tag_change(origin, tmp_path):
    repo = clone(origin, tmp_path)
    run = Counted(tmp_path)
    commit = {t: sh(["git", "rev-parse", f"{t}^{{commit}}"], cwd=repo).stdout.strip()
              for t in F1}
    lineage = '{"version": "e0.2.0"}'  # the tag's rows: e0.2.0's, in its own DB

    def listed(what):
        """The list after a change: not the stored answer, the full list's; then stored."""
        got, n = run(repo, "--json", "list")
        assert n >= 2, what  # the change was seen: git ran
        assert same(got, reference(repo, "--json", "list")), what
        again, n = run(repo, "--json", "list")
        assert same(again, got) and n == 0, what
        return tags_of(got)

    before = listed("first")
    assert list(before) == list(F1)
    changes = [
        ("added", ["git", "tag", "-a", "e2.0.0", "-m", "model=logreg | added", "-m", lineage,
                   "e0.2.0^{}"],
         lambda t: t["e2.0.0"]["commit"] == commit["e0.2.0"] and
         t["e2.0.0"]["description"] == "added"),
        ("deleted", ["git", "tag", "-d", "e0.1.0"], lambda t: "e0.1.0" not in t),
        ("moved (lightweight)", ["git", "tag", "-f", "e0.2.0", "e1.0.0^{}"],
         lambda t: t["e0.2.0"]["commit"] == commit["e1.0.0"] and
         t["e0.2.0"]["description"] == "e1.0.0"),
        ("moved again: a loose ref's value only", ["git", "tag", "-f", "e0.2.0", commit["e0.2.0"]],
         lambda t: t["e0.2.0"]["commit"] == commit["e0.2.0"] and
         t["e0.2.0"]["description"] == "e0.2.0"),
        ("annotated re-tag, same commit",
         ["git", "tag", "-f", "-a", "e1.0.0", "-m", "model=logreg | re-tagged", "e1.0.0^{}"],
         lambda t: t["e1.0.0"]["commit"] == commit["e1.0.0"] and
         t["e1.0.0"]["description"] == "re-tagged"),
        ("packed", ["git", "pack-refs", "--all"],
         lambda t: not list((repo / ".git" / "refs" / "tags").iterdir())),
        ("re-tagged while packed", ["git", "tag", "-f", "-a", "e2.0.0", "-m",
                                    "model=logreg | over the packed one", "-m", lineage,
                                    "e0.2.0^{}"],
         lambda t: t["e2.0.0"]["description"] == "over the packed one"),
        ("gc", ["git", "gc", "-q"],
         lambda t: t["e2.0.0"]["description"] == "over the packed one" and
         not list((repo / ".git" / "refs" / "tags").iterdir())),
        ("deleted from packed-refs", ["git", "tag", "-d", "e2.0.0"], lambda t: "e2.0.0" not in t),
        # %(refname:short) is tags/e1.0.0 once a branch e1.0.0 exists: not an e-tag
        ("a branch named like a tag", ["git", "branch", "e1.0.0"], lambda t: "e1.0.0" not in t),
        ("that branch deleted", ["git", "branch", "-D", "e1.0.0"], lambda t: "e1.0.0" in t),
    ]
    for what, cmd, check in changes:
        sh(cmd, cwd=repo)
        assert check(listed(what)), what
    # ev.yaml is part of the answer (the ranking metric)
    (repo / "ev.yaml").write_text("metric: precision\nmode: max\n")
    assert {v["metric"] for v in listed("ev.yaml").values()} == {"precision"}


def test_listfast_worktree_sees_tags_of_the_common_dir(origin, tmp_path):
    repo = clone(origin, tmp_path)
    run = Counted(tmp_path)
    wt = tmp_path / "wt"
    sh(["git", "worktree", "add", "-q", "-b", "wt", str(wt)], cwd=repo)
    for where in (wt, repo):
        run(where, "--json", "list")
        again, n = run(where, "--json", "list")
        assert n == 0 and list(tags_of(again)) == list(F1)
    # a tag made in the main worktree: in the common dir, seen by the worktree's list
    sh(["git", "tag", "-a", "e3.0.0", "-m", "model=logreg | from main", "-m",
        '{"version": "e0.1.0"}', "e0.1.0^{}"], cwd=repo)
    got, n = run(wt, "--json", "list")
    assert n >= 2 and same(got, reference(wt, "--json", "list"))
    assert tags_of(got)["e3.0.0"]["description"] == "from main"
    # and one deleted from the worktree is gone from the main worktree's list
    sh(["git", "tag", "-d", "e0.1.0"], cwd=wt)
    got, n = run(repo, "--json", "list")
    assert n >= 2 and same(got, reference(repo, "--json", "list"))
    assert "e0.1.0" not in tags_of(got)


def test_listfast_stores_nothing_that_changed_while_it_ran(origin, tmp_path):
    """A tag made between the state's first read and git's for-each-ref: that answer is not
    stored (else, the tag deleted again, the old state would serve a list naming it)."""
    repo = clone(origin, tmp_path)
    real = shutil.which("git")
    w = tmp_path / "git-tags-midway"
    w.write_text(f"#!/bin/sh\nif [ \"$1\" = for-each-ref ]; then {real} tag -a e4.0.0 -m "
                 f"'model=logreg | midway' -m '{{\"version\": \"e0.1.0\"}}' 'e0.1.0^{{}}'; fi\n"
                 f"exec {real} \"$@\"\n")
    w.chmod(0o755)
    xp(repo, "list")  # objects fetched, summaries cached
    (repo / FAST).unlink()
    got = xp(repo, "list", env={"EV_GIT": str(w)})
    assert tags_of(got)["e4.0.0"]["runs"] == 2  # its rows: e0.1.0's, from its own DB
    sh(["git", "tag", "-d", "e4.0.0"], cwd=repo)
    again = xp(repo, "list")
    assert same(again, reference(repo, "--json", "list")) and "e4.0.0" not in tags_of(again)


def test_listfast_answers_only_what_read_the_tags_own_dbs(origin, tmp_path):
    """A tag whose DB has no rows of its version lists the working-tree DB's rows: that
    answer depends on the working tree, so it is never stored; nor with the cache off."""
    repo = clone(origin, tmp_path)
    run = Counted(tmp_path)
    sh(["git", "tag", "-a", "e5.0.0", "-m", "model=logreg | no rows", "e0.1.0^{}"], cwd=repo)
    for _ in range(2):
        got, n = run(repo, "--json", "list")
        assert n >= 2 and tags_of(got)["e5.0.0"]["runs"] == 0
    assert not (repo / FAST).exists()
    sh(["git", "tag", "-d", "e5.0.0"], cwd=repo)
    for _ in range(2):
        got, n = run(repo, "--json", "list", env={"EV_HISTORY_CACHE": "0"})
        assert n >= 2
    assert not (repo / FAST).exists()


def test_listfast_new_code_is_not_served_the_old_answer(origin, tmp_path):
    """The bundle's code is part of the state: an upgraded skill recomputes."""
    repo = clone(origin, tmp_path)
    bundle = tmp_path / "bundle"
    shutil.copytree(SCRIPTS, bundle, ignore=shutil.ignore_patterns("__pycache__"))
    env, counter = wrappers(tmp_path / "w", kill_at=0)

    def run():
        before = calls(counter)
        cp = sh([sys.executable, str(bundle / "experiments.py"), "--json", "list"], cwd=repo,
                env=env)
        return cp, calls(counter) - before

    first, _ = run()
    again, n = run()
    assert n == 0 and again.stdout == first.stdout
    hist = bundle / "_evlib" / "history.py"
    st = hist.stat()
    os.utime(hist, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again, n = run()
    assert n >= 2 and again.stdout == first.stdout


def test_fresh_clone_list_from_a_local_remote_imports_no_dvc_yaml_or_dataclasses(origin, tmp_path):
    """DVC's Python API (~0.3 s) and yaml (~15 ms) are start-up a fresh list need not pay:
    the local remote is copied in-process, `dvc add`'s .dvc files are read without yaml."""
    repo = clone(origin, tmp_path)
    cmd = [sys.executable, "-X", "importtime", str(SCRIPTS / "experiments.py"), "--json",
           "list"]
    cp = sh(cmd, cwd=repo, check=False, env={"EV_LIST_COLD": "0"})  # the full list
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == origin[3]
    imported = {ln.split("|")[-1].strip() for ln in cp.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "_evlib.revfile" in imported  # the full list ran (not listfast's answer)
    heavy = sorted(m for m in imported
                   if m.split(".")[0] in ("dvc", "dvc_data", "yaml", "duckdb", "pyarrow",
                                          "xetrack", "pandas"))
    assert heavy == []
    # and the stdlib modules its start-up does without (each a few ms of a ~0.1 s list)
    assert sorted(imported & {"dataclasses", "inspect", "typing", "shutil", "tempfile"}) == []
    assert set(cache_files(repo)) == db_md5s(repo)  # the objects came into the cache
    assert cp.stdout == reference(repo, "--json", "list").stdout
    shutil.rmtree(repo / ".dvc")  # the text form too, from the remote again
    sh(["git", "checkout", "-q", "--", ".dvc"], cwd=repo)
    text = run_script("experiments.py", "list", cwd=repo, env={"EV_LIST_COLD": "0"})
    assert text.returncode == 0 and text.stdout == reference(repo, "list").stdout


@pytest.mark.parametrize("text", [
    # what `dvc add` writes: read without yaml
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  size: 12\n  hash: md5\n"
    "  path: train.csv\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079.dir\n  size: 12\n  nfiles: 2\n"
    "  hash: md5\n  path: candidates\n",
    "outs:\n- md5: a\n  path: x\n",  # not an md5: yaml decides (the same string)
    # values yaml reads as something else than their text: left to yaml
    "outs:\n- md5: 12345678901234567890123456789012\n  path: x\n",  # an int
    "outs:\n- md5: 01234567012345670123456701234567\n  path: x\n",  # octal
    "outs:\n- md5: 0b101010101010101010101010101010\n  path: x\n",  # binary
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: 2026-01-01\n",  # a date
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: 1.5e-10\n",  # a float
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: yes\n",  # a bool
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: null\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: .hidden\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  size: 012\n  path: x\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: 'q u o t e d'\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x  # comment\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x\n  path: y\n",  # last wins
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x\n  cloud:\n    s3: {}\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x\n"
    "- md5: 4c59dc048e8850243be8079a5c74d079\n  path: y\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\r\n  path: x\r\n",
    "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x\nwdir: ..\n",
    "outs:\n", "outs:\n\n- md5: 3c59dc048e8850243be8079a5c74d079\n  path: x\n",
])
def test_dvc_files_read_without_yaml_as_yaml_reads_them(text):
    import yaml

    sys.path.insert(0, str(SCRIPTS))
    from _evlib import dvcmeta

    want = yaml.safe_load(text)
    got = dvcmeta.load_yaml(text)
    assert got == (want if isinstance(want, dict) else {})
    assert [type(v) for o in got.get("outs") or [] for v in o.values()] == \
        [type(v) for o in want.get("outs") or [] for v in o.values()]
    fast = dvcmeta._fast_dvc(text)
    assert fast is None or fast == want


def test_dvc_add_files_take_the_yaml_free_path():
    sys.path.insert(0, str(SCRIPTS))
    from _evlib import dvcmeta

    for text in ("outs:\n- md5: 3c59dc048e8850243be8079a5c74d079\n  size: 12\n  hash: md5\n"
                 "  path: train.csv\n",
                 "outs:\n- md5: 3c59dc048e8850243be8079a5c74d079.dir\n  size: 12\n"
                 "  nfiles: 2\n  hash: md5\n  path: candidates\n"):
        assert dvcmeta._fast_dvc(text) is not None


def test_plain_records_behave_as_the_dataclasses_they_replace():
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.dvcmeta import Out
    from _evlib.plain import factory, fields, plain
    from _evlib.runs import Run
    from _evlib.settings import Settings

    a, b = Run("t1"), Run("t1", rows=0)
    assert a == b and a.values == {} and a.values is not b.values  # a fresh dict each
    a.values["x"] = 1
    assert a != b and Run(track_id="t1", values={"x": 1}) == a
    assert repr(Run("t", {"k": 2}, 3, "s")) == "Run(track_id='t', values={'k': 2}, rows=3, " \
        "first_seen='s')"
    assert Out("p", "m", "s") == Out("p", "m", "s", False) != Out("p", "m", "s", True)
    assert Out("p", "m", "s").legacy is False
    with pytest.raises(TypeError):
        hash(Out("p", "m", "s"))  # as an eq dataclass: unhashable
    with pytest.raises(TypeError):
        Run()  # track_id is required
    assert fields(Settings)[0] == "results_db" and fields(Settings)[-1] == "extra"
    st = Settings(metrics=["f1"], extra={"k": [1]})
    d = st.to_dict()
    assert d["metrics"] == ["f1"] and d["k"] == [1] and d["metrics"] is not st.metrics
    assert Settings().extra == {} and Settings().extra is not Settings().extra

    with pytest.raises(TypeError):
        @plain
        class Bad:
            x: int = 0
            y: int

    @plain
    class F:
        v: list = factory(list)
    assert "v" not in F.__dict__ and F().v == [] and F().v is not F().v


def test_scratch_dir_and_temp_names_as_tempfile_makes_them(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPTS))
    from _evlib import atomic

    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))  # not usable: the next one
    monkeypatch.setenv("TEMP", str(tmp_path))
    d = Path(atomic.scratch_dir("ev-x-"))
    assert d.parent == tmp_path and d.name.startswith("ev-x-") and \
        (d.stat().st_mode & 0o777) == 0o700
    (d / "f").write_text("x")
    atomic.remove_tree(d)  # not empty: removed all the same
    assert not d.exists()
    atomic.remove_tree(d)  # gone already: nothing raised
    dest = tmp_path / "out.txt"
    atomic.write_bytes(dest, b"one")
    atomic.write_bytes(dest, b"two")
    assert dest.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["out.txt"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_objects_fetched_into_the_cache_are_fsynced_before_their_rename(origin, tmp_path):
    """DVC never hashes a cache object it finds: one renamed into place before its bytes
    reached the disk is, after a power cut, an empty or torn object DVC checks out as is.
    Each object copied from the remote (and each directory listing) is fsynced first."""
    repo = clone(origin, tmp_path)
    trace = tmp_path / "strace.log"
    cmd = ["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
           "-o", str(trace), sys.executable, str(SCRIPTS / "experiments.py"), "get",
           "e0.2.0", "models/candidates/e0.2.0--m.pkl", "-o", str(tmp_path / "m.pkl")]
    cp = sh(cmd, cwd=repo, check=False)
    assert cp.returncode == 0, cp.stderr
    lines = trace.read_text().splitlines()
    synced: set[str] = set()
    renamed = []
    cache = str((repo / ".dvc" / "cache").resolve())
    for ln in lines:
        if "fsync(" in ln and "<" in ln:
            synced.add(ln.split("<", 1)[1].split(">", 1)[0])
        elif "rename" in ln and f'"{cache}/' in ln:
            src = ln.split('"')[1] if "rename(" in ln else ln.split('"')[1]
            renamed.append((src, set(synced)))
    assert len(renamed) == 2  # the directory's listing, then the one file asked for
    for src, before in renamed:
        assert src in before, f"{src} renamed into the cache without an fsync"
