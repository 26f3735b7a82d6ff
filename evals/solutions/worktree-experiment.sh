#!/usr/bin/env bash
# Reference solution: squared features in worktree exp-poly; it beats production: promoted.
set -euo pipefail
bash "$(dirname "$0")/_worktree.sh" poly "--lr 0.1 --features poly2" "squared features" lr,features
