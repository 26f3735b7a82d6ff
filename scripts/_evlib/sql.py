"""SQL helpers: the one place that quotes identifiers and opens SQLite/DuckDB connections.

No SQL is built from unquoted user strings: identifiers go through quote_ident, values are
bound as parameters, and the one statement that cannot take a parameter (DuckDB's ATTACH)
gets its path through quote_literal.
"""

from __future__ import annotations

import _sqlite3  # the sqlite3 package's C module: its connect and Error are these
import os

from .errors import USAGE, EVError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3


def quote_ident(name: str) -> str:
    """Quote an SQL identifier for SQLite and DuckDB: a"b becomes "a""b"."""
    if "\x00" in name:
        raise EVError(f"identifier contains a NUL byte: {name!r}", code=USAGE)
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal; only for statements that cannot bind parameters."""
    if "\x00" in value:
        raise EVError("string contains a NUL byte", code=USAGE)
    return "'" + value.replace("'", "''") + "'"


def is_sqlite_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def _uri_path(path: str) -> str:
    """urllib.parse.quote(path) (safe '/'), without importing urllib (~5 ms of a list)."""
    return "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in path.encode("utf-8"))


def sqlite_connect(path: str | os.PathLike, *, readonly: bool = False,
                   timeout: float = 30.0, immutable: bool = False) -> sqlite3.Connection:
    """Open a SQLite file; read-only mode never creates or modifies it. immutable (with
    readonly): a file nothing can change while it is open (a content-addressed DVC object),
    read without locks or a journal check."""
    if readonly:
        uri = "file:" + _uri_path(os.path.realpath(path)) + "?mode=ro"
        if immutable:
            uri += "&immutable=1"
            # a DVC object, only read (listcold): sqlite3.connect itself, without the
            # package's import (its datetime adapters: ~3 ms of a first list)
            return _sqlite3.connect(uri, uri=True, timeout=timeout)
        return _dbapi().connect(uri, uri=True, timeout=timeout)
    return _dbapi().connect(os.fspath(path), timeout=timeout)


def _dbapi():
    """The sqlite3 package (its default adapters and converters registered, as every
    connection but an immutable object's has always had them)."""
    import sqlite3

    return sqlite3


def affinity(decl: str) -> str:
    """SQLite's column affinity of a declared type (section 3.1 of SQLite's datatype doc)."""
    d = (decl or "").upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


MAX_BINDS = 500  # values bound one per variable up to this many; beyond, a temp table


def in_values(con: sqlite3.Connection, table: str, column: str, values: list
              ) -> tuple[str, list]:
    """(SQL, binds) for `column IN values` on main.table, within SQLite's bound-variable
    limit (999 before 3.32, 32766 since): over MAX_BINDS values they go into a temp table
    first, whose column is declared as table.column is, so each value is converted on the
    way in by the same affinity a bound `?` meets in `IN (?, ...)` (1 matches '1' in a TEXT
    column either way); the column's collation applies to both."""
    col = quote_ident(column)
    if len(values) <= MAX_BINDS:
        return f"{col} IN ({','.join('?' * len(values))})", list(values)
    decl = next((d for n, d, _pk in sqlite_columns(con, table) if n.lower() == column.lower()),
                "")
    aff = affinity(decl)
    name = quote_ident(f"ev_in_{len(values)}_{id(values):x}")
    con.execute(f"CREATE TEMP TABLE {name} (v{'' if aff == 'BLOB' else ' ' + aff})")
    con.executemany(f"INSERT INTO temp.{name} VALUES (?)", ((v,) for v in values))
    return f"{col} IN (SELECT v FROM temp.{name})", []


def sqlite_tables(con: sqlite3.Connection, schema: str = "main") -> list[str]:
    q = f"SELECT name FROM {quote_ident(schema)}.sqlite_master WHERE type='table' ORDER BY name"
    return [r[0] for r in con.execute(q)]


def sqlite_columns(con: sqlite3.Connection, table: str, schema: str = "main"
                   ) -> list[tuple[str, str, int]]:
    """(name, declared type, pk position) for each column, in table order."""
    rows = con.execute(f"PRAGMA {quote_ident(schema)}.table_info({quote_ident(table)})")
    return [(r[1], r[2] or "", r[5]) for r in rows]


def add_columns(con: sqlite3.Connection, table: str, defs: list[tuple[str, str]]) -> None:
    """Add columns (name, declared type), nullable, no default, at the end of table, inside
    the caller's transaction. The same result as one ALTER TABLE ADD COLUMN each, at a
    third of the cost for many (each ALTER re-reads the whole schema: a sweep stamps 9
    columns on every run): the first column is added by ALTER TABLE, which shows where
    SQLite puts a column in the table's CREATE statement; the others are written at that
    place in one step, the schema-text edit SQLite documents for changes that leave every
    stored row as it is (rows shorter than the table read NULL for the columns they lack,
    exactly as after ALTER TABLE). The table's columns are then read back and must be the
    old ones plus the new ones, else the edit is undone and plain ALTERs add them."""
    qt = quote_ident(table)

    def alter(ds):
        for name, decl in ds:
            con.execute(f"ALTER TABLE {qt} ADD COLUMN {quote_ident(name)} {decl}")

    if len(defs) < 3:
        alter(defs)
        return
    get = "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?"
    old_cols = con.execute(f"PRAGMA main.table_info({qt})").fetchall()
    before = con.execute(get, (table,)).fetchone()[0]
    first = ", " + " ".join((quote_ident(defs[0][0]), defs[0][1]))
    # Where SQLite puts a column depends only on the CREATE text: found once per text (a
    # sweep's runs all create the same table), the ALTER is not run again for it; the edit
    # is checked as always.
    at = _ALTER_AT.get((before, first))
    altered = at is None
    if altered:
        alter(defs[:1])
        after = con.execute(get, (table,)).fetchone()[0]
        at, i = [], after.find(first)
        while i >= 0:  # where the ALTER put it: after == before with `first` inserted at i
            if after[:i] == before[:i] and after[i + len(first):] == before[i:]:
                at.append(i)
            i = after.find(first, i + 1)
    ok = len(at) == 1
    if ok:
        con.execute("SAVEPOINT ev_add_columns")
        try:
            i = at[0]
            text = before[:i] + "".join(", " + " ".join((quote_ident(n), d))
                                        for n, d in defs) + before[i:]
            version = con.execute("PRAGMA main.schema_version").fetchone()[0]
            con.execute("PRAGMA writable_schema = ON")
            try:
                con.execute("UPDATE main.sqlite_master SET sql = ? WHERE type = 'table' "
                            "AND name = ?", (text, table))
                con.execute(f"PRAGMA main.schema_version = {int(version) + 1}")
            finally:
                con.execute("PRAGMA writable_schema = OFF")
            want = [tuple(c) for c in old_cols] + [
                (len(old_cols) + k, n, d, 0, None, 0) for k, (n, d) in enumerate(defs)]
            ok = [tuple(c) for c in con.execute(f"PRAGMA main.table_info({qt})")] == want
        except _sqlite3.Error:
            ok = False
        if ok:
            con.execute("RELEASE ev_add_columns")
            if altered and len(_ALTER_AT) < 64:
                _ALTER_AT[(before, first)] = at
        else:
            con.execute("ROLLBACK TO ev_add_columns")
            con.execute("RELEASE ev_add_columns")
    if not ok:
        alter(defs[1:] if altered else defs)


_ALTER_AT: dict[tuple[str, str], list[int]] = {}  # (CREATE text, column def): [position]


# --- DuckDB and its sqlite extension, offline -------------------------------------------

def sqlite_extension_file() -> str | None:
    """The sqlite_scanner extension shipped in the duckdb-extension-sqlite-scanner wheel."""
    try:
        import duckdb
        import duckdb_extension_sqlite_scanner as pkg
    except ImportError:
        return None
    base = os.path.dirname(pkg.__file__)
    exact = os.path.join(base, "extensions", f"v{duckdb.__version__}",
                         "sqlite_scanner.duckdb_extension")
    if os.path.exists(exact):
        return exact
    import glob  # the DuckDB extension lookup only

    found = sorted(glob.glob(os.path.join(base, "extensions", "*",
                                          "sqlite_scanner.duckdb_extension")))
    return found[-1] if found else None


def ensure_duckdb_sqlite(con=None) -> None:
    """Install DuckDB's sqlite extension from the PyPI wheel when it is not installed.

    xetrack's DuckDB engine runs `INSTALL sqlite`, which downloads unless the extension is
    already in DuckDB's extension directory; this puts it there with no network.
    """
    import duckdb

    own = con is None
    con = con or duckdb.connect()
    try:
        row = con.execute("SELECT installed FROM duckdb_extensions() "
                          "WHERE extension_name = 'sqlite_scanner'").fetchone()
        if row and row[0]:
            return
        path = sqlite_extension_file()
        if not path:
            raise EVError("DuckDB's sqlite extension is not installed and its wheel is missing",
                          hint=f"pip install duckdb-extension-sqlite-scanner=={duckdb.__version__}")
        con.execute(f"INSTALL {quote_literal(path)}")
    finally:
        if own:
            con.close()


def duckdb_connect():
    """An in-memory DuckDB connection with the sqlite extension loaded (offline)."""
    import duckdb

    con = duckdb.connect()
    ensure_duckdb_sqlite(con)
    con.execute("LOAD sqlite")
    return con


def duckdb_attach_sqlite(con, path: str | os.PathLike, alias: str, *,
                         readonly: bool = True) -> None:
    mode = ", READ_ONLY" if readonly else ""
    con.execute(f"ATTACH {quote_literal(str(path))} AS {quote_ident(alias)} (TYPE SQLITE{mode})")
