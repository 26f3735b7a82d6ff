#!/usr/bin/env bash
# Reference solution: SKILL.md workflow 1 (sequential). Run in the project root, $SKILL set.
set -euo pipefail
MM="python $SKILL/scripts/model_manager.py"
python train.py --version e0.1.0 --lr 1.0
RUN=$($MM list --version e0.1.0 --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
$MM promote --version e0.1.0 --run-id "$RUN"
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "experiment: e0.1.0 - lr 1.0 baseline"
python "$SKILL/scripts/tag_suggest.py" --version e0.1.0 --params lr,epochs,features \
    --description "lr 1.0 baseline" --create
dvc push -T
