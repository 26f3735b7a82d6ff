"""Merge and rebase of parquet data files, written by pyarrow from the base's Arrow schema.

The output has the base's schema exactly (types, nullability, schema/field/pandas metadata);
a column only an experiment has is appended. An experiment value is converted to the base's
type only where that is exact (int32 -> int64, float32 -> float64, an int within 2**53 -> double,
string -> dictionary, ...): otherwise the merge refuses with one line naming the file,
column and first offending value, and writes nothing.

Which rows go out is decided over an exact projection of every file (floats and temporals
as their bit patterns, so -0.0, NaN payloads and time units compare exactly): anti-joins on
the key, or for a keyless merge duplicate counting (the n-th copy of a row is new only if no
earlier file has n copies). Up to ARROW_MAX_BYTES of data (and no nested column) that is done
in memory with Arrow's dense ranks and numpy, without importing DuckDB; beyond, by ONE DuckDB
query that spills to a scratch directory beside the output, so a file larger than memory
still merges. The rows themselves are then streamed by record batch from each file with
pyarrow, so N files cost O(total rows).

This module is the entry (checks, locking, the report); merge_pqarrow holds the schemas, the
exact conversion and the writer, merge_pqrows the row selection (in memory or by DuckDB).
"""

from __future__ import annotations

from pathlib import Path

from . import merge_pqkeyed
from .errors import CONFLICT, USAGE, EVError
from .merge_common import (
    backup_path,
    backup_report,
    check_output,
    check_output_not_input,
    dir_lock,
    same_file,
    scratch_dir,
    sweep_stale_temps,
)
from .merge_pqarrow import (
    _batches,
    _canon,
    _case_collisions,
    _Conform,
    _out_schema,
    _read_schema,
    _write,
)
from .merge_pqrows import _select_arrow, _select_duckdb

# Up to this much data (uncompressed, all files) rows are compared in memory; more goes to
# DuckDB, which spills to disk.
ARROW_MAX_BYTES = 1 << 30
# A keyed merge/rebase of plain columns works on the key columns first (merge_pqkeyed).
KEYED_FAST = True


def precheck_data(base: Path, exps: list[Path]) -> None:
    _read_schema(base, "--base-data")
    for e in exps:
        _read_schema(e, "--exp-data")


# --- the merge --------------------------------------------------------------------------------


def merge_data(base: Path, exps: list[Path], output: Path | None = None, *,
               strategy: str = "merge", key_columns: list[str] | None = None,
               dry_run: bool = False, backup_dir: Path | None = None,
               recoverable=None, force: bool = False, on_conflict: str | None = None) -> dict:
    """Merge (append the rows the base lacks) or rebase (experiment rows win by key) parquet.

    Rebase: every experiment row is kept, plus the base rows whose key no experiment has;
    when several experiment files carry a key, the LATER file's rows win. Rows keep their
    order: the base's rows first, then each experiment's in file order.

    Keyed merge: an experiment row whose key an earlier file (the base, or an earlier
    experiment) has with other values is a conflict (values compared exactly: float bits,
    so NaN equals the same NaN and -0.0 is not 0.0; NULLs equal): CONFLICT (exit 3), nothing
    written, unless on_conflict says which side wins: keep-base (the earliest file's rows
    of that key) or keep-exp (the LATEST file's rows of that key replace the others).
    """
    base, output = Path(base), Path(output or base)
    exps = [Path(e) for e in exps]
    if strategy not in ("merge", "rebase"):
        raise EVError(f"unknown strategy {strategy!r}", code=USAGE, hint="use merge or rebase")
    if on_conflict not in (None, "keep-base", "keep-exp"):
        raise EVError(f"unknown --on-conflict {on_conflict!r}", code=USAGE,
                      hint="use keep-base or keep-exp")
    if not exps:
        raise EVError("no --exp-data given", code=USAGE, hint="pass one or more --exp-data files")
    if strategy == "rebase" and not key_columns:
        raise EVError("--strategy rebase of data files needs --key-columns", code=USAGE,
                      hint="name the columns that identify a row, e.g. --key-columns id")
    check_output_not_input(output, exps, "data")
    files = [base, *exps]
    flags = ["--base-data"] + ["--exp-data"] * len(exps)
    schemas = [_read_schema(p, f) for p, f in zip(files, flags, strict=True)]
    check_output(output, base, "data", force)
    _case_collisions(files, schemas)
    key = list(key_columns or [])
    for k in key:
        for p, (schema, _n) in zip(files, schemas, strict=True):
            if k not in schema.names:
                raise EVError(f"key column {k!r} is not in {p} (columns: "
                              f"{', '.join(schema.names)})", code=USAGE,
                              hint="check --key-columns")
    out_schema, added_cols = _out_schema(files, schemas)
    conforms = [_Conform(p, s, out_schema) for p, (s, _n) in zip(files, schemas, strict=True)]
    widenings = [w for c in conforms[1:] for w in c.widenings]
    report: dict = {"kind": "data", "strategy": strategy, "base": str(base),
                    "output": str(output), "dry_run": dry_run, "key_columns": key,
                    "type_widenings": widenings, "inputs": [], "base_rows": schemas[0][1]}
    for p, (_s, n) in zip(exps, schemas[1:], strict=True):
        report["inputs"].append({"path": str(p), "read": n,
                                 "columns_added": added_cols.get(p, []),
                                 "type_widenings": [w for w in widenings if w["file"] == str(p)]})
    backup = None
    with dir_lock(output.parent):
        sweep_stale_temps(output)
        with scratch_dir(output) as work:
            sel, conf = _select(files, schemas, conforms, out_schema, key, strategy, work,
                                on_conflict)
        _counts(report, sel, schemas, strategy)
        if strategy == "merge" and key:
            _conflict_report(report, conf, files, key, on_conflict, len(sel[0]))
        unchanged = (same_file(output, base) and out_schema.equals(schemas[0][0],
                                                                   check_metadata=True)
                     and len(sel[0]) == schemas[0][1] and not any(len(s) for s in sel[1:]))
        report["unchanged"] = unchanged
        if not dry_run and not unchanged:
            if strategy == "rebase" and output.exists() and not (recoverable
                                                                 and recoverable(output)):
                from .atomic import copy_file

                backup = backup_path(output, backup_dir)
                copy_file(output, backup)
            _write(output, files, schemas, conforms, out_schema, sel, report)
    backup_report(report, backup, output)
    return report


def _select(files, schemas, conforms, out_schema, key, strategy, work: Path,
            on_conflict=None) -> tuple[list, dict | None]:
    """(per file, the sorted row numbers that go to the output; a keyed merge's conflicts:
    {"rows": per file, "first": (file, row), "replaced": per file}). In memory with Arrow's
    hash kernels and numpy when the inputs are small enough and every column hashes, else by
    one DuckDB query that spills to disk (DuckDB's import alone costs ~35 MB)."""
    import numpy as np
    import pyarrow as pa

    n_exp_rows = sum(n for _s, n in schemas[1:])
    if strategy == "merge" and n_exp_rows == 0:
        return [np.arange(schemas[0][1], dtype=np.int64)] + [np.empty(0, np.int64)] * (
            len(files) - 1), None
    if (KEYED_FAST and key and _data_bytes(files[:1]) >= merge_pqkeyed.MIN_BYTES
            and merge_pqkeyed.eligible(files, schemas, conforms, out_schema, key)):
        got = merge_pqkeyed.select_keyed(files, schemas, conforms, out_schema, key, strategy,
                                         work, on_conflict, ARROW_MAX_BYTES)
        if got is not None:
            return got
    hashable = all(not pa.types.is_nested(_canon(pa.nulls(0, f.type)).type)
                   for f in out_schema)
    if hashable and _data_bytes(files) <= ARROW_MAX_BYTES:
        return _select_arrow(files, conforms, out_schema, key, strategy, on_conflict)
    return _select_duckdb(files, conforms, out_schema, key, strategy, work, on_conflict)


def _data_bytes(files) -> int:
    import pyarrow.parquet as pq

    total = 0
    for p in files:
        md = pq.ParquetFile(p).metadata
        total += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    return total


def _conflict_report(report, conf, files, key, on_conflict, base_kept: int) -> None:
    """A keyed merge's conflict counts into the report (per input: conflicts, replaced: its
    rows that replaced another file's, skipped: the rest not written, not counting
    conflicts a keep-base left out); CONFLICT if nobody chose a side."""
    n_files = len(files)
    rows = list(conf["rows"]) if conf else [0] * n_files
    replaced = list(conf["replaced"]) if conf else [0] * n_files
    total = int(sum(rows))
    report["on_conflict"], report["conflicts"] = on_conflict, total
    for inp, n, r in zip(report["inputs"], rows[1:], replaced[1:], strict=True):
        inp["conflicts"], inp["replaced"] = int(n), int(r)
        if on_conflict != "keep-exp":
            inp["skipped"] = inp["read"] - inp["added"] - int(n)
    if on_conflict == "keep-exp":
        report["replaced"] = report["base_rows"] - base_kept
    if total and on_conflict is None:
        fi, row = conf["first"]
        raise EVError(f"{total} row(s) have the same key but different values "
                      f"({_key_text(files[fi], row, key)} in {files[fi]})", code=CONFLICT,
                      hint="nothing written; re-run with --on-conflict keep-base or "
                           "keep-exp to choose which side wins")


def _key_text(path: Path, row: int, key: list[str]) -> str:
    """'id=5' (the key's values in that row of the file), read for the error line only."""
    for row0, b in _batches(path, columns=key):
        if row < row0 + b.num_rows:
            return ", ".join(f"{k}={b.column(i)[row - row0].as_py()!r}"
                             for i, k in enumerate(key))
    return f"row {row}"


def _counts(report, sel, schemas, strategy) -> None:
    base_rows = schemas[0][1]
    report["rows_out"] = int(sum(len(s) for s in sel))
    for inp, s in zip(report["inputs"], sel[1:], strict=True):
        inp.update(added=int(len(s)), skipped=inp["read"] - int(len(s)), replaced=0)
    if strategy == "rebase":
        exp_rows = sum(n for _s, n in schemas[1:])
        kept_exp = sum(len(s) for s in sel[1:])
        report["replaced"] = base_rows - int(len(sel[0]))
        report["added"] = int(kept_exp)
        report["superseded_by_later_exp"] = int(exp_rows - kept_exp)
