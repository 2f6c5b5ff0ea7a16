# The Trino coordinator, registered on consul-client by consul/acl-init.sh with its own
# service-identity token (consul services register -token-file ...). Its address is the
# container's fixed IP on the mesh network (compose.yaml); Trino itself listens only for
# 127.0.0.1 and the agent (the sidecar's firewall rule), so the mesh is the only way in.
# Fields: agent/config ServiceDefinition, connect/registration/sidecar-service.
service {
  id      = "trino-coordinator-1"
  name    = "trino-coordinator"
  address = "172.30.0.20"
  port    = 8080

  connect {
    sidecar_service {
      port = 21000
      proxy {
        local_service_address = "127.0.0.1"
        local_service_port    = 8080
        # The worker announces http://127.0.0.1:28082 (node.internal-address): from here that
        # is this upstream, the mTLS path to the worker's sidecar.
        upstreams {
          destination_name = "trino-worker"
          local_bind_port  = 28082
        }
      }
    }
  }

  check {
    id       = "trino-coordinator-1-info"
    name     = "Trino coordinator /v1/info"
    http     = "http://172.30.0.20:8080/v1/info"
    interval = "10s"
    timeout  = "2s"
  }
}
