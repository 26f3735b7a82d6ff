#!/usr/bin/env bash
# Reference solution: the user's train.py unchanged; its model (written to production by the
# script itself) kept as the run's candidate; production only ever set by promote.
set -euo pipefail
MM="python $SKILL/scripts/model_manager.py"
cat "$SKILL/assets/gitignore.starter" >> .gitignore    # keep the user's own lines
cat "$SKILL/assets/dvcignore.starter" >> .dvcignore
dvc add data/train.parquet data/test.parquet
git add -A && git commit -qm "project: data tracked by DVC"
for spec in "e0.1.0 0.5" "e0.2.0 0.1"; do
  read -r V LR <<< "$spec"
  python train.py --version "$V" --lr "$LR"
  RUN=$($MM list --version "$V" --json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')
  $MM add-candidate --version "$V" --run-id "$RUN" --model models/production/model.bin
  # training wrote into production itself: the bytes are safe as the candidate; undo the write
  if [ -f models/production/model.bin.dvc ]; then
    dvc checkout --force models/production/model.bin.dvc
  else
    rm models/production/model.bin
  fi
  BEST=$($MM list --json | python -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["run_id"], r["version"])')
  read -r BRUN BV <<< "$BEST"
  CUR=$($MM status --json 2>/dev/null | python -c 'import json,sys; print(json.load(sys.stdin).get("run_id") or "")' || true)
  if [ "$BRUN" != "$CUR" ]; then
    $MM promote --version "$BV" --run-id "$BRUN"
  fi
  dvc add results/experiments.db models/candidates
  git add -A && git commit -qm "experiment: $V - learning_rate $LR"
  python "$SKILL/scripts/tag_suggest.py" --version "$V" --params learning_rate \
      --description "learning_rate $LR" --create
  dvc push -T
done
