#!/usr/bin/env bash
# Reference solution: rollback (the ledger records it, with the reason), commit, tag, push.
set -euo pipefail
MM="python $SKILL/scripts/model_manager.py"
WHY="e0.2.0's model flags too many false positives"
if $MM rollback --help | grep -q -- '--reason'; then   # the registry: reason in the ledger
  $MM rollback --reason "$WHY"
  git add -A && git commit -qm "roll back production: $WHY"
  python "$SKILL/scripts/tag_suggest.py" --create        # a production change: e0.2.1
else
  $MM rollback
  git add -A && git commit -qm "roll back production: $WHY"
  python "$SKILL/scripts/tag_suggest.py" --version e0.1.0 --tag e0.2.1 \
      --description "rollback to e0.1.0's model: $WHY" --create
fi
dvc push -T
