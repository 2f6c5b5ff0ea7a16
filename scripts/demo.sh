#!/usr/bin/env bash
# The demo, for a fresh machine: JupyterHub with ConsulSpawner on http://127.0.0.1:8000, every
# notebook server a member of a Consul Connect mesh, querying a Trino stand-in through its sidecar.
#
#   bash scripts/demo.sh [--consul URL] [--l4] [--port N] [--network NAME] [--state-dir DIR]
#
# What it installs, and where (never into the system's Python or npm):
#   .venv/   a virtualenv of this project: pip install -e . -e ./dev jupyterhub-idle-culler
#   .npm/    configurable-http-proxy (npm --prefix .npm)
#   Docker   started if it does not answer (scripts/ensure-docker.sh; apt-get install if missing)
#   images   docker/build-images.sh (cached by content hash)
# Then scripts/demo.py runs the system (see its --help): the dev Consul agent (ACLs on), the
# Trino stand-in behind its Connect proxy, JupyterHub + ConsulSpawner, the proxy, the idle culler
# and the janitor. It prints the URL and the logins. Ctrl-C stops everything and removes every
# container, service, token and intention it made. State and logs: .demo/
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { echo "demo: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    say "installing Debian packages (apt-get): $*"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q >&2
    as_root apt-get install -y -q --no-install-recommends "$@" >&2
}

for arg in "$@"; do
    case "$arg" in -h | --help) exec python3 "$repo/scripts/demo.py" --help ;; esac
done

mkdir -p "$repo/.demo/logs"
chmod 0700 "$repo/.demo"

# 1. The project's virtualenv. Reinstalled only when setup.py changes.
venv="$repo/.venv"
if [ ! -x "$venv/bin/python" ]; then
    say "creating a virtualenv for this project in .venv/ (python3 -m venv)"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        command -v apt-get >/dev/null 2>&1 || { say "ERROR: python3 -m venv failed"; exit 1; }
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
fi
stamp="$venv/.consulspawner-demo"
want="$(cat setup.py dev/setup.py scripts/demo.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing consulspawner (editable, with the dev stand-ins) and jupyterhub-idle-culler into .venv/ (pip; log .demo/logs/pip.log)"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e . -e ./dev jupyterhub-idle-culler \
        >"$repo/.demo/logs/pip.log" 2>&1; then
        tail -n 30 "$repo/.demo/logs/pip.log" >&2
        say "ERROR: pip install into .venv/ failed (log: .demo/logs/pip.log)"
        exit 1
    fi
    echo "$want" >"$stamp"
fi

# 2. configurable-http-proxy under the project's own npm prefix.
if [ ! -x "$repo/.npm/bin/configurable-http-proxy" ]; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    say "installing configurable-http-proxy into .npm/ (npm install --prefix .npm)"
    npm install --prefix "$repo/.npm" --global --silent --no-fund --no-audit configurable-http-proxy >&2
fi
export PATH="$venv/bin:$repo/.npm/bin:$PATH"

# 3. Docker and the images (the notebook image gets the venv's jupyterhub version).
bash scripts/ensure-docker.sh
while IFS= read -r line; do
    case "$line" in CONSULSPAWNER_*=*) export "${line?}" ;; esac
done <<<"$(bash docker/build-images.sh)"

# 4. The system. exec: Ctrl-C reaches demo.py alone (its children run in sessions of their own),
# which stops the servers through the hub, then the rest, and cleans up.
exec "$venv/bin/python" "$repo/scripts/demo.py" "$@"
