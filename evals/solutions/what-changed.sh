#!/usr/bin/env bash
# Reference solution: read history without moving the working tree.
set -euo pipefail
python "$SKILL/scripts/experiments.py" compare e0.1.0 e0.2.0 > CHANGES.md
