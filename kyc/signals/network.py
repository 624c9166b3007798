"""Network facts about the request IP (the `ip` family of signals)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from kyc.engine.schema import Field

FIELDS = (
    Field("ip.version", "int", "4 or 6.", 4),
    Field("ip.private", "bool", "Private, loopback, link-local, reserved or otherwise not globally routable.", False),
    Field("ip.prefix", "str", "The /24 (IPv4) or /64 (IPv6) network, used for velocity and linking.", "203.0.113.0/24"),
)


@lru_cache(maxsize=65536)
def _address_facts(ip: str) -> dict[str, Any] | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix_len = 24 if addr.version == 4 else 64
    return {
        "version": addr.version,
        "private": not addr.is_global,
        "prefix": str(ipaddress.ip_network(f"{addr}/{prefix_len}", strict=False)),
    }


def network_signals(ip: str | None) -> dict[str, Any]:
    facts = _address_facts(ip) if ip else None
    return dict(facts) if facts else {}


def network_identifiers(ip: str | None) -> list[tuple[str, str]]:
    facts = _address_facts(ip) if ip else None
    if not facts:
        return []
    return [("ip", ip), ("ip_prefix", facts["prefix"])]
