#!/usr/bin/env bash
# Wrong on purpose: SKILL.md workflow 3 without the "only if it beats production" check:
# the worse experiment is promoted.
set -euo pipefail
python "$SKILL/scripts/worktree.py" create quick
cd ../exp-quick
python train.py --version exp-quick --epochs 3
dvc add results/experiments.db models/candidates
python "$SKILL/scripts/worktree.py" privatize
git add -A && git commit -qm "exp: 3 epochs"
python "$SKILL/scripts/tag_suggest.py" --kind exp --name quick --description "3 epochs" --create
dvc push -T
cd - >/dev/null
python "$SKILL/scripts/merge_artifacts.py" --strategy merge --base-db results/experiments.db \
    --exp-db ../exp-quick/results/experiments.db
MM="python $SKILL/scripts/model_manager.py"
RUN=$($MM list --version exp-quick --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
$MM add-candidate --run-id "$RUN" --model ../exp-quick/models/candidates/exp-quick--"$RUN".pkl
$MM promote --version exp-quick --run-id "$RUN"
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "merge exp-quick"
python "$SKILL/scripts/tag_suggest.py" --version exp-quick --tag e1.0.0 --description "exp-quick" --create
dvc push -T
python "$SKILL/scripts/worktree.py" teardown quick
