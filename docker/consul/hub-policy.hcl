# The hub's Consul ACL policy: exactly what ConsulSpawner needs, nothing more.
# The tests run the hub with a token of this policy (tests/integration/conftest.py), never the
# management token, so a permission missing here fails the suite.
#
# No `acl` rule at all: the hub never creates, reads or lists tokens. Each server's token is
# made by login (POST /v1/acl/login needs no ACL) through the hub's JWT auth method, and given
# back by logout with its own secret. (acl = "write" would be management-equivalent: it can
# read every token's SecretID and link any policy, agent/structs/aclfilter/filter.go and
# agent/consul/auth/token_writer.go.)
#
# Names follow the defaults: c.ConsulSpawner.service_prefix = "jupyter-" (the binding rule's
# BindName uses the same prefix) and the intention destination trino-coordinator. Change these
# rules with those settings; the hub checks at start that its token allows what they need.

# Register and deregister each server's service and its -sidecar-proxy, and pass its TTL check.
service_prefix "jupyter-" {
  policy = "write"
}

# Grant and revoke the servers' sources in the destination's service-intentions entry, and read
# its service-defaults (the L7 protocol check).
service "trino-coordinator" {
  policy     = "read"
  intentions = "write"
}

# Consul drops health and catalog results whose node the token cannot read
# (agent/consul/aclfilter/filter.go): without this the sidecar's health looks empty.
node_prefix "" {
  policy = "read"
}
