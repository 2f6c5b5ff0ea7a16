# The hub's Consul ACL policy: exactly what ConsulSpawner needs, nothing more.
# The tests run the hub with a token of this policy (tests/integration/conftest.py), never the
# management token, so a permission missing here fails the suite.
#
# Names follow the defaults: c.ConsulSpawner.service_name_template = "jupyter-{slug}" and the
# intention destination trino-coordinator. Change both rules if you change those settings.

# Mint, read, list and delete each server's token (a service identity of its own service).
acl = "write"

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
