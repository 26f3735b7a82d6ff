"""Private library shared by the bundle's scripts.

Scripts import it by sibling import (``sys.path`` gets the scripts folder), so that
``python /abs/path/scripts/x.py`` works from any directory without installing anything.

Modules:
  errors  - the exit-code table and the one error type scripts raise
  cli     - argparse conventions (--json, --dry-run, --repo), one-line errors
  proc    - the only place that runs git and dvc
  atomic  - the only place that writes files (temp file in the same dir, fsync, os.replace)
  sql     - identifier quoting, SQLite/DuckDB connections, DuckDB's sqlite extension offline
  repo    - repository discovery and state (dirty tree, DVC presence, main worktree)
  dvcmeta - reading .dvc files, dvc.lock, the cache location and object layout
  settings - the project's settings file (ev.yaml): paths, ranking metric, metric columns
  runs    - results rows aggregated per run (track_id) and the one ranking rule
  history - the read side of past versions (tags, outputs and runs at a revision)
  listfast - a repeated `experiments.py list` on an unchanged history, answered without git
  experiments_cli - experiments.py's commands (the script is a stub, for listfast's speed)
  merge_cli - merge_artifacts.py's parser, report text and handler (the script is a stub)
  tagging - tag_suggest's write side (bump, message, lineage, create checks)
  dvcstore - writing DVC cache objects, single-file .dvc files and checkouts directly
  registry - model aliases, their ledgers, promote/rollback (write-ahead intent)
  gto     - GTO-compatible registry tags and artifacts.yaml (ev.yaml gto: true)
  merge, sweep, worktree, teardown, models - the logic behind each script (merge is the API over
          merge_sqlite, merge_parquet (+ merge_pqarrow, merge_pqrows) and their
          shared merge_common)
  plots   - charts (matplotlib, optional): versions, sweep, curves; figures returned
  report  - experiments.py report: the history as one self-contained HTML file
  dask_exec, dask_task - sweep.py --executor dask: the driver side, the worker side
  runner  - one run of an unchanged command in a sandbox: stamp lineage, find its models
  lineage - commit, dirty state (git + DVC outputs) and input md5s shared by a commit's runs
  training - run.py (one run, collected; killed runs completed or removed)
  cmdsweep - sweep.py (runner per grid point, done decided by rows, stale runs)
  project - init_project.py (DVC, remote, ignore lines, ev.yaml, DuckDB's extension)
"""

EVENTS_TABLE = "default"  # xetrack's events table (not "predictions")
EVENTS_KEY = ("track_id", "timestamp")  # xetrack's primary key
ASSET_TABLES = ("assets", "keys", "counts")  # xetrack's assets store, keyed on "key"
