#!/usr/bin/env bash
# Reference solution (SKILL.md setup + workflow 1): the user's train.py runs unchanged under
# run.py, which keeps the model it writes to models/production/model.bin as the run's
# candidate; production changes only by promote, so the better run is promoted.
set -euo pipefail
RUN="python $SKILL/scripts/run.py"
MM="python $SKILL/scripts/model_manager.py"
python "$SKILL/scripts/init_project.py" --metric f1_score   # the remote exists (absolute)
dvc add data/train.parquet data/test.parquet
git add -A && git commit -qm "project: data tracked by DVC, experiment versioning"
for spec in "e0.1.0 0.5" "e0.2.0 0.1"; do
  read -r V LR <<< "$spec"
  $RUN --version "$V" -- python train.py --version "$V" --lr "$LR"
  dvc add results/experiments.db models/candidates
  git add -A && git commit -qm "experiment: $V - learning_rate $LR"
  BEST=$($MM list --metric f1_score --json | python -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["run_id"], r["version"])')
  read -r BRUN BV <<< "$BEST"
  CUR=$($MM status --json | python -c 'import json,sys; print((json.load(sys.stdin)["production"] or {}).get("run_id"))')
  if [ "$BRUN" != "$CUR" ]; then                       # promote only a run that beats production
    $MM promote --version "$BV" --run-id "$BRUN"
    git add -A && git commit -qm "promote $BV ($BRUN)"
  fi
  python "$SKILL/scripts/tag_suggest.py" --version "$V" --description "learning_rate $LR" --create
  dvc push -T
done
