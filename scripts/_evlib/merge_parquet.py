"""Merge and rebase of parquet data files, written by pyarrow from the base's Arrow schema.

The output has the base's schema exactly (types, nullability, schema/field/pandas metadata);
a column only an experiment has is appended. An experiment value is converted to the base's
type only where that is exact (int32 -> int64, float32 -> float64, an int within 2**53 -> double,
string -> dictionary, ...): otherwise the merge refuses with one line naming the file,
column and first offending value, and writes nothing.

Which rows go out is decided over an exact projection of every file (floats and temporals
as their bit patterns, so -0.0, NaN payloads and time units compare exactly): anti-joins on
the key, or for a keyless merge duplicate counting (the n-th copy of a row is new only if no
earlier file has n copies). Up to ARROW_MAX_BYTES of data (and no nested column) that is done
in memory with Arrow's dense ranks and numpy, without importing DuckDB; beyond, by ONE DuckDB
query that spills to a scratch directory beside the output, so a file larger than memory
still merges. The rows themselves are then streamed by record batch from each file with
pyarrow, so N files cost O(total rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CONFLICT, FAILED, USAGE, EVError
from .merge_common import (
    backup_path,
    backup_report,
    check_output,
    check_output_not_input,
    dir_lock,
    output_temp,
    require_file,
    same_file,
    scratch_dir,
    sweep_stale_temps,
)

BATCH_ROWS = 65_536
# Up to this much data (uncompressed, all files) rows are compared in memory; more goes to
# DuckDB, which spills to disk.
ARROW_MAX_BYTES = 1 << 30
_MANTISSA = {16: 11, 32: 24, 64: 53}


# --- schemas ----------------------------------------------------------------------------------

def _read_schema(path: Path, flag: str):
    """(Arrow schema with metadata, row count) from the footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    require_file(path, flag)
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4))
        tail = fh.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise EVError(f"{flag} {path} is not a parquet file", code=USAGE,
                      hint="pass a .parquet data file")
    try:
        pf = pq.ParquetFile(path)
        return pf.schema_arrow, pf.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise EVError(f"{flag} {path} is not a readable parquet file "
                      f"({' '.join(str(exc).split())[:200]})", code=USAGE,
                      hint="pass a .parquet data file") from exc


def precheck_data(base: Path, exps: list[Path]) -> None:
    _read_schema(base, "--base-data")
    for e in exps:
        _read_schema(e, "--exp-data")


def _plan(src, dst) -> str | None:
    """How a src-typed value becomes dst: 'same', 'exact' (every value), 'checked' (exact or
    refused value by value), 'int-float' (exact while |v| <= 2**mantissa), or None (refused)."""
    import pyarrow.types as T

    if src.equals(dst):
        return "same"
    if T.is_null(src):
        return "exact"
    if T.is_dictionary(src):
        inner = _plan(src.value_type, dst.value_type if T.is_dictionary(dst) else dst)
        return None if inner is None else ("exact" if inner == "same" else inner)
    if T.is_dictionary(dst):
        inner = _plan(src, dst.value_type)
        return None if inner is None else ("checked" if inner == "same" else inner)
    if T.is_integer(src) and T.is_integer(dst):
        s_signed, d_signed = T.is_signed_integer(src), T.is_signed_integer(dst)
        sw, dw = src.bit_width, dst.bit_width
        fits = (s_signed == d_signed and dw >= sw) or (not s_signed and d_signed and dw > sw)
        return "exact" if fits else "checked"
    if T.is_integer(src) and T.is_floating(dst):
        bits = src.bit_width - (1 if T.is_signed_integer(src) else 0)
        return "exact" if bits <= _MANTISSA[dst.bit_width] else "int-float"
    if T.is_floating(src) and T.is_floating(dst):
        return "exact" if dst.bit_width > src.bit_width else None
    if T.is_decimal(src) and T.is_decimal(dst):
        if dst.scale >= src.scale and dst.precision - dst.scale >= src.precision - src.scale:
            return "exact"
        return "checked"
    if T.is_integer(src) and T.is_decimal(dst):
        return "checked"
    strings = (T.is_string, T.is_large_string)
    binaries = (T.is_binary, T.is_large_binary)
    for fam in (strings, binaries):
        if any(f(src) for f in fam) and any(f(dst) for f in fam):
            return "exact"
    if T.is_fixed_size_binary(src) and any(f(dst) for f in binaries):
        return "exact"
    if any(f(src) for f in binaries) and T.is_fixed_size_binary(dst):
        return "checked"
    if T.is_timestamp(src) and T.is_timestamp(dst):
        return "checked" if src.tz == dst.tz else None
    for fam in ((T.is_date32, T.is_date64), (T.is_time32, T.is_time64), (T.is_duration,)):
        if any(f(src) for f in fam) and any(f(dst) for f in fam):
            return "checked"
    if ((T.is_list(src) or T.is_large_list(src)) and (T.is_list(dst) or T.is_large_list(dst))
            and src.value_type.equals(dst.value_type)):
        return "exact"
    return None


def _case_collisions(files, schemas) -> None:
    seen: dict[str, tuple[str, Path]] = {}
    for p, (schema, _n) in zip(files, schemas, strict=True):
        for name in schema.names:
            low = name.lower()
            if low in seen and seen[low][0] != name:
                raise EVError(f"columns {seen[low][0]!r} (in {seen[low][1]}) and {name!r} (in {p})"
                              " differ only in case", code=USAGE,
                              hint="nothing written; rename one so the names match exactly")
            seen.setdefault(low, (name, p))


def _out_schema(files, schemas):
    """The base's schema plus the columns only an experiment has (nullable, appended)."""
    base_schema = schemas[0][0]
    fields = list(base_schema)
    have = set(base_schema.names)
    added: dict[Path, list] = {}
    for p, (schema, _n) in zip(files[1:], schemas[1:], strict=True):
        for f in schema:
            if f.name not in have:
                fields.append(f.with_nullable(True))
                have.add(f.name)
                added.setdefault(p, []).append({"column": f.name, "type": str(f.type)})
    import pyarrow as pa

    return pa.schema(fields, metadata=base_schema.metadata), added


# --- converting a batch to the output schema, exactly ----------------------------------------

class _Conform:
    def __init__(self, path: Path, src_schema, out_schema):
        self.path, self.out = path, out_schema
        self.plans = []
        self.widenings = []
        for f in out_schema:
            i = src_schema.get_field_index(f.name)
            if i < 0:
                if not f.nullable:
                    raise EVError(f"{path} has no column {f.name!r}, which is non-null in the "
                                  "base", code=USAGE,
                                  hint="nothing written; add the column to that file")
                self.plans.append((None, "fill"))
                continue
            sf = src_schema.field(i)
            plan = _plan(sf.type, f.type)
            if plan is None:
                raise EVError(f"{path} column {f.name!r} is {sf.type}, the base's is {f.type}: "
                              "no exact conversion", code=USAGE,
                              hint="nothing written; cast the column in one file so the types "
                                   "match, then re-run")
            if plan != "same":
                self.widenings.append({"column": f.name, "file": str(path),
                                       "from": str(sf.type), "to": str(f.type), "how": plan})
            self.plans.append((i, plan))
        self.identity = (all(pl == "same" for _i, pl in self.plans)
                         and [i for i, _p in self.plans] == list(range(len(src_schema))))

    def __call__(self, batch, row0: int):
        import pyarrow as pa

        if self.identity and batch.schema.equals(self.out, check_metadata=False):
            return pa.RecordBatch.from_arrays(batch.columns, schema=self.out)
        arrays = []
        for f, (i, plan) in zip(self.out, self.plans, strict=True):
            if plan == "fill":
                arrays.append(pa.nulls(batch.num_rows, f.type))
                continue
            arr = batch.column(i)
            if plan != "same":
                arr = self._convert(arr, f, plan, row0)
            if not f.nullable and arr.null_count:
                j = arr.is_null().to_pylist().index(True)
                raise EVError(f"{self.path} column {f.name!r}: NULL in row {row0 + j}, the "
                              "column is non-null in the base", code=USAGE,
                              hint="nothing written; fill the value in or drop the row")
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self.out)

    def _convert(self, arr, f, plan, row0):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.types as T

        if T.is_dictionary(arr.type) and not T.is_dictionary(f.type):
            arr = arr.dictionary_decode()
        if plan == "int-float":
            limit = 2 ** _MANTISSA[f.type.bit_width]
            big = pc.greater(arr, pa.scalar(limit, arr.type))
            if T.is_signed_integer(arr.type):
                big = pc.or_(big, pc.less(arr, pa.scalar(-limit, arr.type)))
            if pc.any(big).as_py():
                j = big.to_pylist().index(True)
                self._refuse(f, arr[j].as_py(), arr.type, row0 + j, "beyond 2**"
                             f"{_MANTISSA[f.type.bit_width]}, it would be rounded")
        try:
            return pc.cast(arr, f.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for j in range(len(arr)):
                try:
                    pc.cast(arr.slice(j, 1), f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    self._refuse(f, arr[j].as_py(), arr.type, row0 + j, "it would change")
            raise

    def _refuse(self, f, value, src_type, row, why):
        raise EVError(f"{self.path} column {f.name!r}: value {value!r} ({src_type}, row {row}) "
                      f"cannot be stored as the base's {f.type}: {why}", code=USAGE,
                      hint="nothing written; cast the column in one file so the types match")


def _canon(arr):
    """An exact, DuckDB-comparable stand-in for arr (equal iff the values are identical)."""
    import pyarrow as pa
    import pyarrow.types as T

    if T.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if T.is_floating(t) or T.is_temporal(t):
        width = t.bit_width
        return arr.view({16: pa.int16(), 32: pa.int32(), 64: pa.int64()}[width])
    if T.is_decimal(t) and (t.bit_width > 128 or t.precision > 38):
        return arr.cast(pa.string())
    if T.is_fixed_size_binary(t):
        return arr.cast(pa.binary())
    if T.is_null(t):
        return arr.cast(pa.int8())
    if pa.types.is_boolean(t) or T.is_integer(t) or T.is_string(t) or T.is_large_string(t) \
            or T.is_binary(t) or T.is_large_binary(t) or T.is_decimal(t):
        return arr
    if T.is_nested(t):
        return arr  # compared by DuckDB's nested value equality
    raise EVError(f"column type {t} cannot be compared exactly", code=USAGE,
                  hint="pass --key-columns naming columns of plain types")


def _batches(path: Path, columns=None):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row0 = 0
    for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=True):
        yield row0, b
        row0 += b.num_rows


# --- the merge --------------------------------------------------------------------------------

def merge_data(base: Path, exps: list[Path], output: Path | None = None, *,
               strategy: str = "merge", key_columns: list[str] | None = None,
               dry_run: bool = False, backup_dir: Path | None = None,
               recoverable=None, force: bool = False, on_conflict: str | None = None) -> dict:
    """Merge (append the rows the base lacks) or rebase (experiment rows win by key) parquet.

    Rebase: every experiment row is kept, plus the base rows whose key no experiment has;
    when several experiment files carry a key, the LATER file's rows win. Rows keep their
    order: the base's rows first, then each experiment's in file order.

    Keyed merge: an experiment row whose key an earlier file (the base, or an earlier
    experiment) has with other values is a conflict (values compared exactly: float bits,
    so NaN equals the same NaN and -0.0 is not 0.0; NULLs equal): CONFLICT (exit 3), nothing
    written, unless on_conflict says which side wins: keep-base (the earliest file's rows
    of that key) or keep-exp (the LATEST file's rows of that key replace the others).
    """
    base, output = Path(base), Path(output or base)
    exps = [Path(e) for e in exps]
    if strategy not in ("merge", "rebase"):
        raise EVError(f"unknown strategy {strategy!r}", code=USAGE, hint="use merge or rebase")
    if on_conflict not in (None, "keep-base", "keep-exp"):
        raise EVError(f"unknown --on-conflict {on_conflict!r}", code=USAGE,
                      hint="use keep-base or keep-exp")
    if not exps:
        raise EVError("no --exp-data given", code=USAGE, hint="pass one or more --exp-data files")
    if strategy == "rebase" and not key_columns:
        raise EVError("--strategy rebase of data files needs --key-columns", code=USAGE,
                      hint="name the columns that identify a row, e.g. --key-columns id")
    check_output_not_input(output, exps, "data")
    files = [base, *exps]
    flags = ["--base-data"] + ["--exp-data"] * len(exps)
    schemas = [_read_schema(p, f) for p, f in zip(files, flags, strict=True)]
    check_output(output, base, "data", force)
    _case_collisions(files, schemas)
    key = list(key_columns or [])
    for k in key:
        for p, (schema, _n) in zip(files, schemas, strict=True):
            if k not in schema.names:
                raise EVError(f"key column {k!r} is not in {p} (columns: "
                              f"{', '.join(schema.names)})", code=USAGE,
                              hint="check --key-columns")
    out_schema, added_cols = _out_schema(files, schemas)
    conforms = [_Conform(p, s, out_schema) for p, (s, _n) in zip(files, schemas, strict=True)]
    widenings = [w for c in conforms[1:] for w in c.widenings]
    report: dict = {"kind": "data", "strategy": strategy, "base": str(base),
                    "output": str(output), "dry_run": dry_run, "key_columns": key,
                    "type_widenings": widenings, "inputs": [], "base_rows": schemas[0][1]}
    for p, (_s, n) in zip(exps, schemas[1:], strict=True):
        report["inputs"].append({"path": str(p), "read": n,
                                 "columns_added": added_cols.get(p, []),
                                 "type_widenings": [w for w in widenings if w["file"] == str(p)]})
    backup = None
    with dir_lock(output.parent):
        sweep_stale_temps(output)
        with scratch_dir(output) as work:
            sel, conf = _select(files, schemas, conforms, out_schema, key, strategy, work,
                                on_conflict)
        _counts(report, sel, schemas, strategy)
        if strategy == "merge" and key:
            _conflict_report(report, conf, files, key, on_conflict, len(sel[0]))
        unchanged = (same_file(output, base) and out_schema.equals(schemas[0][0],
                                                                   check_metadata=True)
                     and len(sel[0]) == schemas[0][1] and not any(len(s) for s in sel[1:]))
        report["unchanged"] = unchanged
        if not dry_run and not unchanged:
            if strategy == "rebase" and output.exists() and not (recoverable
                                                                 and recoverable(output)):
                from .atomic import copy_file

                backup = backup_path(output, backup_dir)
                copy_file(output, backup)
            _write(output, files, schemas, conforms, out_schema, sel, report)
    backup_report(report, backup, output)
    return report


def _select(files, schemas, conforms, out_schema, key, strategy, work: Path,
            on_conflict=None) -> tuple[list, dict | None]:
    """(per file, the sorted row numbers that go to the output; a keyed merge's conflicts:
    {"rows": per file, "first": (file, row), "replaced": per file}). In memory with Arrow's
    hash kernels and numpy when the inputs are small enough and every column hashes, else by
    one DuckDB query that spills to disk (DuckDB's import alone costs ~35 MB)."""
    import numpy as np
    import pyarrow as pa

    n_exp_rows = sum(n for _s, n in schemas[1:])
    if strategy == "merge" and n_exp_rows == 0:
        return [np.arange(schemas[0][1], dtype=np.int64)] + [np.empty(0, np.int64)] * (
            len(files) - 1), None
    hashable = all(not pa.types.is_nested(_canon(pa.nulls(0, f.type)).type)
                   for f in out_schema)
    if hashable and _data_bytes(files) <= ARROW_MAX_BYTES:
        return _select_arrow(files, conforms, out_schema, key, strategy, on_conflict)
    return _select_duckdb(files, conforms, out_schema, key, strategy, work, on_conflict)


def _conflict_report(report, conf, files, key, on_conflict, base_kept: int) -> None:
    """A keyed merge's conflict counts into the report (per input: conflicts, replaced: its
    rows that replaced another file's, skipped: the rest not written, not counting
    conflicts a keep-base left out); CONFLICT if nobody chose a side."""
    n_files = len(files)
    rows = list(conf["rows"]) if conf else [0] * n_files
    replaced = list(conf["replaced"]) if conf else [0] * n_files
    total = int(sum(rows))
    report["on_conflict"], report["conflicts"] = on_conflict, total
    for inp, n, r in zip(report["inputs"], rows[1:], replaced[1:], strict=True):
        inp["conflicts"], inp["replaced"] = int(n), int(r)
        if on_conflict != "keep-exp":
            inp["skipped"] = inp["read"] - inp["added"] - int(n)
    if on_conflict == "keep-exp":
        report["replaced"] = report["base_rows"] - base_kept
    if total and on_conflict is None:
        fi, row = conf["first"]
        raise EVError(f"{total} row(s) have the same key but different values "
                      f"({_key_text(files[fi], row, key)} in {files[fi]})", code=CONFLICT,
                      hint="nothing written; re-run with --on-conflict keep-base or "
                           "keep-exp to choose which side wins")


def _key_text(path: Path, row: int, key: list[str]) -> str:
    """'id=5' (the key's values in that row of the file), read for the error line only."""
    for row0, b in _batches(path, columns=key):
        if row < row0 + b.num_rows:
            return ", ".join(f"{k}={b.column(i)[row - row0].as_py()!r}"
                             for i, k in enumerate(key))
    return f"row {row}"


def _key_conflicts(f, k, g, n_keys, first, n_files):
    """A keyed merge's conflicts: rows of a later file than the first with their key whose
    values are not that first file's ((rows per file, first (file, row index)), and which
    keys conflict). Rows arrive in (file, row) order."""
    import numpy as np

    fk = f == first[k]
    lo = np.full(n_keys, np.iinfo(np.int64).max, np.int64)
    hi = np.full(n_keys, -1, np.int64)
    np.minimum.at(lo, k[fk], g[fk])
    np.maximum.at(hi, k[fk], g[fk])
    del fk
    c = (f > first[k]) & ((g != lo[k]) | (lo != hi)[k])
    ck = np.zeros(n_keys, bool)
    ck[k[c]] = True
    hit = np.flatnonzero(c)
    return np.bincount(f[c], minlength=n_files), (int(hit[0]) if len(hit) else None), ck


def _data_bytes(files) -> int:
    import pyarrow.parquet as pq

    total = 0
    for p in files:
        md = pq.ParquetFile(p).metadata
        total += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    return total


def _select_arrow(files, conforms, out_schema, key, strategy, on_conflict=None
                  ) -> tuple[list, dict | None]:
    """_select in memory. Each column's exact stand-in (_canon) is replaced by its dense
    rank over all files at once (equal values, and all NULLs, share one: as in DuckDB's
    PARTITION BY); the ranks are combined into one group id per row, and the same rules as
    the DuckDB query pick the rows. Ranks, not a hash table (dictionary_encode held ~120
    bytes a row), and no pa.array() of a list or numpy (it imports pandas: ~40 MB)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    names = out_schema.names
    chunks: list[list] = [[] for _ in names]
    counts = []
    for p, conform in zip(files, conforms, strict=True):
        counts.append(0)
        for row0, b in _batches(p):
            b = conform(b, row0)
            for i in range(len(names)):
                chunks[i].append(_canon(b.column(i)))
            counts[-1] += b.num_rows
    # Rows are in (file, row) order: file fi's rows are start[fi]..start[fi + 1] - 1.
    start = np.r_[0, np.cumsum(counts)]
    f = np.repeat(np.arange(len(files), dtype=np.int32), counts)
    kidx = [names.index(k) for k in key]
    null = np.zeros(len(f), bool)
    row_id = key_id = None  # group ids, combined column by column (one rank held at a time)
    for i, f_ in enumerate(out_schema):
        typ = chunks[i][0].type if chunks[i] else _canon(pa.nulls(0, f_.type)).type
        col = pa.chunked_array(chunks[i], type=typ)
        chunks[i] = None  # free the column once it is ranked
        if i in kidx:
            null |= _numpy(pc.cast(col.is_null(), pa.uint8()), np.uint8).astype(bool)
        code = _dense_rank(col)
        del col
        row_id = _combine(row_id, code)
        if i in kidx:
            key_id = _combine(key_id, code)
        del code
    if not key:
        keep = _keep_keyless(row_id[0], f)
    else:
        bad = np.flatnonzero(null & (f > 0))
        if len(bad):
            j = bad[0]
            raise EVError(f"{files[f[j]]}: a key column ({', '.join(key)}) is NULL in row "
                          f"{j - start[f[j]]}", code=USAGE,
                          hint="nothing written; a NULL key would be added again on every "
                               "merge: fill it in or drop the row")
        k, n_keys = _dense(key_id[0])
        _refuse_differing_duplicates(files, f, np.arange(len(f)) - start[f], k, row_id[0], key)
        if strategy == "merge":
            first = np.full(n_keys, len(files), np.int32)
            np.minimum.at(first, k, f)
            keep = (f == 0) | (f == first[k])
            rows, hit, ck = _key_conflicts(f, k, row_id[0], n_keys, first, len(files))
            conf = {"rows": rows, "replaced": np.zeros(len(files), np.int64),
                    "first": None if hit is None else (int(f[hit]), int(hit - start[f[hit]]))}
            if on_conflict == "keep-exp" and hit is not None:
                last = np.full(n_keys, -1, np.int32)
                np.maximum.at(last, k, f)
                won = ck[k]
                keep = np.where(won, f == last[k], keep)
                conf["replaced"] = np.bincount(f[keep & won & (f > first[k])],
                                               minlength=len(files))
        else:
            last = np.full(n_keys, -1, np.int32)
            np.maximum.at(last, k, f)
            keep = f == last[k]
    sel = [np.flatnonzero(keep[start[i]:start[i + 1]]) for i in range(len(files))]
    return sel, (conf if key and strategy == "merge" else None)


def _combine(acc, code):
    """(ids, bound) of rows by (acc, code): equal iff both are equal. Densified first
    when the product would overflow int64."""
    c, width = code
    width = max(width, 1)
    if acc is None:
        return c, width
    ids, bound = acc
    if bound * width >= 2 ** 62:
        ids, bound = _dense(ids)
    ids = ids * width
    ids += c
    return ids, bound * width


def _dense(gid):
    return _dense_rank(_int64_array(gid))


def _int64_array(values):
    """numpy -> Arrow int64 without pa.array(), which imports pandas (~40 MB of RSS)."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _dense_rank(col):
    """(codes 0..k-1, k): equal values (and all NULLs) get one code."""
    import numpy as np
    import pyarrow.compute as pc

    if not len(col):
        return np.zeros(0, np.int64), 0
    rank = pc.rank(col, sort_keys="ascending", tiebreaker="dense")
    codes = _numpy(rank, np.uint64).astype(np.int64)
    del rank
    codes -= 1
    return codes, int(codes.max()) + 1


def _numpy(arr, dtype):
    """A null-free Arrow array of a fixed-width type as numpy, read from its data buffer
    (Array.to_numpy imports pandas)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset:arr.offset + len(arr)]


def _keep_keyless(g, f):
    """The n-th copy of a row in file f is new iff no earlier file has n copies (the base's
    rows are all kept). Rows arrive in (file, row) order."""
    import numpy as np

    n = len(g)
    if not n:
        return np.zeros(0, bool)
    order = np.argsort(g, kind="stable")  # by group, then file, then row
    gs, fs = g[order], f[order]
    start = np.empty(n, bool)  # the first row of a (group, file) run
    start[0] = True
    np.not_equal(gs[1:], gs[:-1], out=start[1:])
    start[1:] |= fs[1:] != fs[:-1]
    starts = np.flatnonzero(start)
    del start
    run_len = np.diff(np.r_[starts, n])
    new_group = np.r_[True, gs[starts[1:]] != gs[starts[:-1]]]
    del gs
    seg = np.cumsum(new_group) - 1
    big = int(run_len.max()) + 1
    # running max of the copy counts within a group (offset per group keeps it segmented)
    cm = np.maximum.accumulate(seg * big + run_len) - seg * big
    before = np.where(new_group, 0, np.r_[0, cm[:-1]])  # max over the earlier files
    del seg, cm, new_group
    # a run's first `before` rows are copies an earlier file already has
    new = np.arange(n) >= np.repeat(starts + before, run_len)
    new |= fs == 0
    keep = np.empty(n, bool)
    keep[order] = new
    return keep


def _refuse_differing_duplicates(files, f, r, k, g, key) -> None:
    """An experiment file with two rows of one key but different values: CONFLICT, naming
    the first such key's lowest and highest row numbers in the first such file."""
    import numpy as np

    from .errors import CONFLICT

    exp = np.flatnonzero(f > 0)
    if not len(exp):
        return
    fe, ke, ge = f[exp], k[exp], g[exp]
    order = np.lexsort((ge, ke, fe))  # by file, key, then value
    fs, ks, gs = fe[order], ke[order], ge[order]
    same_group = (fs[1:] == fs[:-1]) & (ks[1:] == ks[:-1])
    differs = same_group & (gs[1:] != gs[:-1])
    if not differs.any():
        return
    starts = np.flatnonzero(np.r_[True, ~same_group])
    grp = np.cumsum(np.r_[True, ~same_group]) - 1
    bad = np.unique(grp[1:][differs])
    rs = r[exp][order]
    lo = np.minimum.reduceat(rs, starts)[bad]
    hi = np.maximum.reduceat(rs, starts)[bad]
    fb = fs[starts][bad]
    j = np.lexsort((lo, fb))[0]
    raise EVError(f"{files[fb[j]]}: rows {lo[j]} and {hi[j]} have the same key "
                  f"({', '.join(key)}) but different values", code=CONFLICT,
                  hint="nothing written; keep one row per key in that file")


def _select_duckdb(files, conforms, out_schema, key, strategy, work: Path,
                   on_conflict=None) -> tuple[list, dict | None]:
    """_select by one DuckDB query (on disk: bounded memory)."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    names = out_schema.names
    conf = None
    con = duckdb.connect(str(work / "select.duckdb"))  # on disk: bounded memory
    try:
        from .sql import quote_literal

        con.execute(f"SET temp_directory = {quote_literal(str(work / 'spill'))}")
        con.execute("SET preserve_insertion_order = false")
        cols = [f"c{i}" for i in range(len(names))]
        schema = pa.schema([("f", pa.int32()), ("r", pa.int64())]
                           + [(c, _canon(pa.nulls(0, f.type)).type)
                              for c, f in zip(cols, out_schema, strict=True)])

        failed: list[EVError] = []

        def canon_batches():
            for fi, (p, conform) in enumerate(zip(files, conforms, strict=True)):
                for row0, b in _batches(p):
                    try:
                        b = conform(b, row0)
                    except EVError as exc:  # DuckDB would wrap it: keep ours, end the scan
                        failed.append(exc)
                        return
                    arrays = [pa.array(np.full(b.num_rows, fi, np.int32)),
                              pa.array(np.arange(row0, row0 + b.num_rows, dtype=np.int64))]
                    arrays += [_canon(b.column(i)) for i in range(len(names))]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)

        # One streaming scan of every file into DuckDB (one statement, not one per batch).
        reader = pa.RecordBatchReader.from_batches(schema, canon_batches())
        con.register("evrows", reader)
        try:
            con.execute("CREATE TABLE rows AS SELECT * FROM evrows")
        finally:
            if failed:
                raise failed[0]
        con.unregister("evrows")
        kc = [f"c{names.index(k)}" for k in key]
        part = ", ".join(kc or cols)
        if key:
            null = " OR ".join(f"{c} IS NULL" for c in kc)
            row = con.execute(f"SELECT f, r FROM rows WHERE f > 0 AND ({null}) LIMIT 1").fetchone()
            if row:
                raise EVError(f"{files[row[0]]}: a key column ({', '.join(key)}) is NULL in row "
                              f"{row[1]}", code=USAGE,
                              hint="nothing written; a NULL key would be added again on every "
                                   "merge: fill it in or drop the row")
            dup = con.execute(f"SELECT f, min(r), max(r) FROM (SELECT DISTINCT f, r, "
                              f"{', '.join(cols)} FROM rows WHERE f > 0) "
                              f"GROUP BY f, {part} HAVING count(DISTINCT ({', '.join(cols)})) > 1"
                              f" LIMIT 1").fetchone()
            if dup:
                from .errors import CONFLICT

                raise EVError(f"{files[dup[0]]}: rows {dup[1]} and {dup[2]} have the same key "
                              f"({', '.join(key)}) but different values", code=CONFLICT,
                              hint="nothing written; keep one row per key in that file")
            if strategy == "merge":
                conf = _duckdb_conflicts(con, part, cols, len(files))
                won = ("CASE WHEN ck THEN f = xf ELSE f = 0 OR f = mf END"
                       if on_conflict == "keep-exp" else "f = 0 OR f = mf")
                q = f"SELECT f, r FROM sel WHERE {won}"
                if on_conflict == "keep-exp":
                    for fi, n in con.execute("SELECT f, count(*) FROM sel WHERE ck AND f > mf "
                                             "AND f = xf GROUP BY f").fetchall():
                        conf["replaced"][fi] = n
            else:
                q = (f"SELECT f, r FROM (SELECT f, r, max(f) OVER (PARTITION BY {part}) AS xf "
                     f"FROM rows) WHERE f = xf")
        else:
            q = (f"SELECT f, r FROM (SELECT f, r, rn, max(n) OVER (PARTITION BY {part} ORDER BY f "
                 f"RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS pm FROM (SELECT f, r, "
                 f"{part}, row_number() OVER (PARTITION BY {part}, f ORDER BY r) AS rn, "
                 f"count(*) OVER (PARTITION BY {part}, f) AS n FROM rows)) "
                 f"WHERE f = 0 OR rn > coalesce(pm, 0)")
        res = con.execute(f"SELECT f, r FROM ({q}) ORDER BY f, r").fetchnumpy()
    except duckdb.Error as exc:
        raise EVError(f"DuckDB error while comparing rows: {' '.join(str(exc).split())[:300]}",
                      code=FAILED, hint="nothing written") from exc
    finally:
        con.close()
    f, r = np.asarray(res["f"]), np.asarray(res["r"], dtype=np.int64)
    bounds = np.searchsorted(f, np.arange(len(files) + 1))
    return [r[bounds[i]:bounds[i + 1]] for i in range(len(files))], conf


def _duckdb_conflicts(con, part: str, cols: list[str], n_files: int) -> dict:
    """_key_conflicts in DuckDB: table sel (f, r, mf/xf: the first/last file with the key,
    c: the row conflicts, ck: its key does). Rows compare as structs: NULLs are equal."""
    v = f"row({', '.join(cols)})"
    w = f"OVER (PARTITION BY {part})"
    con.execute(
        f"CREATE TABLE sel AS WITH a AS (SELECT f, r, {part}, {v} AS v, min(f) {w} AS mf, "
        f"max(f) {w} AS xf FROM rows), b AS (SELECT *, min(v) FILTER (WHERE f = mf) {w} AS v0,"
        f" max(v) FILTER (WHERE f = mf) {w} AS v1 FROM a), d AS (SELECT f, r, {part}, mf, xf,"
        f" (f > mf AND (v IS DISTINCT FROM v0 OR v0 IS DISTINCT FROM v1)) AS c FROM b) "
        f"SELECT f, r, mf, xf, c, bool_or(c) {w} AS ck FROM d")
    rows = [0] * n_files
    for fi, n in con.execute("SELECT f, count(*) FROM sel WHERE c GROUP BY f").fetchall():
        rows[fi] = n
    first = con.execute("SELECT f, r FROM sel WHERE c ORDER BY f, r LIMIT 1").fetchone()
    return {"rows": rows, "replaced": [0] * n_files,
            "first": tuple(first) if first else None}


def _counts(report, sel, schemas, strategy) -> None:
    base_rows = schemas[0][1]
    report["rows_out"] = int(sum(len(s) for s in sel))
    for inp, s in zip(report["inputs"], sel[1:], strict=True):
        inp.update(added=int(len(s)), skipped=inp["read"] - int(len(s)), replaced=0)
    if strategy == "rebase":
        exp_rows = sum(n for _s, n in schemas[1:])
        kept_exp = sum(len(s) for s in sel[1:])
        report["replaced"] = base_rows - int(len(sel[0]))
        report["added"] = int(kept_exp)
        report["superseded_by_later_exp"] = int(exp_rows - kept_exp)


def _range_index_meta(out_schema, n_rows: int):
    """A pandas RangeIndex kept only in metadata is extended to the rows written."""
    meta = dict(out_schema.metadata or {})
    raw = meta.get(b"pandas")
    if not raw:
        return out_schema
    try:
        pmeta = json.loads(raw)
    except ValueError:
        return out_schema
    changed = False
    for ix in pmeta.get("index_columns", []):
        if isinstance(ix, dict) and ix.get("kind") == "range":
            stop = ix["start"] + ix["step"] * n_rows
            if ix["stop"] != stop:
                ix["stop"], changed = stop, True
    if not changed:
        return out_schema
    meta[b"pandas"] = json.dumps(pmeta).encode()
    return out_schema.with_metadata(meta)


def _write(output, files, schemas, conforms, out_schema, sel, report) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    schema = _range_index_meta(out_schema, report["rows_out"])
    md = pq.ParquetFile(files[0]).metadata
    codec = (md.row_group(0).column(0).compression.lower()
             if md.num_row_groups and md.num_columns else "snappy")
    if codec in ("uncompressed", "unknown"):
        codec = "none"
    with output_temp(output) as tmp:
        with pq.ParquetWriter(tmp, schema, compression=codec) as w:
            for p, conform, rows, (_s, n) in zip(files, conforms, sel, schemas, strict=True):
                if not len(rows):
                    continue
                whole = len(rows) == n
                for row0, b in _batches(p):
                    if not whole:
                        lo, hi = np.searchsorted(rows, [row0, row0 + b.num_rows])
                        if lo == hi:
                            continue
                        b = b.take(_int64_array(rows[lo:hi] - row0))
                    b = conform(b, row0)
                    w.write_batch(b.replace_schema_metadata(schema.metadata))
        got = pq.ParquetFile(tmp)
        if got.metadata.num_rows != report["rows_out"]:
            raise EVError(f"re-read of the merged parquet found {got.metadata.num_rows} rows, "
                          f"expected {report['rows_out']}", code=FAILED, hint="nothing written")
        if not got.schema_arrow.equals(schema, check_metadata=True):
            raise EVError("the merged parquet's schema differs from the base's", code=FAILED,
                          hint="nothing written; report this as a bug")
