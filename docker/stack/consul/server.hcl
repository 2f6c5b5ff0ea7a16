# Consul server agent of the production stack (one server; give a real site three or five and
# bootstrap_expect to match). Field names: agent/config/config.go (struct Config, ACL, Tokens,
# TLS, TLSProtocolConfig, Ports, Connect). Certificates and the gossip key are made by
# consul/tls-init.sh into the consul-pki volume, mounted at /consul/pki.

datacenter       = "dc1"
data_dir         = "/consul/data"
node_name        = "consul-server"
server           = true
bootstrap_expect = 1
client_addr      = "0.0.0.0"
bind_addr        = "0.0.0.0"
retry_join       = ["consul-server"]

ui_config {
  enabled = true
}

# HTTPS only (8501), gRPC only with TLS (8503): no plain-text API port at all.
ports {
  http     = -1
  https    = 8501
  grpc     = -1
  grpc_tls = 8503
}

# Connect with Consul's built-in CA: it signs every sidecar's leaf certificate.
connect {
  enabled = true
}

# Default deny: a request with no token, or with a token lacking the rule, is refused.
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
}

tls {
  defaults {
    ca_file         = "/consul/pki/consul-agent-ca.pem"
    cert_file       = "/consul/pki/dc1-server-consul-0.pem"
    key_file        = "/consul/pki/dc1-server-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  # API clients (the hub, the janitor, consul CLI) authenticate with ACL tokens, not certificates.
  https {
    verify_incoming = false
  }
  grpc {
    verify_incoming = false
  }
}
