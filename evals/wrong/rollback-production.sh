#!/usr/bin/env bash
# Wrong on purpose: copies the old model over production in place. With this project's
# hardlink cache that rewrites the cache object of e0.2.0's model; no ledger entry.
set -euo pipefail
cp models/candidates/e0.1.0--*.pkl models/production/model.bin
dvc add models/production/model.bin
git add -A && git commit -qm "rollback: too many false positives"
git tag -a e0.2.1 -m "rollback to e0.1.0: too many false positives"
dvc push -T
