"""Parquet merge, the Arrow side: schemas (the base's, plus an experiment's new columns), the
exact conversion of a batch to the output schema, the exact comparable stand-in of a column, and
the pyarrow writer. Moved out of merge_parquet unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import FAILED, USAGE, EVError
from .merge_common import output_temp, require_file

BATCH_ROWS = 65_536
# The writer's row groups: up to this many rows or bytes (uncompressed) each.
GROUP_ROWS = 1 << 20
GROUP_BYTES = 64 << 20
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


def _int64_array(values):
    """numpy -> Arrow int64 without pa.array(), which imports pandas (~40 MB of RSS)."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _numpy(arr, dtype):
    """A null-free Arrow array of a fixed-width type as numpy, read from its data buffer
    (Array.to_numpy imports pandas)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset:arr.offset + len(arr)]


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _range_index_meta(out_schema, report["rows_out"])
    md = pq.ParquetFile(files[0]).metadata
    codec = (md.row_group(0).column(0).compression.lower()
             if md.num_row_groups and md.num_columns else "snappy")
    if codec in ("uncompressed", "unknown"):
        codec = "none"
    buf: list = []

    def flush():
        if buf:
            t = pa.Table.from_batches(buf, schema=schema)
            w.write_table(t, row_group_size=t.num_rows)
            buf.clear()

    with output_temp(output) as tmp:
        with pq.ParquetWriter(tmp, schema, compression=codec) as w:
            held = [0, 0]  # rows, bytes in buf
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
                    buf.append(b.replace_schema_metadata(schema.metadata))
                    held[0] += b.num_rows
                    held[1] += b.nbytes
                    # Large row groups: one per 65k batch had pyarrow dictionary-encode every
                    # column anew per group (2.6x slower on float columns)
                    if held[0] >= GROUP_ROWS or held[1] >= GROUP_BYTES:
                        flush()
                        held[:] = [0, 0]
            flush()
        got = pq.ParquetFile(tmp)
        if got.metadata.num_rows != report["rows_out"]:
            raise EVError(f"re-read of the merged parquet found {got.metadata.num_rows} rows, "
                          f"expected {report['rows_out']}", code=FAILED, hint="nothing written")
        if not got.schema_arrow.equals(schema, check_metadata=True):
            raise EVError("the merged parquet's schema differs from the base's", code=FAILED,
                          hint="nothing written; report this as a bug")
