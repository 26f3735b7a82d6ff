#!/usr/bin/env bash
# Shared by the two worktree references: SKILL.md workflow 3.
# usage: _worktree.sh NAME "TRAIN ARGS" "DESCRIPTION" PARAMS
set -euo pipefail
NAME=$1 ARGS=$2 DESC=$3 PARAMS=$4
MAIN=$(pwd)
python "$SKILL/scripts/worktree.py" create "$NAME"
cd "../exp-$NAME"
# shellcheck disable=SC2086  # ARGS is a list of flags
python train.py --version "exp-$NAME" $ARGS
dvc add results/experiments.db models/candidates
python "$SKILL/scripts/worktree.py" privatize
git add -A && git commit -qm "exp: $DESC"
python "$SKILL/scripts/tag_suggest.py" --kind exp --name "$NAME" --params "$PARAMS" \
    --description "$DESC" --create
dvc push -T
cd "$MAIN"
python "$SKILL/scripts/merge_artifacts.py" --strategy merge --base-db results/experiments.db \
    --exp-db "../exp-$NAME/results/experiments.db"
MM="python $SKILL/scripts/model_manager.py"
BEST=$($MM list --metric f1_score --json | python -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["run_id"], r["version"])')
read -r RUN VERSION <<< "$BEST"
if [ "$VERSION" = "exp-$NAME" ]; then                 # the experiment won: promote it
  $MM add-candidate --run-id "$RUN" --model "../exp-$NAME/models/candidates/exp-$NAME--$RUN.pkl"
  $MM promote --version "exp-$NAME" --run-id "$RUN"
fi
dvc add results/experiments.db models/candidates
git add -A && git commit -qm "merge exp-$NAME (best run: $RUN)"
python "$SKILL/scripts/tag_suggest.py" --version "$VERSION" --tag e1.0.0 \
    --description "exp-$NAME merged; production: $VERSION" --create
dvc push -T
python "$SKILL/scripts/worktree.py" teardown "$NAME"
