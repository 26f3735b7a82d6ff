#!/usr/bin/env python3
"""Merge or rebase xetrack results DBs and parquet data files, losslessly and atomically.

merge  DBs: union of rows by key (xetrack: track_id, timestamp); a row already present adds
       nothing (re-runs change nothing); same key with different values is a conflict (exit 3)
       unless --on-conflict says which side wins. Asset tables are merged by their own keys.
rebase DBs: base rows whose --key-columns values appear in an experiment DB are replaced by
       the experiment's rows (matched by column name).
merge  data: append the experiment rows the base lacks (by --key-columns, else row by row
       counting duplicates). rebase data: every experiment row plus the base rows whose key no
       experiment has; with several experiment files the later file wins.
Exact or refused: a value the base's column type would change (SQLite affinity, an Arrow
type without an exact conversion), a NULL key, or duplicate keys with different values in one
input stop the merge (exit 2 or 3) with one line naming the file, column and value.
Output: a DB merged into the base is one SQLite transaction on it (a live writer waits for
it; above 200,000 input rows with a writer attached, exit 4 names the process). A new output
is built in a temp file beside it, checked, then moved into place. Parquet is written by
pyarrow with the base's Arrow schema. An existing output that is not the base: exit 4 unless
--force; its directory must exist. A rebase keeps ONE backup per output (<output>.bak)
unless DVC can restore the old version.

Every command takes --repo PATH, --dry-run and --json (one object with a "status" key on
stdout; progress and warnings on stderr); the exit codes are listed at the end of --help.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _evlib import cli, merge_cli

    cli.exit_now(cli.main(merge_cli.PROG, lambda: merge_cli.build(__doc__), merge_cli.handler,
                          quick=merge_cli.quick_options()))
