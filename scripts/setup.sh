#!/usr/bin/env bash
# Create .venv (if needed) and install flamepy with its dev, docs and release extras into it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# An in-tree *.egg-info left by an older build shadows the installed metadata (entry points included) for
# every command run from the repository root: it is a build artifact, never the truth.
rm -rf ./*.egg-info examples/*/*.egg-info
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,docs,release]"
