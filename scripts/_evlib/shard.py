"""A run's results DB (its shard): rows and track_ids, and the lineage stamp on every row.
Split out of runner.py (re-exported there)."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

from . import ASSET_TABLES, EVENTS_TABLE
from .errors import USAGE, EVError
from .runspec import RunSpec
from .sql import add_columns, quote_ident, sqlite_columns, sqlite_connect, sqlite_tables


def _open_shard(db: Path, exclusive: bool = False) -> sqlite3.Connection | None:
    """A connection to a run's results DB, None if it is missing or not a DB. exclusive: no
    one else uses the file; its locks are then held from the first read to the close
    (SQLite's exclusive locking mode: no lock, unlock and change check around each of the
    ~20 statements a stamp runs, 103 system calls -> 40; the same values, rows and file).
    Not for a WAL file (there it would leave the -shm file behind)."""
    if not db.is_file():
        return None
    try:
        con = sqlite_connect(db)
    except sqlite3.DatabaseError:
        return None
    if exclusive:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA locking_mode=EXCLUSIVE")
        except sqlite3.Error:
            pass  # the ordinary locking then: the reads and the stamp report any error
    return con


def _shard_info(db: Path, con: sqlite3.Connection | None = None) -> tuple[int, list[str]]:
    """(rows, track_ids) of a run's results DB; (0, []) if it is missing or not a DB.
    con: an open connection to db (left open), else one is opened and closed here."""
    own = con is None
    if own:
        con = _open_shard(db)
    if con is None:
        return 0, []
    try:
        if EVENTS_TABLE not in sqlite_tables(con):
            return 0, []
        t = quote_ident(EVENTS_TABLE)
        rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        tids = [r[0] for r in con.execute(
            f"SELECT DISTINCT track_id FROM {t} WHERE track_id IS NOT NULL ORDER BY 1")]
        return rows, tids
    except sqlite3.DatabaseError:
        return 0, []
    finally:
        if own:
            con.close()


def lineage_values(spec: RunSpec, lineage: dict, seconds: float | None = None) -> dict:
    return {"ev_run": spec.key, "ev_command": shlex.join(spec.command),
            "ev_commit": lineage.get("ev_commit"),
            "ev_dirty": 1 if lineage.get("ev_dirty") else 0,
            "ev_data_md5": lineage.get("ev_data_md5") or "{}",
            "ev_params": json.dumps(spec.params, sort_keys=True, default=str),
            "ev_gpus": spec.gpus if spec.gpus is not None else "",
            "ev_seconds": round(seconds, 3) if seconds is not None else None}


_TYPES = {"ev_dirty": "INTEGER", "ev_seconds": "REAL"}


def stamp(db: Path, spec: RunSpec, lineage: dict, seconds: float | None = None, *,
          con: sqlite3.Connection | None = None, journal: bool = True) -> None:
    """Write the lineage columns (and version) on every row of the run's results DB.
    con: an open connection to db to use (left open). journal=False: the rollback journal
    in memory, for a caller that marks the stamp as under way (a kill may tear the file)."""
    values = lineage_values(spec, lineage, seconds)
    own = con is None
    if own:
        con = sqlite_connect(db)
    # One transaction, not fsynced: the file is the run's own until it is renamed into the
    # shards folder, and a shard that a power cut tore reads as not done (the run is redone).
    level = con.isolation_level
    con.isolation_level = None
    con.execute("PRAGMA synchronous=OFF")
    if not journal and con.execute("PRAGMA journal_mode").fetchone()[0] == "delete":
        con.execute("PRAGMA journal_mode=MEMORY")  # this connection only; WAL is left as is
    try:
        t = quote_ident(EVENTS_TABLE)
        cols = {c[0] for c in sqlite_columns(con, EVENTS_TABLE)}
        if "version" in cols:
            other = [r[0] for r in con.execute(
                f"SELECT DISTINCT version FROM {t} WHERE version IS NOT NULL "
                f"AND CAST(version AS TEXT) != ?", [spec.version])]
            if other:
                raise EVError(f"the command logged version {other[0]!r} but the run is "
                              f"--version {spec.version}", code=USAGE,
                              hint="pass the same version to both, or let the bundle set it")
        con.execute("BEGIN IMMEDIATE")
        try:
            add_columns(con, EVENTS_TABLE, [(name, _TYPES.get(name, "TEXT"))
                                            for name in [*values, "version"]
                                            if name not in cols])
            sets = ", ".join(f"{quote_ident(k)} = ?" for k in values)
            con.execute(f"UPDATE {t} SET {sets}, version = ?", [*values.values(), spec.version])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        if own:
            con.close()
        else:
            con.isolation_level = level


def snapshot(con: sqlite3.Connection, limit: int) -> dict | None:
    """The shard's tables as the sweep's pack copies them (sweeppack.Pack.add_rows): their
    declarations ({name: CREATE sql}) and, per events/asset table, ([(column, declared type,
    pk position)], rows). None: more than limit rows, or a value Python cannot read (a text
    that is not UTF-8): the pack reads the file itself."""
    try:
        decls = dict(con.execute("SELECT name, sql FROM main.sqlite_master "
                                 "WHERE type = 'table'"))
        tables, left = {}, limit
        for t in (EVENTS_TABLE, *ASSET_TABLES):
            if t not in decls:
                continue
            qt = quote_ident(t)
            info = [(r[1], r[2] or "", r[5]) for r in con.execute(f"PRAGMA main.table_info({qt})")]
            names = ", ".join(quote_ident(n) for n, _, _ in info)
            rows = con.execute(f"SELECT {names} FROM main.{qt}").fetchmany(left + 1)
            left -= len(rows)
            if left < 0:
                return None
            tables[t] = (info, rows)
        return {"decls": decls, "tables": tables}
    except (sqlite3.Error, ValueError):
        return None
