#!/usr/bin/env bash
# Serve the docs site locally at http://127.0.0.1:8000, rebuilt as pages change (set up .venv first).
# `bash scripts/docs.sh build` builds it once into site/ with --strict, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export NO_MKDOCS_2_WARNING=1
if [ "${1:-serve}" = "build" ]; then
  exec mkdocs build --strict
fi
exec mkdocs serve "${@:2}"
