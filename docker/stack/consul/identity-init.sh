#!/bin/sh
# The hub's JWT auth method and its one binding rule (issue 16), run by acl-init.sh with the
# management token: the operator's only acl:write step for notebook servers. From then on the
# hub signs a short-lived JWT per server and Consul's `POST /v1/acl/login` turns it into a
# local token with the one service identity jupyter-<suffix>; the hub itself holds no acl rule.
#
#   $IDENTITY_DIR/auth-method.json   the method as consulspawner.identity.auth_method() makes it,
#                                    JWTValidationPubKeys left empty (tests/test_stack.py checks)
#   $IDENTITY_DIR/binding-rule.json  the rule as consulspawner.identity.binding_rule() makes it
#   $JWT_PUB_DIR/*.pem               every public key Consul accepts (hub-jwt-key-init writes
#                                    them; two during a key rotation)
#
# Idempotent: the method is created, or updated to exactly the file's fields and the current
# public keys (-no-merge); the rule is created only when no rule of the method equals it, and
# any other rule of the method is deleted (a stale rule could bind names the file no longer
# allows). Flags from hashicorp/consul command/acl/authmethod/{create,update},
# command/acl/bindingrule/{create,list,delete}.
set -eu
umask 077

dir="${IDENTITY_DIR:-/stack/consul/identity}"
pubs="${JWT_PUB_DIR:-/consul/hub-jwt-pub}"
method_file="$dir/auth-method.json"
rule_file="$dir/binding-rule.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Config = the file's Config with the published public keys (PEM strings) filled in.
count=0
for pub in "$pubs"/*.pem; do
    [ -f "$pub" ] || continue
    jq -Rs . "$pub"
    count=$((count + 1))
done > "$work/pubs.jsonl"
if [ "$count" -eq 0 ]; then
    echo "identity-init: no public key in $pubs (the one-shot hub-jwt-key-init publishes it)" >&2
    exit 1
fi
jq -s . "$work/pubs.jsonl" > "$work/pubs.json"
jq --slurpfile pubs "$work/pubs.json" '.Config | .JWTValidationPubKeys = $pubs[0]' "$method_file" > "$work/config.json"

field() {  # field KEY FILE: a top-level string of a JSON file
    jq -er --arg k "$1" '.[$k] | strings' "$2"
}
name=$(field Name "$method_file")

# 2. The auth method. `auth-method read` exits 1 both for "not found" and for a failed call, so
# existence is decided from the list, whose failure stops the script.
consul acl auth-method list -format=json > "$work/methods.json"
set -- -name "$name" \
    -display-name "$(field DisplayName "$method_file")" \
    -description "$(field Description "$method_file")" \
    -max-token-ttl "$(field MaxTokenTTL "$method_file")" \
    -token-locality "$(field TokenLocality "$method_file")" \
    -config "@$work/config.json"
if jq -se --arg n "$name" 'any((.[0] // [])[]; .Name == $n)' "$work/methods.json" > /dev/null; then
    consul acl auth-method update -no-merge "$@" > /dev/null
    echo "identity-init: auth method $name updated ($count public key(s))"
else
    consul acl auth-method create -type "$(field Type "$method_file")" "$@" > /dev/null
    echo "identity-init: auth method $name created ($count public key(s))"
fi

# 3. The binding rule.
if [ "$(field AuthMethod "$rule_file")" != "$name" ]; then
    echo "identity-init: $rule_file is not for auth method $name" >&2
    exit 1
fi
consul acl binding-rule list -method "$name" -format=json > "$work/rules.json"
same='select(.BindType == $want[0].BindType and .BindName == $want[0].BindName
             and .Selector == $want[0].Selector and .Description == $want[0].Description)'
keep=$(jq -sr --slurpfile want "$rule_file" "[(.[0] // [])[] | $same] | .[0].ID // empty" "$work/rules.json")
if [ -z "$keep" ]; then
    consul acl binding-rule create -method "$name" \
        -description "$(field Description "$rule_file")" \
        -selector "$(field Selector "$rule_file")" \
        -bind-type "$(field BindType "$rule_file")" \
        -bind-name "$(field BindName "$rule_file")" > /dev/null
    echo "identity-init: binding rule of $name created: $(field BindName "$rule_file")"
fi
for id in $(jq -sr --arg keep "$keep" '(.[0] // [])[] | select(.ID != $keep) | .ID' "$work/rules.json"); do
    consul acl binding-rule delete -id "$id" > /dev/null
    echo "identity-init: stale binding rule $id of $name deleted"
done
