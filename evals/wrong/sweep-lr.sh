#!/usr/bin/env bash
# Wrong on purpose: the sweep is right, but the LAST-ranked run is promoted, not the best.
set -euo pipefail
printf 'lr: [0.01, 0.05, 0.1, 0.5, 1.0, 2.0]\n' > grid.yaml
python "$SKILL/scripts/sweep.py" --version e0.2.0 --grid grid.yaml --workers 2 \
    --metric f1_score -- python train.py --version e0.2.0 --lr '{lr}'
MM="python $SKILL/scripts/model_manager.py"
WORST=$($MM list --version e0.2.0 --metric f1_score --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][-1]["run_id"])')
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "sweep: e0.2.0"
$MM promote --version e0.2.0 --run-id "$WORST"
git add -A && git commit -qm "promote e0.2.0"
python "$SKILL/scripts/tag_suggest.py" --version e0.2.0 --description "lr sweep" --create
dvc push -T
