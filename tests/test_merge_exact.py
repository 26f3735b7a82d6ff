"""Merges that never change a value: SQLite affinity and Arrow types, NULL and duplicate keys,
outputs that are not the base, stale WAL files, a live xetrack writer, file modes."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SCRIPTS, count_rows, make_xetrack_db, run_script

sys.path.insert(0, str(SCRIPTS))

from _evlib.errors import EVError  # noqa: E402
from _evlib.merge import merge_data, merge_dbs  # noqa: E402

PK = "track_id TEXT, timestamp TEXT, PRIMARY KEY (track_id, timestamp)"


def db(path: Path, decl: str, *rows) -> Path:
    con = sqlite3.connect(path)
    con.execute(f'CREATE TABLE "default" (v {decl}, {PK})')
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
    con.commit()
    con.close()
    return path


def typed(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute('SELECT typeof(v), v, track_id FROM "default" ORDER BY rowid').fetchall()
    finally:
        con.close()


# --- SQLite: affinity would change a value -> refused, else kept exactly ----------------------

@pytest.mark.parametrize("base_decl, exp_decl, value, stored", [
    ("REAL", "INTEGER", 2**62 + 1, "real"),      # rounded
    ("INTEGER", "TEXT", "007", "integer"),       # '007' -> 7
    ("TEXT", "REAL", 0.1, "text"),               # 0.1 -> '0.1'
    ("INTEGER", "REAL", 3.0, "integer"),         # 3.0 -> 3: the type changes
    ("NUMERIC", "TEXT", "1e3", "integer"),       # '1e3' -> 1000
    ("REAL", "TEXT", "2.50", "real"),            # '2.50' -> 2.5
    ("REAL", "", -0.0, "real"),                  # -0.0 -> 0.0: the sign is lost
])
def test_a_value_the_base_affinity_would_convert_is_refused(tmp_path, base_decl, exp_decl,
                                                              value, stored):
    base = db(tmp_path / "base.db", base_decl, (1, "r0", "t0"))
    exp = db(tmp_path / "exp.db", exp_decl, (value, "r1", "t1"))
    before = base.read_bytes()
    with pytest.raises(EVError) as exc:
        merge_dbs(base, [exp], base)
    assert exc.value.code == 2
    src_type = {int: "integer", float: "real", str: "text"}[type(value)]
    assert exc.value.message.startswith(f"{exp} table 'default' column 'v': {src_type} "
                                        f"{value!r} would be stored as {stored} ")
    assert base.read_bytes() == before


@pytest.mark.parametrize("base_decl, exp_decl, value", [
    ("INTEGER", "REAL", 0.5),        # not integral: stays real
    ("TEXT", "INTEGER", "abc"),      # text under TEXT affinity
    ("BLOB", "TEXT", "x"),           # no affinity: kept
    ("", "INTEGER", 2**62 + 1),      # untyped column keeps everything
    ("INTEGER", "NUMERIC", 2**63 - 1),
    ("REAL", "TEXT", "not a number"),
    ("TEXT", "BLOB", b"\x00\xff"),   # a blob is never converted
])
def test_values_affinity_leaves_alone_are_merged_with_type_and_bits(tmp_path, base_decl,
                                                                    exp_decl, value):
    base = db(tmp_path / "base.db", base_decl, (None, "r0", "t0"))
    exp = db(tmp_path / "exp.db", exp_decl, (value, "r1", "t1"))
    want = typed(exp)
    merge_dbs(base, [exp], base)
    assert typed(base)[1:] == want
    assert merge_dbs(base, [exp], base)["rows_added"]["default"] == 0  # idempotent


def test_null_and_duplicate_keys_in_one_input_are_refused(tmp_path):
    base = db(tmp_path / "base.db", "INTEGER", (1, "r0", "t0"))
    exp = db(tmp_path / "exp.db", "INTEGER", (2, "r1", None))  # SQLite allows NULL in a PK
    with pytest.raises(EVError) as exc:
        merge_dbs(base, [exp], base)
    assert exc.value.code == 2 and exc.value.message == (
        f"{exp} table 'default': key column 'timestamp' is NULL (row 1: "
        "{'track_id': 'r1', 'timestamp': None})")
    dup = tmp_path / "dup.db"
    con = sqlite3.connect(dup)  # no primary key: nothing stops two rows per key
    con.execute('CREATE TABLE "default" (v INTEGER, track_id TEXT, timestamp TEXT)')
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', [(1, "r", "t"), (2, "r", "t")])
    con.commit()
    con.close()
    with pytest.raises(EVError) as exc:
        merge_dbs(base, [dup], base)
    assert exc.value.code == 3 and exc.value.message == (
        f"{dup} table 'default': key {{'track_id': 'r', 'timestamp': 't'}} has rows with "
        "different values")
    assert typed(base) == [("integer", 1, "r0")]


def test_an_existing_output_that_is_not_the_base_is_refused_unless_force(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.6}])
    (git_repo / "notes.py").write_text("print('mine')\n")
    cp = run_script("merge_artifacts.py", "--base-db", "base.db", "--exp-db", "exp.db",
                    "--output-db", "notes.py", cwd=git_repo)
    assert cp.returncode == 4
    assert cp.stderr == (f"merge_artifacts.py: error: --output-db {git_repo}/notes.py exists "
                         "and is not the base; pass a new path or the base; --force replaces "
                         "it\n")
    assert (git_repo / "notes.py").read_text() == "print('mine')\n"
    pq.write_table(pa.table({"a": [1]}), git_repo / "b.parquet")
    pq.write_table(pa.table({"a": [2]}), git_repo / "e.parquet")
    cp = run_script("merge_artifacts.py", "--base-data", "b.parquet", "--exp-data", "e.parquet",
                    "--output-data", "notes.py", cwd=git_repo)
    assert cp.returncode == 4 and (git_repo / "notes.py").read_text() == "print('mine')\n"
    cp = run_script("merge_artifacts.py", "--base-db", "base.db", "--exp-db", "exp.db",
                    "--output-db", "notes.py", "--force", cwd=git_repo)
    assert cp.returncode == 0 and count_rows(git_repo / "notes.py") == 2


def test_more_inputs_than_sqlite_attaches_are_combined_then_merged(tmp_path):
    base = db(tmp_path / "base.db", "INTEGER", (0, "r0", "t0"))
    exps = [db(tmp_path / f"e{i}.db", "INTEGER", (i, f"r{i}", "t"), (0, "r0", "t0"))
            for i in range(1, 15)]
    rep = merge_dbs(base, exps, base)
    assert rep["combined"]["inputs"] == 14 and rep["rows_added"]["default"] == 14
    assert typed(base) == [("integer", i, f"r{i}") for i in range(15)]  # each file's order
    assert merge_dbs(base, exps, base)["rows_added"]["default"] == 0


# --- SQLite files as SQLite treats them ---------------------------------------------------------

_DIE_WITH_WAL = textwrap.dedent("""
    import os, sqlite3, sys
    con = sqlite3.connect(sys.argv[1])
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute('INSERT INTO "default" VALUES (?, ?, ?)', (int(sys.argv[2]), sys.argv[3], "t"))
    con.commit()
    os._exit(0)  # dies before any checkpoint: the row lives only in the -wal
""")


@pytest.mark.parametrize("output", ["in place", "new file"])
def test_a_stale_wal_beside_base_and_input_counts_its_committed_rows(tmp_path, output):
    base = db(tmp_path / "base.db", "INTEGER", (1, "r1", "t"))
    exp = db(tmp_path / "exp.db", "INTEGER", (3, "r3", "t"))
    for path, v in ((base, 2), (exp, 4)):
        subprocess.run([sys.executable, "-c", _DIE_WITH_WAL, str(path), str(v), f"r{v}"],
                       check=True)
        assert Path(f"{path}-wal").stat().st_size > 0
    out = base if output == "in place" else tmp_path / "out.db"
    merge_dbs(base, [exp], out)
    con = sqlite3.connect(out)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert typed(out) == [("integer", v, f"r{v}") for v in (1, 2, 3, 4)]


_WRITER = textwrap.dedent("""
    import sys, time
    from xetrack import Tracker
    t = Tracker(sys.argv[1], params={"who": "trainer"})
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        t.log({"step": i, "loss": 1.0 / (i + 1)})
        time.sleep(0.01)
    print("done", flush=True)
""")


def test_a_live_xetrack_writer_keeps_every_row_while_merges_run_in_place(tmp_path):
    base = tmp_path / "results.db"
    make_xetrack_db(base, [{"step": -1, "loss": 9.0}])
    n = 150
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(base), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        merged = 0
        for i in range(6):
            exp = tmp_path / f"exp{i}.db"
            make_xetrack_db(exp, [{"step": 1000 + i, "loss": 0.5}] * 20)
            rep = merge_dbs(base, [exp], base)
            assert rep["mode"] == "in-place transaction"
            merged += rep["rows_added"]["default"]
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0 and out == "done\n", err
    con = sqlite3.connect(base)
    steps = [r[0] for r in con.execute(
        'SELECT step FROM "default" WHERE who = \'trainer\' ORDER BY rowid')]
    con.close()
    assert steps == list(range(n))  # the writer lost no row and did not crash
    assert merged == 120 and count_rows(base) == 1 + n + 120


def test_replacing_a_file_another_process_has_open_is_refused_naming_it(tmp_path):
    base = db(tmp_path / "base.db", "INTEGER", (1, "r1", "t"))
    exp = db(tmp_path / "exp.db", "INTEGER", (2, "r2", "t"))
    out = db(tmp_path / "out.db", "INTEGER", (0, "r0", "t"))
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('SELECT 1 FROM \"default\"').fetchall(); "
                               "print('open', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(EVError) as exc:
            merge_dbs(base, [exp], out, force=True)
        assert exc.value.code == 4
        assert exc.value.message.startswith(f"{out} is open in another process (pid "
                                            f"{holder.pid}: {sys.executable} -c import sqlite3")
        assert exc.value.message.endswith(": replacing the file would break its writer")
    finally:
        holder.kill()
        holder.wait()
    assert typed(out) == [("integer", 0, "r0")]


# --- parquet: the base's Arrow schema, exactly ---------------------------------------------------

def pqw(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("nested", [True, False])  # a list column: DuckDB picks the rows
def test_a_subset_of_the_base_merges_to_the_same_table_and_schema(tmp_path, nested):
    import pandas as pd

    df = pd.DataFrame({
        "i": pd.array([1, None, 3], dtype="Int64"),
        "cat": pd.Categorical(["a", "b", "a"]),
        "ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]).tz_localize(
            "Europe/Paris"),
        "dur": pd.to_timedelta([1, 2, 3], unit="ms"),
    }, index=pd.Index([10, 20, 30], name="run"))
    tbl = pa.Table.from_pandas(df)
    extra = {
        "dec": pa.array([Decimal("1.000000000000000000000000000000000000001")] * 3,
                        pa.decimal256(40, 39)),
        "half": pa.array([1.5, -0.0, float("nan")], pa.float16()),
        "big": pa.array([2**63 - 1, 0, -1], pa.int64()),
        "u": pa.array([2**64 - 1, 0, 1], pa.uint64()),
        "ls": pa.array(["x", "y", "z"], pa.large_string()),
        "fsb": pa.array([b"ab", b"cd", b"ef"], pa.binary(2)),
        "t": pa.array([1000, 2000, 3000], pa.time64("ns")),
        "lst": pa.array([[1.0], [], None], pa.list_(pa.float32())),
        "req": pa.array([1, 2, 3], pa.int8()),
    }
    if not nested:  # every other type is compared in memory (Arrow ranks)
        del extra["lst"]
    for name, arr in extra.items():
        nullable = name != "req"
        tbl = tbl.append_column(pa.field(name, arr.type, nullable=nullable,
                                         metadata={b"unit": b"x"}), arr)
    base = pqw(tmp_path / "base.parquet", tbl)
    exp = pqw(tmp_path / "exp.parquet", tbl.slice(1, 2))
    rep = merge_data(base, [exp], tmp_path / "out.parquet")
    assert rep["inputs"][0]["added"] == 0 and rep["rows_out"] == 3
    got = pq.read_table(tmp_path / "out.parquet")
    want = pq.read_table(base)
    assert got.schema.equals(want.schema, check_metadata=True)
    for name in want.column_names:  # float16 NaN: compare bits (NaN != NaN)
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if name == "half":
            g, w = g.view(pa.int16()), w.view(pa.int16())
        assert g.equals(w), name
    back = got.to_pandas()
    assert back.index.name == "run" and str(back["i"].dtype) == "Int64"
    assert str(back["cat"].dtype) == "category" and str(back["ts"].dt.tz) == "Europe/Paris"
    # In place: nothing to add leaves the file untouched.
    st = base.stat()
    assert merge_data(base, [exp], base)["unchanged"] is True
    assert base.stat().st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("base_arr, exp_arr, bad", [
    (pa.array([0.5]), pa.array([2**53 + 1]), 2**53 + 1),                  # int64 -> double
    (pa.array([1], pa.int32()), pa.array([2**40]), 2**40),                 # overflow
    (pa.array([1.0]), pa.array([2**64 - 1], pa.uint64()), 2**64 - 1),      # uint64 -> double
    (pa.array([1], pa.int64()), pa.array([1.5]), None),                    # float -> int
    (pa.array([Decimal("1.5")], pa.decimal128(3, 1)),
     pa.array([Decimal("1.25")], pa.decimal128(4, 2)), Decimal("1.25")),  # scale lost
    (pa.array([0], pa.timestamp("ms")), pa.array([1500], pa.timestamp("us")), None),
    (pa.array([0], pa.timestamp("us", "UTC")), pa.array([0], pa.timestamp("us", "Asia/Tokyo")),
     None),                                                                 # a time zone
    (pa.array([1.0], pa.float32()), pa.array([0.1], pa.float64()), None),  # narrowing
    (pa.array([True]), pa.array([1]), None),
])
def test_lossy_arrow_conversions_are_refused_naming_the_value(tmp_path, base_arr, exp_arr, bad):
    base = pqw(tmp_path / "base.parquet", pa.table({"c": base_arr}))
    exp = pqw(tmp_path / "exp.parquet", pa.table({"c": exp_arr}))
    before = base.read_bytes()
    with pytest.raises(EVError) as exc:
        merge_data(base, [exp], base)
    assert exc.value.code == 2
    assert exc.value.message.startswith(f"{exp} column 'c'")
    if bad is not None:
        assert f"value {bad!r}" in exc.value.message
    assert base.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["base.parquet", "exp.parquet"]


def test_exact_arrow_conversions_keep_values(tmp_path):
    base = pqw(tmp_path / "base.parquet", pa.table({
        "i": pa.array([1], pa.int64()), "f": pa.array([0.5], pa.float64()),
        "s": pa.array(["a"]).dictionary_encode(), "big": pa.array([1.0]),
        "ts": pa.array([0], pa.timestamp("ns", "UTC"))}))
    exp = pqw(tmp_path / "exp.parquet", pa.table({
        "i": pa.array([-(2**31)], pa.int32()), "f": pa.array([-0.0], pa.float16()),
        "s": pa.array(["b"]), "big": pa.array([2**53], pa.int64()),
        "ts": pa.array([7], pa.timestamp("s", "UTC"))}))
    merge_data(base, [exp], base)
    t = pq.read_table(base)
    assert t.schema.equals(pq.read_schema(tmp_path / "base.parquet"))
    assert t.to_pydict()["i"] == [1, -(2**31)] and t.column("big").to_pylist() == [1.0, 2.0**53]
    assert str(t.column("f")[1]) == "-0.0" and t.schema.field("s").type.value_type == pa.string()
    assert t.column("ts").cast(pa.int64()).to_pylist() == [0, 7 * 10**9]


def test_case_only_name_clash_null_and_duplicate_keys_are_refused(tmp_path):
    base = pqw(tmp_path / "base.parquet", pa.table({"id": [1], "Score": [0.5]}))
    clash = pqw(tmp_path / "clash.parquet", pa.table({"id": [2], "score": [0.7]}))
    with pytest.raises(EVError) as exc:
        merge_data(base, [clash], base)
    assert exc.value.code == 2 and exc.value.message == (
        f"columns 'Score' (in {base}) and 'score' (in {clash}) differ only in case")
    nul = pqw(tmp_path / "nul.parquet", pa.table({"id": [2, None], "Score": [0.1, 0.2]}))
    with pytest.raises(EVError) as exc:
        merge_data(base, [nul], base, key_columns=["id"])
    assert exc.value.code == 2 and exc.value.message == (
        f"{nul}: a key column (id) is NULL in row 1")
    dup = pqw(tmp_path / "dup.parquet", pa.table({"id": [5, 5], "Score": [0.1, 0.2]}))
    with pytest.raises(EVError) as exc:
        merge_data(base, [dup], base, key_columns=["id"])
    assert exc.value.code == 3 and exc.value.message == (
        f"{dup}: rows 0 and 1 have the same key (id) but different values")
    assert pq.read_table(base).to_pydict() == {"id": [1], "Score": [0.5]}


def test_keyless_merge_of_many_files_keeps_order_and_counts_copies(tmp_path):
    base = pqw(tmp_path / "base.parquet", pa.table({"x": [1, 1, 2]}))
    exps = [pqw(tmp_path / f"e{i}.parquet", pa.table({"x": [9 - i, 1, 1, 1, 2, 3]}))
            for i in range(12)]
    rep = merge_data(base, exps, base)
    x = pq.read_table(base).column("x").to_pylist()
    # Each value's copies: the most any one file has; new copies in each file's own order.
    assert x == [1, 1, 2, 9, 1, 3] + [9 - i for i in range(1, 12)]
    assert [i["added"] for i in rep["inputs"]] == [3] + [1] * 11
    assert merge_data(base, exps, base)["unchanged"] is True



def _nan(payload: int) -> float:
    import numpy as np

    return float(np.array([0x7FF8000000000000 | payload], np.uint64).view(np.float64)[0])


def _pq_case(tmp_path: Path, case: str):
    """One parquet merge; its outcome (column bits and counts, or the refusal) to compare."""
    d = tmp_path / case
    d.mkdir(parents=True)

    def t(x, s, ids=None):
        cols = {"x": pa.array(x, pa.float64()), "s": pa.array(s).dictionary_encode(),
                "ts": pa.array([7] * len(x), pa.timestamp("us"))}
        if ids is not None:
            cols = {"id": pa.array(ids, pa.int64()), **cols}
        return pa.table(cols)

    kw: dict = {}
    if case == "keyless":
        base = pqw(d / "b.parquet", pa.table({
            "x": pa.array([0.0, -0.0, _nan(1), None, 1.5, 1.5]),
            "s": pa.array(["a", "a", None, None, "a", "a"]).dictionary_encode()}))
        exps = [pqw(d / "e1.parquet", pa.table({
                    "x": pa.array([1.5, 1.5, 1.5, -0.0, _nan(2), None, 2.5, 2.5]),
                    "s": pa.array(["a", "a", "a", "a", None, None, "c", "c"])})),
                pqw(d / "e2.parquet", pa.table({
                    "x": pa.array([1.5, 2.5, 1.5, 0.0, 1.5, _nan(1), 1.5]),
                    "s": pa.array(["a", "c", "a", "a", "a", None, "a"])}))]
    else:
        base = pqw(d / "b.parquet", t([0.5, 1.5, 2.5], ["a", "b", "c"], [1, 2, 3]))
        e1 = {"merge": ([1.5, -0.0, 9.0], ["x", "y", "y"], [2, 4, 5]),
              "keep-exp": ([1.5, -0.0, 9.0], ["x", "y", "y"], [2, 4, 5]),
              "conflict": ([1.5, -0.0, 9.0], ["x", "y", "y"], [2, 4, 5]),
              "rebase": ([1.5, -0.0, 9.0], ["x", "y", "y"], [2, 4, 5]),
              "null": ([1.5, 2.5], ["x", "y"], [7, None]),
              "dup": ([1.5, 2.5, 1.5, 3.5], ["x", "y", "x", "x"], [8, 7, 8, 7])}[case]
        exps = [pqw(d / "e1.parquet", t(*e1)),
                pqw(d / "e2.parquet", t([4.5, 5.5], ["p", "q"], [5, 6]))]
        kw = {"key_columns": ["id"], "strategy": "rebase" if case == "rebase" else "merge"}
        # id 2 differs from the base's, id 5 between e1 and e2: conflicts, a side chosen
        kw["on_conflict"] = {"merge": "keep-base", "keep-exp": "keep-exp"}.get(case)
    try:
        rep = merge_data(base, exps, d / "out.parquet", **kw)
    except EVError as exc:
        return exc.code, exc.message.replace(str(d), "D")
    out = pq.read_table(d / "out.parquet")
    cols = {c: out.column(c).to_pylist() for c in out.column_names if c != "x"}
    cols["x"] = out.column("x").cast(pa.float64()).to_numpy().view("int64").tolist()
    return cols, [i["added"] for i in rep["inputs"]], rep["rows_out"]


@pytest.mark.parametrize("case", ["keyless", "merge", "keep-exp", "conflict", "rebase",
                                  "null", "dup"])
def test_parquet_rows_picked_in_memory_match_the_duckdb_query(tmp_path, monkeypatch, case):
    """Small inputs are compared in memory (Arrow ranks + numpy), large ones by DuckDB: both
    pick the same rows, bit for bit (-0.0, NaN payloads, NULLs), and refuse alike."""
    from _evlib import merge_parquet

    arrow = _pq_case(tmp_path / "arrow", case)
    monkeypatch.setattr(merge_parquet, "ARROW_MAX_BYTES", -1)
    duck = _pq_case(tmp_path / "duckdb", case)
    assert arrow == duck
    want = {"keyless": ([4, 1], 11), "merge": ([2, 1], 6), "keep-exp": ([2, 2], 6),
            "rebase": ([2, 2], 6)}
    if case in want:
        assert (arrow[1], arrow[2]) == want[case]
        if case == "keep-exp":  # the later file's row of each conflicting key
            assert arrow[0]["id"] == [1, 3, 2, 4, 5, 6]
    elif case == "conflict":
        assert arrow == (3, "2 row(s) have the same key but different values (id=2 in "
                            "D/e1.parquet)")
    elif case == "null":
        assert arrow == (2, "D/e1.parquet: a key column (id) is NULL in row 1")
    else:
        assert arrow == (3, "D/e1.parquet: rows 1 and 3 have the same key (id) but different "
                            "values")

@pytest.mark.parametrize("path", ["arrow", "duckdb"])
def test_keyed_data_merge_conflicts_compare_values_exactly(tmp_path, monkeypatch, path):
    """-0.0 is not 0.0 (a conflict); the same NaN, and NULL, equal themselves (no conflict),
    in memory and in DuckDB; keep-exp writes the experiment's bits."""
    from _evlib import merge_parquet

    if path == "duckdb":
        monkeypatch.setattr(merge_parquet, "ARROW_MAX_BYTES", -1)
    base = pqw(tmp_path / "b.parquet", pa.table({"id": [1, 2, 3, 4],
                                                 "x": pa.array([0.0, _nan(1), None, 1.5])}))
    exp = pqw(tmp_path / "e.parquet", pa.table({"id": [1, 2, 3, 4, 5],
                                                "x": pa.array([-0.0, _nan(1), None, 1.5, 2.0])}))
    with pytest.raises(EVError) as exc:
        merge_data(base, [exp], tmp_path / "o.parquet", key_columns=["id"])
    assert exc.value.code == 3 and exc.value.line() == (
        f"1 row(s) have the same key but different values (id=1 in {exp}); nothing written; "
        f"re-run with --on-conflict keep-base or keep-exp to choose which side wins")
    assert not (tmp_path / "o.parquet").exists()
    rep = merge_data(base, [exp], tmp_path / "o.parquet", key_columns=["id"],
                     on_conflict="keep-exp")
    out = pq.read_table(tmp_path / "o.parquet")
    assert out.column("id").to_pylist() == [2, 3, 4, 1, 5]
    bits = out.column("x").to_numpy(zero_copy_only=False).view("int64").tolist()
    assert bits[3] == -(2 ** 63) and bits[0] == pa.array([_nan(1)]).to_numpy().view(
        "int64")[0]
    assert (rep["conflicts"], rep["replaced"], rep["inputs"][0]["added"]) == (1, 1, 2)


# --- file modes ---------------------------------------------------------------------------------

def test_new_files_get_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    from _evlib import atomic

    old = os.umask(0o027)
    try:
        atomic.write_text(tmp_path / "new.txt", "x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o7777 == 0o640
        p = tmp_path / "ro.txt"
        p.write_text("old")
        p.chmod(0o444)  # DVC's read-only tracked file
        atomic.write_text(p, "new")
        assert p.stat().st_mode & 0o7777 == 0o644 and p.read_text() == "new"
        os.chmod(p, 0o604)
        atomic.copy_file(tmp_path / "new.txt", p)
        assert p.stat().st_mode & 0o7777 == 0o604
        base = db(tmp_path / "b.db", "INTEGER", (1, "r1", "t"))
        exp = db(tmp_path / "e.db", "INTEGER", (2, "r2", "t"))
        merge_dbs(base, [exp], tmp_path / "merged.db")
        assert (tmp_path / "merged.db").stat().st_mode & 0o7777 == 0o640
        pqw(tmp_path / "b.parquet", pa.table({"a": [1]}))
        pqw(tmp_path / "e.parquet", pa.table({"a": [2]}))
        os.chmod(tmp_path / "b.parquet", 0o444)
        merge_data(tmp_path / "b.parquet", [tmp_path / "e.parquet"], tmp_path / "b.parquet")
        assert (tmp_path / "b.parquet").stat().st_mode & 0o7777 == 0o644
    finally:
        os.umask(old)


def test_json_report_says_mode_and_backup(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}], {"version": "v"})
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.9}], {"version": "v"})
    cp = run_script("merge_artifacts.py", "--json", "--strategy", "rebase", "--base-db",
                    "base.db", "--exp-db", "exp.db", "--key-columns", "version", cwd=git_repo)
    rep = json.loads(cp.stdout)["db"]
    assert rep["mode"] == "in-place transaction"
    assert rep["backup"] == str(git_repo / "base.db.bak")


_DIE_MID_TRANSACTION = textwrap.dedent("""
    import os, sqlite3, sys
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("PRAGMA cache_size=1")  # spill to the file: the journal holds old pages
    con.execute("BEGIN")
    con.execute('DELETE FROM "default"')
    con.execute('INSERT INTO "default" SELECT 99, hex(randomblob(500)), "t" FROM '
                '(WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i<300) '
                'SELECT i FROM c)')
    os._exit(0)  # no COMMIT, no ROLLBACK: a hot journal
""")


def test_hot_journal_base_is_rolled_back_input_is_refused(tmp_path):
    base = db(tmp_path / "base.db", "INTEGER", (1, "r1", "t"))
    exp = db(tmp_path / "exp.db", "INTEGER", (2, "r2", "t"))
    for p in (base, exp):
        subprocess.run([sys.executable, "-c", _DIE_MID_TRANSACTION, str(p)], check=True)
        assert Path(f"{p}-journal").stat().st_size > 0
    with pytest.raises(EVError) as exc:
        merge_dbs(base, [exp], base)
    assert exc.value.code == 4 and exc.value.message == (
        f"--exp-db {exp} has a hot journal ({exp}-journal: a writer died mid-transaction)")
    assert not Path(f"{base}-journal").exists()  # the base's was rolled back meanwhile
    assert typed(base) == [("integer", 1, "r1")]
    sqlite3.connect(exp).execute("SELECT count(*) FROM sqlite_master").fetchall()  # the hint
    merge_dbs(base, [exp], base)
    assert typed(base) == [("integer", 1, "r1"), ("integer", 2, "r2")]


def test_a_big_in_place_merge_beside_an_open_connection_is_refused_naming_it(tmp_path,
                                                                            monkeypatch):
    from _evlib import merge_sqlite

    monkeypatch.setattr(merge_sqlite, "LIVE_WRITER_MAX_ROWS", 0)  # as if the input were big
    base = db(tmp_path / "base.db", "INTEGER", (1, "r1", "t"))
    exp = db(tmp_path / "exp.db", "INTEGER", (2, "r2", "t"))
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('SELECT 1 FROM \"default\"').fetchall(); "
                               "print('open', flush=True); time.sleep(60)", str(base)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(EVError) as exc:
            merge_dbs(base, [exp], base)
    finally:
        holder.kill()
        holder.wait()
    assert exc.value.code == 4
    assert exc.value.message.startswith(f"{base} is open in another process (pid {holder.pid}: ")
    assert exc.value.message.endswith("and merging 1 rows would hold its write lock longer "
                                      "than a writer waits")
    assert typed(base) == [("integer", 1, "r1")]


def test_a_pandas_range_index_kept_in_metadata_survives_and_extends(tmp_path):
    import pandas as pd

    base = tmp_path / "base.parquet"
    pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(0, 4, 2, name="step")).to_parquet(base)
    assert pq.read_schema(base).names == ["a"]  # the index lives only in the pandas metadata
    exp = tmp_path / "exp.parquet"
    pd.DataFrame({"a": [2, 3]}).to_parquet(exp)
    merge_data(base, [exp], tmp_path / "sub.parquet")
    back = pd.read_parquet(tmp_path / "sub.parquet")
    assert list(back["a"]) == [1, 2, 3]
    assert isinstance(back.index, pd.RangeIndex) and back.index.name == "step"
    assert list(back.index) == [0, 2, 4]
    only_old = tmp_path / "old.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(only_old)
    merge_data(base, [only_old], tmp_path / "same.parquet")
    assert pd.read_parquet(tmp_path / "same.parquet").index.equals(pd.read_parquet(base).index)


def _rows_db(path: Path, n: int, offset: int = 0) -> None:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v REAL, s TEXT, '
                'PRIMARY KEY (track_id, timestamp))')
    con.execute("WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < ?2) "
                "INSERT INTO \"default\" SELECT 'r' || (i + ?1), 't', (i + ?1) * 0.5, "
                "'x' || (i + ?1) FROM c",
                (offset, n - 1))
    con.commit()
    con.close()


@pytest.mark.parametrize("change", ["none", "value", "type", "reordered", "gap"])
def test_a_remerge_of_many_rows_finds_every_difference(tmp_path, change):
    """A re-merge (every key present) is proven row by row along the rowids when the input
    lines up with the base, else by the key join: one changed value or type is a conflict
    either way, and base rows in another order or with gaps still re-merge to nothing."""
    base, exp = tmp_path / "base.db", tmp_path / "exp.db"
    _rows_db(base, 500)
    _rows_db(exp, 3000, offset=7)
    assert merge_dbs(base, [exp], base)["rows_added"]["default"] == 2507
    if change == "reordered":  # the same rows, another rowid order
        con = sqlite3.connect(base)
        con.executescript('CREATE TABLE t2 AS SELECT * FROM "default" ORDER BY random(); '
                          'DELETE FROM "default"; INSERT INTO "default" SELECT * FROM t2; '
                          'DROP TABLE t2')
        con.close()
    if change == "gap":  # a row of the input deleted and put back: a gap in the base
        con = sqlite3.connect(base)
        con.executescript("""CREATE TABLE t2 AS SELECT * FROM "default" WHERE track_id='r1500';
            DELETE FROM "default" WHERE track_id='r1500';
            INSERT INTO "default" SELECT * FROM t2; DROP TABLE t2""")
        con.close()
    before = sqlite3.connect(base).execute('SELECT * FROM "default" ORDER BY rowid').fetchall()
    if change in ("value", "type"):
        con = sqlite3.connect(exp)
        # v 1003.5 -> 1003.5000001; s TEXT 'x2007' -> BLOB of the same bytes (another type)
        new = "1003.5000001" if change == "value" else "CAST('x2007' AS BLOB)"
        con.execute(f"UPDATE \"default\" SET {'v' if change == 'value' else 's'} = {new} "
                    "WHERE track_id = 'r2007'")
        con.commit()
        con.close()
        with pytest.raises(EVError) as ei:
            merge_dbs(base, [exp], base)
        assert ei.value.code == 3 and "1 row(s) have the same key but different" in str(ei.value)
        assert "r2007" in str(ei.value)
    else:
        rep = merge_dbs(base, [exp], base)
        assert rep["rows_added"]["default"] == 0 and rep["conflicts"] == 0
        assert rep["inputs"][0]["tables"]["default"]["skipped"] == 3000
    after = sqlite3.connect(base).execute('SELECT * FROM "default" ORDER BY rowid').fetchall()
    assert after == before and len(after) == 3007


def _keyless(path: Path, *rows) -> Path:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v REAL)')
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
    con.commit()
    con.close()
    return path


def test_many_keyless_shards_combine_across_groups_exactly(tmp_path):
    """25 xetrack-like shards (no primary key: the scratch DB keeps one lookup index for all
    its groups): a row in every shard (twice in the first) is added once, a differing copy in
    a later group is a conflict that writes nothing, and no index of ours is left behind."""
    base = _keyless(tmp_path / "base.db", ("r0", "t", 0.0))
    exps = [_keyless(tmp_path / f"e{i}.db", (f"r{i}", "t", i * 0.5), ("r1", "t", 0.5))
            for i in range(1, 26)]  # e1 holds r1 twice, identical
    rep = merge_dbs(base, exps, base)
    assert rep["combined"]["inputs"] == 25 and rep["rows_added"]["default"] == 25
    con = sqlite3.connect(base)
    assert con.execute('SELECT track_id, v FROM "default" ORDER BY rowid').fetchall() == [
        (f"r{i}", i * 0.5) for i in range(26)]
    assert con.execute("SELECT name FROM sqlite_master WHERE type='index'").fetchall() == []
    con.close()
    assert merge_dbs(base, exps, base)["rows_added"]["default"] == 0
    (tmp_path / "e23.db").unlink()  # group 3: r1 with another value
    _keyless(tmp_path / "e23.db", ("r23", "t", 11.5), ("r1", "t", 0.75))
    before = typed_all(base)
    with pytest.raises(EVError) as ei:
        merge_dbs(base, exps, base)
    assert ei.value.code == 3 and "have the same key but different values" in str(ei.value)
    assert typed_all(base) == before


def typed_all(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT *, typeof(v) FROM "default" ORDER BY rowid').fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("strategy", ["merge", "rebase"])
def test_a_row_repeated_in_a_keyless_input_is_added_once(tmp_path, strategy):
    base = _keyless(tmp_path / "base.db", ("r0", "t", 0.0), ("r1", "t", 0.1))
    exp = _keyless(tmp_path / "exp.db", ("r2", "t", 0.5), ("r2", "t", 0.5), ("r3", "t", 1.5),
                   *([("r1", "t", 0.1)] if strategy == "merge" else [("r1", "t", 0.9)] * 2))
    rep = merge_dbs(base, [exp], base, strategy=strategy)
    want = ([("r0", "t", 0.0, "real"), ("r1", "t", 0.1, "real"), ("r2", "t", 0.5, "real"),
             ("r3", "t", 1.5, "real")] if strategy == "merge" else
            [("r0", "t", 0.0, "real"), ("r2", "t", 0.5, "real"), ("r3", "t", 1.5, "real"),
             ("r1", "t", 0.9, "real")])
    assert typed_all(base) == want
    assert rep["rows_added"]["default"] == 2
    assert merge_dbs(base, [exp], base, strategy=strategy)["rows_added"]["default"] == 0
    assert typed_all(base) == want


def _decl_db(path: Path, decl: str, n: int, odd, order: str = "rowid") -> Path:
    """n rows keyed r0..r{n-1} (v = i * 0.5) with row r{n//2}'s v = odd, in `order`."""
    con = sqlite3.connect(path)
    con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v {decl}, '
                'PRIMARY KEY (track_id, timestamp))')
    rows = [(f"r{i}", "t", odd if i == n // 2 else i * 0.5) for i in range(n)]
    if order == "reversed":
        rows.reverse()
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("n", [3, 3000])  # 3: the key join; 3000: the rowid-aligned proof
@pytest.mark.parametrize("order", ["rowid", "reversed"])
@pytest.mark.parametrize("decl, in_base, in_exp", [
    ("", 1, 1.0),                       # no affinity: 1 IS 1.0 in SQL, yet another type
    ("BLOB", 1, 1.0),
    ("", 1, "1"),
    ("", None, ""),
    ("TEXT COLLATE NOCASE", "A", "a"),  # the column's collation says equal: the bytes differ
    ("INTEGER", -2**63, -2.0**63),      # an INTEGER column keeps this real as a real
    ("", 0.0, -0.0),                    # no affinity keeps the sign of a zero: -0.0 = 0.0
    ("BLOB", -0.0, 0.0),
])
def test_a_value_differing_only_in_type_or_case_is_a_conflict(tmp_path, decl, in_base, in_exp,
                                                              n, order):
    """A re-merge whose one differing row hides among identical ones (in the input's rowid
    order or reversed) is refused with exit 3 and writes nothing."""
    base = _decl_db(tmp_path / "base.db", decl, n, in_base)
    exp = _decl_db(tmp_path / "exp.db", decl, n, in_exp, order)
    before = base.read_bytes()
    with pytest.raises(EVError) as ei:
        merge_dbs(base, [exp], base)
    assert ei.value.code == 3
    assert str(ei.value).startswith(f"1 row(s) have the same key but different values "
                                    f"(default: ['r{n // 2}', 't'] in {exp}); ")
    assert base.read_bytes() == before
    same = _decl_db(tmp_path / "same.db", decl, n, in_base, order)
    assert merge_dbs(base, [same], base)["rows_added"]["default"] == 0
    assert base.read_bytes() == before


def _signs(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return [(tid, ts, struct.pack(">d", m).hex() if isinstance(m, float) else m)
                for tid, ts, m in con.execute('SELECT track_id, timestamp, m FROM "default" '
                                              "ORDER BY rowid")]
    finally:
        con.close()


def test_a_zero_differing_only_in_sign_in_a_xetrack_blob_column_is_a_conflict(tmp_path):
    """xetrack declares a column BLOB when its first value is a bytearray: later floats are
    kept bit for bit, -0.0 beside 0.0. A copy whose -0.0 became 0.0 is a conflict (exit 3,
    nothing written, in place or into a new file); keep-exp takes the exp's sign; merged
    rows and re-merges keep every sign."""
    base = tmp_path / "base.db"
    make_xetrack_db(base, [{"m": bytearray(b"\x00")}, {"m": -0.0}, {"m": 0.0}])
    exp = tmp_path / "exp.db"
    exp.write_bytes(base.read_bytes())
    con = sqlite3.connect(exp)
    con.execute("UPDATE \"default\" SET m = 0.0 WHERE typeof(m) = 'real'")  # -0.0 -> 0.0
    con.commit()
    con.close()
    (tid, ts1, _), (_, ts2, neg), (_, ts3, pos) = _signs(base)
    assert (neg, pos) == ("8000000000000000", "0000000000000000")
    before = base.read_bytes()
    for out in (base, tmp_path / "out.db"):
        with pytest.raises(EVError) as ei:
            merge_dbs(base, [exp], out)
        assert ei.value.code == 3 and ei.value.message == (
            f"1 row(s) have the same key but different values (default: ['{tid}', '{ts2}'] "
            f"in {exp})")
    assert base.read_bytes() == before and not (tmp_path / "out.db").exists()
    copy = tmp_path / "copy.db"
    copy.write_bytes(before)
    rep = merge_dbs(base, [copy], base)  # the same rows again: nothing to do
    assert rep["rows_added"]["default"] == 0 and rep["conflicts"] == 0
    assert base.read_bytes() == before
    out = tmp_path / "out.db"
    rep = merge_dbs(tmp_path / "none.db", [copy], out)  # into a new file: signs kept
    assert _signs(out) == _signs(base)
    rep = merge_dbs(base, [exp], base, on_conflict="keep-exp")
    assert rep["conflicts"] == 1 and rep["inputs"][0]["tables"]["default"]["replaced"] == 1
    assert _signs(base) == [(tid, ts1, b"\x00"), (tid, ts2, "0000000000000000"),
                            (tid, ts3, "0000000000000000")]
    rep = merge_dbs(base, [copy], base, strategy="rebase")
    assert _signs(base) == _signs(copy)


def test_a_sqlite_without_math_functions_gets_pythons_atan2(monkeypatch):
    """The sign of a zero is read with atan2; a SQLite built without its math functions
    (its atan2 unknown) gets Python's, which tells -0.0 from 0.0 alike."""
    from _evlib import merge_table

    calls = []
    monkeypatch.setattr(merge_table.math, "atan2", lambda y, x: calls.append(y) or
                        (-1.0 if str(y).startswith("-") else 1.0))
    con = sqlite3.connect(":memory:")

    class NoMath:  # what a build without SQLITE_ENABLE_MATH_FUNCTIONS answers
        def execute(self, sql):
            raise sqlite3.OperationalError("no such function: atan2")

        create_function = con.create_function

    merge_table.exact_functions(NoMath())
    con.execute("CREATE TABLE t (a, b)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(-0.0, 0.0), (0.5, 0.5), (0.0, 0.0)])
    same = merge_table._zero_sign("a", "b")
    # as the merge asks it: in a WHERE clause, where OR stops at its first true operand
    assert con.execute(f"SELECT rowid FROM t WHERE NOT {same}").fetchall() == [(1,)]
    assert calls == [-0.0, 0.0, 0.0, 0.0]  # asked of zeros only


def test_a_reordered_input_and_a_row_deleted_from_the_base_remerge_exactly(tmp_path):
    base, exp = tmp_path / "base.db", tmp_path / "exp.db"
    _rows_db(base, 500)
    _rows_db(exp, 3000, offset=7)
    merge_dbs(base, [exp], base)
    want = typed_rows(base)
    rev = tmp_path / "rev.db"
    con = sqlite3.connect(rev)  # the input's rows in the opposite rowid order
    con.execute(f"ATTACH '{exp}' AS e")
    con.executescript('CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v REAL, s TEXT, '
                      'PRIMARY KEY (track_id, timestamp)); INSERT INTO "default" SELECT * FROM '
                      'e."default" ORDER BY rowid DESC')
    con.close()
    rep = merge_dbs(base, [rev], base)
    assert rep["rows_added"]["default"] == 0 and rep["conflicts"] == 0
    con = sqlite3.connect(base)
    con.execute("DELETE FROM \"default\" WHERE track_id = 'r1500'")
    con.commit()
    con.close()
    rep = merge_dbs(base, [exp], base)
    assert rep["rows_added"]["default"] == 1 and rep["conflicts"] == 0
    assert sorted(typed_rows(base)) == sorted(want)


def test_a_null_key_among_present_rows_is_refused(tmp_path):
    """The NULL-key scan is skipped only when every row is proven present: one NULL key in an
    otherwise re-merged input is still refused with exit 2."""
    base, exp = tmp_path / "base.db", tmp_path / "exp.db"
    _rows_db(base, 3000)
    _rows_db(exp, 3000)
    con = sqlite3.connect(exp)
    con.execute("UPDATE \"default\" SET timestamp = NULL WHERE track_id = 'r1200'")
    con.commit()
    rowid = con.execute("SELECT rowid FROM \"default\" WHERE track_id = 'r1200'").fetchone()[0]
    con.close()
    before = base.read_bytes()
    with pytest.raises(EVError) as ei:
        merge_dbs(base, [exp], base)
    assert ei.value.code == 2 and ei.value.message == (
        f"{exp} table 'default': key column 'timestamp' is NULL (row {rowid}: "
        "{'track_id': 'r1200', 'timestamp': None})")
    assert base.read_bytes() == before


def typed_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute('SELECT *, typeof(v), typeof(s) FROM "default" ORDER BY rowid'
                           ).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("decl, one, other", [("", 1, 1.0), ("TEXT COLLATE NOCASE", "A", "a"),
                                              ("", -0.0, 0.0)])
def test_keyless_copies_differing_in_type_or_case_are_a_conflict(tmp_path, decl, one, other):
    """Two rows of one key in a keyless input are copies (added once) only if identical in
    storage class and bytes: 1 vs 1.0, or 'A' vs 'a' in a NOCASE column, is refused."""
    base, exp = tmp_path / "base.db", tmp_path / "exp.db"
    for path, rows in [(base, [("r0", "t", "x")]), (exp, [("r1", "t", one), ("r1", "t", other)])]:
        con = sqlite3.connect(path)
        con.execute(f'CREATE TABLE "default" (track_id TEXT, timestamp TEXT, v {decl})')
        con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
        con.commit()
        con.close()
    before = base.read_bytes()
    with pytest.raises(EVError) as ei:
        merge_dbs(base, [exp], base)
    assert ei.value.code == 3 and ei.value.message == (
        f"{exp} table 'default': key {{'track_id': 'r1', 'timestamp': 't'}} has rows with "
        "different values")
    assert base.read_bytes() == before


@pytest.mark.parametrize("n_inputs", [2, 12])  # one SQLite attach group, and the scratch path
@pytest.mark.parametrize("base_has", ["no table", "no column"])
def test_a_later_input_is_checked_against_what_an_earlier_one_made_of_the_base(
        tmp_path, base_has, n_inputs):
    # What main's table looks like is remembered across inputs: an earlier input that
    # creates the table or adds the column must be seen by the next one's affinity check.
    base = tmp_path / "base.db"
    con = sqlite3.connect(base)
    if base_has == "no table":
        con.execute("CREATE TABLE other (a)")
    else:
        con.execute(f'CREATE TABLE "default" ({PK})')
        con.execute('INSERT INTO "default" VALUES (\'r0\', \'t0\')')
    con.commit()
    con.close()
    exps = [db(tmp_path / f"e{i}.db", "INTEGER", (i, f"r{i}", "t")) for i in range(n_inputs - 1)]
    exps.append(db(tmp_path / "last.db", "TEXT", ("007", "rl", "t")))
    before = base.read_bytes()
    with pytest.raises(EVError) as exc:
        merge_dbs(base, exps, base)
    assert exc.value.code == 2
    assert "table 'default' column 'v': text '007' would be stored as integer 7 " \
        in exc.value.message
    assert base.read_bytes() == before


def test_the_quick_nobody_has_it_open_answer_is_the_scans(tmp_path):
    """open_by's lease shortcut says "nobody" only when nobody has the file open: a plain
    open() by another process (not SQLite), this process's own connection and a -journal
    all fall back to the /proc scan, which names the other process; SIGIO is left as it was,
    and outside the main thread the shortcut is not taken."""
    import signal
    import threading

    from _evlib import merge_common

    path = db(tmp_path / "base.db", "INTEGER", (1, "r1", "t"))
    before = signal.getsignal(signal.SIGIO)
    assert merge_common.open_by(path) == []
    assert signal.getsignal(signal.SIGIO) == before
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; f = open(sys.argv[1], 'rb'); "
                               "print('open', flush=True); time.sleep(60)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        assert merge_common._open_nowhere(path) is False
        assert [p["pid"] for p in merge_common.open_by(path)] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
    con = sqlite3.connect(path)
    try:
        con.execute("SELECT 1 FROM sqlite_master").fetchall()
        assert merge_common._open_nowhere(path) is False  # ours: the scan skips this process
        assert merge_common.open_by(path) == []
    finally:
        con.close()
    journal = Path(f"{path}-journal")
    journal.write_bytes(b"")
    assert merge_common._open_nowhere(path) is False
    journal.unlink()
    got = []
    t = threading.Thread(target=lambda: got.append(merge_common._open_nowhere(path)))
    t.start()
    t.join()
    assert got == [False] and signal.getsignal(signal.SIGIO) == before


def _key_db(path: Path, decl: str, n: int, odd, order: str = "rowid") -> Path:
    """n rows keyed (track_id i, 't') in a track_id column declared `decl`, row n//2's
    track_id = odd; v = i * 0.5."""
    con = sqlite3.connect(path)
    con.execute(f'CREATE TABLE "default" (track_id {decl}, timestamp TEXT, v REAL, '
                'PRIMARY KEY (track_id, timestamp))')
    rows = [(odd if i == n // 2 else i + 10, "t", i * 0.5) for i in range(n)]
    if order == "reversed":
        rows.reverse()
    con.executemany('INSERT INTO "default" VALUES (?, ?, ?)', rows)
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("n", [3, 3000])  # 3: the key join; 3000: the rowid-aligned proof
@pytest.mark.parametrize("order", ["rowid", "reversed"])
@pytest.mark.parametrize("decl, in_base, in_exp", [
    ("", 1, 1.0),                       # the key join's = matches them: another type
    ("BLOB", 2, 2.0),
    ("", 0.0, -0.0),                    # = matches the signs of a zero
    ("TEXT COLLATE NOCASE", "A", "a"),  # the column's collation matches them
])
def test_a_key_equal_but_not_identical_is_a_conflict(tmp_path, decl, in_base, in_exp, n,
                                                     order):
    """A key the join calls equal (1 = 1.0, -0.0 = 0.0, 'A' = 'a' under NOCASE) is another
    value: exit 3 and nothing written, not 'already present' (the input's key would be
    lost); keep-exp stores the input's key exactly."""
    base = _key_db(tmp_path / "base.db", decl, n, in_base)
    exp = _key_db(tmp_path / "exp.db", decl, n, in_exp, order)
    before = base.read_bytes()
    with pytest.raises(EVError) as ei:
        merge_dbs(base, [exp], base)
    assert ei.value.code == 3
    assert str(ei.value).startswith("1 row(s) have the same key but different values "
                                    "(default: [")
    assert base.read_bytes() == before
    same = _key_db(tmp_path / "same.db", decl, n, in_base, order)
    assert merge_dbs(base, [same], base)["rows_added"]["default"] == 0
    assert base.read_bytes() == before
    merge_dbs(base, [exp], base, on_conflict="keep-exp")
    con = sqlite3.connect(base)
    try:
        got = con.execute('SELECT track_id, typeof(track_id), v FROM "default" WHERE v = ?',
                          ((n // 2) * 0.5,)).fetchall()
    finally:
        con.close()
    assert len(got) == 1
    assert (repr(got[0][0]), got[0][1]) == (repr(in_exp), type(in_exp).__name__.replace(
        "float", "real").replace("str", "text").replace("int", "integer"))
