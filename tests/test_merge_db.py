"""merge_artifacts.py on results DBs: real xetrack SQLite files, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPTS, count_rows, make_xetrack_db, run_script, sh

EVENTS = '"default"'


def rows(db: Path, table: str = "default", cols: str = "*") -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(f'SELECT {cols} FROM "{table}"').fetchall(), key=repr)
    finally:
        con.close()


def columns(db: Path, table: str = "default") -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return {r[1]: r[2] for r in con.execute(f'PRAGMA table_info("{table}")')}
    finally:
        con.close()


def merge(repo: Path, *args: str):
    return run_script("merge_artifacts.py", "--json", *args, cwd=repo)


def ok(cp) -> dict:
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    return json.loads(cp.stdout)


def sql(db: Path, *stmts: str) -> None:
    con = sqlite3.connect(db)
    for s in stmts:
        con.execute(s)
    con.commit()
    con.close()


def test_merge_is_union_and_a_rerun_changes_nothing(git_repo):
    base, a, b = (git_repo / n for n in ("results/experiments.db", "a.db", "b.db"))
    make_xetrack_db(base, [{"f1_score": 0.5}], {"version": "e0.1.0"})
    make_xetrack_db(a, [{"f1_score": 0.6}, {"f1_score": 0.61}], {"version": "e0.2.0"})
    make_xetrack_db(b, [{"f1_score": 0.7}], {"version": "e0.2.0"})
    rep = ok(merge(git_repo, "--strategy", "merge", "--base-db", "results/experiments.db",
                   "--exp-db", "a.db", "b.db", "--output-db", "results/experiments.db"))
    assert count_rows(base) == 4
    first = rows(base)
    ins = rep["db"]["inputs"]
    assert [i["tables"]["default"]["added"] for i in ins] == [2, 1]
    assert rep["db"]["rows_out"] is None  # in place: no count(*) of the whole base
    assert rep["db"]["rows_added"]["default"] == 3
    # Re-run: every row is already present; the rows are exactly the same.
    assert rep["db"]["mode"] == "in-place transaction"
    rep2 = ok(merge(git_repo, "--base-db", "results/experiments.db", "--exp-db", "a.db", "b.db",
                    "--full-check"))
    assert rep2["db"]["check"] == "row counts + integrity_check"
    assert rows(base) == first
    assert [i["tables"]["default"]["skipped"] for i in rep2["db"]["inputs"]] == [2, 1]
    assert [i["tables"]["default"]["added"] for i in rep2["db"]["inputs"]] == [0, 0]


def test_worktree_snapshot_case_gives_each_row_once(git_repo):
    main_db = git_repo / "results/experiments.db"
    make_xetrack_db(main_db, [{"f1_score": 0.1}, {"f1_score": 0.2}], {"version": "e0.1.0"})
    exp_db = git_repo / "exp/results/experiments.db"
    exp_db.parent.mkdir(parents=True)
    exp_db.write_bytes(main_db.read_bytes())  # the worktree's snapshot of main's DB
    make_xetrack_db(exp_db, [{"f1_score": 0.9}], {"version": "exp-x"})  # experiment's run
    make_xetrack_db(main_db, [{"f1_score": 0.3}], {"version": "e0.2.0"})  # main moved on
    expected = sorted(set(rows(main_db)) | set(rows(exp_db)), key=repr)
    ok(merge(git_repo, "--base-db", "results/experiments.db",
             "--exp-db", "exp/results/experiments.db"))
    assert rows(main_db) == expected
    assert count_rows(main_db) == 4
    assert sorted(r[0] for r in rows(main_db, cols="version")) == [
        "e0.1.0", "e0.1.0", "e0.2.0", "exp-x"]


def test_columns_one_side_lacks_are_added_with_types_and_values_kept(git_repo):
    base, exp = git_repo / "base.db", git_repo / "exp.db"
    make_xetrack_db(base, [{"f1_score": 0.5, "only_base": "x", "Note": "base"}])
    make_xetrack_db(exp, [{"f1_score": 0.6, "epochs": 3, "lr": 0.01, "note": "hi"}])
    rep = ok(merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db"))
    cols = columns(base)
    assert cols["epochs"] == "INTEGER" and cols["lr"] == "REAL" and cols["Note"] == "TEXT"
    assert cols["only_base"] == "TEXT"
    added = rep["db"]["inputs"][0]["tables"]["default"]["columns_added"]
    assert {c["column"]: c["type"] for c in added} == {"epochs": "INTEGER", "lr": "REAL"}
    assert rows(base, cols="f1_score, only_base, epochs, lr, note") == [
        (0.5, "x", None, None, "base"), (0.6, None, 3, 0.01, "hi")]  # Note = note in SQLite


def _conflicting(git_repo: Path) -> tuple[Path, Path]:
    base, exp = git_repo / "base.db", git_repo / "exp.db"
    make_xetrack_db(base, [{"f1_score": 0.5}, {"f1_score": 0.6}])
    exp.write_bytes(base.read_bytes())
    sql(exp, 'UPDATE "default" SET f1_score = 0.99 WHERE f1_score = 0.5')
    make_xetrack_db(exp, [{"f1_score": 0.7}])
    return base, exp


def test_conflict_exits_3_names_the_key_and_writes_nothing(git_repo):
    base, exp = _conflicting(git_repo)
    key = rows(base, cols="track_id, timestamp, f1_score")
    tid, ts = next((t, s) for t, s, f in key if f == 0.5)
    before = base.read_bytes()
    cp = merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db")
    assert cp.returncode == 3, cp.stderr
    line = cp.stderr.strip()
    assert len(line.splitlines()) == 1
    assert tid in line and ts in line and "--on-conflict" in line
    out = json.loads(cp.stdout)
    assert out["status"] == "error" and out["conflicts"][0]["keys"] == [[tid, ts]]
    assert base.read_bytes() == before
    assert sorted(p.name for p in git_repo.iterdir()) == [".git", "README.md", "base.db",
                                                           "exp.db"]


@pytest.mark.parametrize("side,value", [("keep-base", 0.5), ("keep-exp", 0.99)])
def test_on_conflict_chooses_the_winner(git_repo, side, value):
    base, _exp = _conflicting(git_repo)
    rep = ok(merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db",
                   "--on-conflict", side))
    assert sorted(r[0] for r in rows(base, cols="f1_score")) == sorted([value, 0.6, 0.7])
    stats = rep["db"]["inputs"][0]["tables"]["default"]
    assert stats["conflicts"] == 1 and stats["added"] == 1
    assert stats["replaced"] == (1 if side == "keep-exp" else 0)


def test_asset_tables_are_merged_by_their_key(git_repo):
    base, exp = git_repo / "base.db", git_repo / "exp.db"
    make_xetrack_db(base, [{"f1_score": 0.5}])
    make_xetrack_db(exp, [{"f1_score": 0.6}])
    sql(base, "INSERT INTO assets VALUES ('h1', x'01')", "INSERT INTO counts VALUES ('h1', 1)")
    sql(exp, "INSERT INTO assets VALUES ('h1', x'01')", "INSERT INTO assets VALUES ('h2', x'02')",
        "INSERT INTO keys VALUES ('model', 'h2')")
    rep = ok(merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db"))
    assert rows(base, "assets") == [("h1", b"\x01"), ("h2", b"\x02")]
    assert rows(base, "keys") == [("model", "h2")]
    assert rows(base, "counts") == [("h1", 1)]
    assert rep["db"]["inputs"][0]["tables"]["assets"] == {
        "read": 2, "added": 1, "replaced": 0, "removed": 0, "skipped": 1, "conflicts": 0,
        "columns_added": []}


def test_rebase_replaces_rows_by_key_columns_matching_by_name(git_repo):
    base, exp = git_repo / "base.db", git_repo / "exp.db"
    sql(base, 'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, version TEXT, '
              'f1 REAL, PRIMARY KEY (track_id, timestamp))',
        "INSERT INTO \"default\" VALUES ('r1','t1','e1',0.1), ('r2','t2','e1',0.2), "
        "('r3','t3','e2',0.3)")
    # Same columns in another order: matching must be by name, not position.
    sql(exp, 'CREATE TABLE "default" (f1 REAL, version TEXT, timestamp TEXT, track_id TEXT, '
             'PRIMARY KEY (track_id, timestamp))',
        "INSERT INTO \"default\" VALUES (0.9, 'e1', 't9', 'r9')")
    rep = ok(merge(git_repo, "--strategy", "rebase", "--base-db", "base.db", "--exp-db",
                   "exp.db", "--key-columns", "version", "--output-db", "out.db"))
    assert rows(git_repo / "out.db", cols="track_id, timestamp, version, f1") == [
        ("r3", "t3", "e2", 0.3), ("r9", "t9", "e1", 0.9)]
    stats = rep["db"]["inputs"][0]["tables"]["default"]
    assert stats["replaced"] == 2 and stats["added"] == 1
    assert "backup" not in rep["db"]  # out.db did not exist: nothing to back up


def test_missing_base_is_the_union_of_the_exps_via_python_api(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.merge import merge_dbs

    a, b = tmp_path / "s0.db", tmp_path / "s1.db"
    make_xetrack_db(a, [{"f1_score": 0.1}])
    make_xetrack_db(b, [{"f1_score": 0.2}, {"f1_score": 0.3}])
    out = tmp_path / "results" / "experiments.db"
    out.parent.mkdir()
    rep = merge_dbs(out, [a, b], out)
    assert rep["base_missing"] is True and "union" in rep["note"]
    assert count_rows(out) == 3 and rep["rows_out"]["default"] == 3
    assert oct(out.stat().st_mode & 0o777) != "0o600"  # a normal file, not mkstemp's 0600


def test_dry_run_reports_and_writes_nothing(git_repo):
    base, exp = git_repo / "base.db", git_repo / "exp.db"
    make_xetrack_db(base, [{"f1_score": 0.5}])
    make_xetrack_db(exp, [{"f1_score": 0.6}])
    before = base.read_bytes()
    rep = ok(merge(git_repo, "--dry-run", "--base-db", "base.db", "--exp-db", "exp.db"))
    assert rep["dry_run"] is True and rep["db"]["inputs"][0]["tables"]["default"]["added"] == 1
    assert base.read_bytes() == before
    assert sorted(p.name for p in git_repo.iterdir()) == [".git", "README.md", "base.db",
                                                           "exp.db"]


def test_output_equal_to_an_exp_input_is_refused(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.6}])
    before = (git_repo / "exp.db").read_bytes()
    cp = merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db", "--output-db",
               "./exp.db")
    assert cp.returncode == 4
    assert "is also an experiment input" in cp.stderr
    assert (git_repo / "exp.db").read_bytes() == before


def test_typo_in_third_path_writes_nothing(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    make_xetrack_db(git_repo / "a.db", [{"f1_score": 0.6}])
    make_xetrack_db(git_repo / "b.db", [{"f1_score": 0.7}])
    before = (git_repo / "base.db").read_bytes()
    cp = merge(git_repo, "--base-db", "base.db", "--exp-db", "a.db", "b.db", "c.db")
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines() == [
        "merge_artifacts.py: error: --exp-db " + str(git_repo / "c.db") + ": no such file; "
        "check the path (relative paths are from the current directory)"]
    assert (git_repo / "base.db").read_bytes() == before


def test_bad_input_errors_are_exact_single_lines(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    (git_repo / "notes.db").write_text("not a database\n")
    sql(git_repo / "other.db", "CREATE TABLE t (a INTEGER)")
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.6}])
    pre = "merge_artifacts.py: error: "
    cases = [
        (["--exp-db", "notes.db"], f"{pre}--exp-db {git_repo / 'notes.db'} is not a SQLite "
         "database; pass a results DB written by xetrack (a .db file)"),
        (["--exp-db", "other.db"], f"{pre}{git_repo / 'other.db'} has no table 'default' "
         "(tables: t); pass a results DB written by xetrack, or name --table"),
        (["--exp-db", "exp.db", "--table", "nope"], f"{pre}{git_repo / 'exp.db'} has no table "
         "'nope' (tables: assets, counts, default, keys); check --table"),
        (["--exp-db", "exp.db", "--strategy", "rebase", "--key-columns", "run"],
         f"{pre}key column 'run' is not in table 'default' of {git_repo / 'base.db'}; "
         "check --key-columns"),
    ]
    before = (git_repo / "base.db").read_bytes()
    for extra, line in cases:
        cp = merge(git_repo, "--base-db", "base.db", *extra)
        assert cp.returncode == 2, (extra, cp.stderr)
        assert cp.stderr.strip().splitlines() == [line]
    assert (git_repo / "base.db").read_bytes() == before


def test_hostile_paths_and_column_names_work(git_repo):
    d = git_repo / "rés ults" / "it's \"x\""
    base, exp = d / "bäse db.db", d / "exp 'q'.db"
    d.mkdir(parents=True)
    # xetrack itself cannot write such column names; build xetrack-shaped tables directly.
    pk = "track_id TEXT, timestamp TEXT, PRIMARY KEY (track_id, timestamp)"
    sql(base, f'CREATE TABLE "default" ("select" INTEGER, "my col" TEXT, {pk})',
        "INSERT INTO \"default\" VALUES (1, 'a', 'r1', 't1')")
    sql(exp, f'CREATE TABLE "default" ("from" TEXT, "select" INTEGER, "we""ird" INTEGER, {pk})',
        "INSERT INTO \"default\" VALUES ('b', 2, 3, 'r2', 't2')")
    rep = ok(merge(git_repo, "--base-db", str(base.relative_to(git_repo)),
                   "--exp-db", str(exp)))
    assert rep["db"]["rows_added"]["default"] == 1
    assert rows(base, cols='"select", "my col", "from", "we""ird"') == [
        (1, "a", None, None), (2, None, "b", 3)]


def test_rebase_in_place_keeps_a_backup_unless_dvc_has_it(dvc_repo):
    db = dvc_repo / "results" / "experiments.db"
    make_xetrack_db(db, [{"f1_score": 0.5}], {"version": "e1"})
    make_xetrack_db(dvc_repo / "exp.db", [{"f1_score": 0.9}], {"version": "e1"})
    args = ("--strategy", "rebase", "--base-db", "results/experiments.db", "--exp-db",
            "exp.db", "--key-columns", "version")
    old = rows(db)
    rep = ok(merge(dvc_repo, *args))["db"]
    backup = Path(rep["backup"])
    assert backup == db.with_name("experiments.db.bak") and rows(backup) == old
    # ONE backup per output: the next rebase replaces it, never a second file.
    make_xetrack_db(dvc_repo / "exp1.db", [{"f1_score": 0.8}], {"version": "e1"})
    rep = ok(merge(dvc_repo, *args[:-3], "exp1.db", "--key-columns", "version"))["db"]
    assert rep["backup"] == str(backup) and rows(backup, cols="f1_score") == [(0.9,)]
    assert sorted(p.name for p in db.parent.iterdir()) == ["experiments.db",
                                                           "experiments.db.bak"]
    assert rows(db, cols="f1_score") == [(0.8,)]
    ok(merge(dvc_repo, *args))
    assert rep["restore"] == f"cp {backup} {db}"
    assert rows(db, cols="f1_score") == [(0.9,)]
    # Tracked and committed in DVC: the old version is recoverable, no backup copy.
    backup.unlink()
    # Tracked with hardlinks into the cache: the merge must never write into the cache object.
    sh(["dvc", "config", "cache.type", "hardlink"], cwd=dvc_repo)
    sh(["dvc", "add", "-q", "results/experiments.db"], cwd=dvc_repo)
    from _evlib.atomic import md5_file

    md5 = md5_file(db)
    cache_obj = dvc_repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert os.path.samefile(cache_obj, db)
    sh(["git", "add", "-A"], cwd=dvc_repo)
    sh(["git", "commit", "-qm", "track db"], cwd=dvc_repo)
    make_xetrack_db(dvc_repo / "exp2.db", [{"f1_score": 0.95}], {"version": "e1"})
    rep = ok(merge(dvc_repo, *args[:-3], "exp2.db", "--key-columns", "version"))["db"]
    assert "backup" not in rep
    assert not [p for p in db.parent.iterdir() if p.name.endswith(".bak")]
    assert rows(db, cols="f1_score") == [(0.95,)]
    assert md5_file(cache_obj) == md5 and not os.path.samefile(cache_obj, db)
    assert db.stat().st_mode & 0o200  # owner-writable again for the next xetrack run


def _big_db(path: Path, n: int, offset: int = 0) -> None:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v REAL, pad TEXT, '
                'PRIMARY KEY (track_id, timestamp))')
    con.execute("WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < ?) "
                "INSERT INTO \"default\" SELECT 'r' || (i + ?), 't', i * 0.5, "
                "hex(randomblob(64)) FROM c", (n - 1, offset))
    con.commit()
    con.close()


def test_text_report_without_json(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.6, "epochs": 2}])
    cp = run_script("merge_artifacts.py", "--base-db", "base.db", "--exp-db", "exp.db",
                    cwd=git_repo)
    assert cp.returncode == 0 and cp.stderr == ""
    assert cp.stdout.splitlines() == [
        f"db merge: {git_repo / 'base.db'} -> {git_repo / 'base.db'}",
        f"  {git_repo / 'exp.db'} [default]: read 1, added 1, replaced 0, already present 0, "
        "conflicts 0, columns added: epochs INTEGER",
        "  rows added: default=1, assets=0, keys=0, counts=0"]


def test_concurrent_merges_into_one_db_lose_nothing(git_repo):
    base = git_repo / "results.db"  # does not exist yet: the first merge creates it
    shards = []
    for i in range(4):
        shards.append(git_repo / f"s{i}.db")
        make_xetrack_db(shards[-1], [{"f1_score": i / 10}] * 50)
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "merge_artifacts.py"),
                               "--base-db", "results.db", "--new-base", "--exp-db", s.name],
                              cwd=git_repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for s in shards]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert count_rows(base) == 4 * 50


def test_a_missing_base_db_is_an_error_unless_new_base(git_repo):
    """Found by QA: a typo in --base-db used to create a new DB and exit 0."""
    exp = git_repo / "exp.db"
    make_xetrack_db(exp, [{"f1_score": 0.5}])
    cp = run_script("merge_artifacts.py", "--base-db", "results/experiment.db", "--exp-db",
                    "exp.db", cwd=git_repo)
    assert cp.returncode == 2
    assert cp.stderr == (f"merge_artifacts.py: error: base DB {git_repo}/results/experiment.db "
                         "does not exist; check the path; to start a new results DB from the "
                         "experiment DBs, pass --new-base\n")
    assert not (git_repo / "results").exists()
    cp = run_script("merge_artifacts.py", "--base-db", "results/experiment.db", "--new-base",
                    "--exp-db", "exp.db", cwd=git_repo)
    assert cp.returncode == 0, cp.stderr  # --new-base: its directory is made (a DVC stage)
    # Any other output in a missing directory is an error, not created silently.
    cp = run_script("merge_artifacts.py", "--base-db", "results/experiment.db", "--exp-db",
                    "exp.db", "--output-db", "nodir/out.db", cwd=git_repo)
    assert cp.returncode == 2
    assert cp.stderr == (f"merge_artifacts.py: error: --output-db {git_repo}/nodir/out.db: "
                         f"directory {git_repo}/nodir does not exist; create it first, or pass "
                         "a path in an existing directory\n")
    assert count_rows(git_repo / "results" / "experiment.db") == 1


def test_an_experiment_adding_a_column_to_existing_rows_merges_and_fills_it(git_repo):
    """Found by QA: exp = base's rows plus a new column filled in for them (a metric computed
    afterwards) was a 'conflict' (exit 3); the new column is filled, nothing conflicts."""
    tmp_path = git_repo
    base = tmp_path / "base.db"
    make_xetrack_db(base, [{"f1_score": 0.5}, {"f1_score": 0.6}])
    exp = tmp_path / "exp.db"
    shutil.copy(base, exp)
    con = sqlite3.connect(exp)
    con.execute('ALTER TABLE "default" ADD COLUMN auc REAL')
    con.execute('UPDATE "default" SET auc = f1_score + 0.3')
    con.commit()
    con.close()
    cp = run_script("merge_artifacts.py", "--json", "--base-db", str(base), "--exp-db", str(exp),
                    cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    t = json.loads(cp.stdout)["db"]["inputs"][0]["tables"]["default"]
    assert (t["added"], t["conflicts"], t["filled"]) == (0, 0, 2)
    con = sqlite3.connect(base)
    got = sorted(con.execute('SELECT f1_score, auc FROM "default"').fetchall())
    assert got == [(0.5, pytest.approx(0.8)), (0.6, pytest.approx(0.9))]


def test_precheck_answers_are_reused_only_for_unchanged_files(tmp_path):
    """merge_dbs(prechecked=...) reads a file again when it changed since precheck_db: here
    the input gained a column (and rows: the file grew) and that column is merged."""
    sys.path.insert(0, str(SCRIPTS))
    from _evlib.merge import merge_dbs, precheck_db

    base, exp = tmp_path / "base.db", tmp_path / "exp.db"
    make_xetrack_db(base, [{"f1_score": 0.1}])
    make_xetrack_db(exp, [{"f1_score": 0.2}])
    seen = precheck_db(base, [exp], "merge")
    assert len(seen) == 2
    same = merge_dbs(base, [exp], base, dry_run=True, prechecked=seen)
    assert same["inputs"][0]["tables"]["default"]["added"] == 1
    con = sqlite3.connect(exp)
    con.execute('ALTER TABLE "default" ADD COLUMN extra REAL')
    con.executemany('INSERT INTO "default" (track_id, timestamp, f1_score, extra) '
                    "VALUES (?, ?, 0.3, ?)", [("late", f"t{i:05d}", i * 0.5) for i in range(2000)])
    con.commit()
    con.close()
    rep = merge_dbs(base, [exp], base, prechecked=seen)
    stats = rep["inputs"][0]["tables"]["default"]
    assert stats["added"] == 2001
    assert [c["column"] for c in stats["columns_added"]] == ["extra"]
    con = sqlite3.connect(base)
    assert con.execute('SELECT sum(extra) FROM "default"').fetchone()[0] == 0.5 * 1999 * 2000 / 2
    con.close()
