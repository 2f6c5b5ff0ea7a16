#!/usr/bin/env python3
"""Development stand-in for a Consul Connect sidecar proxy with a real data path (stdlib only).

It is not Envoy. It implements Consul's custom-proxy contract ("Custom Proxy Configuration for
Service Mesh", ``website/content/docs/connect/proxies/integrate.mdx``) closely enough that the
mesh tests and the demo exercise mutual TLS, intentions and revocation for real::

    connectproxy -sidecar-for <service-id> [-token-file PATH] [-http-addr URL] [-ca-file PATH]
                 [-admin-socket /consul/admin.sock] [-reauthorize-interval 5] [-drain-time-s 600]
    connectproxy ready [-admin-socket /consul/admin.sock]     # exit 0 once the proxy is ready

``-http-addr`` defaults to ``$CONSUL_HTTP_ADDR`` (else 127.0.0.1:8500), ``-ca-file`` to
``$CONSUL_CACERT``; the token comes from ``-token-file``, else ``$CONSUL_HTTP_TOKEN_FILE``, else
``$CONSUL_HTTP_TOKEN``, and is only ever sent in the ``X-Consul-Token`` header.

Configuration. It runs exactly what was registered: ``GET /v1/agent/service/<id>-sidecar-proxy``
(followed with hash-based blocking queries). One listener per ``Proxy.Upstreams[i]`` on
``LocalBindAddress`` (default 127.0.0.1) : ``LocalBindPort``, and the public listener on the
registered ``Port``, bound to ``Proxy.Config.bind_address``, else the registration's
``Address``, else 0.0.0.0 (Consul's ``makePublicListener`` order). Allowed inbound connections
go to ``Proxy.LocalServiceAddress`` (default 127.0.0.1) : ``Proxy.LocalServicePort``.

Certificates. The leaf of the parent service (``/v1/agent/connect/ca/leaf/<DestinationServiceName>``)
and the roots (``/v1/agent/connect/ca/roots``, every root in ``Roots`` is trusted) are kept up to
date with index-based blocking queries; a renewed leaf or rotated root is used for every new
connection without a restart, open connections keep their session. Keys are loaded from
``memfd`` files (never written to disk).

Outbound (upstream listeners). For each accepted connection: healthy mesh endpoints from
``/v1/health/connect/<destination>?passing=1`` (just-in-time, as Consul's built-in proxy does),
TLS with our leaf as client certificate, the server's chain verified against the roots and its
URI SAN required to be ``spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<destination>`` (Envoy's
upstream ``match_subject_alt_names``); then bytes are copied both ways.

Inbound (public listener). A client certificate chaining to the roots is required (no
certificate, or one from another CA: the handshake fails). What happens next depends on the
protocol of our own service: ``Proxy.Config.protocol`` of the registration, else the
``service-defaults`` entry's ``Protocol`` (``/v1/config/service-defaults/<name>``, 404: none),
else ``proxy-defaults/global`` ``Config.protocol``, else ``tcp`` -- all three followed with
blocking queries.

* ``tcp`` (L4): each connection is authorized with ``POST /v1/agent/connect/authorize``
  (``Target`` = our service, ``ClientCertURI``, ``ClientCertSerial``), as the contract asks
  ("called in the connection path for each received connection"); a denied connection is
  closed right after the handshake, before a byte reaches the app. Open connections are
  re-authorized every ``-reauthorize-interval`` seconds (default 5) and at once whenever the
  intentions for our service change (a blocking query on
  ``/v1/connect/intentions/match?by=destination&name=<service>``). Those now denied are
  drained, as Envoy drains the connections of a listener's replaced filter chain when the
  intentions change (LDS update): they keep working for ``-drain-time-s`` (Envoy's
  ``--drain-time-s``, default 600) and are closed then; new connections are refused at once.
  The interval is the backstop for a missed intention-change notification (agent restart,
  network blip); the authorize call is answered from the agent's cache.
* ``http``/``http2``/``grpc`` (L7): as Consul configures Envoy (``agent/xds/rbac.go``): with an
  HTTP protocol the inbound listener has *no* network RBAC filter; the TLS connection is
  accepted and every request goes through the HTTP RBAC filter built from the intentions. So
  the L4 authorize endpoint -- which counts intentions with ``Permissions`` as deny -- is not
  used here; the intentions from the match endpoint are evaluated per request, highest
  precedence first (``IntentionPrecedenceSorter``; the match endpoint already sorts): the
  first intention whose source is the caller (or ``*``) decides -- an L4 one by its ``Action``,
  an L7 one by its first matching permission (``PathExact``/``PathPrefix``/``PathRegex``,
  ``Header`` ``Exact``/``Prefix``/``Suffix``/``Regex``/``Present`` with ``Invert``,
  ``Methods``; all parts of a permission must match; regexes must match the whole value as
  Envoy's RE2 ``safe_regex`` does; paths are compared without the query string) and, when none
  matches, the default. Without a matching intention the default applies. This is what
  ``makeRBACRules`` compiles to (lower-precedence intentions for the same source are NOT-ed
  out, unmatched L7 requests fall through to the default action). The default is the agent's
  ``X-Consul-Default-ACL-Policy`` header ("This is also the default intention enforcement
  action if no intention matches", api-docs/api-structure). A denied request is answered
  ``403`` with the body ``RBAC: access denied`` (Envoy's RBAC filter) and the connection stays
  usable. An absent header never matches ``Exact``/``Prefix``/``Suffix``/``Regex``, inverted or
  not (Envoy's ``HeaderUtility::matchHeaders``); values are compared as bytes, repeated
  headers joined with ``,``. Framing Envoy's HTTP/1 codec refuses is refused the same way
  (Content-Length with Transfer-Encoding, several Content-Length, obs-fold: 400). As Consul
  configures Envoy (``listeners.go`` ``makeInboundListener``: ``APPEND_FORWARD``, Subject,
  Cert, Chain, DNS, URI), the request reaches the app with this hop's
  ``x-forwarded-client-cert`` appended and ``x-forwarded-proto: https`` unless it had one.

Readiness. ``GET /ready`` answers ``200 LIVE`` once the listeners are bound and the leaf and
roots are loaded, else ``503`` with the state. Envoy's ``/ready`` can say LIVE before its
listeners exist (initial fetch timeout), so the probe ``connectproxy ready`` also checks that
every listener ``/status`` reports is in LISTEN state (``/proc/net/tcp``). The admin
endpoint (``/ready``, ``/status`` as JSON) listens ONLY on a unix socket (``-admin-socket``,
default ``/consul/admin.sock``, mode 0600), never on TCP: the notebook container shares the
sidecar's network namespace, so any TCP port, even on 127.0.0.1, would be reachable from the
notebook, while a filesystem socket in the sidecar's own mount namespace is not.
``connectproxy ready -admin-socket PATH`` is the probe (``docker exec``, HEALTHCHECK).

Failure. SIGTERM/SIGINT stop it cleanly (exit 0). A token Consul refuses (``403 ACL not
found``) is fatal at start and later (exit 1): a sidecar whose token was deleted must not keep
serving on cached credentials. Other agent errors are retried with back-off while the last
known configuration keeps serving ("fail static", as the contract recommends).

In-process use (tests)::

    proxy = ConnectProxy(Agent(url, token), "jupyter-alice-sidecar-proxy", admin_socket=path)
    proxy.start(timeout=30)    # raises ProxyError if it cannot become ready
    ...
    proxy.stop()
"""

from .agent import Agent, ConsulHTTPError, ProxyError, TokenRefused
from .authorization import Request, evaluate
from .certificates import Material, build_material, serial_of, spiffe_of
from .cli import main, parse_args, read_token
from .http1 import Stream, body_framing, parse_head, wants_close
from .proxy import ConnectProxy
from .ready import DEFAULT_ADMIN_SOCKET, probe_ready
from .relay import ListenerSpec, listener_specs

__all__ = [
    "DEFAULT_ADMIN_SOCKET",
    "Agent",
    "ConnectProxy",
    "ConsulHTTPError",
    "ListenerSpec",
    "Material",
    "ProxyError",
    "Request",
    "Stream",
    "TokenRefused",
    "body_framing",
    "build_material",
    "evaluate",
    "listener_specs",
    "main",
    "parse_args",
    "parse_head",
    "probe_ready",
    "read_token",
    "serial_of",
    "spiffe_of",
    "wants_close",
]
