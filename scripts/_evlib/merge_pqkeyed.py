"""Parquet keyed merge/rebase, key columns first: cost proportional to the input, not the base.

DuckDB reads only the base's key columns and finds which keys an experiment also has; whole
rows are compared only for the keys with more than one row (in the base and the experiments
together), and that comparison is merge_pqrows' exact one (Arrow ranks of the exact stand-ins:
float bits, so -0.0 is not 0.0 and NaN payloads differ; NULLs equal) over those rows alone. A
row of a key with one row is kept by every rule (merge, keep-base, keep-exp, rebase), so the
result is the exact path's, row for row.

Only for plain schemas: key columns of integer/string/binary/bool/date types (DuckDB's key
equality is then exactly Arrow's), no dictionary, decimal, nested or tz column in any file,
every experiment column the base's type or widened exactly (no value-by-value check), no
NULL-check on a non-null base column. Anything else takes the exact row-by-row path.
"""

from __future__ import annotations

from pathlib import Path

from .errors import USAGE, EVError

# Below this much base data (uncompressed) the row-by-row path in memory is as fast, and
# does not import DuckDB.
MIN_BYTES = 16 << 20


def _plain(t) -> bool:
    import pyarrow.types as T

    return (T.is_integer(t) or T.is_floating(t) or T.is_boolean(t) or T.is_string(t)
            or T.is_large_string(t) or T.is_binary(t) or T.is_large_binary(t)
            or T.is_date32(t) or T.is_null(t)
            or (T.is_timestamp(t) and t.tz is None) or T.is_time32(t) or T.is_time64(t))


def _key_type(t) -> bool:
    import pyarrow.types as T

    return (T.is_integer(t) or T.is_boolean(t) or T.is_string(t) or T.is_large_string(t)
            or T.is_binary(t) or T.is_large_binary(t) or T.is_date32(t))


def eligible(files, schemas, conforms, out_schema, key) -> bool:
    if not key or "file_row_number" in out_schema.names:
        return False
    if not all(_plain(f.type) for f in out_schema):
        return False
    for (schema, _n), conform in zip(schemas, conforms, strict=True):
        if not all(_plain(f.type) for f in schema):
            return False
        for f, (i, plan) in zip(out_schema, conform.plans, strict=True):
            if plan not in ("same", "exact", "fill"):
                return False
            if i is not None and not f.nullable and schema.field(i).nullable:
                return False
    return all(_key_type(out_schema.field(k).type) for k in key)


def select_keyed(files, schemas, conforms, out_schema, key, strategy, work: Path,
                 on_conflict, max_subset_bytes: int):
    """(sel, conf) as merge_pqrows' selections give them, or None when the rows to compare
    would be more than max_subset_bytes in memory (the caller's DuckDB path spills)."""
    import duckdb
    import numpy as np
    import pyarrow.parquet as pq

    from .merge_pqrows import _select_arrow
    from .sql import quote_ident, quote_literal

    kn = [f"k{i}" for i in range(len(key))]
    con = duckdb.connect(str(work / "keys.duckdb"))
    try:
        con.execute(f"SET temp_directory = {quote_literal(str(work / 'spill'))}")
        con.execute("SET preserve_insertion_order = false")
        # DuckDB reads the key columns itself (registering an Arrow stream imports pandas);
        # a key column widened exactly (int32 -> int64) compares by value.
        kc = ", ".join(f"{quote_ident(k)} AS {c}" for k, c in zip(key, kn, strict=True))
        con.execute("CREATE TABLE ek AS " + " UNION ALL ".join(
            f"SELECT {fi}::INTEGER AS f, file_row_number AS r, {kc} FROM "
            f"read_parquet({quote_literal(str(p))}, file_row_number = true)"
            for fi, p in enumerate(files[1:], start=1)))
        null = " OR ".join(f"{c} IS NULL" for c in kn)
        row = con.execute(f"SELECT f, r FROM ek WHERE {null} ORDER BY f, r LIMIT 1").fetchone()
        if row:
            raise EVError(f"{files[row[0]]}: a key column ({', '.join(key)}) is NULL in row "
                          f"{row[1]}", code=USAGE,
                          hint="nothing written; a NULL key would be added again on every "
                               "merge: fill it in or drop the row")
        on = " AND ".join(f"b.{quote_ident(k)} = ek.{c}" for k, c in zip(key, kn, strict=True))
        cols = ", ".join(f"b.{quote_ident(k)} AS {c}" for k, c in zip(key, kn, strict=True))
        con.execute(f"CREATE TABLE bk AS SELECT b.file_row_number AS r, {cols} FROM "
                    f"read_parquet({quote_literal(str(files[0]))}, file_row_number = true) b "
                    f"SEMI JOIN ek ON {on}")
        kl = ", ".join(kn)
        on_m = " AND ".join(f"ek.{c} = m.{c}" for c in kn)
        es = con.execute(f"SELECT f, r FROM ek SEMI JOIN (SELECT {kl} FROM ek GROUP BY {kl} "
                         f"HAVING count(*) > 1 UNION ALL SELECT {kl} FROM bk) m ON {on_m} "
                         f"ORDER BY f, r").fetchnumpy()
        bs = con.execute("SELECT r FROM bk ORDER BY r").fetchnumpy()
    finally:
        con.close()
    f = np.asarray(es["f"], np.int32)
    r = np.asarray(es["r"], np.int64)
    bounds = np.searchsorted(f, np.arange(len(files) + 1))
    subset = [np.asarray(bs["r"], np.int64)] + [r[bounds[i]:bounds[i + 1]]
                                                for i in range(1, len(files))]
    est = 0
    for p, s, (_sc, n) in zip(files, subset, schemas, strict=True):
        if n and len(s):
            md = pq.ParquetFile(p).metadata
            size = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
            est += size * len(s) // n
    if est > max_subset_bytes:
        return None
    kept, conf = _select_arrow(files, conforms, out_schema, key, strategy, on_conflict,
                               subset=subset)
    sel = []
    for s, k, (_sc, n) in zip(subset, kept, schemas, strict=True):
        dropped = np.setdiff1d(s, k, assume_unique=True)
        sel.append(range(n) if not len(dropped)
                   else np.setdiff1d(np.arange(n, dtype=np.int64), dropped, assume_unique=True))
    return sel, conf
