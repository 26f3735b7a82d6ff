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

# Below this much base data (uncompressed) the row-by-row path in memory is as fast, and
# does not import DuckDB.
MIN_BYTES = 16 << 20
# DuckDB's key work holds its tables under this, spilling beyond (its default, 80% of the
# machine, let 4M input keys take ~600 MB; 256 MB: ~460 MB and no faster).
DUCKDB_MEMORY = "128MB"


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
    would be more than max_subset_bytes in memory (the caller's DuckDB path spills), or
    DuckDB could not read a file's keys (the caller's path reads it with pyarrow)."""
    import duckdb
    import numpy as np
    import pyarrow.parquet as pq

    from .merge_pqrows import _select_arrow, null_key
    from .sql import quote_ident, quote_literal

    kn = [f"k{i}" for i in range(len(key))]
    # In memory (tables written to a database file cost ~2x), spilling beside the output.
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET temp_directory = {quote_literal(str(work / 'spill'))}")
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
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
            raise null_key(files[row[0]], key, row[1])
        on = " AND ".join(f"b.{quote_ident(k)} = ek.{c}" for k, c in zip(key, kn, strict=True))
        cols = ", ".join(f"b.{quote_ident(k)} AS {c}" for k, c in zip(key, kn, strict=True))
        con.execute(f"CREATE TABLE bk AS SELECT b.file_row_number AS r, {cols} FROM "
                    f"read_parquet({quote_literal(str(files[0]))}, file_row_number = true) b "
                    f"SEMI JOIN ek ON {on}")
        kl = ", ".join(kn)
        con.execute(f"CREATE TABLE ec AS SELECT {kl}, count(*) AS n FROM ek GROUP BY {kl}")
        con.execute(f"CREATE TABLE bc AS SELECT {kl}, count(*) AS n, min(r) AS br FROM bk "
                    f"GROUP BY {kl}")
        # A key with one base row and one input row (the common case) is compared as a pair;
        # the other keys with several rows by the exact ranks over all their rows.
        pr = con.execute(f"SELECT ek.f, ek.r, bc.br FROM ek JOIN ec USING ({kl}) JOIN bc "
                         f"USING ({kl}) WHERE ec.n = 1 AND bc.n = 1 ORDER BY ek.f, ek.r"
                         ).fetchnumpy()
        es = con.execute(f"SELECT ek.f, ek.r FROM ek JOIN ec USING ({kl}) LEFT JOIN bc USING "
                         f"({kl}) WHERE ec.n > 1 OR coalesce(bc.n, 0) > 1 ORDER BY ek.f, ek.r"
                         ).fetchnumpy()
        bs = con.execute(f"SELECT bk.r FROM bk JOIN ec USING ({kl}) JOIN bc USING ({kl}) "
                         f"WHERE ec.n > 1 OR bc.n > 1 ORDER BY bk.r").fetchnumpy()
    except duckdb.Error:
        return None  # a file DuckDB cannot read as pyarrow does: the exact path decides
    finally:
        con.close()
    n_files = len(files)
    f = np.asarray(es["f"], np.int32)
    r = np.asarray(es["r"], np.int64)
    bounds = np.searchsorted(f, np.arange(n_files + 1))
    subset = [np.asarray(bs["r"], np.int64)] + [r[bounds[i]:bounds[i + 1]]
                                                for i in range(1, n_files)]
    pf, pr, pb = (np.asarray(pr["f"], np.int32), np.asarray(pr["r"], np.int64),
                  np.asarray(pr["br"], np.int64))
    pbounds = np.searchsorted(pf, np.arange(n_files + 1))
    est = 0
    for i, (p, (_sc, n)) in enumerate(zip(files, schemas, strict=True)):
        rows = len(subset[i]) + (len(pb) if i == 0 else pbounds[i + 1] - pbounds[i])
        if n and rows:
            md = pq.ParquetFile(p).metadata
            size = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
            est += size * rows // n
    if est > max_subset_bytes:
        return None
    if any(len(s) for s in subset):
        kept, conf = _select_arrow(files, conforms, out_schema, key, strategy, on_conflict,
                                   subset=subset)
        dropped = [np.setdiff1d(s, k, assume_unique=True) for s, k in zip(subset, kept,
                                                                          strict=True)]
    else:
        conf = None if strategy == "rebase" else {
            "rows": np.zeros(n_files, np.int64), "replaced": np.zeros(n_files, np.int64),
            "first": None}
        dropped = [np.empty(0, np.int64) for _ in files]
    if len(pf):
        if strategy == "rebase":  # the input's row replaces the base's, whatever the values
            dropped[0] = np.r_[dropped[0], pb]
        else:
            eq = _pairs_equal(files, conforms, out_schema, pf, pr, pb, pbounds)
            diff = ~eq
            conf["rows"] = np.asarray(conf["rows"]) + np.bincount(pf[diff], minlength=n_files)
            hit = np.flatnonzero(diff)
            if len(hit) and (conf["first"] is None
                             or (int(pf[hit[0]]), int(pr[hit[0]])) < tuple(conf["first"])):
                conf["first"] = (int(pf[hit[0]]), int(pr[hit[0]]))
            if on_conflict == "keep-exp":  # the input's row replaces a differing base row
                dropped[0] = np.r_[dropped[0], pb[diff]]
                conf["replaced"] = (np.asarray(conf["replaced"])
                                    + np.bincount(pf[diff], minlength=n_files))
                gone = eq
            else:
                gone = np.ones(len(pf), bool)
            for i in range(1, n_files):
                lo, hi = pbounds[i], pbounds[i + 1]
                dropped[i] = np.r_[dropped[i], pr[lo:hi][gone[lo:hi]]]
    sel = []
    for d, (_sc, n) in zip(dropped, schemas, strict=True):
        sel.append(range(n) if not len(d) else np.setdiff1d(np.arange(n, dtype=np.int64),
                                                            np.unique(d), assume_unique=True))
    return sel, conf


def _pairs_equal(files, conforms, out_schema, pf, pr, pb, pbounds):
    """Per pair (input file pf, row pr; base row pb): the two rows are identical, compared
    on the exact stand-ins (float bits; NULL equals NULL only). The inputs' rows of the
    pairs are held; the base's are streamed past them in base order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .merge_pqarrow import _canon, _int64_array, _numpy
    from .merge_pqrows import _taken

    types = [_canon(pa.nulls(0, f.type)).type for f in out_schema]
    held = [[] for _ in out_schema]  # the inputs' pair rows, in pair order
    for fi in range(1, len(files)):
        for row0, b in _taken(files[fi], pr[pbounds[fi]:pbounds[fi + 1]]):
            b = conforms[fi](b, row0)
            for i in range(len(held)):
                held[i].append(_canon(b.column(i)))
    exp_cols = [pa.chunked_array(c, type=t) for c, t in zip(held, types, strict=True)]
    del held
    order = np.argsort(pb, kind="stable")  # pairs by base row
    eq = np.ones(len(pb), bool)
    done = 0
    for row0, b in _taken(files[0], pb[order]):
        b = conforms[0](b, row0)
        idx = order[done:done + b.num_rows]
        done += b.num_rows
        take = _int64_array(idx)
        ok = np.ones(len(idx), bool)
        for i in range(len(exp_cols)):
            x = exp_cols[i].take(take)
            y = _canon(b.column(i))
            eqv = pc.equal(x, y)  # NULL where either side is: equal iff both are
            same = pc.if_else(eqv.is_valid(), eqv, pc.and_(x.is_null(), y.is_null()))
            ok &= _numpy(pc.cast(same, pa.uint8()), np.uint8).astype(bool)
        eq[idx] = ok
    return eq
