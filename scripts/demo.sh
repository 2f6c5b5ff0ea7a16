#!/usr/bin/env bash
# The main job, for a fresh machine: JupyterHub with ConsulSpawner on http://127.0.0.1:8000
# (any user name logs in), a development Consul agent (the in-repo fake, ACLs on), the janitor
# as a hub-managed service, notebooks and sidecars as real Docker containers. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

python3 -m pip install --quiet --disable-pip-version-check -e .
command -v configurable-http-proxy >/dev/null 2>&1 || npm install --global --silent configurable-http-proxy >&2
bash scripts/ensure-docker.sh
while IFS= read -r line; do
    case "$line" in CONSULSPAWNER_*=*) export "${line?}" ;; esac
done <<<"$(bash docker/build-images.sh)"

network=${CONSULSPAWNER_NETWORK:-consulspawner}
docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$network")
consul_port=${CONSUL_PORT:-8500}
workdir=${CONSULSPAWNER_WORKDIR:-$repo/.work}
mkdir -p "$workdir"

# A dev-only management token, kept in a file readable by root alone and never printed.
umask 077
[ -s "$workdir/consul-token" ] || python3 -c 'import uuid; print(uuid.uuid4())' >"$workdir/consul-token"
umask 022
CONSUL_HTTP_TOKEN=$(cat "$workdir/consul-token")
export CONSUL_HTTP_TOKEN
export CONSUL_HTTP_ADDR="http://$gateway:$consul_port"
export CONSULSPAWNER_SIDECAR_CONSUL_ADDR=$CONSUL_HTTP_ADDR
export CONSULSPAWNER_NETWORK=$network CONSULSPAWNER_HUB_IP=$gateway CONSULSPAWNER_JANITOR=1
export CONSULSPAWNER_SIDECAR_COMMAND='["devsidecar", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]'

python3 -m consulspawner.testing.fakeconsul --host "$gateway" --port "$consul_port" \
    --acl-master-token-file "$workdir/consul-token" >"$workdir/consul.log" 2>&1 &
consul_pid=$!
trap 'kill $consul_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fsS "$CONSUL_HTTP_ADDR/v1/status/leader" >/dev/null 2>&1 && break
    kill -0 $consul_pid 2>/dev/null || { cat "$workdir/consul.log" >&2; exit 1; }
    sleep 0.1
done

echo "JupyterHub on http://127.0.0.1:${CONSULSPAWNER_PROXY_PORT:-8000} (any user name); Consul at $CONSUL_HTTP_ADDR" >&2
cd "$workdir"
python3 -m jupyterhub -f "$repo/jupyterhub_config/jupyterhub_config.py"
