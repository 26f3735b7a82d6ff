#!/usr/bin/env bash
# Wrong on purpose: the experiment is trained in main itself (no worktree), its model put
# in production by hand with cp, no experiment tag.
set -euo pipefail
python "$SKILL/scripts/run.py" --version exp-poly -- python train.py --version exp-poly --lr 0.1 --features poly2
cp models/candidates/exp-poly--*.pkl models/production/model.bin
dvc add results/experiments.db models/candidates models/production/model.bin
git add -A && git commit -qm "poly features"
git tag -a e1.0.0 -m "poly features"
dvc push -T
