#!/usr/bin/env bash
# Wrong on purpose: checks the old version out in the working tree to look at it, and
# leaves the project there.
set -euo pipefail
python "$SKILL/scripts/experiments.py" compare e0.1.0 e0.2.0 > /tmp/changes.$$
git checkout -q e0.1.0
dvc checkout -q
mv /tmp/changes.$$ CHANGES.md
