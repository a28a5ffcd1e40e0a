#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, mypy, the test suite, and the conformance suite against
# each bundled transport. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Each stage says how long the one before it took (bash's SECONDS), so a slow CI run shows where.
stage_started=$SECONDS
stage() {
  echo "== ($((SECONDS - stage_started)) s) $1"
  stage_started=$SECONDS
}
stage "ruff"
ruff check .
ruff format --check .
stage "mypy"
mypy
stage "layering (import-linter: the core's imports point one way, see pyproject.toml)"
lint-imports --no-cache
stage "the docs site (mkdocs build --strict: a broken link or API reference fails it)"
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site_dir"
stage "the distributions: build, twine check, contents, and the wheel alone in fresh virtualenvs"
python scripts/check_dist.py
# The bundled transports and serializers run the conformance suite in pytest (tests/conformance/
# test_conformance_*.py: the same suite classes the command runs), and the command itself runs from the
# wheel above and in tests/conformance/test_conformance_command.py: here, the plugins pytest does not cover.
stage "third-party transport example (examples/flamepy-transport-tcp), installed as a user would"
python -m pip install --quiet --no-build-isolation -e examples/flamepy-transport-tcp
mypy --strict examples/flamepy-transport-tcp/flamepy_transport_tcp
flamepy-conformance --transport tcp
python -m pytest -p no:cacheprovider examples/flamepy-transport-tcp/tests
stage "the echo example on each transport (FLAME_TRANSPORT runs server, instance links and client on it)"
for transport in inmem grpc zmq tcp; do
  echo_home="$(mktemp -d)"
  out="$(FLAME_HOME="$echo_home" FLAME_TRANSPORT="$transport" bash examples/echo/run.sh)"
  printf '%s\n' "$out" | tail -n 3 | tr '\n' ' ' | grep -Eq '^HELLO 1 echo-app-[A-Za-z0-9]+ $' \
    || { printf 'echo example on %s:\n%s\n' "$transport" "$out"; exit 1; }
  if [ "$transport" != inmem ]; then  # inmem serves inside the client: no server process, no server log
    grep -q "with transport $transport " "$echo_home/logs/server.log" \
      || { echo "echo example on $transport: the server did not run on $transport"; exit 1; }
  fi
  rm -rf "$echo_home"
  echo "echo example on $transport: HELLO, 1, session id"
done
stage "third-party serializer example (examples/flamepy-serializer-zjson)"
python -m pip install --quiet --no-build-isolation -e examples/flamepy-serializer-zjson
mypy --strict examples/flamepy-serializer-zjson/flamepy_serializer_zjson
flamepy-conformance --serializer zjson
python -m pytest -p no:cacheprovider examples/flamepy-serializer-zjson/tests
stage "the service layer on every transport, with every serializer, and the two third-party plugins together"
# A transport carries a serializer's output as opaque bytes, so each plugin is proven once on the whole path
# (every transport with the default serializer, every serializer on the default transport), plus the pair
# of third-party plugins; the full matrix took four minutes of CI for no extra coverage. The bundled
# transports with the default serializer run in pytest (tests/conformance/test_conformance_service.py).
flamepy-conformance --transport tcp --serializer cloudpickle --layer service
for serializer in pickle json msgpack zjson; do
  flamepy-conformance --transport zmq --serializer "$serializer" --layer service
done
flamepy-conformance --transport tcp --serializer zjson --layer service
stage "tests"
# Three workers, one test file each at a time (a file's tests share fixtures and run in their order);
# --durations names the slowest tests, so a slow CI run shows where its time went.
python -m pytest -n 3 --dist loadfile --durations=15 "$@"  # last: CI reads pytest's closing line
