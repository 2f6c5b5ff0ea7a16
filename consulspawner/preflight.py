"""Checks made before a server is created: what Consul must already allow for the configured
intention mode (today: L7 destinations that speak http)."""

from __future__ import annotations

import logging

from . import ownership
from .consul import ConsulClient, ConsulError
from .hubwide import _l7_ready


async def check_l7_destinations(
    client: ConsulClient,
    destinations: list[str],
    *,
    hub_instance: str,
    manage_service_defaults: bool,
    log: logging.Logger | logging.LoggerAdapter,
) -> None:
    """L7 intentions need each destination's protocol to be http (Consul refuses the write
    otherwise: agent/structs/config_entry_intentions.go). Check it before creating anything,
    once per destination and hub process, and say which entry to write."""
    for destination in destinations:
        if (client.address, destination) in _l7_ready:
            continue
        try:
            entry = await client.get_config("service-defaults", destination)
            protocol = (entry or {}).get("Protocol") or await _global_protocol(client)
            if not protocol and entry is None and manage_service_defaults:
                await _write_service_defaults(client, destination, hub_instance, log)
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
    except ConsulError:
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
