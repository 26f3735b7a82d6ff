#!/usr/bin/env bash
# Wrong on purpose: trains, promotes and commits, but never tags nor pushes
# (a teammate cannot get this version back).
set -euo pipefail
MM="python $SKILL/scripts/model_manager.py"
python "$SKILL/scripts/run.py" --version e0.1.0 -- python train.py --version e0.1.0 --lr 1.0
BEST=$($MM list --version e0.1.0 --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "experiment: e0.1.0"
$MM promote --version e0.1.0 --run-id "$BEST"
git add -A && git commit -qm "promote e0.1.0"
