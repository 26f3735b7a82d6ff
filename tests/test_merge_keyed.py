"""The keyed parquet merge's conflict check, bit-exact, on each of its three paths: key columns
first (merge_pqkeyed: DuckDB finds the keys, rows compared only for keys with several rows),
all rows in memory (Arrow ranks), all rows in DuckDB. Every path decides alike."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SCRIPTS, run_script

sys.path.insert(0, str(SCRIPTS))

from _evlib.errors import EVError  # noqa: E402
from _evlib.merge import merge_data  # noqa: E402

PATHS = ["keys-first", "arrow", "duckdb"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Force one path; on keys-first, fail unless the keyed selection really ran."""
    from _evlib import merge_parquet, merge_pqkeyed

    calls = []
    if request.param == "keys-first":
        monkeypatch.setattr(merge_pqkeyed, "MIN_BYTES", 0)
        real = merge_pqkeyed.select_keyed

        def spy(*a, **k):
            calls.append(1)
            return real(*a, **k)

        monkeypatch.setattr(merge_pqkeyed, "select_keyed", spy)
    else:
        monkeypatch.setattr(merge_parquet, "KEYED_FAST", False)
        if request.param == "duckdb":
            monkeypatch.setattr(merge_parquet, "ARROW_MAX_BYTES", -1)
    yield request.param
    if request.param == "keys-first":
        assert calls, "the keys-first path was not taken"


def f64(*bits_or_values):
    """float64 array; an int is a bit pattern (NaN payloads, -0.0 exactly)."""
    out = np.array([0.0 if isinstance(v, int) or v is None else v for v in bits_or_values])
    bits = out.view(np.uint64)
    for i, v in enumerate(bits_or_values):
        if isinstance(v, int):
            bits[i] = v
    mask = np.array([v is None for v in bits_or_values])
    return pa.array(out, pa.float64(), mask=mask)


def f32(*bits_or_values):
    out = np.array([0.0 if isinstance(v, int) or v is None else v for v in bits_or_values],
                   np.float32)
    bits = out.view(np.uint32)
    for i, v in enumerate(bits_or_values):
        if isinstance(v, int):
            bits[i] = v
    mask = np.array([v is None for v in bits_or_values])
    return pa.array(out, pa.float32(), mask=mask)


NAN64_A, NAN64_B = 0x7FF8000000000001, 0x7FF8000000000002
NAN32_A, NAN32_B = 0x7FC00001, 0x7FC00002
NEG0_64, NEG0_32 = 0x8000000000000000, 0x80000000


def run(tmp_path, base: pa.Table, *exps: pa.Table, **kw):
    """(report, output table) or (exit code, message); a refusal leaves no output."""
    b = tmp_path / "base.parquet"
    pq.write_table(base, b)
    files = []
    for i, e in enumerate(exps):
        files.append(tmp_path / f"e{i}.parquet")
        pq.write_table(e, files[-1])
    out = tmp_path / "out.parquet"
    try:
        rep = merge_data(b, files, out, key_columns=["id"], **kw)
    except EVError as exc:
        assert not out.exists()
        return exc.code, exc.message.replace(str(tmp_path) + "/", "")
    return rep, pq.read_table(out)


def bits(col: pa.ChunkedArray) -> list:
    width = {32: np.uint32, 64: np.uint64}[col.type.bit_width]
    arr = col.combine_chunks()
    vals = np.frombuffer(arr.buffers()[1], width)[arr.offset:arr.offset + len(arr)]
    return [None if not ok else int(v) for v, ok in zip(vals, arr.is_valid().to_pylist(),
                                                         strict=True)]


CONFLICT_1 = (3, "1 row(s) have the same key but different values (id=1 in e0.parquet)")


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("base_x, exp_x", [
    ("nan_a", "nan_b"),   # NaN payloads differ: different values, as the exact path decides
    ("zero", "neg0"),     # 0.0 vs -0.0
    ("neg0", "zero"),
    ("null", "zero"),     # NULL vs a value, both ways
    ("zero", "null"),
    ("null", "one"),
    ("one", "null"),
])
def test_a_value_that_differs_in_its_bits_is_a_conflict(tmp_path, path, width, base_x, exp_x):
    v = {"nan_a": NAN32_A if width == 32 else NAN64_A,
         "nan_b": NAN32_B if width == 32 else NAN64_B,
         "neg0": NEG0_32 if width == 32 else NEG0_64, "zero": 0.0, "null": None, "one": 1.5}
    arr = f32 if width == 32 else f64
    base = pa.table({"id": pa.array([1, 2], pa.int64()), "x": arr(v[base_x], 2.0)})
    exp = pa.table({"id": pa.array([1, 3], pa.int64()), "x": arr(v[exp_x], 3.0)})
    assert run(tmp_path, base, exp) == CONFLICT_1
    (tmp_path / "k").mkdir()
    rep, out = run(tmp_path / "k", base, exp, on_conflict="keep-exp")
    assert out.column("id").to_pylist() == [2, 1, 3]
    assert bits(out.column("x")) == bits(pa.chunked_array([arr(2.0, v[exp_x], 3.0)]))
    assert rep["conflicts"] == 1 and rep["replaced"] == 1


@pytest.mark.parametrize("width", [32, 64])
def test_the_same_bits_are_no_conflict(tmp_path, path, width):
    """The same NaN payload, -0.0 and -0.0, NULL and NULL: equal; the input adds only id 9."""
    arr = f32 if width == 32 else f64
    nan, neg0 = (NAN32_A, NEG0_32) if width == 32 else (NAN64_A, NEG0_64)
    base = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "x": arr(nan, neg0, None, 0.0)})
    exp = pa.table({"id": pa.array([4, 3, 2, 1, 9], pa.int64()),
                    "x": arr(0.0, None, neg0, nan, 7.0)})
    rep, out = run(tmp_path, base, exp)
    assert out.column("id").to_pylist() == [1, 2, 3, 4, 9]
    assert bits(out.column("x")) == bits(pa.chunked_array([arr(nan, neg0, None, 0.0, 7.0)]))
    assert out.schema == base.schema
    assert rep["inputs"][0]["added"] == 1 and rep["inputs"][0]["skipped"] == 4
    assert rep["conflicts"] == 0


def test_duplicate_keys_in_the_base(tmp_path, path):
    """The base's rows are all kept; a key the base has twice with different values conflicts
    with any input row of it, one it has twice alike does not."""
    base = pa.table({"id": pa.array([1, 1, 2, 2], pa.int64()), "x": f64(1.0, 2.0, 3.0, 3.0)})
    assert run(tmp_path, base, pa.table({"id": pa.array([1], pa.int64()),
                                         "x": f64(1.0)})) == CONFLICT_1
    (tmp_path / "b").mkdir()
    rep, out = run(tmp_path / "b", base, pa.table({"id": pa.array([2, 5], pa.int64()),
                                                   "x": f64(3.0, 5.0)}))
    assert out.to_pydict() == {"id": [1, 1, 2, 2, 5], "x": [1.0, 2.0, 3.0, 3.0, 5.0]}
    assert rep["inputs"][0]["skipped"] == 1 and rep["conflicts"] == 0


def test_a_new_key_in_two_inputs(tmp_path, path):
    """With different values: a conflict (exit 3), the later file named; with the same
    values: one row, the earlier file's."""
    base = pa.table({"id": pa.array([1], pa.int64()), "x": f64(1.0)})
    e0 = pa.table({"id": pa.array([7, 8], pa.int64()), "x": f64(7.0, 8.0)})
    e1 = pa.table({"id": pa.array([8, 7], pa.int64()), "x": f64(8.0, NEG0_64)})
    code, msg = run(tmp_path, base, e0, e1)
    assert (code, msg) == (3, "1 row(s) have the same key but different values (id=7 in "
                              "e1.parquet)")
    (tmp_path / "same").mkdir()
    e1 = pa.table({"id": pa.array([8, 7], pa.int64()), "x": f64(8.0, 7.0)})
    rep, out = run(tmp_path / "same", base, e0, e1)
    assert out.to_pydict() == {"id": [1, 7, 8], "x": [1.0, 7.0, 8.0]}
    assert [i["added"] for i in rep["inputs"]] == [2, 0]


def test_differing_rows_of_one_key_in_one_input(tmp_path, path):
    base = pa.table({"id": pa.array([1], pa.int64()), "x": f64(1.0)})
    exp = pa.table({"id": pa.array([5, 6, 5], pa.int64()), "x": f64(0.0, 6.0, NEG0_64)})
    assert run(tmp_path, base, exp) == (3, "e0.parquet: rows 0 and 2 have the same key (id) "
                                           "but different values")


def test_a_column_widened_int32_to_int64_with_nulls(tmp_path, path):
    """Values exact (NULLs stay NULL), types the base's: int64, the key int32 -> int64 too."""
    base = pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                     "v": pa.array([10, None, 2**40], pa.int64())})
    exp = pa.table({"id": pa.array([2, 3, 4, 5], pa.int32()),
                    "v": pa.array([None, None, -(2**31), None], pa.int32())})
    # id 3: the base's 2**40 against the input's NULL
    assert run(tmp_path, base, exp) == (3, "1 row(s) have the same key but different values "
                                           "(id=3 in e0.parquet)")
    (tmp_path / "ok").mkdir()
    exp = pa.table({"id": pa.array([2, 4, 5], pa.int32()),
                    "v": pa.array([None, -(2**31), None], pa.int32())})
    rep, out = run(tmp_path / "ok", base, exp)
    assert out.schema == base.schema
    assert out.to_pydict() == {"id": [1, 2, 3, 4, 5], "v": [10, None, 2**40, -(2**31), None]}
    assert rep["inputs"][0]["added"] == 2
    assert [w["column"] for w in rep["type_widenings"]] == ["id", "v"]


def test_cli_exit_code_3_from_the_keys_first_path_at_its_default_size(git_repo):
    """A base past merge_pqkeyed.MIN_BYTES takes the keys-first path unforced: -0.0 against
    0.0 is exit 3 and nothing is written; the same merge without that row adds the rest."""
    from _evlib import merge_parquet, merge_pqkeyed

    tmp_path = git_repo
    n = merge_pqkeyed.MIN_BYTES // 16 + 1000
    ids = np.arange(n, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), tmp_path / "base.parquet")
    assert merge_parquet._data_bytes([tmp_path / "base.parquet"]) >= merge_pqkeyed.MIN_BYTES
    exp = pa.table({"id": pa.array([5, n + 1], pa.int64()), "x": f64(NEG0_64, 1.0)})
    pq.write_table(exp, tmp_path / "exp.parquet")
    args = ("--base-data", "base.parquet", "--exp-data", "exp.parquet", "--key-columns", "id",
            "--output-data", "out.parquet")
    cp = run_script("merge_artifacts.py", *args, cwd=tmp_path)
    assert cp.returncode == 3, cp.stderr
    assert "1 row(s) have the same key but different values (id=5 in" in cp.stderr
    assert not (tmp_path / "out.parquet").exists()
    pq.write_table(exp.slice(1), tmp_path / "exp.parquet")
    cp = run_script("merge_artifacts.py", *args, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == n + 1 and out.column("id")[-1].as_py() == n + 1
