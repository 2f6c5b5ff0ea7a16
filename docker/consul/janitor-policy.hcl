# consulspawner-janitor's Consul ACL policy: it deletes what a dead hub left, from Consul alone.
#
# No `acl` rule: tokens are not the janitor's business. Every server's token is made by login
# at the hub's JWT auth method, is local, and expires after the method's MaxTokenTTL.

# See which services still have instances anywhere in the catalog ("missing for --grace").
service_prefix "" {
  policy = "read"
}

# Deregister servers whose check has been critical for --critical-limit.
service_prefix "jupyter-" {
  policy = "write"
}

# Revoke expired or orphaned sources of the destination's service-intentions entry.
service "trino-coordinator" {
  policy     = "read"
  intentions = "write"
}

node_prefix "" {
  policy = "read"
}
