#!/usr/bin/env bash
# Reference solution: 3 epochs in worktree exp-quick; it is worse: merged, not promoted.
set -euo pipefail
bash "$(dirname "$0")/_worktree.sh" quick "--epochs 3" "3 epochs" lr,epochs
