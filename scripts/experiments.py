#!/usr/bin/env python3
"""Read experiment history: every e-tag version as it was recorded at its tag.

  list                  one line per e-tag: tag, date, model, metric, runs, data, description
  show VERSION          runs (params, metrics), tag message, tracked artifacts with md5s
  compare V1 V2         metric deltas, changed params, changed artifacts, code diffstat
  get VERSION PATH -o OUT   a DVC- or git-tracked file (data, a model, the DB) as of
                        VERSION (cache, else remote); the working tree is not touched
  sql "QUERY"           DuckDB, offline, read-only: the results DB attached as `results`
                        (xetrack's rows: results."default"), plus a view `runs`: one row
                        per run (track_id), each column its last non-null value
  plot -o chart.png     one PNG: --kind versions (metric per version), sweep (metric
                        against each swept param of --version), curves (metric per epoch)
  report -o report.html one self-contained HTML file: versions table, charts, compare any
                        two versions, production ledger, lineage (needs matplotlib)

Every command takes --repo PATH and --json (one object with a "status" key on stdout;
progress and warnings on stderr); the exit codes are listed at the end of --help.

A past version's runs come from the results DB committed (DVC-tracked) at its tag, so
history stays right after the current DB changes. --db is relative to the repository root.
Parsed summaries are cached by tag commit and DB md5 (.dvc/tmp/ev-history.json), so a
second `list` reads nothing it read before.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    try:
        from _evlib import listfast

        # a repeated list on an unchanged history: answered before anything else is imported
        served = listfast.serve(sys.argv[1:])
        if not served:
            from _evlib import listcold

            # a first plain list: two git processes, the DB objects read in place
            served = listcold.serve(sys.argv[1:])
        if served:
            from _evlib import pipe

            pipe.exit_now()  # its answer printed: no interpreter teardown (pipe.py)
            sys.exit(0)
    except KeyboardInterrupt:  # outside cli.main's handler: the same one line
        from _evlib import cli

        sys.exit(cli.interrupted("experiments.py", "--json" in sys.argv[1:]))
    from _evlib import experiments_cli

    sys.exit(experiments_cli.main(__doc__))
