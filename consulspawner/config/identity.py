"""Traits of each server's Consul identity: the hub's JWT signing key, the auth method that
turns a signed JWT into a token, and the service-name prefix the binding rule is fixed to."""

from __future__ import annotations

import os
import re

from traitlets import HasTraits, TraitError, Unicode, default, validate

# What a prefix of a Consul service identity name may be: the start of a DNS label, lowercase
# (agent/structs: isValidServiceIdentityName, [a-z0-9] with inner dashes), ending in a dash so
# the binding rule's ${value.service_suffix} cannot glue onto a longer word.
_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,30}-")


class IdentityConfig(HasTraits):
    """How a server logs in to Consul (``c.ConsulSpawner.jwt_signing_key_file`` and friends)."""

    jwt_signing_key_file = Unicode(
        help="""File (mode 0600) with the hub's JWT signing key: EC P-256 (ES256) or RSA (RS256).

        For each start the hub signs a JWT of a few minutes naming that server, and exchanges it
        at Consul's JWT auth method (``auth_method``) for a token with that server's service
        identity alone. Whoever reads this file can log servers in as ``<service_prefix>*``
        (nothing else: the prefix is fixed in the binding rule), so it never goes into an
        environment, a URL or a log. Defaults to $CONSULSPAWNER_JWT_KEY_FILE.

            c.ConsulSpawner.jwt_signing_key_file = "/run/secrets/hub-jwt/key.pem"
        """,
    ).tag(config=True)

    @default("jwt_signing_key_file")
    def _key_file_default(self):
        return os.environ.get("CONSULSPAWNER_JWT_KEY_FILE", "")

    auth_method = Unicode(
        help="""Name of the Consul JWT auth method holding this hub's public key; default
        ``consulspawner-<hub_instance>``. The operator creates it once, with its binding rule
        (docker/stack/consul/identity-init.sh; README, security model).

            c.ConsulSpawner.auth_method = "consulspawner-analytics-hub"
        """,
    ).tag(config=True)

    @default("auth_method")
    def _auth_method_default(self):
        return f"consulspawner-{self.hub_instance}"

    jwt_audience = Unicode(
        "consul",
        help="""The ``aud`` of the login JWTs: must be one of the auth method's BoundAudiences.

            c.ConsulSpawner.jwt_audience = "consul.analytics"
        """,
    ).tag(config=True)

    service_prefix = Unicode(
        "jupyter-",
        help="""The fixed start of every server's service name: the binding rule's BindName
        (``<prefix>${value.service_suffix}``) and the hub policy's ``service_prefix`` rule use
        the same string, and ``service_name_template`` must start with it. Give each hub on one
        Consul its own (and its own ``hub_instance``).

            c.ConsulSpawner.service_prefix = "hub2-"
            c.ConsulSpawner.service_name_template = "hub2-{slug}"
        """,
    ).tag(config=True)

    @validate("service_prefix")
    def _valid_prefix(self, proposal):
        if not _PREFIX.fullmatch(proposal.value):
            raise TraitError(
                f"c.ConsulSpawner.service_prefix {proposal.value!r}: must be a lowercase DNS-label "
                "start ending in '-' (e.g. 'jupyter-', 'hub2-'), at most 32 characters"
            )
        return proposal.value
