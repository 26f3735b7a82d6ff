"""Merge and rebase of results DBs and parquet data files: exact or refused, atomic, idempotent.

The SQLite path lives in merge_sqlite (an in-place merge is one transaction on the base), the
Arrow/parquet path in merge_parquet (written by pyarrow from the base's schema); both share
merge_common (output checks, temp files swept after a kill, the directory lock, one backup per
output, live-writer lookup, the DVC way back). This module is the public API.

Public API: merge_dbs(), merge_data(); both return a report dict and raise EVError.
"""

from __future__ import annotations

from .merge_common import dvc_recoverable, sweep_stale_temps
from .merge_sqlite import merge_dbs, precheck_db
from .sql import affinity


def __getattr__(name: str):
    # The parquet side on first use only: a DB merge (a sweep's, or 50 rows into a big DB)
    # does not pay for importing it.
    if name in ("merge_data", "precheck_data"):
        from . import merge_parquet

        return getattr(merge_parquet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["affinity", "dvc_recoverable", "merge_data", "merge_dbs",  # noqa: F822 - lazy
           "precheck_data", "precheck_db", "sweep_stale_temps"]
