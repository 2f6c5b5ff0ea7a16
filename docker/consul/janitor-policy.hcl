# consulspawner-janitor's Consul ACL policy: it deletes what a dead hub left, from Consul alone.

# List and delete the servers' tokens (only those carrying consulspawner's marker are touched).
acl = "write"

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
