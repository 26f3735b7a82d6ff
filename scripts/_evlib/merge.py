"""Lossless, atomic, idempotent merge and rebase of xetrack results DBs and parquet files.

Results DBs (SQLite) are merged by streaming inside SQLite: the base is copied (backup API)
into a temp file next to the output, every experiment DB is ATTACHed and its rows go in with
INSERT ... SELECT by column name, in one transaction; the temp file is checked (row counts,
PRAGMA quick_check, or integrity_check with check="full") and moved over the output with os.replace. No table is ever loaded
into Python. Parquet files go through one DuckDB COPY into a temp file, re-read, replaced.

Public API: merge_dbs(), merge_data(); both return a report dict and raise EVError.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from . import ASSET_TABLES, EVENTS_KEY, EVENTS_TABLE
from .atomic import atomic_path, copy_file
from .errors import CONFLICT, FAILED, REFUSED, USAGE, EVError
from .sql import is_sqlite_file, quote_ident, quote_literal, sqlite_columns, sqlite_connect

XETRACK_TABLES = (EVENTS_TABLE, *ASSET_TABLES)
MAX_NAMED_KEYS = 5
_TMP_TAG = ".evmerge"  # temp files are named .<output>.XXXX.tmp.evmerge<pid>
_SAFE_TYPE = re.compile(r"^[A-Za-z0-9_ ]*(\([0-9, ]*\))?$")


# --- temp files: atomic, and stale ones from a killed run are removed -------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(output: Path) -> list[str]:
    """Remove temp files a killed merge left beside output (their writer pid is dead)."""
    removed = []
    pat = re.compile(r"(?:tmp_)?" + re.escape(f".{output.name}.") + r".*\.tmp" + re.escape(_TMP_TAG)
                     + r"(\d+)$")
    if not output.parent.is_dir():
        return removed
    for p in output.parent.iterdir():
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


@contextlib.contextmanager
def _output_temp(output: Path, dry_run: bool):
    """The temp file to build the result in: next to output (atomic), or private on dry-run."""
    if dry_run:
        d = tempfile.mkdtemp(prefix="evmerge-dry-")
        try:
            yield Path(d) / output.name
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    sweep_stale_temps(output)
    if output.exists():
        # DVC leaves tracked files read-only (cache links); the new file is the user's again.
        mode = (output.stat().st_mode & 0o777) | 0o200
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with _dir_lock(output.parent), \
            atomic_path(output, suffix=f"{_TMP_TAG}{os.getpid()}") as tmp:
        os.chmod(tmp, mode)  # mkstemp makes 0600; keep the old file's (or a normal) mode
        yield tmp


LOCK_WAIT_S = 600


def _dir_lock(directory: Path):
    """Serialise merges into one directory (flock on the directory: no lock file to leave)."""
    from .atomic import held_lock

    directory.mkdir(parents=True, exist_ok=True)
    return held_lock(directory, wait_s=LOCK_WAIT_S,
                     message=f"another merge into {directory} has run for over {LOCK_WAIT_S} s",
                     hint="wait for it to finish, then re-run")


def file_state(path: Path) -> tuple:
    """What changes when another process writes path (SQLite: also its -wal/-journal)."""
    out = []
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _unchanged(paths: list[Path], before: list[tuple]) -> None:
    for p, st in zip(paths, before, strict=True):
        if file_state(p) != st:
            raise EVError(f"{p} changed while merging (another process wrote to it)",
                          code=FAILED, hint="nothing written; re-run when its writers are done")


# --- validation ---------------------------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output_not_input(output: Path, exps: list[Path], flag: str) -> None:
    for e in exps:
        if _same_file(output, e):
            raise EVError(f"--output-{flag} {output} is also an experiment input ({e})",
                          code=REFUSED,
                          hint=f"write to the base or a new path, never over an --exp-{flag} file")


def _require_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise EVError(f"{flag} {path}: no such file", code=USAGE,
                      hint="check the path (relative paths are from the current directory)")
    if not path.is_file():
        raise EVError(f"{flag} {path} is not a file", code=USAGE, hint="pass a file path")


# --- results databases ----------------------------------------------------------------------

def _db_tables(path: Path) -> dict[str, list[tuple[str, str, int]]]:
    con = sqlite_connect(path, readonly=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {n: sqlite_columns(con, n) for n in names}
    except sqlite3.DatabaseError as exc:
        raise EVError(f"{path} is not a SQLite database ({exc})", code=USAGE,
                      hint="pass a results DB written by xetrack") from exc
    finally:
        con.close()


def _open_db_input(path: Path, flag: str) -> dict:
    _require_file(path, flag)
    if not is_sqlite_file(path):
        raise EVError(f"{flag} {path} is not a SQLite database", code=USAGE,
                      hint="pass a results DB written by xetrack (a .db file)")
    return _db_tables(path)


def _table_key(table: str, cols: list[tuple[str, str, int]], key_columns) -> list[str]:
    if key_columns:
        return list(key_columns)
    pk = [c[0] for c in sorted((c for c in cols if c[2]), key=lambda c: c[2])]
    if pk:
        return pk
    if table == EVENTS_TABLE:
        return list(EVENTS_KEY)
    if table in ASSET_TABLES:
        return ["key"]
    raise EVError(f"table {table!r} has no primary key", code=USAGE,
                  hint="pass --key-columns naming the columns that identify a row")


def merge_dbs(base: Path, exps: list[Path], output: Path | None = None, *,
              strategy: str = "merge", on_conflict: str | None = None,
              tables: list[str] | None = None, key_columns: list[str] | None = None,
              dry_run: bool = False, backup_dir: Path | None = None,
              recoverable=None, check: str = "quick") -> dict:
    """Merge (union by key) or rebase (experiment rows replace base rows by key) results DBs.

    check: "quick" (row counts + PRAGMA quick_check) or "full" (+ PRAGMA integrity_check).
    A missing base with strategy 'merge' is an empty DB: the output is the union of the exps.
    recoverable(path) -> bool says whether an in-place rebase can be undone from DVC; when it
    says no (or is None), a backup copy of the old output is kept.
    Raises EVError (CONFLICT when keys disagree and on_conflict is None). Returns the report.
    """
    base, output = Path(base), Path(output or base)
    exps = [Path(e) for e in exps]
    if strategy not in ("merge", "rebase"):
        raise EVError(f"unknown strategy {strategy!r}", code=USAGE, hint="use merge or rebase")
    if on_conflict not in (None, "keep-base", "keep-exp"):
        raise EVError(f"unknown --on-conflict {on_conflict!r}", code=USAGE,
                      hint="use keep-base or keep-exp")
    if not exps:
        raise EVError("no --exp-db given", code=USAGE, hint="pass one or more --exp-db files")
    _check_output_not_input(output, exps, "db")
    # Validate every input before anything is written.
    base_missing = not base.exists()
    if base_missing and strategy == "rebase":
        raise EVError(f"--base-db {base}: no such file", code=USAGE,
                      hint="rebase needs an existing base; use --strategy merge to create one")
    base_schema = {} if base_missing else _open_db_input(base, "--base-db")
    exp_schemas = [_open_db_input(e, "--exp-db") for e in exps]
    if tables:
        want = list(dict.fromkeys(tables))
        for e, sch in zip(exps, exp_schemas, strict=True):
            for t in want:
                if t not in sch:
                    raise EVError(f"{e} has no table {t!r} (tables: "
                                  f"{', '.join(sorted(sch)) or 'none'})", code=USAGE,
                                  hint="check --table")
    else:
        for e, sch in zip(exps, exp_schemas, strict=True):
            if EVENTS_TABLE not in sch:
                raise EVError(f"{e} has no table {EVENTS_TABLE!r} (tables: "
                              f"{', '.join(sorted(sch)) or 'none'})", code=USAGE,
                              hint="pass a results DB written by xetrack, or name --table")
        present = set(base_schema).union(*exp_schemas)
        want = [t for t in XETRACK_TABLES if t in present]
    keys: dict[str, list[str]] = {}
    for t in want:
        ref = next(s[t] for s in [base_schema, *exp_schemas] if t in s)
        # Key columns apply to the events table (or the named tables); asset tables keep 'key'.
        kc = key_columns if (key_columns and (tables or t == EVENTS_TABLE)) else None
        keys[t] = _table_key(t, ref, kc)
        for path, sch in [(base, base_schema), *zip(exps, exp_schemas, strict=True)]:
            if t in sch:
                names = {c[0] for c in sch[t]}
                for k in keys[t]:
                    if k not in names:
                        raise EVError(f"key column {k!r} is not in table {t!r} of {path}",
                                      code=USAGE, hint="check --key-columns")

    report: dict = {"kind": "db", "strategy": strategy, "base": str(base),
                    "output": str(output), "dry_run": dry_run, "base_missing": base_missing,
                    "on_conflict": on_conflict, "tables": want,
                    "key_columns": {t: keys[t] for t in want}, "inputs": []}
    if base_missing:
        report["note"] = f"base {base} did not exist: output is the union of the experiment DBs"
    backup = None
    with _output_temp(output, dry_run) as tmp:
        watched = list(dict.fromkeys([base, output, *exps]))
        states = [file_state(p) for p in watched]
        if base_missing and base.exists():
            if not is_sqlite_file(base):
                raise EVError(f"--base-db {base} appeared while merging and is not SQLite",
                              code=FAILED, hint="nothing written; check it, then re-run")
            report["base_missing"] = False
            report.pop("note", None)
        _build_db(tmp, base, base_missing, exps, exp_schemas, want, keys, strategy,
                  on_conflict, report, check)
        _unchanged(watched, states)  # rows written meanwhile would be lost by the replace
        if (not dry_run and strategy == "rebase" and output.exists()
                and not (recoverable and recoverable(output))):
            backup = _backup(output, backup_dir)
    if backup:
        report["backup"] = str(backup)
        report["restore"] = f"cp {_shq(backup)} {_shq(output)}"
    report["rows_out"] = report.pop("_rows_out")
    return report


def _shq(p) -> str:
    import shlex
    return shlex.quote(str(p))


def _backup(path: Path, backup_dir: Path | None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = (backup_dir or path.parent) / f"{path.name}.bak-{stamp}"
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    copy_file(path, dest)
    return dest


def _build_db(tmp: Path, base: Path, base_missing: bool, exps: list[Path],
              exp_schemas: list[dict], tables: list[str], keys: dict, strategy: str,
              on_conflict: str | None, report: dict, check: str = "quick") -> None:
    con = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        if base.exists():  # checked again under the lock: a parallel merge may have made it
            src = sqlite_connect(base, readonly=True)
            try:
                src.backup(con)  # page copy; consistent even if the base uses WAL
            finally:
                src.close()
        # The temp file is thrown away on any failure, so it needs no rollback journal.
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN")
        existing = {r[0] for r in con.execute("SELECT name FROM main.sqlite_master")}
        before = {t: _count(con, "main", t) if t in existing else 0 for t in tables}
        all_conflicts: list[dict] = []
        for i, (exp, sch) in enumerate(zip(exps, exp_schemas, strict=True)):
            alias = f"exp{i}"
            con.execute(f"ATTACH DATABASE ? AS {quote_ident(alias)}", (str(exp),))
            entry = {"path": str(exp), "tables": {}}
            for t in tables:
                if t not in sch:
                    continue
                entry["tables"][t] = _merge_table(con, alias, t, sch[t], keys[t], strategy,
                                                  on_conflict, all_conflicts)
            report["inputs"].append(entry)
            con.execute("COMMIT")  # DETACH is not allowed inside a transaction
            con.execute(f"DETACH DATABASE {quote_ident(alias)}")
            con.execute("BEGIN")
        con.execute("COMMIT")
        report["conflicts"] = sum(c["count"] for c in all_conflicts)
        if all_conflicts and on_conflict is None:
            first = [k for c in all_conflicts for k in c["keys"]][:MAX_NAMED_KEYS]
            names = "; ".join(f"{c['table']}: {', '.join(map(str, c['keys'][:2]))} in "
                              f"{c['path']}" for c in all_conflicts[:2])
            raise EVError(f"{report['conflicts']} row(s) have the same key but different "
                          f"values ({names})", code=CONFLICT,
                          hint="nothing written; re-run with --on-conflict keep-base or "
                               "keep-exp to choose which side wins",
                          conflicts=all_conflicts, first_keys=first)
        rows_out = {t: _count(con, "main", t) for t in tables}
        # Check the result before it replaces anything.
        for t in tables:
            expect = before[t] + sum(e["tables"].get(t, {}).get("added", 0)
                                     - e["tables"].get(t, {}).get("removed", 0)
                                     for e in report["inputs"])
            if rows_out[t] != expect:
                raise EVError(f"row count check failed for table {t!r}: {rows_out[t]} rows, "
                              f"expected {expect}", code=FAILED,
                              hint="nothing written; report this as a bug")
        # quick_check walks every page and record (half the cost of integrity_check, which
        # also cross-checks each index against its table).
        pragma = "integrity_check" if check == "full" else "quick_check"
        ok = con.execute(f"PRAGMA {pragma}").fetchone()[0]
        report["check"] = f"row counts + {pragma}"
        if ok != "ok":
            raise EVError(f"{pragma} of the merged DB failed: {ok}", code=FAILED,
                          hint="nothing written; check the inputs with PRAGMA integrity_check")
        report["_rows_out"] = rows_out
    except sqlite3.DatabaseError as exc:
        raise EVError(f"SQLite error while merging: {exc}", code=FAILED,
                      hint="nothing written; check the inputs with PRAGMA integrity_check"
                      ) from exc
    finally:
        con.close()


def _count(con, schema: str, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}"
                       ).fetchone()[0]


def _merge_table(con, alias: str, t: str, exp_cols, key: list[str], strategy: str,
                 on_conflict: str | None, all_conflicts: list) -> dict:
    qt, qa = quote_ident(t), quote_ident(alias)
    stats = {"read": _count(con, alias, t), "added": 0, "replaced": 0, "removed": 0,
             "skipped": 0, "conflicts": 0, "columns_added": []}
    main_cols = {c[0].lower() for c in sqlite_columns(con, t)}  # SQLite: case-insensitive
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
    has_unique = _key_is_unique(con, t, key)
    tmp_index = None
    if not has_unique:
        # A lookup index for the anti-join; dropped before the file is checked.
        tmp_index = quote_ident(f"_evmerge_{t}_key")
        con.execute(f"CREATE INDEX main.{tmp_index} ON {qt} "
                    f"({', '.join(quote_ident(k) for k in key)})")
    if strategy == "rebase":
        where = " AND ".join(f"x.{quote_ident(k)} = main.{qt}.{quote_ident(k)}" for k in key)
        cur = con.execute(f"DELETE FROM main.{qt} WHERE EXISTS "
                          f"(SELECT 1 FROM {qa}.{qt} AS x WHERE {where})")
        stats["replaced"] = stats["removed"] = cur.rowcount
        n_mid = _count(con, "main", t)
        cur = con.execute(f"INSERT OR REPLACE INTO main.{qt} ({qcols}) SELECT {qcols} "
                          f"FROM {qa}.{qt}")
        stats["added"] = cur.rowcount
        # OR REPLACE also drops a base row whose primary key collides: count it as replaced.
        extra = n_mid + stats["added"] - _count(con, "main", t)
        stats["replaced"] += extra
        stats["removed"] += extra
    else:
        if has_unique:
            cur = con.execute(f"INSERT OR IGNORE INTO main.{qt} ({qcols}) SELECT {qcols} "
                              f"FROM {qa}.{qt}")
        else:
            cur = con.execute(f"INSERT INTO main.{qt} ({qcols}) SELECT {xcols} FROM {qa}.{qt} "
                              f"AS x WHERE NOT EXISTS (SELECT 1 FROM main.{qt} AS b "
                              f"WHERE {on})")
        stats["added"] = cur.rowcount
        if stats["added"] < stats["read"]:
            # Some keys were already there: those rows must be identical, else conflict.
            # Columns added just now are NULL in the base's rows: not a difference (filled
            # in below), or an experiment that adds a metric to old rows could never merge.
            non_key = [c for c in cols if c not in key and c not in added_cols]
            if non_key:
                diff = " OR ".join(f"b.{quote_ident(c)} IS NOT x.{quote_ident(c)}"
                                   for c in non_key)
                kx = ", ".join(f"x.{quote_ident(k)}" for k in key)
                q = (f"SELECT {kx} FROM {qa}.{qt} AS x JOIN main.{qt} AS b ON {on} "
                     f"WHERE {diff}")
                n = con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0]
                stats["conflicts"] = n
                if n:
                    first = [list(r) if len(r) > 1 else r[0]
                             for r in con.execute(f"{q} LIMIT {MAX_NAMED_KEYS}")]
                    all_conflicts.append({"path": con.execute(
                        "SELECT file FROM pragma_database_list WHERE name=?", (alias,)
                    ).fetchone()[0], "table": t, "count": n, "keys": first})
                    if on_conflict == "keep-exp":
                        sets = ", ".join(f"{quote_ident(c)} = x.{quote_ident(c)}"
                                         for c in non_key)
                        on_u = " AND ".join(f"main.{qt}.{quote_ident(k)} = x.{quote_ident(k)}"
                                            for k in key)
                        diff_u = " OR ".join(f"main.{qt}.{quote_ident(c)} IS NOT "
                                             f"x.{quote_ident(c)}" for c in non_key)
                        cur = con.execute(f"UPDATE main.{qt} SET {sets} FROM {qa}.{qt} AS x "
                                          f"WHERE {on_u} AND ({diff_u})")
                        stats["replaced"] = cur.rowcount
            if added_cols:
                same = " AND ".join(f"main.{qt}.{quote_ident(c)} IS x.{quote_ident(c)}"
                                    for c in non_key) or "1"
                on_m = " AND ".join(f"main.{qt}.{quote_ident(k)} = x.{quote_ident(k)}"
                                    for k in key)
                sets = ", ".join(f"{quote_ident(c)} = x.{quote_ident(c)}" for c in added_cols)
                empty = " AND ".join(f"main.{qt}.{quote_ident(c)} IS NULL" for c in added_cols)
                given = " OR ".join(f"x.{quote_ident(c)} IS NOT NULL" for c in added_cols)
                cur = con.execute(f"UPDATE main.{qt} SET {sets} FROM {qa}.{qt} AS x "
                                  f"WHERE {on_m} AND {same} AND {empty} AND ({given})")
                stats["filled"] = cur.rowcount
        stats["skipped"] = stats["read"] - stats["added"] - stats["conflicts"]
    if tmp_index:
        con.execute(f"DROP INDEX main.{tmp_index}")
    return stats


def _key_is_unique(con, t: str, key: list[str]) -> bool:
    """Whether main.t has a unique index (or primary key) on exactly the key columns."""
    for row in con.execute(f"PRAGMA main.index_list({quote_ident(t)})").fetchall():
        if row[2]:  # unique
            cols = [r[2] for r in con.execute(f"PRAGMA main.index_info({quote_ident(row[1])})")]
            if sorted(cols) == sorted(key):
                return True
    return False


# --- data files (parquet, DuckDB) -------------------------------------------------------------

_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INTEGER": 3, "BIGINT": 4, "HUGEINT": 5,
             "UTINYINT": 1.5, "USMALLINT": 2.5, "UINTEGER": 3.5, "UBIGINT": 4.5}
_FLOATS = {"FLOAT": 1, "DOUBLE": 2}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),(\d+)\)$")


def _widen(a: str, b: str) -> str | None:
    """The type both a and b convert to without loss, or None."""
    if a == b:
        return a
    if a in _INT_RANK and b in _INT_RANK:
        signed = [x for x in (a, b) if not x.startswith("U")]
        unsigned = [x for x in (a, b) if x.startswith("U")]
        if not unsigned or not signed:
            return a if _INT_RANK[a] > _INT_RANK[b] else b
        # signed + unsigned: a signed type strictly wider than the unsigned one
        need = int(_INT_RANK[unsigned[0]]) + 1
        s_rank = _INT_RANK[signed[0]]
        rank = max(need, s_rank)
        return {2: "SMALLINT", 3: "INTEGER", 4: "BIGINT", 5: "HUGEINT"}.get(rank)
    if a in _FLOATS and b in _FLOATS:
        return "DOUBLE"
    da, db = _DECIMAL.match(a), _DECIMAL.match(b)
    if da and db:
        (pa, sa), (pb, sb) = map(int, da.groups()), map(int, db.groups())
        scale = max(sa, sb)
        digits = max(pa - sa, pb - sb) + scale
        return f"DECIMAL({digits},{scale})" if digits <= 38 else None
    if (a in _INT_RANK and b in _FLOATS) or (b in _INT_RANK and a in _FLOATS):
        return "DOUBLE"
    return None


def _glob_safe(path: Path, tmpdir: Path) -> str:
    """DuckDB expands * ? [ { in read_parquet paths: give such files a plain-named link."""
    s = str(path.resolve())
    if any(ch in s for ch in "*?[]{}"):
        link = tmpdir / f"in{len(list(tmpdir.iterdir()))}.parquet"
        os.symlink(path.resolve(), link)
        return str(link)
    return s


_SCHEMA_CACHE: dict = {}


def _parquet_schema(path: Path, flag: str) -> tuple[list[tuple[str, str]], int]:
    """(columns with DuckDB types, row count) from the footer; cached per file version."""
    _require_file(path, flag)
    st = path.stat()
    ck = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if ck not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[ck] = _read_parquet_schema(path, flag)
    return _SCHEMA_CACHE[ck]


def _read_parquet_schema(path: Path, flag: str) -> tuple[list[tuple[str, str]], int]:
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4))
        tail = fh.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise EVError(f"{flag} {path} is not a parquet file", code=USAGE,
                      hint="pass a .parquet data file")
    import duckdb

    con = duckdb.connect()  # in-memory; one per file keeps a bad file's error its own
    try:
        lit = quote_literal(str(path.resolve()))
        # parquet_schema/DESCRIBE read only the footer
        desc = con.execute(f"DESCRIBE SELECT * FROM read_parquet({lit})").fetchall()
        n = con.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata({lit})").fetchone()[0]
    except duckdb.Error as exc:
        raise EVError(f"{flag} {path} is not a readable parquet file "
                      f"({' '.join(str(exc).split())[:200]})", code=USAGE,
                      hint="pass a .parquet data file") from exc
    finally:
        con.close()
    return [(r[0], r[1]) for r in desc], int(n or 0)


def merge_data(base: Path, exps: list[Path], output: Path | None = None, *,
               strategy: str = "merge", key_columns: list[str] | None = None,
               dry_run: bool = False, backup_dir: Path | None = None,
               recoverable=None) -> dict:
    """Merge (append rows the base lacks) or rebase (experiment rows win by key) parquet files.

    Rebase: every experiment row is kept, plus the base rows whose key no experiment has;
    when several experiment files carry a key, the LATER file's rows win.
    """
    import duckdb

    base, output = Path(base), Path(output or base)
    exps = [Path(e) for e in exps]
    if strategy not in ("merge", "rebase"):
        raise EVError(f"unknown strategy {strategy!r}", code=USAGE, hint="use merge or rebase")
    if not exps:
        raise EVError("no --exp-data given", code=USAGE, hint="pass one or more --exp-data files")
    if strategy == "rebase" and not key_columns:
        raise EVError("--strategy rebase of data files needs --key-columns", code=USAGE,
                      hint="name the columns that identify a row, e.g. --key-columns id")
    _check_output_not_input(output, exps, "data")
    files = [base, *exps]
    flags = ["--base-data"] + ["--exp-data"] * len(exps)
    schemas = [_parquet_schema(p, f) for p, f in zip(files, flags, strict=True)]
    # Unite schemas by column name; widen safely, refuse lossy combinations.
    union: dict[str, str] = {}
    seen_in: dict[str, tuple[Path, str]] = {}
    widenings = []
    for p, (cols, _n) in zip(files, schemas, strict=True):
        for name, typ in cols:
            if name not in union:
                union[name], seen_in[name] = typ, (p, typ)
                continue
            w = _widen(union[name], typ)
            if w is None:
                q, qtyp = seen_in[name]
                raise EVError(f"column {name!r} is {qtyp} in {q} but {typ} in {p}", code=USAGE,
                              hint="converting would lose information; cast the column in one "
                                   "file so the types match, then re-run")
            if w != union[name]:
                union[name] = w
    for p, (cols, _n) in zip(files, schemas, strict=True):
        for name, typ in cols:
            if typ != union[name]:
                widenings.append({"column": name, "file": str(p), "from": typ,
                                  "to": union[name]})
    for k in key_columns or []:
        for p, (cols, _n) in zip(files, schemas, strict=True):
            if k not in {c[0] for c in cols}:
                raise EVError(f"key column {k!r} is not in {p} (columns: "
                              f"{', '.join(c[0] for c in cols)})", code=USAGE,
                              hint="check --key-columns")

    names = list(union)
    report: dict = {"kind": "data", "strategy": strategy, "base": str(base),
                    "output": str(output), "dry_run": dry_run,
                    "key_columns": list(key_columns or []), "type_widenings": widenings,
                    "inputs": []}
    work = Path(tempfile.mkdtemp(prefix="evmerge-duck-"))
    con = duckdb.connect()
    backup = None
    try:
        con.execute(f"SET temp_directory = {quote_literal(str(work))}")
        con.execute("SET preserve_insertion_order = true")

        def sel(i: int, extra: str = "") -> str:
            p, (cols, _n) = files[i], schemas[i]
            have = dict(cols)
            parts = []
            for c in names:
                qc = quote_ident(c)
                if c not in have:
                    parts.append(f"CAST(NULL AS {union[c]}) AS {qc}")
                elif have[c] != union[c]:
                    parts.append(f"CAST({qc} AS {union[c]}) AS {qc}")
                else:
                    parts.append(qc)
            return (f"SELECT {', '.join(parts)}{extra} FROM "
                    f"read_parquet({quote_literal(_glob_safe(p, work))})")

        qn = ", ".join(quote_ident(c) for c in names)
        key = list(key_columns or [])
        qk = ", ".join(quote_ident(k) for k in key)
        base_rows = schemas[0][1]
        if strategy == "rebase":
            if len(exps) == 1:
                exp_all = f"({sel(1)})"
            else:
                tagged = " UNION ALL ".join(f"{sel(i + 1, f', {i} AS __evf')}"
                                            for i in range(len(exps)))
                exp_all = (f"(SELECT {qn} FROM (SELECT *, max(__evf) OVER (PARTITION BY "
                           f"{qk}) AS __evmax FROM ({tagged})) WHERE __evf = __evmax)")
            query = (f"SELECT * FROM ({sel(0)}) ANTI JOIN {exp_all} AS __e USING ({qk}) "
                     f"UNION ALL SELECT * FROM {exp_all}")
        else:
            prev = f"({sel(0)})"
            news = []
            for i in range(len(exps)):
                e = f"({sel(i + 1)})"
                if key:
                    new = f"SELECT * FROM {e} ANTI JOIN {prev} AS __p USING ({qk})"
                else:
                    # Row by row with duplicate counting: the n-th copy of a row is new only
                    # if prev has fewer than n copies of it.
                    rn = f"row_number() OVER (PARTITION BY {qn}) AS __rn"
                    cond = " AND ".join(f"__x.{quote_ident(c)} IS NOT DISTINCT FROM "
                                        f"__y.{quote_ident(c)}" for c in names)
                    new = (f"SELECT {', '.join('__x.' + quote_ident(c) for c in names)} FROM "
                           f"(SELECT *, {rn} FROM {e}) AS __x ANTI JOIN "
                           f"(SELECT *, {rn} FROM {prev}) AS __y "
                           f"ON {cond} AND __x.__rn = __y.__rn")
                news.append(new)
                prev = f"({prev} UNION ALL ({new}))"
            query = f"SELECT * FROM {prev}"
        with _output_temp(output, dry_run) as tmp:
            watched = list(dict.fromkeys([base, output, *exps]))
            states = [file_state(p) for p in watched]
            # Our temp file already exists: without USE_TMP_FILE false DuckDB would write a
            # second one (tmp_<name>) and rename it.
            written = con.execute(f"COPY ({query}) TO {quote_literal(str(tmp))} "
                                  f"(FORMAT parquet, USE_TMP_FILE false)").fetchone()[0]
            check = con.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata("
                                f"{quote_literal(str(tmp))})").fetchone()[0]
            if int(check or 0) != int(written):
                raise EVError(f"re-read of the merged parquet found {check} rows, "
                              f"expected {written}", code=FAILED, hint="nothing written")
            _unchanged(watched, states)
            if strategy == "merge" and len(exps) > 1:
                # One counting pass per experiment file, only when there are several.
                report["_added_each"] = [con.execute(f"SELECT count(*) FROM ({n})").fetchone()[0]
                                         for n in news]
            _data_counts(con, report, files, schemas, written, base_rows, strategy, key,
                         sel, exps)
            if (not dry_run and strategy == "rebase" and output.exists()
                    and not (recoverable and recoverable(output))):
                backup = _backup(output, backup_dir)
    except duckdb.Error as exc:
        raise EVError(f"DuckDB error while merging: {' '.join(str(exc).split())[:300]}",
                      code=FAILED, hint="nothing written") from exc
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
    if backup:
        report["backup"] = str(backup)
        report["restore"] = f"cp {_shq(backup)} {_shq(output)}"
    return report


def _data_counts(con, report, files, schemas, written, base_rows, strategy, key, sel, exps):
    _data_inputs(report, files, schemas)
    written = int(written)
    report["rows_out"] = written
    report["base_rows"] = base_rows
    if strategy == "merge":
        # Per-file added counts need one more pass only with several exps; one exp is exact.
        total_added = written - base_rows
        if len(exps) == 1:
            n = schemas[1][1]
            report["inputs"][0].update(added=total_added, skipped=n - total_added, replaced=0)
        else:
            for inp, n_added in zip(report["inputs"], report.pop("_added_each"), strict=True):
                inp.update(added=n_added, skipped=inp["read"] - n_added, replaced=0)
            if sum(i["added"] for i in report["inputs"]) != total_added:
                raise EVError("per-file counts do not add up to the rows written", code=FAILED,
                              hint="nothing written; report this as a bug")
        return
    exp_rows = sum(s[1] for s in schemas[1:])
    qk = ", ".join(quote_ident(k) for k in key)
    if len(exps) == 1:
        kept_exp = exp_rows
    else:
        tagged = " UNION ALL ".join(f"{sel(i + 1, f', {i} AS __evf')}" for i in range(len(exps)))
        kept_exp = con.execute(f"SELECT count(*) FROM (SELECT __evf, max(__evf) OVER "
                               f"(PARTITION BY {qk}) AS __evmax FROM ({tagged})) "
                               f"WHERE __evf = __evmax").fetchone()[0]
    kept_base = written - kept_exp
    report["replaced"] = base_rows - kept_base
    report["added"] = kept_exp
    report["superseded_by_later_exp"] = exp_rows - kept_exp


def _data_inputs(report, files, schemas) -> None:
    """Per experiment file: rows read, columns the base lacked, widenings applied to it."""
    base_cols = {c[0] for c in schemas[0][0]}
    for f, (cols, n) in zip(files[1:], schemas[1:], strict=True):
        report["inputs"].append({
            "path": str(f), "read": n,
            "columns_added": [{"column": c, "type": t} for c, t in cols if c not in base_cols],
            "type_widenings": [w for w in report["type_widenings"] if w["file"] == str(f)]})


# --- helpers for the CLI: up-front input checks, the DVC way back ---------------------------

def precheck_db(base: Path, exps: list[Path], strategy: str) -> None:
    """Cheap checks of every DB path (exists, is SQLite) before anything is written."""
    if base.exists() or strategy == "rebase":
        _open_db_input(base, "--base-db")
    for e in exps:
        _open_db_input(e, "--exp-db")


def precheck_data(base: Path, exps: list[Path]) -> None:
    _parquet_schema(base, "--base-data")
    for e in exps:
        _parquet_schema(e, "--exp-data")


def dvc_recoverable(repo: Path, path: Path) -> bool:
    """True when path's current bytes are the version DVC tracks in a committed .dvc file or
    dvc.lock (so `git checkout` + `dvc checkout`/`dvc pull` brings them back)."""
    from .atomic import md5_file
    from .dvcmeta import parse_outs
    from .proc import git_ok

    path = path.resolve()
    try:
        rel = path.relative_to(repo).as_posix()
    except ValueError:
        return False
    metas = [path.with_name(path.name + ".dvc")]
    d = path.parent
    while True:
        metas.append(d / "dvc.lock")
        if d == repo or d == d.parent:
            break
        d = d.parent
    md5 = None
    for meta in metas:
        if not meta.exists():
            continue
        rel_meta = meta.relative_to(repo).as_posix()
        if not (git_ok(repo, "ls-files", "--error-unmatch", "--", rel_meta)
                and git_ok(repo, "diff", "--quiet", "HEAD", "--", rel_meta)):
            continue
        try:
            outs = parse_outs(meta.read_text(), rel_meta)
        except OSError:
            continue
        for out in outs:
            if out.path == rel:
                md5 = md5 or md5_file(path)
                if out.md5 == md5:
                    return True
    return False
