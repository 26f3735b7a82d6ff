#!/usr/bin/env bash
# Reference solution: rollback (the ledger records it), commit, tag with the reason, push.
set -euo pipefail
MM="python $SKILL/scripts/model_manager.py"
$MM rollback
git add -A && git commit -qm "rollback: e0.2.0's model flags too many false positives"
python "$SKILL/scripts/tag_suggest.py" --version e0.1.0 --tag e0.2.1 \
    --description "rollback to e0.1.0's model: e0.2.0 flags too many false positives" --create
dvc push -T
