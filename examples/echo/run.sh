#!/usr/bin/env bash
# The service guide's echo example, end to end: set up, register the application, list it, run the
# client (it prints HELLO, 1 and the session id), then stop the local server it started.
set -euo pipefail
cd "$(dirname "$0")"
bash ../../scripts/setup.sh
. ../../.venv/bin/activate
export FLAME_HOME="${FLAME_HOME:-$(mktemp -d "${TMPDIR:-/tmp}/flame-echo-XXXXXX")}"
trap 'flmctl server stop >/dev/null' EXIT
flmctl register --file echo-app.yaml
flmctl list --application
python client.py
