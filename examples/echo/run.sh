#!/usr/bin/env bash
# The service guide's echo example, end to end: set up, register the application, list it, run the
# client (it prints HELLO, 1 and the session id), then stop the local server it started.
set -euo pipefail
cd "$(dirname "$0")"
bash ../../scripts/setup.sh
. ../../.venv/bin/activate
if [ -z "${FLAME_HOME:-}" ]; then
  # A private FLAME_HOME for the demo, removed afterwards; set FLAME_HOME to keep one.
  FLAME_HOME="$(mktemp -d "${TMPDIR:-/tmp}/flame-echo-XXXXXX")"
  export FLAME_HOME
  trap 'flmctl server stop >/dev/null; rm -rf "$FLAME_HOME"' EXIT
else
  trap 'flmctl server stop >/dev/null' EXIT
fi
flmctl register --file echo-app.yaml
flmctl list --application
python client.py
