"""Parquet merge, the row side: which rows of each file go out, decided over the exact
stand-ins of merge_pqarrow (in memory with Arrow's dense ranks and numpy, or by one DuckDB query
that spills to disk), keyed or keyless. Moved out of merge_parquet unchanged.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FAILED, USAGE, EVError
from .merge_pqarrow import BATCH_ROWS, _batches, _canon, _int64_array, _numpy


def null_key(path, key: list[str], row: int) -> EVError:
    """The refusal of a NULL key in an input file (every keyed path says it the same way)."""
    return EVError(f"{path}: a key column ({', '.join(key)}) is NULL in row {row}", code=USAGE,
                   hint="nothing written; a NULL key would be added again on every merge: "
                        "fill it in or drop the row")


def _select_arrow(files, conforms, out_schema, key, strategy, on_conflict=None, subset=None
                  ) -> tuple[list, dict | None]:
    """_select in memory. Each column's exact stand-in (_canon) is replaced by its dense
    rank over all files at once (equal values, and all NULLs, share one: as in DuckDB's
    PARTITION BY); the ranks are combined into one group id per row, and the same rules as
    the DuckDB query pick the rows. Ranks, not a hash table (dictionary_encode held ~120
    bytes a row), and no pa.array() of a list or numpy (it imports pandas: ~40 MB).

    subset (per file, sorted row numbers): only those rows are read and decided (a keyed
    selection over every row of the keys it holds); the rows returned are among them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    names = out_schema.names
    chunks: list[list] = [[] for _ in names]
    counts = []
    for fi, (p, conform) in enumerate(zip(files, conforms, strict=True)):
        counts.append(0)
        for row0, b in (_batches(p) if subset is None else _taken(p, subset[fi])):
            b = conform(b, row0)
            for i in range(len(names)):
                chunks[i].append(_canon(b.column(i)))
            counts[-1] += b.num_rows
    # Rows are in (file, row) order: file fi's rows are start[fi]..start[fi + 1] - 1, its
    # row numbers rnum[start[fi]:start[fi + 1]].
    start = np.r_[0, np.cumsum(counts)]
    f = np.repeat(np.arange(len(files), dtype=np.int32), counts)
    rnum = (np.arange(len(f)) - start[f] if subset is None
            else np.concatenate([np.asarray(s, np.int64) for s in subset]))
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
                          f"{rnum[j]}", code=USAGE,
                          hint="nothing written; a NULL key would be added again on every "
                               "merge: fill it in or drop the row")
        k, n_keys = _dense(key_id[0])
        _refuse_differing_duplicates(files, f, rnum, k, row_id[0], key)
        if strategy == "merge":
            first = np.full(n_keys, len(files), np.int32)
            np.minimum.at(first, k, f)
            keep = (f == 0) | (f == first[k])
            rows, hit, ck = _key_conflicts(f, k, row_id[0], n_keys, first, len(files))
            conf = {"rows": rows, "replaced": np.zeros(len(files), np.int64),
                    "first": None if hit is None else (int(f[hit]), int(rnum[hit]))}
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
    sel = [rnum[start[i]:start[i + 1]][keep[start[i]:start[i + 1]]] for i in range(len(files))]
    return sel, (conf if key and strategy == "merge" else None)


def _taken(path: Path, rows):
    """(first row number, batch of those rows) of the sorted row numbers `rows` of a file,
    reading only the row groups that hold one."""
    import numpy as np
    import pyarrow.parquet as pq

    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return
    pf = pq.ParquetFile(path)
    md = pf.metadata
    ends = np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])
    starts = ends - np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)])
    for g in range(md.num_row_groups):
        lo, hi = np.searchsorted(rows, [starts[g], ends[g]])
        if lo == hi:
            continue
        row0 = int(starts[g])
        for b in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], use_threads=True):
            a, z = np.searchsorted(rows, [row0, row0 + b.num_rows])
            if a < z:
                yield int(rows[a]), b.take(_int64_array(rows[a:z] - row0))
            row0 += b.num_rows


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
                raise null_key(files[row[0]], key, row[1])
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
