#!/usr/bin/env bash
# The project's test command, for a fresh machine: installs what the tests need (the package
# with its test extras, configurable-http-proxy, Docker), builds the local images, runs ruff
# and the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing the package and its test dependencies" >&2
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]' -e ./dev

if ! command -v configurable-http-proxy >/dev/null 2>&1; then
    echo "== installing configurable-http-proxy (npm)" >&2
    npm install --global --silent configurable-http-proxy >&2
fi

echo "== Docker daemon" >&2
bash scripts/ensure-docker.sh

# tests/test_stack.py validates docker/stack/compose.yaml with `docker compose config`; on
# Debian bookworm that is the docker-compose package (v1.29).
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    echo "== installing docker-compose (Debian)" >&2
    apt-get install -y --no-install-recommends docker-compose >&2 \
        || { apt-get update -qq && apt-get install -y --no-install-recommends docker-compose >&2; }
fi

echo "== local images (cached by content hash)" >&2
images=$(bash docker/build-images.sh)
while IFS= read -r line; do
    case "$line" in CONSULSPAWNER_*=*) export "${line?}" ;; esac
done <<<"$images"

echo "== ruff" >&2
python3 -m ruff check .
python3 -m ruff format --check .

echo "== mypy (mypy.ini: the production package)" >&2
python3 -m mypy

echo "== pytest" >&2
exec python3 -m pytest "$@"
