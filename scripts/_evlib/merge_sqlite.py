"""Merge and rebase of xetrack results DBs (SQLite), exact or refused.

Into the base itself (the usual case) the merge is ONE SQLite transaction on the base:
ATTACH each experiment DB read-only, INSERT ... SELECT by column name, COMMIT. SQLite's
journal makes it atomic and crash-safe, a writer's open connection survives (it waits on the
lock for the merge's duration), a stale -wal/-journal is SQLite's to replay, and the cost is
the input's, not the base's. A new output file (or a base that is a link into the DVC cache,
which must never be written into) is built as a copy of the base (backup API) in a temp file
beside it, checked (row counts, PRAGMA quick_check) and moved over the output.

Exactness: a value that the base column's affinity would convert (TEXT '007' into an INTEGER
column, 2**62+1 into a REAL one, 0.1 into TEXT) is refused before anything is committed, as
are NULL key values and duplicate keys with different values inside one input.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path

from . import ASSET_TABLES, EVENTS_KEY, EVENTS_TABLE
from .errors import CONFLICT, FAILED, REFUSED, USAGE, EVError
from .merge_common import (
    TMP_TAG,
    backup_path,
    backup_report,
    check_output,
    check_output_not_input,
    describe_procs,
    dir_lock,
    is_linked,
    open_by,
    output_temp,
    require_file,
    same_file,
    sweep_stale_temps,
)
from .merge_table import (
    MAX_NAMED_KEYS,
    Memo,
    check_input,
    count_rows,
    exact_functions,
    merge_table,
)
from .sql import is_sqlite_file, quote_ident, sqlite_columns, sqlite_connect

XETRACK_TABLES = (EVENTS_TABLE, *ASSET_TABLES)
MAX_ATTACHED = 10  # SQLite's compile-time default: more inputs are combined first
LOCK_TIMEOUT_S = 60.0  # how long an in-place merge waits for a writer's transaction
# An in-place merge holds the base's write lock for its duration; a live writer waits on it
# for its busy timeout (xetrack: Python's default 5 s). Above this many input rows with a
# writer attached, the merge refuses instead of risking that writer's "database is locked".
LIVE_WRITER_MAX_ROWS = 200_000


def _ro_uri(path: Path) -> str:
    # An absolute path, not a resolved one: SQLite follows links itself, and resolving
    # costs a stat per path component per input (a sweep attaches 1,000 shards).
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


# --- inputs -----------------------------------------------------------------------------------

def _db_tables(path: Path, flag: str) -> dict[str, list[tuple[str, str, int]]]:
    try:
        con = sqlite_connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise EVError(f"{flag} {path} cannot be opened ({exc})", code=USAGE,
                      hint="pass a results DB written by xetrack") from exc
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {n: sqlite_columns(con, n) for n in names}
    except sqlite3.OperationalError as exc:
        if Path(f"{path}-journal").exists():
            raise EVError(f"{flag} {path} has a hot journal ({path}-journal: a writer died "
                          "mid-transaction)", code=REFUSED,
                          hint=f"let SQLite roll it back: sqlite3 {path} 'PRAGMA quick_check', "
                               "then re-run") from exc
        raise EVError(f"{flag} {path} cannot be read ({exc})", code=USAGE,
                      hint="pass a results DB written by xetrack") from exc
    except sqlite3.DatabaseError as exc:
        raise EVError(f"{flag} {path} is not a SQLite database ({exc})", code=USAGE,
                      hint="pass a results DB written by xetrack") from exc
    finally:
        con.close()


def _open_db_input(path: Path, flag: str) -> dict:
    require_file(path, flag)
    if not is_sqlite_file(path):
        raise EVError(f"{flag} {path} is not a SQLite database", code=USAGE,
                      hint="pass a results DB written by xetrack (a .db file)")
    if flag == "--base-db" and Path(f"{path}-journal").exists() and not is_linked(path):
        _roll_back_hot_journal(path)
    return _db_tables(path, flag)


def _roll_back_hot_journal(path: Path) -> None:
    """A -journal left by a writer that died (e.g. a killed in-place merge): any read-write
    open makes SQLite roll it back, restoring the last committed state. A live writer's
    journal is not hot: the read just waits for its lock."""
    con = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise EVError(f"--base-db {path}: its hot journal cannot be rolled back ({exc})",
                      code=REFUSED, hint=f"check it with: sqlite3 {path} 'PRAGMA "
                                         "integrity_check'") from exc
    finally:
        con.close()


def _file_state(path: Path, flag: str) -> tuple | None:
    """What a file's stat says of its bytes (and, for the base, whether a -journal is
    beside it): equal before two reads means the first read's answer is the second's."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    state = (st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns,
             st.st_ctime_ns)
    if flag == "--base-db":
        state += (os.path.lexists(f"{path}-journal"),)
    return state


def precheck_db(base: Path, exps: list[Path], strategy: str) -> dict:
    """Cheap checks of every DB path (exists, is SQLite) before anything is written.

    Returns what was read, for merge_dbs(prechecked=...): a file whose stat is unchanged
    since is not opened and read a second time."""
    seen: dict = {}

    def check(path: Path, flag: str) -> None:
        state = _file_state(path, flag)  # before the read: a change during it shows later
        schema = _open_db_input(path, flag)
        if state is not None:
            seen[(flag, os.path.abspath(path))] = (state, schema)

    if base.exists() or strategy == "rebase":
        check(base, "--base-db")
    for e in exps:
        check(e, "--exp-db")
    return seen


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


# --- the merge --------------------------------------------------------------------------------

def merge_dbs(base: Path, exps: list[Path], output: Path | None = None, *,
              strategy: str = "merge", on_conflict: str | None = None,
              tables: list[str] | None = None, key_columns: list[str] | None = None,
              dry_run: bool = False, backup_dir: Path | None = None,
              recoverable=None, check: str = "quick", force: bool = False,
              new_base_dirs: bool = False, prechecked: dict | None = None) -> dict:
    """Merge (union by key) or rebase (experiment rows replace base rows by key) results DBs.

    output defaults to base (merged in place: one transaction). check: "quick" (row counts +
    PRAGMA quick_check of a copied output) or "full" (+ PRAGMA integrity_check, also in place).
    A missing base with strategy 'merge' is an empty DB: the output is the union of the exps.
    recoverable(path) -> bool says whether a rebase's old output can be restored from DVC;
    when it says no (or is None), ONE backup <output>.bak is kept (replaced by the next).
    An existing output that is not the base is refused (REFUSED) unless force. A missing
    output directory is an error, unless new_base_dirs and the base (= output) is missing:
    then it is made (the CLI's --new-base: a DVC stage's first run has no results/ yet).
    prechecked: precheck_db's answer for these paths, used for a file unchanged since.
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
    check_output_not_input(output, exps, "db")
    if (new_base_dirs and not base.exists() and same_file(output, base)
            and not output.parent.exists()):
        output.parent.mkdir(parents=True)
    check_output(output, base, "db", force)
    base_missing = not base.exists()
    if base_missing and strategy == "rebase":
        raise EVError(f"--base-db {base}: no such file", code=USAGE,
                      hint="rebase needs an existing base; use --strategy merge to create one")

    def read(path: Path, flag: str) -> dict:
        hit = prechecked.get((flag, os.path.abspath(path))) if prechecked else None
        if hit is not None and hit[0] == _file_state(path, flag):
            return hit[1]
        return _open_db_input(path, flag)

    base_schema = {} if base_missing else read(base, "--base-db")
    exp_schemas = [read(e, "--exp-db") for e in exps]
    want = _tables_wanted(tables, exps, exp_schemas, base_schema)
    keys: dict[str, list[str]] = {}
    for t in want:
        ref = next(s[t] for s in [base_schema, *exp_schemas] if t in s)
        kc = key_columns if (key_columns and (tables or t == EVENTS_TABLE)) else None
        keys[t] = _table_key(t, ref, kc)
        for path, sch in [(base, base_schema), *zip(exps, exp_schemas, strict=True)]:
            if t in sch:
                names = {c[0].lower() for c in sch[t]}
                for k in keys[t]:
                    if k.lower() not in names:
                        raise EVError(f"key column {k!r} is not in table {t!r} of {path}",
                                      code=USAGE, hint="check --key-columns")
    in_place = (not dry_run and not base_missing and same_file(output, base)
                and not is_linked(base))
    report: dict = {"kind": "db", "strategy": strategy, "base": str(base),
                    "output": str(output), "dry_run": dry_run, "base_missing": base_missing,
                    "on_conflict": on_conflict, "tables": want,
                    "key_columns": {t: keys[t] for t in want}, "inputs": [],
                    "mode": "in-place transaction" if in_place else "copy and replace"}
    if dry_run:
        report["mode"] = "dry run (a private copy, discarded)"
    if base_missing:
        report["note"] = f"base {base} did not exist: output is the union of the experiment DBs"
    job = _Job(base, exps, exp_schemas, want, keys, strategy, on_conflict, report, check)
    with dir_lock(output.parent):
        if base_missing and base.exists():  # a parallel merge made it meanwhile
            again = True
        else:
            again = False
            backup, report = _locked(job, report, base, exps, want, keys, strategy,
                                     on_conflict, check, output, in_place, dry_run,
                                     recoverable, backup_dir)
    if again:  # outside the lock (an flock is per open file: ours would wait for itself)
        return merge_dbs(base, exps, output, strategy=strategy, on_conflict=on_conflict,
                         tables=tables, key_columns=key_columns, dry_run=dry_run,
                         backup_dir=backup_dir, recoverable=recoverable, check=check,
                         force=force)
    backup_report(report, backup, output)
    report["rows_out"] = report.pop("_rows_out")
    return report


def _locked(job, report, base, exps, want, keys, strategy, on_conflict, check, output,
        in_place, dry_run, recoverable, backup_dir):
    sweep_stale_temps(output)
    with contextlib.ExitStack() as stack:
        if len(exps) > MAX_ATTACHED:
            # SQLite attaches at most 10 DBs: combine the inputs in a scratch DB first
            # (groups of 10), then merge that one file into the output.
            combined = stack.enter_context(_temp_db(output, dry_run=True))
            _combine(job, combined)
            job = _Job(base, [combined], [_db_tables(combined, "--exp-db")], want, keys,
                       strategy, on_conflict, {"inputs": []}, check)
        backup = _run(job, output, in_place, dry_run, strategy, recoverable, backup_dir)
        if job.report is not report:  # combined: per-input counts are against earlier inputs
            report["combined"] = {"inputs": len(exps), "tables": job.report["inputs"][0][
                "tables"]}
            for k in ("_rows_out", "rows_added", "check", "live_processes", "conflicts"):
                if k in job.report:
                    report[k] = job.report[k]
    return backup, report


def _combine(job: _Job, combined: Path) -> None:
    con = sqlite3.connect(str(combined), isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        for i in range(0, len(job.exps), MAX_ATTACHED):
            part = _Job(None, job.exps[i:i + MAX_ATTACHED], job.exp_schemas[i:i + MAX_ATTACHED],
                        job.tables, job.keys, job.strategy, job.on_conflict, job.report,
                        job.check)
            part.scratch = True
            con.execute("BEGIN")
            _merge_all(con, part, counts=False)
            con.execute("COMMIT")
            for j in range(len(part.exps)):
                con.execute(f"DETACH DATABASE exp{j}")
    except sqlite3.DatabaseError as exc:
        raise _sqlite_error(exc) from exc
    finally:
        con.close()
    job.report.pop("_rows_out", None)
    job.report.pop("rows_added", None)


def _run(job, output, in_place, dry_run, strategy, recoverable, backup_dir):
    backup = None
    needs_backup = (not dry_run and strategy == "rebase" and output.exists()
                    and not (recoverable and recoverable(output)))
    if in_place:
        if needs_backup:
            backup = _backup_db(output, backup_dir)
        _merge_in_place(job)
    else:
        if output.exists() and not dry_run:
            procs = open_by(output)
            if procs:
                raise EVError(f"{output} is open in another process ({describe_procs(procs)})"
                              ": replacing the file would break its writer", code=REFUSED,
                              hint="nothing written; re-run when that process has exited")
        with _temp_db(output, dry_run) as tmp:
            _merge_copy(job, tmp)
            if needs_backup:
                backup = _backup_db(output, backup_dir)
    return backup


def _tables_wanted(tables, exps, exp_schemas, base_schema) -> list[str]:
    if tables:
        want = list(dict.fromkeys(tables))
        for e, sch in zip(exps, exp_schemas, strict=True):
            for t in want:
                if t not in sch:
                    raise EVError(f"{e} has no table {t!r} (tables: "
                                  f"{', '.join(sorted(sch)) or 'none'})", code=USAGE,
                                  hint="check --table")
        return want
    for e, sch in zip(exps, exp_schemas, strict=True):
        if EVENTS_TABLE not in sch:
            raise EVError(f"{e} has no table {EVENTS_TABLE!r} (tables: "
                          f"{', '.join(sorted(sch)) or 'none'})", code=USAGE,
                          hint="pass a results DB written by xetrack, or name --table")
    present = set(base_schema).union(*exp_schemas)
    return [t for t in XETRACK_TABLES if t in present]


class _Job:
    def __init__(self, base, exps, exp_schemas, tables, keys, strategy, on_conflict, report,
                 check):
        self.base, self.exps, self.exp_schemas = base, exps, exp_schemas
        self.tables, self.keys, self.strategy = tables, keys, strategy
        self.on_conflict, self.report, self.check = on_conflict, report, check
        self.scratch = False  # main is _combine's scratch DB: its lookup index is kept


@contextlib.contextmanager
def _temp_db(output: Path, dry_run: bool):
    """The file the copy is built in: beside output (moved over it), or on a dry run a
    scratch file beside it that is always removed (a killed run's is swept by the next)."""
    if not dry_run:
        with output_temp(output) as tmp:
            yield tmp
        return
    import tempfile  # a dry run only: a merge does not pay for importing it

    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".tmp{TMP_TAG}{os.getpid()}",
                                dir=output.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        for p in (name, f"{name}-journal", f"{name}-wal", f"{name}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _backup_db(path: Path, backup_dir: Path | None) -> Path:
    """ONE consistent backup per output (the SQLite backup API reads through a WAL)."""
    dest = backup_path(path, backup_dir)
    if not dest.parent.is_dir():
        raise EVError(f"backup directory {dest.parent} does not exist", code=USAGE,
                      hint="create it, or leave the backup beside the output")
    src = sqlite_connect(path, readonly=True)
    try:
        with output_temp(dest) as tmp:
            con = sqlite3.connect(str(tmp))
            try:
                src.backup(con)
                con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                con.close()
    finally:
        src.close()
    return dest


def _merge_copy(job: _Job, tmp: Path) -> None:
    con = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        # The temp file is thrown away on any failure, so it needs no rollback journal.
        con.execute("PRAGMA journal_mode=OFF")
        wal = False
        if job.base.exists():
            src = sqlite_connect(job.base, readonly=True)
            try:
                wal = src.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                src.backup(con)  # page copy; reads a base's committed WAL frames too
            finally:
                src.close()
            con.execute("PRAGMA journal_mode=OFF")  # a WAL base's header said wal
        con.execute("PRAGMA synchronous=OFF")
        _merge_all(con, job, counts=True)
        pragma = "integrity_check" if job.check == "full" else "quick_check"
        ok = con.execute(f"PRAGMA {pragma}").fetchone()[0]
        job.report["check"] = f"row counts + {pragma}"
        if ok != "ok":
            raise EVError(f"{pragma} of the merged DB failed: {ok}", code=FAILED,
                          hint="nothing written; check the inputs with PRAGMA integrity_check")
        if wal:
            con.execute("PRAGMA journal_mode=WAL")  # keep the base's journal mode
    except sqlite3.DatabaseError as exc:
        raise _sqlite_error(exc) from exc
    finally:
        con.close()


def _merge_in_place(job: _Job) -> None:
    procs = open_by(job.base)
    rows_in = _rows_in(job) if procs else 0
    if rows_in > LIVE_WRITER_MAX_ROWS:
        raise EVError(f"{job.base} is open in another process ({describe_procs(procs)}) and "
                      f"merging {rows_in} rows would hold its write lock longer than a writer "
                      "waits", code=REFUSED,
                      hint="nothing written; re-run when that process has exited, or merge "
                           "into a new --output-db")
    job.report["live_processes"] = procs
    con = sqlite3.connect(str(job.base), timeout=LOCK_TIMEOUT_S, isolation_level=None)
    try:
        try:
            con.execute("BEGIN IMMEDIATE")  # waits (busy timeout) for a writer's transaction
        except sqlite3.OperationalError as exc:
            procs = open_by(job.base)
            raise EVError(f"{job.base} stayed locked for {LOCK_TIMEOUT_S:.0f} s by another "
                          f"process ({describe_procs(procs) or 'unknown'})", code=REFUSED,
                          hint="nothing written; re-run when it has finished writing") from exc
        try:
            _merge_all(con, job, counts=job.check == "full")
            if job.check == "full":
                ok = con.execute("PRAGMA integrity_check").fetchone()[0]
                if ok != "ok":
                    raise EVError(f"integrity_check of the merged DB failed: {ok}", code=FAILED,
                                  hint="nothing written (rolled back)")
            job.report["check"] = ("row counts + integrity_check" if job.check == "full"
                                   else "SQLite transaction (row counts from the statements)")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise _sqlite_error(exc) from exc
    finally:
        con.close()


def _rows_in(job: _Job) -> int:
    """About how many rows the inputs hold (max rowid: no scan); asked only when a live
    process has the base open (one more open per input otherwise, for nothing)."""
    rows_in = 0
    for e in job.exps:
        c = sqlite_connect(e, readonly=True)
        try:
            for t in job.tables:
                with contextlib.suppress(sqlite3.OperationalError):
                    rows_in += c.execute(f"SELECT max(rowid) FROM {quote_ident(t)}"
                                         ).fetchone()[0] or 0
        finally:
            c.close()
    return rows_in


def _sqlite_error(exc: Exception) -> EVError:
    msg = str(exc)
    if "cannot store" in msg:  # a STRICT table refuses the value
        return EVError(f"the base refuses a value: {msg}", code=USAGE,
                       hint="nothing written; make the column types match")
    return EVError(f"SQLite error while merging: {msg}", code=FAILED,
                   hint="nothing written; check the inputs with PRAGMA integrity_check")


def _merge_all(con, job: _Job, counts: bool) -> None:
    """Every input into main, inside the caller's transaction (nothing committed here)."""
    report = job.report
    exact_functions(con)
    existing = {r[0] for r in con.execute("SELECT name FROM main.sqlite_master")}
    before = ({t: count_rows(con, "main", t) if t in existing else 0 for t in job.tables}
              if counts else None)
    all_conflicts: list[dict] = []
    exps = list(zip(job.exps, job.exp_schemas, strict=True))
    # What the PRAGMAs say of main's tables, kept across inputs (1,000 sweep shards asked
    # the same questions 1,000 times) and forgotten for a table this merge creates or
    # widens; an input's own answers are kept while it is attached.
    main_memo: dict = {}
    for i, (exp, sch) in enumerate(exps):
        alias = f"exp{i}"
        con.execute(f"ATTACH DATABASE ? AS {quote_ident(alias)}", (_ro_uri(exp),))
        memo = Memo(con, alias, main_memo)
        entry = {"path": str(exp), "tables": {}}
        for t in job.tables:
            if t not in sch:
                continue
            # A merge that proves every row present has proven every key non-NULL (keys
            # matched with =): its NULL-key scan is done only when something may be added.
            # (A non-unique input key is checked first: its duplicates check comes after.)
            defer = job.strategy == "merge" and memo.unique(t, job.keys[t], alias)
            check_input(con, alias, exp, t, sch[t], job.keys[t], null_keys=not defer,
                         memo=memo)
            entry["tables"][t] = merge_table(
                con, alias, exp, t, sch[t], job.keys[t], job.strategy, job.on_conflict,
                all_conflicts, keep_index=job.scratch, null_keys=defer, memo=memo)
        report["inputs"].append(entry)
    report["conflicts"] = sum(c["count"] for c in all_conflicts)
    if all_conflicts and job.on_conflict is None:
        first = [k for c in all_conflicts for k in c["keys"]][:MAX_NAMED_KEYS]
        names = "; ".join(f"{c['table']}: {', '.join(map(str, c['keys'][:2]))} in "
                          f"{c['path']}" for c in all_conflicts[:2])
        raise EVError(f"{report['conflicts']} row(s) have the same key but different "
                      f"values ({names})", code=CONFLICT,
                      hint="nothing written; re-run with --on-conflict keep-base or "
                           "keep-exp to choose which side wins",
                      conflicts=all_conflicts, first_keys=first)
    if not counts:
        report["_rows_out"] = None
        if job.scratch:
            return  # _combine drops the totals (and summing every group's was O(inputs^2))
        report["rows_added"] = {t: sum(e["tables"].get(t, {}).get("added", 0)
                                       - e["tables"].get(t, {}).get("removed", 0)
                                       for e in report["inputs"]) for t in job.tables}
        return
    rows_out = {t: count_rows(con, "main", t) for t in job.tables}
    for t in job.tables:
        expect = before[t] + sum(e["tables"].get(t, {}).get("added", 0)
                                 - e["tables"].get(t, {}).get("removed", 0)
                                 for e in report["inputs"])
        if rows_out[t] != expect:
            raise EVError(f"row count check failed for table {t!r}: {rows_out[t]} rows, "
                          f"expected {expect}", code=FAILED,
                          hint="nothing written; report this as a bug")
    report["_rows_out"] = rows_out
