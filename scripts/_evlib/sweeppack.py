"""A sweep's pack: the landed shards' rows gathered, while the sweep runs, into ONE scratch
SQLite file (<repo>/.ev/sweeps/<version>/pack.db), so that the final merge reads one file
instead of one per run (1,000 ATTACHes, schema reads and conflict checks at the end, while
the cores idle).

Exact or left out: each shard is copied in its own savepoint, with its run key recorded in
the same savepoint, so the pack holds a shard's rows once or not at all. The shards a sweep
collects (runner.finish(snapshot=True): its rows, read through the connection that stamped
them) are copied from that snapshot, in one transaction per BATCH shards (the pack is
scratch: a kill loses nothing but the pack, which the next sweep discards); a shard without
a snapshot is read from its file (ATTACH, between two transactions). A value read into
Python and bound again keeps its storage class and value (int, float, str, bytes, None), as
INSERT ... SELECT keeps it; a text that is not UTF-8 cannot be read: no snapshot. A table is
created with the shard's own declaration; a column is added with the shard's declared type,
and a shard that declares a column the pack has with another type is left out: a value is
only ever copied into a column of the affinity it was stored under, which leaves it as it
is. The merge key (xetrack's (track_id, timestamp), or the table's primary key) is UNIQUE in
the pack: a shard repeating a key of an earlier one is left out. A shard left out is merged
on its own, so the final merge (the merge engine, with every check of a merge) names it.
The pack is never the truth: the shard stays in place (a run is done by its shard's rows), a
pack left by a killed sweep is discarded by the next one, and if the final merge of the pack
fails, the sweep merges shard by shard instead.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from . import ASSET_TABLES, EVENTS_KEY, EVENTS_TABLE
from .merge_sqlite import _ro_uri
from .merge_table import _SAFE_TYPE
from .sql import quote_ident

PACK = "pack.db"
_KEYS = "_ev_packed"  # the run keys whose shards are in the pack (never merged: not xetrack's)
_SIDES = ("", "-journal", "-wal", "-shm")
BATCH = 64  # shards per pack transaction
SNAPSHOT_ROWS = 5000  # a shard with more rows (all tables) is read from its file instead


def discard(path: Path) -> None:
    for side in _SIDES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{side}")


class _LeftOut(Exception):
    pass


class Pack:
    def __init__(self, path: Path):
        self.path = Path(path)
        discard(self.path)  # a killed sweep's: its shards are merged on their own
        self.keys: list[str] = []  # committed
        self._pending: list[str] = []  # in the open transaction
        self._committed: dict[str, dict[str, str]] = {}  # cols as of the last commit
        self.cols: dict[str, dict[str, str]] = {}  # per table: {column (lower): declared type}
        self.con: sqlite3.Connection | None = sqlite3.connect(str(self.path),
                                                              isolation_level=None)
        # The rollback journal in memory: an error rolls a shard back; a kill tears a file
        # that nobody reads again (discarded above).
        self.con.execute("PRAGMA journal_mode=MEMORY")
        self.con.execute("PRAGMA synchronous=OFF")
        self.con.execute(f"CREATE TABLE {_KEYS} (key TEXT PRIMARY KEY)")

    def add(self, shard: Path, key: str) -> bool:
        """The shard's rows into the pack (all or none). False: left out (merged alone)."""
        if self.con is None or not self.flush():
            return False
        con = self.con
        try:
            con.execute("ATTACH DATABASE ? AS s", (_ro_uri(shard),))
        except sqlite3.Error:
            return False
        try:
            cols = self._copy(con, key)
        except (_LeftOut, sqlite3.Error):
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            return False
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.execute("DETACH DATABASE s")
        self.cols = self._committed = cols
        self.keys.append(key)
        return True

    def add_rows(self, snap: dict | None, key: str) -> bool:
        """A shard's snapshot (shard.snapshot) into the pack (all or none), in the open
        transaction. False: left out (merged alone)."""
        if self.con is None or snap is None:
            return False
        con = self.con
        if not con.in_transaction and self._pending:
            self._lost()  # (SQLite rolled the transaction back on an error)
        try:
            if not con.in_transaction:
                con.execute("BEGIN")
            con.execute("SAVEPOINT shard")
            cols = self._copy(con, key, snap)
            con.execute("RELEASE shard")
        except (_LeftOut, sqlite3.Error):
            try:  # this shard's rows out, the transaction's earlier shards kept
                con.execute("ROLLBACK TO shard")
                con.execute("RELEASE shard")
            except sqlite3.Error:  # the transaction is gone (SQLite rolled it back) or broken
                with contextlib.suppress(sqlite3.Error):
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                self._lost()
            return False
        self.cols = cols
        self._pending.append(key)
        if len(self._pending) >= BATCH:
            self.flush()
        return True

    def _lost(self) -> None:
        """The open transaction is gone: its shards are not in the pack (merged alone)."""
        self._pending.clear()
        self.cols = self._committed

    def flush(self) -> bool:
        """Commit the open transaction: its shards join keys. False: it failed (they are
        left out) and the pack is unusable."""
        if self.con is None:
            return False
        if not self.con.in_transaction and self._pending:
            self._lost()
        try:
            if self.con.in_transaction:
                self.con.execute("COMMIT")
        except sqlite3.Error:
            self._pending.clear()
            self.close()
            return False
        self.keys += self._pending
        self._pending.clear()
        self._committed = self.cols
        return True

    def _copy(self, con, key: str, snap: dict | None = None) -> dict:
        """snap None: from the attached shard s, in a transaction of its own; else from the
        snapshot, inside the caller's savepoint."""
        if snap is None:
            decls = dict(con.execute(
                "SELECT name, sql FROM s.sqlite_master WHERE type = 'table'"))
        else:
            decls = snap["decls"]
        if EVENTS_TABLE not in decls:
            raise _LeftOut
        cols = {t: dict(c) for t, c in self.cols.items()}  # committed with the transaction
        if snap is None:
            con.execute("BEGIN")
        for t in (EVENTS_TABLE, *ASSET_TABLES):
            if t not in decls:
                continue
            qt = quote_ident(t)
            if snap is None:
                info = [(r[1], r[2] or "", r[5])
                        for r in con.execute(f"PRAGMA s.table_info({qt})")]
            else:
                info, rows = snap["tables"][t]
            have = cols.get(t)
            if have is None:
                con.execute(decls[t])  # into main: the shard's declaration, as it is
                pk = [c[0] for c in sorted((c for c in info if c[2]), key=lambda c: c[2])]
                keys = pk or (list(EVENTS_KEY) if t == EVENTS_TABLE else ["key"])
                con.execute(f"CREATE UNIQUE INDEX main.{quote_ident('_ev_key_' + t)} ON {qt} "
                            f"({', '.join(quote_ident(k) for k in keys)})")
                have = cols[t] = {n.lower(): d for n, d, _ in info}
            for name, decl, _pk in info:
                old = have.get(name.lower())
                if old is None:
                    if not _SAFE_TYPE.match(decl):
                        raise _LeftOut
                    con.execute(f"ALTER TABLE main.{qt} ADD COLUMN {quote_ident(name)} {decl}")
                    have[name.lower()] = decl
                elif old != decl:
                    raise _LeftOut  # another affinity: the value might change
            names = ", ".join(quote_ident(n) for n, _, _ in info)
            if snap is None:
                con.execute(f"INSERT INTO main.{qt} ({names}) SELECT {names} FROM s.{qt}")
            elif rows:
                marks = ", ".join("?" * len(info))
                con.executemany(f"INSERT INTO main.{qt} ({names}) VALUES ({marks})", rows)
        con.execute(f"INSERT INTO {_KEYS} VALUES (?)", (key,))
        if snap is None:
            con.execute("COMMIT")
        return cols

    def close(self) -> None:
        """Commit what is pending (keys then holds every shard in the pack) and close."""
        if self.con is not None and self._pending:
            self.flush()
        if self.con is not None:
            self.con.close()
            self.con = None
