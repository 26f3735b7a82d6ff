#!/usr/bin/env bash
# Reference solution: re-run the same sweep command; runs already done are skipped (their
# shards are kept and merged), the interrupted and missing ones run.
set -euo pipefail
python "$SKILL/scripts/sweep.py" --version e0.2.0 --grid grid.yaml --workers 2 \
    --metric f1_score -- python train.py --version e0.2.0 --lr '{lr}'
MM="python $SKILL/scripts/model_manager.py"
BEST=$($MM list --version e0.2.0 --metric f1_score --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
$MM promote --version e0.2.0 --run-id "$BEST"
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "sweep: e0.2.0 - 6 learning rates (resumed after a crash)"
python "$SKILL/scripts/tag_suggest.py" --version e0.2.0 --params lr,epochs,features \
    --description "learning-rate sweep, resumed" --create
dvc push -T
