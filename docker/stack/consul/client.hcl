# Consul client agent of the production stack: the agent the hub registers notebook services on,
# and whose xDS (gRPC TLS, 8503) every sidecar, notebook and Trino alike, gets its config from.
# Field names: agent/config/config.go. The hub reaches it as https://consul-client:8501; its
# certificate (made by consul/tls-init.sh) carries that DNS name.

datacenter  = "dc1"
data_dir    = "/consul/data"
node_name   = "consul-client"
server      = false
client_addr = "0.0.0.0"
bind_addr   = "0.0.0.0"
retry_join  = ["consul-server"]

ports {
  http     = -1
  https    = 8501
  grpc     = -1
  grpc_tls = 8503
}

connect {
  enabled = true
}

acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
}

tls {
  defaults {
    ca_file         = "/consul/pki/consul-agent-ca.pem"
    cert_file       = "/consul/pki/dc1-client-consul-0.pem"
    key_file        = "/consul/pki/dc1-client-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    verify_incoming = false
  }
  # Envoy presents no client certificate; it authenticates to xDS with its ACL token.
  grpc {
    verify_incoming = false
  }
}
