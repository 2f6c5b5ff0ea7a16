"""Checks made before a server is created: what Consul must already allow for the configured
intention mode (today: L7 destinations that speak http)."""

from __future__ import annotations

import logging
import time

from . import entries, ownership
from .consul import ConsulClient, ConsulError
from .entries import TrinoUserTaken
from .hubwide import _l7_ready
from .intentions import IntentionWriter


class HubTokenRefused(RuntimeError):
    """The hub's own Consul token is too powerful, or lacks a rule the configuration needs."""


async def check_trino_user_free(
    client: ConsulClient,
    destinations: list[str],
    *,
    trino_user: str,
    hub_user: str,
    retry_budget: float = 0.0,
    writer: IntentionWriter | None = None,
) -> None:
    """Refuse a spawn whose Trino user another hub user's live server already holds in a
    destination's intentions (e.g. a ``trino_user`` mapping that sends two people to one
    account): otherwise both would act as one Trino user. Up front, so nothing is created for a
    refused spawn; the grant checks again in its CAS cycle (two spawns side by side both pass
    here). The entry read is handed to ``writer``, whose grant then needs no read of its own."""
    for destination in destinations:
        entry = await client.retrying(
            lambda destination=destination: client.get_config(entries.KIND, destination), budget=retry_budget
        )
        if writer is not None:
            writer.remember(destination, entry)
        holder = entries.holder_of(entry, trino_user, hub_user, time.time())
        if holder is not None:
            raise TrinoUserTaken(entries.taken_message(trino_user, holder))


async def check_hub_token(client: ConsulClient, *, service_prefix: str, destinations: list[str]) -> None:
    """At hub start: the hub's token must hold exactly what the configuration needs, and never
    ``acl:write`` (management-equivalent: it can read every token's SecretID and link any
    policy, agent/structs/aclfilter/filter.go, agent/consul/auth/token_writer.go). Asked of
    Consul itself (``/v1/internal/acl/authorize``), so it holds for any policy, role or
    identity the token carries."""
    probe = f"{service_prefix}probe"
    needs = [
        (
            {"Resource": "service", "Segment": probe, "Access": "write"},
            f'service_prefix "{service_prefix}" {{ policy = "write" }}',
        ),
    ]
    for destination in destinations:
        needs.append(
            (
                {"Resource": "intention", "Segment": destination, "Access": "write"},
                f'service "{destination}" {{ intentions = "write" }}',
            )
        )
        needs.append(
            (
                {"Resource": "service", "Segment": destination, "Access": "read"},
                f'service "{destination}" {{ policy = "read" }}',
            )
        )
    checks = [{"Resource": "acl", "Access": "read"}, {"Resource": "acl", "Access": "write"}] + [c for c, _ in needs]
    answers = await client.acl_authorize(checks)
    if answers[1]:
        raise HubTokenRefused(
            "the hub's Consul token holds acl:write, which is management-equivalent in Consul (it can read "
            "every token's secret); give the hub a token of docker/consul/hub-policy.hcl, which has no acl rule"
        )
    if answers[0]:
        raise HubTokenRefused(
            "the hub's Consul token holds acl:read (it could read every token's accessor and policy); the hub "
            "needs no acl rule: use docker/consul/hub-policy.hcl"
        )
    missing = [rule for (_, rule), allowed in zip(needs, answers[2:], strict=True) if not allowed]
    if missing:
        raise HubTokenRefused(
            "the hub's Consul token lacks what the configuration needs; add to its policy: " + "; ".join(missing)
        )


async def check_l7_destinations(
    client: ConsulClient,
    destinations: list[str],
    *,
    hub_instance: str,
    manage_service_defaults: bool,
    log: logging.Logger | logging.LoggerAdapter,
    retry_budget: float = 0.0,
) -> None:
    """L7 intentions need each destination's protocol to be http (Consul refuses the write
    otherwise: agent/structs/config_entry_intentions.go). Check it before creating anything,
    once per destination and hub process, and say which entry to write. Consul's 5xx and
    silences are retried within ``retry_budget`` like every other spawn call."""
    for destination in destinations:
        if (client.address, destination) in _l7_ready:
            continue
        try:
            entry = await client.retrying(
                lambda destination=destination: client.get_config("service-defaults", destination),
                budget=retry_budget,
            )
            protocol = (entry or {}).get("Protocol") or await client.retrying(
                lambda: _global_protocol(client), budget=retry_budget
            )
            if not protocol and entry is None and manage_service_defaults:
                await client.retrying(
                    lambda destination=destination: _write_service_defaults(client, destination, hub_instance, log),
                    budget=retry_budget,
                )
                protocol = "http"
        except ConsulError as e:
            raise RuntimeError(f"Could not check the protocol of {destination!r} for L7 intentions: {e}") from e
        if protocol not in ("http", "http2", "grpc"):
            raise RuntimeError(
                f"c.ConsulSpawner.intention_mode = 'L7' needs {destination!r} to speak http, but its protocol "
                f"is {protocol or 'tcp'!r}: write the config entry "
                f'{{"Kind": "service-defaults", "Name": "{destination}", "Protocol": "http"}} '
                "(or set c.ConsulSpawner.manage_l7_service_defaults = True)"
            )
        _l7_ready.add((client.address, destination))


async def _global_protocol(client: ConsulClient) -> str:
    try:
        entry = await client.get_config("proxy-defaults", "global")
    except ConsulError as e:
        if e.retryable:
            raise  # Consul did not answer: asked again, not taken for "no global protocol"
        return ""  # not readable with this token: only service-defaults counts
    return ((entry or {}).get("Config") or {}).get("protocol", "")


async def _write_service_defaults(
    client: ConsulClient, destination: str, hub_instance: str, log: logging.Logger | logging.LoggerAdapter
) -> None:
    entry = {
        "Kind": "service-defaults",
        "Name": destination,
        "Protocol": "http",
        "Meta": {ownership.META_MANAGED_BY: ownership.MANAGED_BY, ownership.META_HUB: hub_instance},
    }
    # cas=0: create only, so an entry an operator wrote meanwhile is never replaced.
    if await client.set_config(entry, cas=0):
        log.info("Wrote service-defaults %s with protocol http for L7 intentions", destination)
