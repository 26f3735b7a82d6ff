"""_evlib.runs: rows aggregated per run (last non-null value), ranking, version filter.

Real xetrack Trackers write the DB; each make_xetrack_db call is one run (one track_id).
"""

from __future__ import annotations

import sqlite3

import pytest
from _evlib.errors import EVError
from _evlib.runs import Run, db_versions, load_runs, rank, rank_runs, read_runs
from conftest import make_xetrack_db


@pytest.fixture
def db(tmp_path):
    """Four runs: a (0.5 then 0.9, then a model_path row), b (0.7 then 0.8), c (0.9, a tie
    with a, logged later, another version), d (no f1_score at all)."""
    path = tmp_path / "results" / "experiments.db"
    v1, v2 = {"version": "e0.1.0"}, {"version": "e0.2.0"}
    (a,) = make_xetrack_db(path, [{"f1_score": 0.5, "config_C": 1.0}, {"f1_score": 0.9},
                                  {"model_path": "models/a.pkl"}], v1)
    (b,) = make_xetrack_db(path, [{"f1_score": 0.7}, {"f1_score": 0.8}], v1)
    (c,) = make_xetrack_db(path, [{"f1_score": 0.9, "config_C": 3.0}], v2)
    (d,) = make_xetrack_db(path, [{"model_path": "models/d.pkl"}], v1)
    return path, a, b, c, d


def test_a_run_is_its_last_non_null_value_per_column(db):
    path, a, b, c, d = db
    table = read_runs(path)
    assert list(table.runs) == [a, b, c, d]  # first-seen order
    assert {"track_id", "timestamp", "version", "f1_score", "config_C",
            "model_path"} <= set(table.columns)
    ra = table.runs[a]
    assert ra.rows == 3
    # f1_score: 0.9 (the later row), not 0.5; the model_path row's NULL f1 does not erase it
    assert (ra.value("f1_score"), ra.values["model_path"], ra.values["config_C"],
            ra.version, ra.track_id) == (0.9, "models/a.pkl", 1.0, "e0.1.0", a)
    assert ra.first_seen != "" and ra.first_seen <= ra.values["timestamp"]
    assert table.runs[b].value("f1_score") == 0.8 and table.runs[b].rows == 2
    assert table.runs[d].value("f1_score") is None  # never logged one
    assert table.runs[d].value("model_path") is None  # a string is not a number
    assert Run("x", {"f1_score": float("nan"), "ok": True}).value("f1_score") is None
    assert Run("x", {"ok": True}).value("ok") is None  # a bool is not a metric


def test_rank_best_first_missing_last_ties_keep_order(db):
    path, a, b, c, d = db
    runs = load_runs(path)
    assert [r.track_id for r in rank(runs, "f1_score", "max")] == [a, c, b, d]
    assert [r.track_id for r in rank(runs, "f1_score", "min")] == [b, a, c, d]
    # a column no run has: every run lacks it, input order kept
    assert [r.track_id for r in rank(runs, "recall", "max")] == [a, b, c, d]
    # a custom value: rank other items (e.g. candidate files) by their run's value
    by_id = {r.track_id: r for r in runs}
    items = [f"{t}.pkl" for t in (d, b, c, a)]
    assert rank(items, "f1_score", "max", value_of=lambda i: by_id[i[:-4]].value(
        "f1_score")) == [f"{c}.pkl", f"{a}.pkl", f"{b}.pkl", f"{d}.pkl"]
    with pytest.raises(EVError, match="mode must be max or min, not 'best'"):
        rank(runs, "f1_score", "best")


def test_rank_runs_in_sql_uses_the_same_rule(db):
    path, a, b, c, d = db
    res = rank_runs(path, "f1_score", "max")
    assert res["ranked_by"] == {"column": "f1_score", "order": "descending",
                                "aggregate": "last non-null value per track_id"}
    # ties: the run seen first wins, exactly as rank() over load_runs() (a before c)
    assert [(e["rank"], e["track_id"], e["value"], e["rows"]) for e in res["ranking"]] == [
        (1, a, 0.9, 3), (2, c, 0.9, 1), (3, b, 0.8, 2), (4, d, None, 1)]
    assert [e["track_id"] for e in res["ranking"]] == \
        [r.track_id for r in rank(load_runs(path), "f1_score", "max")]
    assert rank_runs(path, "recall")["rank_error"] == \
        f"no column 'recall' in {path} table 'default'"


def test_version_and_track_id_filters_read_only_those_rows(db):
    path, a, b, c, d = db
    assert db_versions(path) == ["e0.1.0", "e0.2.0"]
    assert [r.track_id for r in load_runs(path, "e0.1.0")] == [a, b, d]
    (only,) = load_runs(path, "e0.2.0")
    assert (only.track_id, only.rows, only.value("f1_score"), only.values["config_C"]) == \
        (c, 1, 0.9, 3.0)
    assert load_runs(path, "e9.9.9") == []
    one = read_runs(path, track_id=b)
    assert list(one.runs) == [b] and one.runs[b].rows == 2


def test_a_db_without_the_events_table_has_no_runs(tmp_path):
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    table = read_runs(p)
    assert (table.columns, table.runs) == (None, {})
    assert load_runs(p, "e0.1.0") == [] and db_versions(p) == []


# The rule written as one subquery per run (what rank_runs ran before it was one pass): the
# reference the one-pass query must agree with, row for row and type for type.
_PER_RUN = ('SELECT track_id, (SELECT x.m FROM "default" x WHERE x.track_id = d.track_id AND '
            'x.m IS NOT NULL ORDER BY x.timestamp DESC, x.rowid DESC LIMIT 1) AS value, '
            'count(*) AS n FROM "default" d {where} GROUP BY track_id ORDER BY value IS NULL, '
            'value {order}, min(d.timestamp), track_id')


@pytest.mark.parametrize("decl", ["REAL", "", "TEXT COLLATE NOCASE", "NUMERIC"])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_rank_runs_one_pass_agrees_with_a_subquery_per_run(tmp_path, decl, mode, monkeypatch):
    import random

    import _evlib.runs as runs_mod

    real_connect = runs_mod.sqlite_connect

    def old_sqlite(*a, **k):  # a SQLite build before 3.32: at most 999 bound variables
        con = real_connect(*a, **k)
        con.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return con
    monkeypatch.setattr(runs_mod, "sqlite_connect", old_sqlite)
    rnd = random.Random(f"{decl}{mode}")
    path = tmp_path / "r.db"
    con = sqlite3.connect(path)
    con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, m {decl})')
    values = [None, 0.5, 0.9, 1, 1.0, 2, "a", "B", "b", b"\x01", -0.0, 3.5]
    rows = [(rnd.choice(["r1", "r2", "R1", "r3", None, "r4", "r5"]),
             rnd.choice([f"t{k:02d}" for k in range(12)] + [None]), rnd.choice(values))
            for _ in range(40)]
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
    con.execute('ALTER TABLE "default" RENAME COLUMN m TO f1')  # the metric's own name
    con.commit()
    order = "DESC" if mode == "max" else "ASC"
    for ids in (None, ["r1", "r3", "R1", "nope"]):
        where = f"WHERE track_id IN ({','.join('?' * len(ids))})" if ids else ""
        want = [(t, v, type(v), n) for t, v, n in con.execute(
            _PER_RUN.replace("x.m", "x.f1").format(where=where, order=order), ids or [])]
        # and with 2,000 more ids that name no run: past the bound-variable limit the ids
        # go through a temp table, with the same answer
        for many in ([None] if ids is None else [ids, ids + [f"x{i}" for i in range(2_000)]]):
            got = rank_runs(path, "f1", mode, many)["ranking"]
            assert [(e["track_id"], e["value"], type(e["value"]), e["rows"])
                    for e in got] == want
            assert [e["rank"] for e in got] == list(range(1, len(want) + 1))
    con.close()


def test_count_events_of_more_runs_than_sqlite_binds(tmp_path, monkeypatch):
    """A sweep's row count of its runs: past SQLite's bound-variable limit (999 before 3.32)
    it counted 0 (the error was taken for "not a results DB"); now exact."""
    import _evlib.sweep as sweep_mod

    real_connect = sweep_mod.sqlite_connect

    def old_sqlite(*a, **k):
        con = real_connect(*a, **k)
        con.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return con
    monkeypatch.setattr(sweep_mod, "sqlite_connect", old_sqlite)
    path = tmp_path / "r.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "default" (track_id TEXT COLLATE NOCASE, timestamp TEXT)')
    con.executemany('INSERT INTO "default" VALUES (?, ?)',
                    [(f"run-{i % 1500}", str(i)) for i in range(3000)] + [("RUN-1", "x"), (1, "y")])
    con.commit()
    con.close()
    ids = [f"run-{i}" for i in range(1200)]
    # NOCASE: 'RUN-1' is run-1's; the integer 1 was stored as the text '1' (TEXT affinity)
    assert sweep_mod.count_events(path, ids) == 2 * 1200 + 1
    assert sweep_mod.count_events(path, ids[:10]) == 2 * 10 + 1
    assert sweep_mod.count_events(path, ["1"]) == 1
    assert sweep_mod.count_events(path, ["1"] + [f"n{i}" for i in range(1000)]) == 1
    assert sweep_mod.count_events(path, [1] + [f"n{i}" for i in range(1000)]) == \
        sweep_mod.count_events(path, [1]) == 1  # a bound integer meets TEXT affinity
    assert sweep_mod.count_events(path) == 3002


@pytest.mark.parametrize("decl", ["INTEGER", "TEXT", "REAL", "NUMERIC", "", "BLOB",
                                  "TEXT COLLATE NOCASE", "DECIMAL(10,5)", "VARCHAR(8)"])
def test_in_values_matches_what_bound_variables_match(decl):
    """in_values over the bind limit (a temp table) selects exactly the rows `IN (?, ...)`
    selects, whatever the column's affinity and collation and the values' types."""
    from _evlib.sql import MAX_BINDS, in_values

    con = sqlite3.connect(":memory:")
    con.execute(f'CREATE TABLE t (k {decl})')
    stored = [1, 1.0, 2.5, "1", "1.0", "2.5", "a", "A", b"a", None, -0.0, 0, "0", " 1", 2**62, "1e3", 1000]
    con.executemany("INSERT INTO t VALUES (?)", [(v,) for v in stored])
    probe = [1, "1", 1.0, "1.0", 2.5, "2.5", "a", b"a", 0.0, "0", " 1", 2**62, float(2**62), "1e3", 1000, None, "zz"]
    for v in probe:
        cond, binds = in_values(con, "t", "k", [v])
        want = con.execute(f"SELECT rowid FROM t WHERE {cond} ORDER BY rowid", binds).fetchall()
        cond, binds = in_values(con, "t", "k", [v] + [f"pad{i}" for i in range(MAX_BINDS)])
        assert "temp." in cond and binds == []
        got = con.execute(f"SELECT rowid FROM t WHERE {cond} ORDER BY rowid", binds).fetchall()
        assert got == want, (decl, v)
    con.close()
