# The Trino worker (one; a second one needs its own port and an upstream of its own on the
# coordinator, as its announced address must be reachable from there).
service {
  id      = "trino-worker-1"
  name    = "trino-worker"
  address = "172.30.0.21"
  port    = 28082

  connect {
    sidecar_service {
      # Unique per agent: `consul services register` refuses two sidecars with one port.
      port = 21001
      proxy {
        local_service_address = "127.0.0.1"
        local_service_port    = 28082
        # discovery.uri = http://127.0.0.1:8080, and the coordinator's announced address
        # (127.0.0.1:8080): both reach the coordinator through this upstream.
        upstreams {
          destination_name = "trino-coordinator"
          local_bind_port  = 8080
        }
      }
    }
  }

  check {
    id       = "trino-worker-1-info"
    name     = "Trino worker /v1/info"
    http     = "http://172.30.0.21:28082/v1/info"
    interval = "10s"
    timeout  = "2s"
  }
}
