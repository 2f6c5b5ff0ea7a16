#!/bin/sh
# One-shot, before any agent starts: the agents' TLS certificates and the gossip key.
# Idempotent: an existing CA is kept (delete the consul-ca and consul-pki volumes to start over).
# A site with its own PKI replaces this step and puts its files under the same names.
#   /consul/ca    CA key, only ever mounted here
#   /consul/pki   CA certificate, server and client certificates, gossip.hcl (agents mount it)
#   /secrets/*    the CA certificate for each API client (hub, janitor, Trino sidecars)
set -eu
umask 077
cd /consul/ca

if [ ! -f consul-agent-ca.pem ]; then
    consul tls ca create -days 1825
fi
if [ ! -f dc1-server-consul-0.pem ]; then
    # server.dc1.consul (verify_server_hostname), localhost (health checks), consul-server (DNS).
    consul tls cert create -server -dc dc1 -days 825 -additional-dnsname consul-server
fi
if [ ! -f dc1-client-consul-0.pem ]; then
    # consul-client: the name the hub, the janitor and every sidecar use for its HTTPS/gRPC API.
    consul tls cert create -client -dc dc1 -days 825 -additional-dnsname consul-client
fi
if [ ! -f gossip.hcl ]; then
    printf 'encrypt = "%s"\n' "$(consul keygen)" > gossip.hcl
fi

cp consul-agent-ca.pem dc1-server-consul-0.pem dc1-server-consul-0-key.pem \
   dc1-client-consul-0.pem dc1-client-consul-0-key.pem gossip.hcl /consul/pki/
chown -R consul:consul /consul/pki
chmod 0600 /consul/pki/*-key.pem /consul/pki/gossip.hcl
chmod 0644 /consul/pki/consul-agent-ca.pem /consul/pki/dc1-*-consul-0.pem

# The CA certificate (public) for each consumer, next to where its token will be.
for dir in /secrets/*; do
    cp consul-agent-ca.pem "$dir/ca.pem"
    chmod 0644 "$dir/ca.pem"
done
echo "tls-init: CA, agent certificates and gossip key ready"
