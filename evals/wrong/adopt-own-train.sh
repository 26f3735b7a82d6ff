#!/usr/bin/env bash
# Wrong on purpose: the original workflow document's recipe: the starter .gitignore copied
# over the user's, the script run directly (production = whatever trained last), tags by hand.
set -euo pipefail
cp "$SKILL/assets/gitignore.starter" .gitignore
dvc add data/train.parquet data/test.parquet
git add -A && git commit -qm "data"
for spec in "e0.1.0 0.5" "e0.2.0 0.1"; do
  read -r V LR <<< "$spec"
  python train.py --version "$V" --lr "$LR"
  dvc add results/experiments.db models/production/model.bin
  git add -A && git commit -qm "experiment: $V"
  git tag -a "$V" -m "learning_rate=$LR"
  dvc push -T
done
