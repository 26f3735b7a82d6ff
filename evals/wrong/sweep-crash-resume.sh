#!/usr/bin/env bash
# Wrong on purpose: throws the crashed sweep's shards away and runs it again from scratch
# (the runs that had finished are redone under new run ids).
set -euo pipefail
rm -rf results/shards/e0.2.0 models/candidates/e0.2.0--*
python "$SKILL/scripts/sweep.py" --version e0.2.0 --grid grid.yaml --workers 2 \
    --metric f1_score -- python train.py --version e0.2.0 --lr '{lr}'
MM="python $SKILL/scripts/model_manager.py"
BEST=$($MM list --version e0.2.0 --metric f1_score --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "sweep: e0.2.0"
$MM promote --version e0.2.0 --run-id "$BEST"
git add -A && git commit -qm "promote e0.2.0"
python "$SKILL/scripts/tag_suggest.py" --version e0.2.0 --description "lr sweep" --create
dvc push -T
