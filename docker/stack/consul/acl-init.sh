#!/bin/sh
# One-shot, once both agents answer: bootstrap ACLs and create every token the stack needs,
# each written to a file only its consumer can read (0600, owned by its uid).
# Idempotent: a token whose file exists is kept; a policy that exists is left as it is
# (change one with `consul acl policy update`); the intention entries are written only when
# missing, so a re-run never drops the sources ConsulSpawner added.
#
#   /consul/mgmt/token          management token (bootstrap); mounted only here
#   /secrets/hub/token          hub         policy consulspawner-hub     (docker/consul/hub-policy.hcl)
#   /secrets/janitor/token      janitor     policy consulspawner-janitor (docker/consul/janitor-policy.hcl)
#   /secrets/trino-coordinator/token   service identity trino-coordinator (its sidecar)
#   /secrets/trino-worker/token        service identity trino-worker      (its sidecar)
# and the hub's JWT auth method and binding rule (identity-init.sh): notebook servers' tokens are
# made by Consul at login from a JWT the hub signs, never minted by the hub, whose policy needs
# no acl rule. Every acl:write step of the stack is here, with the management token.
set -eu
umask 077

export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-https://consul-server:8501}"
export CONSUL_CACERT="${CONSUL_CACERT:-/consul/pki/consul-agent-ca.pem}"
CLIENT_ADDR="${CONSUL_CLIENT_ADDR:-https://consul-client:8501}"
HUB_UID="${HUB_UID:-0}"
JANITOR_UID="${JANITOR_UID:-10001}"
SIDECAR_UID="${SIDECAR_UID:-101}"

secret_of() {  # the SecretID of `consul acl bootstrap/token create -format=json` (jq: in the consul image)
    jq -r '.SecretID'
}

write_token() {  # write_token FILE UID: stdin -> FILE, 0600, owned by UID
    file=$1 owner=$2
    cat > "$file.new"
    if [ ! -s "$file.new" ] || [ "$(cat "$file.new")" = null ]; then
        echo "acl-init: no token for $file" >&2
        rm -f "$file.new"
        exit 1
    fi
    chown "$owner:$owner" "$file.new"
    chmod 0600 "$file.new"
    mv "$file.new" "$file"
}

# 1. Bootstrap (once per cluster): the management token never leaves this container's volume.
if [ ! -s /consul/mgmt/token ]; then
    until consul acl bootstrap -format=json > /consul/mgmt/bootstrap.out 2> /consul/mgmt/bootstrap.err; do
        if grep -q "ACL bootstrap no longer allowed" /consul/mgmt/bootstrap.err; then
            echo "acl-init: ACLs already bootstrapped but /consul/mgmt/token is missing; see docs/troubleshooting.md" >&2
            exit 1
        fi
        sleep 2   # no leader yet
    done
    secret_of < /consul/mgmt/bootstrap.out | write_token /consul/mgmt/token 0
    rm -f /consul/mgmt/bootstrap.out /consul/mgmt/bootstrap.err
fi
export CONSUL_HTTP_TOKEN_FILE=/consul/mgmt/token

# 2. Agent tokens (node identities), so each agent may register itself and sync its services.
for agent in consul-server consul-client; do
    if [ ! -s "/consul/mgmt/agent-$agent" ]; then
        consul acl token create -format=json -description "agent token of $agent" -node-identity "$agent:dc1" \
            | secret_of | write_token "/consul/mgmt/agent-$agent" 0
    fi
    addr=https://$agent:8501
    # @file: the secret is read from the file, never put on a command line.
    consul acl set-agent-token -http-addr="$addr" agent "@/consul/mgmt/agent-$agent"
done

# 3. Policies from the least-privilege files (docker/consul/, mounted at /consul/policies).
for name in hub janitor; do
    if ! consul acl policy read -name "consulspawner-$name" > /dev/null 2>&1; then
        consul acl policy create -name "consulspawner-$name" \
            -description "consulspawner $name (docker/consul/$name-policy.hcl)" \
            -rules "@/consul/policies/$name-policy.hcl"
    fi
done

# 4. The hub's and the janitor's tokens.
if [ ! -s /secrets/hub/token ]; then
    consul acl token create -format=json -description "consulspawner hub" -policy-name consulspawner-hub \
        | secret_of | write_token /secrets/hub/token "$HUB_UID"
fi
if [ ! -s /secrets/janitor/token ]; then
    consul acl token create -format=json -description "consulspawner janitor" -policy-name consulspawner-janitor \
        | secret_of | write_token /secrets/janitor/token "$JANITOR_UID"
fi

# 5. Trino: one service-identity token per service, used to register it and by its sidecar.
for svc in trino-coordinator trino-worker; do
    if [ ! -s "/secrets/$svc/token" ]; then
        consul acl token create -format=json -description "$svc and its sidecar" -service-identity "$svc" \
            | secret_of | write_token "/secrets/$svc/token" "$SIDECAR_UID"
    fi
    consul services register -http-addr="$CLIENT_ADDR" -token-file="/secrets/$svc/token" \
        "/consul/services/$svc.hcl"
done

# 6. Central config: L7 protocol for trino-coordinator (always), intentions (only if missing).
consul config write /consul/config-entries/trino-coordinator-defaults.hcl
for svc in trino-coordinator trino-worker; do
    if consul config read -kind service-intentions -name "$svc" > /dev/null 2>&1; then
        echo "acl-init: service-intentions $svc exists, left as it is"
    else
        consul config write "/consul/config-entries/$svc-intentions.hcl"
    fi
done
# 7. Identity by login: the auth method (with every public key hub-jwt-key-init published) and
# its binding rule, from the JSON files in consul/identity/.
IDENTITY_DIR=/stack/consul/identity JWT_PUB_DIR=/consul/hub-jwt-pub sh /stack/consul/identity-init.sh
echo "acl-init: ACLs bootstrapped, tokens written, Trino registered, config entries and auth method in place"
