"""One table of one input merged into the base: the exactness checks (values the base
column's affinity would convert, NULL keys, duplicate keys with other values) and the
INSERT/REPLACE statements; merge_sqlite runs it for every table of every input."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

from .errors import CONFLICT, USAGE, EVError
from .sql import affinity, quote_ident, sqlite_columns

MAX_NAMED_KEYS = 5  # conflicting keys named in an error line
_SAFE_TYPE = re.compile(r"^[A-Za-z0-9_ ]*(\([0-9, ]*\))?$")


def exact_functions(con) -> None:
    """What the exactness checks call on con: atan2 (SQLite's math functions), which tells
    -0.0 from 0.0 (atan2(-0.0, -1) is -pi, atan2(0.0, -1) is pi); SQL itself cannot (they
    compare equal and print as 0.0), yet a column without affinity keeps both, bit for bit.
    A SQLite built without the math functions gets Python's."""
    try:
        con.execute("SELECT atan2(0.0, -1.0)")
    except sqlite3.OperationalError:
        con.create_function("atan2", 2, math.atan2, deterministic=True)


def _zero_sign(col: str, other: str | None = None) -> str:
    """SQL: without other, the sign of a zero real in col (NULL for any other value); with
    it, whether col and other (equal by IS) also agree in that sign. The sign is asked only
    of a zero real."""
    if other is None:
        return f"CASE WHEN typeof({col}) = 'real' AND {col} = 0 THEN atan2({col}, -1.0) END"
    return (f"({col} <> 0 OR typeof({col}) <> 'real' OR "
            f"atan2({col}, -1.0) = atan2({other}, -1.0))")


def _storage_class(decl: str) -> str:
    a = affinity(decl)
    return "NUMERIC" if a == "INTEGER" else a  # INTEGER and NUMERIC store alike


def check_input(con, alias: str, exp: Path, t: str, exp_cols, key: list[str],
                 null_keys: bool = True, memo: Memo | None = None) -> None:
    """Refuse what would change a value or repeat a row: NULL keys (unless null_keys is
    False: merge_table checks them itself), differing duplicate keys inside the input,
    values the base column's affinity would convert."""
    qt, qa = quote_ident(t), quote_ident(alias)
    memo = memo or Memo(con, alias)
    if null_keys:
        _check_null_keys(con, alias, exp, t, key)
    if not memo.unique(t, key, alias) and memo.rows(t) > 1:  # one row repeats no key
        # Copies are identical only in storage class and bytes too (DISTINCT alone takes
        # 1 and 1.0, or 'A' and 'a' in a NOCASE column, for copies: one would be dropped).
        ks = ", ".join(f"_k{i}" for i in range(len(key)))
        # A column without affinity also keeps -0.0 beside 0.0: the sign is compared too.
        exact = ", ".join([f"{quote_ident(k)} AS _k{i}" for i, k in enumerate(key)]
                          + [f"typeof({quote_ident(c[0])}), {quote_ident(c[0])} COLLATE BINARY"
                             + (f", {_zero_sign(quote_ident(c[0]))}"
                                if affinity(c[1]) == "BLOB" else "")
                             for c in exp_cols])
        dup = con.execute(f"SELECT {ks} FROM (SELECT DISTINCT {exact} FROM {qa}.{qt}) "
                          f"GROUP BY {ks} HAVING count(*) > 1 LIMIT 1").fetchone()
        if dup:
            raise EVError(f"{exp} table {t!r}: key {dict(zip(key, dup, strict=True))} has "
                          "rows with different values", code=CONFLICT,
                          hint="nothing written; keep one row per key in that file")
    main_cols = {c[0].lower(): c[1] for c in memo.main_columns(t)}
    for name, decl, _pk in exp_cols:
        bdecl = main_cols.get(name.lower())
        if bdecl is None or _storage_class(bdecl) == _storage_class(decl):
            continue
        if affinity(bdecl) == "BLOB":
            continue  # no affinity: every value is stored as given
        _probe(con, alias, exp, t, name, decl, bdecl)


def _check_null_keys(con, alias: str, exp: Path, t: str, key: list[str]) -> None:
    qt, qa = quote_ident(t), quote_ident(alias)
    null = " OR ".join(f"{quote_ident(k)} IS NULL" for k in key)
    row = con.execute(f"SELECT rowid, {', '.join(quote_ident(k) for k in key)} FROM {qa}.{qt} "
                      f"WHERE {null} LIMIT 1").fetchone()
    if row:
        col = next(k for k, v in zip(key, row[1:], strict=True) if v is None)
        raise EVError(f"{exp} table {t!r}: key column {col!r} is NULL (row {row[0]}: "
                      f"{dict(zip(key, row[1:], strict=True))})", code=USAGE,
                      hint="nothing written; a NULL key would be added again on every merge: "
                           "fill it in or drop the row")


def _identical(lhs: str, rhs: str, base_decl: str | None, exp_decl: str) -> str:
    """SQL that is true iff the two stored values are identical: same storage class, same
    bytes (never NULL itself). `IS` alone says 1 IS 1.0 and, under a NOCASE column, 'A' IS
    'a'. Where both columns share an affinity the class follows from the value, except that
    an INTEGER/NUMERIC column keeps -2**63 both as an integer and as a real; a column without
    affinity (or two that differ) keeps every class, so the classes are compared too, and
    keeps -0.0 beside 0.0 (equal by IS), so the sign of a zero is compared as well: the
    other affinities store -0.0 as 0.0, 0 or '0.0'."""
    same = f"{lhs} IS {rhs} COLLATE BINARY"
    if base_decl is None:
        base_decl = exp_decl
    b = affinity(base_decl)
    if b == "BLOB" or _storage_class(base_decl) != _storage_class(exp_decl):
        return f"({same} AND typeof({lhs}) = typeof({rhs}) AND {_zero_sign(lhs, rhs)})"
    if b in ("INTEGER", "NUMERIC"):
        return f"({same} AND ({lhs} IS NOT -9223372036854775808 OR typeof({lhs}) = typeof({rhs})))"
    return same


def _probe(con, alias, exp, t, col, decl, bdecl) -> None:
    """Ask SQLite what the base column would store for each value: refuse the first change."""
    qc = quote_ident(col)
    con.execute("DROP TABLE IF EXISTS temp._evprobe")
    con.execute(f"CREATE TEMP TABLE _evprobe (src, v {affinity(bdecl)})")
    try:
        con.execute(f"INSERT INTO temp._evprobe SELECT {qc}, {qc} FROM "
                    f"{quote_ident(alias)}.{quote_ident(t)} WHERE {qc} IS NOT NULL "
                    f"AND typeof({qc}) <> 'blob'")
        row = con.execute("SELECT src, typeof(src), v, typeof(v) FROM temp._evprobe "
                          "WHERE typeof(src) <> typeof(v) OR src <> v OR NOT "
                          f"{_zero_sign('src', 'v')} LIMIT 1").fetchone()
    finally:
        con.execute("DROP TABLE temp._evprobe")
    if row:
        raise EVError(f"{exp} table {t!r} column {col!r}: {row[1]} {row[0]!r} would be stored "
                      f"as {row[3]} {row[2]!r} (declared {decl or 'untyped'} there, "
                      f"{bdecl} in the base)", code=USAGE,
                      hint="nothing written; make the declared types match (or cast the "
                           "values in the experiment DB), then re-run")


def count_rows(con, schema: str, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}"
                       ).fetchone()[0]


def merge_table(con, alias: str, exp: Path, t: str, exp_cols, key: list[str], strategy: str,
                 on_conflict: str | None, all_conflicts: list, keep_index: bool = False,
                 null_keys: bool = False, memo: Memo | None = None) -> dict:
    qt, qa = quote_ident(t), quote_ident(alias)
    memo = memo or Memo(con, alias)
    stats = {"read": memo.rows(t), "added": 0, "replaced": 0, "removed": 0,
             "skipped": 0, "conflicts": 0, "columns_added": []}
    main_decl = {c[0].lower(): c[1] for c in memo.main_columns(t)}  # case-insensitive
    main_cols = set(main_decl)
    if not main_cols:
        sql = con.execute(f"SELECT sql FROM {qa}.sqlite_master WHERE type='table' AND name=?",
                          (t,)).fetchone()[0]
        con.execute(sql)  # same declaration (types, primary key) as the experiment's table
        main_cols = {c[0].lower() for c in exp_cols}
        stats["table_created"] = True
    added_cols = []
    for name, ctype, _pk in exp_cols:
        if name.lower() not in main_cols:
            decl = ctype if _SAFE_TYPE.match(ctype) else ""  # a declared type, never SQL
            con.execute(f"ALTER TABLE main.{qt} ADD COLUMN {quote_ident(name)} {decl}")
            stats["columns_added"].append({"column": name, "type": ctype})
            added_cols.append(name)
    cols = [c[0] for c in exp_cols]
    qcols = ", ".join(quote_ident(c) for c in cols)
    xcols = ", ".join(f"x.{quote_ident(c)}" for c in cols)
    on = " AND ".join(f"b.{quote_ident(k)} = x.{quote_ident(k)}" for k in key)
    if stats.get("table_created") or added_cols:
        memo.forget_main(t)  # a new table, or new columns: main's answers are read again
    has_unique = memo.unique(t, key)
    tmp_index = None
    if not has_unique:
        # A lookup index for the anti-join; dropped before the file is checked. In the
        # scratch DB of many inputs it is made once and kept (rebuilt per input it was
        # O(inputs^2): 1,000 sweep shards).
        tmp_index = quote_ident(f"_evmerge_{t}_key")
        con.execute(f"CREATE INDEX {'IF NOT EXISTS ' if keep_index else ''}main.{tmp_index} "
                    f"ON {qt} "
                    f"({', '.join(quote_ident(k) for k in key)})")
    if strategy == "rebase":
        where = " AND ".join(f"x.{quote_ident(k)} = main.{qt}.{quote_ident(k)}" for k in key)
        cur = con.execute(f"DELETE FROM main.{qt} WHERE EXISTS "
                          f"(SELECT 1 FROM {qa}.{qt} AS x WHERE {where})")
        stats["replaced"] = stats["removed"] = cur.rowcount
        n_mid = count_rows(con, "main", t)
        cur = _execute_once_per_key(con, f"INSERT OR REPLACE INTO main.{qt} ({qcols}) SELECT "
                                         f"{xcols} FROM {qa}.{qt} AS x WHERE 1", alias, t,
                                    key, memo)
        stats["added"] = cur.rowcount
        # OR REPLACE also drops a base row whose primary key collides: count it as replaced.
        extra = n_mid + stats["added"] - count_rows(con, "main", t)
        stats["replaced"] += extra
        stats["removed"] += extra
    else:
        # Columns added just now are NULL in the base's rows: not a difference (filled
        # in below), or an experiment that adds a metric to old rows could never merge.
        non_key = [c for c in cols if c not in key and c not in added_cols]
        decl = {c[0]: c[1] for c in exp_cols}

        def same(c, lhs="b"):
            return _identical(f"{lhs}.{quote_ident(c)}", f"x.{quote_ident(c)}",
                              main_decl.get(c.lower()), decl[c])

        # Keys too: the join's `=` matches 1 with 1.0, -0.0 with 0.0 and, under NOCASE,
        # 'A' with 'a'; a key that is equal but not identical is a difference, not a repeat.
        compared = non_key + [c for c in cols if c in key]
        diff = " OR ".join(f"NOT {same(c)}" for c in compared)
        pre = None
        if has_unique and not added_cols and stats["read"] > 1000:
            if _aligned(con, qa, qt, key, on, diff, stats["read"]):
                pre = (stats["read"], 0)
        if pre is None and has_unique and not added_cols and stats["read"] > 1000:
            # A re-merge (most rows present) is one join that counts present rows and
            # conflicts; the INSERT pass is skipped when nothing is new.
            sample = con.execute(f"SELECT count(*) FROM (SELECT * FROM {qa}.{qt} LIMIT 256) "
                                 f"AS x WHERE EXISTS (SELECT 1 FROM main.{qt} AS b WHERE {on})"
                                 ).fetchone()[0]
            if sample > 128:
                pre = con.execute(f"SELECT count(*), count(*) FILTER (WHERE {diff}) FROM "
                                  f"{qa}.{qt} AS x JOIN main.{qt} AS b ON {on}").fetchone()
        present = bool(pre) and pre[0] == stats["read"]  # every key matched: none is NULL
        if null_keys and not present:
            _check_null_keys(con, alias, exp, t, key)
        if present:
            stats["added"] = 0
        elif has_unique:
            stats["added"] = con.execute(f"INSERT OR IGNORE INTO main.{qt} ({qcols}) SELECT "
                                         f"{qcols} FROM {qa}.{qt}").rowcount
        else:
            stats["added"] = _execute_once_per_key(
                con, f"INSERT INTO main.{qt} ({qcols}) SELECT {xcols} FROM {qa}.{qt} AS x WHERE "
                     f"NOT EXISTS (SELECT 1 FROM main.{qt} AS b WHERE {on})", alias, t, key,
                memo).rowcount
        if stats["added"] < stats["read"]:
            # Some keys were already there: those rows must be identical, else conflict.
            if compared:
                kx = ", ".join(f"x.{quote_ident(k)}" for k in key)
                q = (f"SELECT {kx} FROM {qa}.{qt} AS x JOIN main.{qt} AS b ON {on} "
                     f"WHERE {diff}")
                n = pre[1] if pre else con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0]
                stats["conflicts"] = n
                if n:
                    first = [list(r) if len(r) > 1 else r[0]
                             for r in con.execute(f"{q} LIMIT {MAX_NAMED_KEYS}")]
                    all_conflicts.append({"path": str(exp), "table": t, "count": n,
                                          "keys": first})
                    if on_conflict == "keep-exp":
                        sets = ", ".join(f"{quote_ident(c)} = x.{quote_ident(c)}"
                                         for c in compared)
                        on_u = " AND ".join(f"main.{qt}.{quote_ident(k)} = x.{quote_ident(k)}"
                                            for k in key)
                        diff_u = " OR ".join(f"NOT {same(c, f'main.{qt}')}"
                                             for c in compared)
                        cur = con.execute(f"UPDATE main.{qt} SET {sets} FROM {qa}.{qt} AS x "
                                          f"WHERE {on_u} AND ({diff_u})")
                        stats["replaced"] = cur.rowcount
            if added_cols:
                same_m = " AND ".join(same(c, f"main.{qt}") for c in compared)
                on_m = " AND ".join(f"main.{qt}.{quote_ident(k)} = x.{quote_ident(k)}"
                                    for k in key)
                sets = ", ".join(f"{quote_ident(c)} = x.{quote_ident(c)}" for c in added_cols)
                empty = " AND ".join(f"main.{qt}.{quote_ident(c)} IS NULL" for c in added_cols)
                given = " OR ".join(f"x.{quote_ident(c)} IS NOT NULL" for c in added_cols)
                cur = con.execute(f"UPDATE main.{qt} SET {sets} FROM {qa}.{qt} AS x "
                                  f"WHERE {on_m} AND {same_m} AND {empty} AND ({given})")
                stats["filled"] = cur.rowcount
        stats["skipped"] = stats["read"] - stats["added"] - stats["conflicts"]
    if tmp_index and not keep_index:
        con.execute(f"DROP INDEX main.{tmp_index}")
    return stats


def _aligned(con, qa: str, qt: str, key: list[str], on: str, diff: str, n: int) -> bool:
    """Whether every input row is, value for value, the base row at one rowid offset from it
    (an input merged before: INSERT ... SELECT kept its order). Proven row by row with the
    key join's own predicates (keys =, values IS), so the answer is exact; a gap, another
    order or one differing value says False and the key join decides. It reads the base by
    rowid, not through the key index, and stops early when the ends don't line up."""
    qk = ", ".join(quote_ident(k) for k in key)
    try:
        first = con.execute(f"SELECT b.rowid - x.rowid FROM (SELECT rowid, {qk} FROM {qa}.{qt} "
                            f"ORDER BY rowid LIMIT 1) AS x JOIN main.{qt} AS b ON {on}"
                            ).fetchone()
        if first is None:
            return False
        last = con.execute(f"SELECT count(*) FROM (SELECT rowid, {qk} FROM {qa}.{qt} ORDER BY "
                           f"rowid DESC LIMIT 1) AS x JOIN main.{qt} AS b ON b.rowid = "
                           f"x.rowid + ? AND {on}", (first[0],)).fetchone()[0]
        if not last:
            return False
        same = con.execute(f"SELECT count(*) FROM {qa}.{qt} AS x JOIN main.{qt} AS b ON "
                           f"b.rowid = x.rowid + ? AND {on} WHERE NOT ({diff})", (first[0],)
                           ).fetchone()[0]
    except sqlite3.OperationalError:  # e.g. a WITHOUT ROWID table: no rowid to line up
        return False
    return same == n


def _execute_once_per_key(con, insert: str, alias: str, t: str, key: list[str],
                          memo: Memo | None = None):
    """insert (... FROM qa.qt AS x WHERE ...) taking only the first row of each key: an input
    without a unique key may repeat a row (identical copies pass check_input), which would
    otherwise be added as often as it is repeated. A WITHOUT ROWID input has no rowid (and a
    primary key, so no repeats unless keyed by other columns): it is inserted as it is."""
    if (memo or Memo(con, alias)).unique(t, key, alias):
        return con.execute(insert)
    qk = ", ".join(quote_ident(k) for k in key)
    qa, qt = quote_ident(alias), quote_ident(t)
    try:
        return con.execute(f"{insert} AND x.rowid IN (SELECT min(rowid) FROM {qa}.{qt} "
                           f"GROUP BY {qk})")
    except sqlite3.OperationalError as exc:
        if "rowid" not in str(exc):
            raise
        return con.execute(insert)


class Memo:
    """Answers of table_info / index_list for main and one attached input, each asked once."""

    def __init__(self, con, alias: str, main: dict | None = None):
        self.con, self.alias = con, alias
        self.main = {} if main is None else main
        self.mine: dict = {}

    def unique(self, t: str, key: list[str], schema: str = "main") -> bool:
        store, k = (self.main if schema == "main" else self.mine), ("unique", t, tuple(key))
        if k not in store:
            store[k] = _key_is_unique(self.con, t, key, schema=schema)
        return store[k]

    def rows(self, t: str) -> int:  # the input's, read only
        k = ("rows", t)
        if k not in self.mine:
            self.mine[k] = count_rows(self.con, self.alias, t)
        return self.mine[k]

    def main_columns(self, t: str) -> list:
        k = ("columns", t)
        if k not in self.main:
            self.main[k] = sqlite_columns(self.con, t)
        return self.main[k]

    def forget_main(self, t: str) -> None:
        for k in [k for k in self.main if k[1] == t]:
            del self.main[k]


def _key_is_unique(con, t: str, key: list[str], schema: str = "main") -> bool:
    """Whether schema.t has a unique index (or primary key) on exactly the key columns."""
    qs = quote_ident(schema)
    for row in con.execute(f"PRAGMA {qs}.index_list({quote_ident(t)})").fetchall():
        if row[2]:  # unique
            cols = [r[2].lower() for r in con.execute(
                f"PRAGMA {qs}.index_info({quote_ident(row[1])})")]
            if sorted(cols) == sorted(k.lower() for k in key):
                return True
    return False


