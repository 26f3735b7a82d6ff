"""#18: a sweep packs its landed shards into one scratch DB as they land (the final merge reads
one file), keeps no empty run logs, and stays exact: the pack holds every row once, a conflict
still names the run's shard, and a sweep killed mid-pack resumes with exact rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

from _evlib.errors import CONFLICT
from _evlib.sweep import run_key
from conftest import ROOT, run_script

# Deterministic rows: track_id and timestamp from the run's x, so a test can write a row
# that conflicts with one run's; prints a line when x is odd (its log is kept).
TRAIN = r'''
import json, os, sqlite3, sys
p = json.loads(os.environ["EV_PARAMS"])
if p["x"] % 2:
    print(f"run {p['x']} says hello")
os.makedirs("results", exist_ok=True)
con = sqlite3.connect("results/experiments.db")
con.execute('CREATE TABLE IF NOT EXISTS "default" '
            '(track_id TEXT, timestamp TEXT, x INTEGER, name TEXT, f1_score REAL)')
con.execute('INSERT INTO "default" VALUES (?, ?, ?, ?, ?)',
            (f"t{p['x']}", "2026-01-01 00:00:00", p["x"], "007", p["x"] / 10))
if p["x"] == 2:  # a second row, a column only this run has
    con.execute('ALTER TABLE "default" ADD COLUMN extra BLOB')
    con.execute('INSERT INTO "default" (track_id, timestamp, x, extra) VALUES (?, ?, ?, ?)',
                ("t2", "2026-01-01 00:00:01", 2, b"\x00\x01"))
con.commit()
'''


def _setup(git_repo: Path, tmp_path: Path, n: int = 6) -> list[str]:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "g.yaml").write_text("x: [" + ", ".join(str(i) for i in range(n)) + "]\n")
    return ["--version", "p1", "--grid", str(tmp_path / "g.yaml"), "--workers", "2", "--",
            sys.executable, str(tmp_path / "train.py")]


def _rows(db: Path) -> list[tuple]:
    """Every row as ((column, type, value), ...) of its non-NULL columns, by name (a column a shard
    lacks reads NULL in the merged table), the lineage columns but ev_run left out."""
    con = sqlite3.connect(db)
    try:
        cols = [r[1] for r in con.execute('PRAGMA table_info("default")')
                if not r[1].startswith("ev_") or r[1] == "ev_run"]
        sel = ", ".join(f'typeof("{c}"), "{c}"' for c in cols)
        out = []
        for r in con.execute(f'SELECT {sel} FROM "default"'):
            out.append(tuple(sorted((c, r[2 * i], r[2 * i + 1]) for i, c in enumerate(cols)
                                    if r[2 * i] != "null")))
        return sorted(out, key=repr)
    finally:
        con.close()


def _shard_rows(shards: Path) -> list[tuple]:
    out = []
    for s in sorted(shards.glob("run-*.db")):
        out += _rows(s)
    return sorted(out, key=repr)


def test_the_pack_holds_every_row_of_every_shard_once_and_exactly(git_repo, tmp_path):
    from _evlib.sweeppack import Pack

    args = _setup(git_repo, tmp_path)
    cp = run_script("sweep.py", "--json", *args, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    # every run went through the pack: the final merge read one file
    assert out["packed"] == 6
    assert [i["path"] for i in out["merged"]["inputs"]] == [
        str(git_repo / ".ev/sweeps/p1/pack.db")]
    assert not (git_repo / ".ev/sweeps/p1/pack.db").exists()  # scratch: gone after the merge
    shards = git_repo / "results/shards/p1"
    assert _rows(git_repo / "results/experiments.db") == _shard_rows(shards)
    # the pack itself, built again from the same shards (and one shard offered twice)
    pack = Pack(tmp_path / "pack.db")
    for s in sorted(shards.glob("run-*.db")):
        assert pack.add(s, s.stem[4:])
    again = sorted(shards.glob("run-*.db"))[0]
    assert not pack.add(again, again.stem[4:])  # its key is in the pack already: left out
    pack.close()
    assert _rows(tmp_path / "pack.db") == _shard_rows(shards)
    assert len(_rows(tmp_path / "pack.db")) == 7


def test_a_conflict_in_the_final_merge_names_the_runs_shard_not_the_pack(git_repo, tmp_path):
    args = _setup(git_repo, tmp_path)
    db = git_repo / "results/experiments.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)  # run x=3's key (track_id, timestamp), another f1_score
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x INTEGER, '
                'name TEXT, f1_score REAL)')
    con.execute('INSERT INTO "default" VALUES (?, ?, ?, ?, ?)',
                ("t3", "2026-01-01 00:00:00", 3, "007", 0.99))
    con.commit()
    con.close()
    before = _rows(db)
    cp = run_script("sweep.py", "--json", *args, cwd=git_repo)
    assert cp.returncode == CONFLICT, cp.stderr
    assert f"run-{run_key({'x': 3})}.db" in cp.stderr
    assert "pack.db" not in cp.stderr
    assert _rows(db) == before  # nothing merged
    assert not (git_repo / ".ev/sweeps/p1/pack.db").exists()


def test_a_sweep_killed_mid_pack_resumes_with_exact_rows(git_repo, tmp_path):
    """SIGKILL inside a pack transaction (rows of the 2nd shard written, not committed): the
    next sweep has runs left to do, so it packs again, in a pack of its own."""
    args = _setup(git_repo, tmp_path)
    pid = os.fork()
    if pid == 0:  # the sweep, in a child that kills itself mid-pack
        try:
            os.chdir(git_repo)
            sys.path.insert(0, str(ROOT / "scripts"))
            from _evlib import cli, sweeppack

            real, seen = sweeppack.Pack._copy, []

            class Killing:  # the pack's connection, SIGKILLed at the 2nd shard's key
                def __init__(self, con):  # (its rows written, its transaction open)
                    self.con = con

                def execute(self, sql, *a):
                    if sql.startswith("INSERT INTO _ev_packed") and len(seen) == 2:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return self.con.execute(sql, *a)

                def __getattr__(self, name):
                    return getattr(self.con, name)

            def copy(self, con, key, *rest):
                seen.append(key)
                return real(self, Killing(con), key, *rest)

            sweeppack.Pack._copy = copy
            ns: dict = {"__name__": "sweep_cli", "__file__": str(ROOT / "scripts/sweep.py")}
            exec(compile((ROOT / "scripts/sweep.py").read_text(), "sweep.py", "exec"), ns)
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                os.dup2(null.fileno(), 2)
                cli.main("sweep.py", ns["build"], ns["handler"], ["--json", *args])
        finally:
            os._exit(70)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    pack = git_repo / ".ev/sweeps/p1/pack.db"
    assert pack.exists()  # what the kill left
    cp = run_script("sweep.py", "--json", "--kill-stale", *args, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["counts"]["done"] + out["counts"]["skipped"] == 6
    assert out["counts"]["done"] >= 1 and out["packed"] >= 1  # it packed again
    db = git_repo / "results/experiments.db"
    assert _rows(db) == _shard_rows(git_repo / "results/shards/p1")
    con = sqlite3.connect(db)
    per_run = dict(con.execute('SELECT ev_run, count(DISTINCT track_id) FROM "default" '
                               'GROUP BY ev_run').fetchall())
    con.close()
    assert per_run == {run_key({"x": i}): 1 for i in range(6)}
    assert len(_rows(db)) == 7
    assert not pack.exists()
    cp = run_script("sweep.py", "--json", *args, cwd=git_repo)  # finished: runs nothing
    assert json.loads(cp.stdout)["counts"] == {"done": 0, "skipped": 6, "failed": 0}


def test_empty_run_logs_are_not_kept_and_the_others_are(git_repo, tmp_path):
    args = _setup(git_repo, tmp_path)
    cp = run_script("sweep.py", "--json", *args, cwd=git_repo)
    assert cp.returncode == 0, cp.stderr
    logs = sorted(p.name for p in (git_repo / "results/shards/p1").glob("run-*.log"))
    assert logs == sorted(f"run-{run_key({'x': i})}.log" for i in (1, 3, 5))
    for i in (1, 3, 5):
        log = git_repo / f"results/shards/p1/run-{run_key({'x': i})}.log"
        assert log.read_text() == f"run {i} says hello\n"


def test_a_reused_sandbox_keeps_its_earlier_log_until_the_next_launch(git_repo, tmp_path):
    from _evlib import runner

    (tmp_path / "say.py").write_text(TRAIN)
    spec = runner.RunSpec(command=[sys.executable, str(tmp_path / "say.py")], version="L1",
                          key="k1", params={"x": 1})
    wd = git_repo / ".ev/sweeps/L1/w0"
    res = runner.execute(git_repo, spec, wd, lineage={}, reuse=True)
    assert res.ok and Path(res.log) == wd / runner.LOG_FILE
    runner.prepare(git_repo, spec, wd, reuse=True, collected=True)
    assert (wd / runner.LOG_FILE).read_text() == "run 1 says hello\n"
    spec2 = runner.RunSpec(command=[sys.executable, str(tmp_path / "say.py")], version="L1",
                           key="k2", params={"x": 2})
    res = runner.execute(git_repo, spec2, wd, lineage={}, reuse=True)
    assert res.ok and (wd / runner.LOG_FILE).read_text() == ""  # the next run's, truncated


def test_the_pack_leaves_out_a_shard_it_could_not_hold_exactly(tmp_path):
    from _evlib.sweeppack import Pack

    def shard(name, decl, rows):
        path = tmp_path / f"{name}.db"
        con = sqlite3.connect(path)
        con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x {decl})')
        con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
        con.commit()
        con.close()
        return path

    a = shard("a", "INTEGER", [("t1", "s", 1)])
    same_key = shard("b", "INTEGER", [("t1", "s", 2)])  # a's key, another value
    other_type = shard("c", "TEXT", [("t3", "s", "007")])  # x as TEXT: INTEGER would make 7
    d = shard("d", "INTEGER", [("t4", "s", 4)])
    pack = Pack(tmp_path / "pack.db")
    assert [pack.add(s, s.stem) for s in (a, same_key, other_type, d)] == [
        True, False, False, True]
    pack.close()
    assert pack.keys == ["a", "d"]
    con = sqlite3.connect(tmp_path / "pack.db")
    assert sorted(con.execute('SELECT track_id, x, typeof(x) FROM "default"')) == [
        ("t1", 1, "integer"), ("t4", 4, "integer")]
    assert [r[0] for r in con.execute("SELECT key FROM _ev_packed ORDER BY 1")] == ["a", "d"]
    con.close()


def test_snapshots_are_packed_in_batches_exactly_and_a_left_out_one_alone(tmp_path,
                                                                          monkeypatch):
    """The sweep's path: each shard's rows read through its own connection (snapshot) and
    copied inside the pack's open transaction (a savepoint per shard, a commit per BATCH):
    every value keeps its type and value, a shard the pack cannot hold exactly is rolled
    back alone (the earlier shards of its transaction stay), and a text that is not UTF-8
    (no snapshot) is copied from the file, byte for byte."""
    from _evlib import shard as shard_mod
    from _evlib import sweeppack

    monkeypatch.setattr(sweeppack, "BATCH", 2)

    def shard(name, decl, rows):
        path = tmp_path / f"{name}.db"
        con = sqlite3.connect(path)
        con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x {decl}, '
                    f'y REAL, z BLOB)')
        con.executemany('INSERT INTO "default" VALUES (?, ?, ?, ?, ?)', rows)
        con.commit()
        con.close()
        return path

    a = shard("a", "INTEGER", [("t1", "s", 2**62 + 1, 0.1, b"\x00\xff"), ("t1", "s2", None,
                                                                         -0.0, None)])
    same_key = shard("b", "INTEGER", [("t1", "s", 2, 1.5, None)])  # a's key
    other_type = shard("c", "TEXT", [("t3", "s", "007", None, None)])  # x as TEXT
    d = shard("d", "INTEGER", [("t4", "s", 4, 1e300, b"")])
    e = shard("e", "INTEGER", [("t5", "s", 5, 2.5, None)])
    bad = shard("f", "INTEGER", [("t6", "s", 6, None, None)])
    con = sqlite3.connect(bad)
    con.execute('UPDATE "default" SET timestamp = CAST(X\'C328FF\' AS TEXT)')  # not UTF-8
    con.commit()
    con.close()
    pack = sweeppack.Pack(tmp_path / "pack.db")
    got = []
    for s in (a, same_key, other_type, d, e, bad):
        con = sqlite3.connect(s)
        snap = shard_mod.snapshot(con, sweeppack.SNAPSHOT_ROWS)
        con.close()
        if s is bad:
            assert snap is None
            got.append(pack.add(s, s.stem))
        else:
            got.append(pack.add_rows(snap, s.stem))
    assert got == [True, False, False, True, True, True]
    pack.close()
    assert pack.keys == ["a", "d", "e", "f"]
    con = sqlite3.connect(tmp_path / "pack.db")
    con.text_factory = bytes
    rows = con.execute('SELECT track_id, timestamp, typeof(timestamp), CAST(timestamp AS BLOB), '
                       'x, typeof(x), y, typeof(y), CAST(y AS TEXT), z, typeof(z) '
                       'FROM "default"').fetchall()
    assert [r[0] for r in con.execute("SELECT key FROM _ev_packed ORDER BY 1")] == [
        b"a", b"d", b"e", b"f"]
    con.close()
    want = []
    for s in (a, d, e, bad):
        con = sqlite3.connect(s)
        con.text_factory = bytes
        want += con.execute('SELECT track_id, timestamp, typeof(timestamp), '
                            'CAST(timestamp AS BLOB), x, typeof(x), y, typeof(y), '
                            'CAST(y AS TEXT), z, typeof(z) FROM "default"').fetchall()
        con.close()
    assert sorted(rows, key=repr) == sorted(want, key=repr) and len(rows) == 5


def test_a_pack_batch_lost_with_its_transaction_is_left_out_whole(tmp_path):
    """If SQLite rolls the pack's open transaction back (or its commit fails), none of that
    transaction's shards count as packed: they are merged on their own."""
    from _evlib import shard as shard_mod
    from _evlib import sweeppack

    snaps = []
    for i in range(3):
        path = tmp_path / f"s{i}.db"
        con = sqlite3.connect(path)
        con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x INTEGER)')
        con.execute('INSERT INTO "default" VALUES (?, ?, ?)', (f"t{i}", "s", i))
        con.commit()
        snaps.append(shard_mod.snapshot(con, 100))
        con.close()
    pack = sweeppack.Pack(tmp_path / "pack.db")
    assert pack.add_rows(snaps[0], "k0") and pack.add_rows(snaps[1], "k1")
    pack.con.execute("ROLLBACK")  # as SQLite does on some errors (a full disk, say)
    assert not pack.add_rows({"decls": {}, "tables": {}}, "bad")  # sees the loss
    assert pack.add_rows(snaps[2], "k2")
    pack.close()
    assert pack.keys == ["k2"]
    con = sqlite3.connect(tmp_path / "pack.db")
    assert con.execute('SELECT track_id FROM "default"').fetchall() == [("t2",)]
    con.close()


def test_a_reused_sandbox_is_relinked_only_when_the_repository_or_its_tree_changed(
        git_repo, tmp_path, monkeypatch):
    from _evlib import runner, sandbox

    (git_repo / "data.txt").write_text("d\n")
    (tmp_path / "say.py").write_text(TRAIN)
    spec = runner.RunSpec(command=[sys.executable, str(tmp_path / "say.py")], version="L1",
                          key="k1", params={"x": 1})
    wd = git_repo / ".ev/sweeps/L1/w0"
    tree = wd / "tree"
    walks = []
    real = sandbox.mirror
    monkeypatch.setattr(sandbox, "mirror", lambda *a, **k: (walks.append(1), real(*a, **k)))
    assert runner.execute(git_repo, spec, wd, lineage={}, reuse=True).ok
    assert len(walks) == 1
    runner.prepare(git_repo, spec, wd, reuse=True, collected=True)
    assert len(walks) == 1  # nothing changed: not walked again
    assert (tree / "data.txt").is_symlink()
    os.unlink(tree / "data.txt")  # a run removed a link in its sandbox: it comes back
    runner.prepare(git_repo, spec, wd, reuse=True, collected=True)
    assert len(walks) == 2 and (tree / "data.txt").is_symlink()
    (git_repo / "new.txt").write_text("n\n")  # a file added to the repository: shown
    runner.prepare(git_repo, spec, wd, reuse=True, collected=True)
    assert len(walks) == 3 and (tree / "new.txt").is_symlink()
    runner.prepare(git_repo, spec, wd, reuse=True, collected=True)
    assert len(walks) == 3


def test_a_runs_phase_states_are_write_states_bytes_and_the_environment_is_read_anew(
        tmp_path, monkeypatch):
    """The state written from a template (encoded once per run) is byte for byte
    write_state's, for each phase, and a marker-like value falls back to write_state; a
    launch's environment is os.environ as it is now (decoded once while it is unchanged)."""
    from _evlib import runner, runstate

    state = {"pid": 1, "key": "k", "phase": "running", "spec": {"params": {"a": "é", "b": [1]}},
             "lineage": {"ev_commit": "c"}, "started": 1.5}
    for phase in ("running", "stamping"):
        runstate.write_state(tmp_path, {**state, "phase": phase})
        want = (tmp_path / runstate.STATE).read_bytes()
        (tmp_path / runstate.STATE).unlink()
        runstate.write_phase(tmp_path, runstate.phase_template(state), phase)
        assert (tmp_path / runstate.STATE).read_bytes() == want
    assert runstate.phase_template({**state, "x": runstate._MARK}) is None
    monkeypatch.setenv("EV_TEST_VAR", "one")
    assert runner._base_env()["EV_TEST_VAR"] == "one"
    monkeypatch.setenv("EV_TEST_VAR", "two")
    env = runner._base_env()
    assert env["EV_TEST_VAR"] == "two" and env == dict(os.environ)
    env["EV_TEST_VAR"] = "changed"  # a copy: the next launch's is its own
    assert runner._base_env()["EV_TEST_VAR"] == "two"
    monkeypatch.delenv("EV_TEST_VAR")
    assert "EV_TEST_VAR" not in runner._base_env()


def test_a_sweep_stamp_of_a_wal_or_rollback_shard_is_exact_and_leaves_no_side_file(tmp_path):
    """A sweep's stamp (its sandbox's shard read and stamped under exclusive locking where
    the shard is not WAL) gives the rows, track_ids, values and snapshot that the stamp
    outside a sweep gives, and leaves the run's results folder holding its DB alone, for a
    rollback-journal shard and for a WAL shard whose last commit is still in its -wal file."""
    import subprocess

    from _evlib import runner
    from _evlib.runspec import RunResult, RunSpec

    def shard(wd: Path, wal: bool) -> Path:
        (wd / "tree" / "results").mkdir(parents=True)
        db = wd / "tree" / "results" / "experiments.db"
        # A process that ends without closing: a WAL file keeps its commit unmerged.
        subprocess.run([sys.executable, "-c", f"""
import os, sqlite3
con = sqlite3.connect({str(db)!r})
if {wal!r}:
    con.execute("PRAGMA journal_mode=WAL")
con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, x TEXT, f1_score REAL)')
con.executemany('INSERT INTO "default" VALUES (?, ?, ?, ?)',
                [("t1", str(i), "é", i / 3) for i in range(5)])
con.commit()
os._exit(0)"""], check=True)
        return db

    spec = RunSpec(command=["train", "--x", "1"], version="v1", key="k1", params={"x": 1})
    lin = {"ev_commit": "c" * 40, "ev_dirty": False}
    for wal in (False, True):
        got = {}
        for swept in (False, True):
            wd = tmp_path / f"w{int(wal)}{int(swept)}"
            db = shard(wd, wal)
            state = {"pid": 1, "key": "k1", "phase": "running", "spec": spec.to_dict()}
            res = runner.finish(RunResult(spec=spec, workdir=str(wd), exit_code=0), lin,
                                state=state if swept else None, snapshot=True)
            assert res.ok, res.error
            assert sorted(os.listdir(db.parent)) == ["experiments.db"]
            con = sqlite3.connect(db)
            rows = con.execute('SELECT * FROM "default" ORDER BY timestamp').fetchall()
            mode = con.execute("PRAGMA journal_mode").fetchone()[0]
            con.close()
            snap = res.snapshot["tables"]["default"]
            got[swept] = (res.rows, res.track_ids, rows, mode, snap[0], sorted(snap[1]))
        assert got[True] == got[False]
        assert got[True][0] == 5 and got[True][3] == ("wal" if wal else "delete")
