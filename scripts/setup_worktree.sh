#!/usr/bin/env bash
# Create an experiment worktree ../exp-NAME on branch exp/NAME that shares main's DVC cache.
#
#   ./scripts/setup_worktree.sh NAME [--base REF] [--private PATH ...] [--json] [--dry-run]
#
# A thin wrapper: it execs `worktree.py create NAME ...` (see `worktree.py create --help`).
# The Python it runs is ${PYTHON:-python3}: set PYTHON to the interpreter of the environment
# that has dvc installed (e.g. PYTHON=.venv/bin/python ./scripts/setup_worktree.sh NAME).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "setup_worktree.sh: error: missing NAME; usage: setup_worktree.sh NAME [--base REF] [--private PATH ...] [--json]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/worktree.py" create "$@"
