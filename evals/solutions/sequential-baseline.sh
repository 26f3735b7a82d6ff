#!/usr/bin/env bash
# Reference solution: SKILL.md workflow 1 (sequential, run.py). Run in the project root.
set -euo pipefail
RUN="python $SKILL/scripts/run.py"
MM="python $SKILL/scripts/model_manager.py"
$RUN --version e0.1.0 -- python train.py --version e0.1.0 --lr 1.0
BEST=$($MM list --version e0.1.0 --metric f1_score --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "experiment: e0.1.0 - lr 1.0 baseline"
$MM promote --version e0.1.0 --run-id "$BEST"
git add -A && git commit -qm "promote e0.1.0 ($BEST)"
python "$SKILL/scripts/tag_suggest.py" --version e0.1.0 --description "lr 1.0 baseline" --create
dvc push -T
