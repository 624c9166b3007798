"""Network facts about the request IP (the `ip` family of signals): address class, the /24 or /64
prefix, location, ASN, hosting and anonymity, and where the IP's country disagrees with what the
phone, the browser's timezone and its locale say."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from functools import lru_cache
from typing import Any

from kyc.engine.schema import Field
from kyc.signals.geoip import GeoIP

_COUNTRY = "GeoIP city/country database (bundled: DB-IP Country Lite, CC BY 4.0; or KYC_GEOIP_CITY_DB)"
_GEO = ("a city-level GeoIP database only (KYC_GEOIP_CITY_DB, e.g. GeoIP2 City, or `kyc geoip build --only "
        "city`); missing with the bundled country data")
_ASN = "GeoIP ASN database (bundled: @ip-location-db/asn, CC BY 4.0; or KYC_GEOIP_ASN_DB)"
_ANON = "GeoIP2 Anonymous IP database (KYC_GEOIP_ANON_DB); missing without it"
_NETINTEL = "kyc/data/netintel (X4B lists_vpn, MIT; lord-alfred/ipranges, CC0; Tor exits, MIT)"

FIELDS = (
    Field("ip.version", "int", "4 or 6.", 4, "ipaddress"),
    Field("ip.private", "bool", "Private, loopback, link-local, reserved or otherwise not globally routable "
                                "(a bogon); not the documentation ranges.", False,
          "ipaddress (IANA special-purpose registries)"),
    Field("ip.documentation", "bool", "One of the ranges kept for examples (192.0.2.0/24, 198.51.100.0/24, "
                                      "203.0.113.0/24, 2001:db8::/32): what integrations' staging and tests send, "
                                      "as the contract's own examples do. Read as a public address of unknown "
                                      "location (no GeoIP facts), not as private. Missing otherwise.", True,
          "ipaddress (RFC 5737, RFC 3849)"),
    Field("ip.prefix", "str", "The /24 (IPv4) or /64 (IPv6) network, used for velocity and linking.",
          "203.0.113.0/24", "ipaddress"),
    Field("ip.country", "str", "ISO 3166 country of the IP.", "US", _COUNTRY),
    Field("ip.region", "str", "First subdivision (state, province), English name (its ISO code where the "
                              "database has no name).", "California", _GEO),
    Field("ip.city", "str", "City (English name).", "Mountain View", _GEO),
    Field("ip.latitude", "float", "Approximate latitude.", 37.386, _GEO),
    Field("ip.longitude", "float", "Approximate longitude.", -122.0838, _GEO),
    Field("ip.announced", "bool", "A routed network (an ASN) covers the IP; false for unannounced space.",
          True, _ASN),
    Field("ip.asn", "int", "Autonomous system number of the network.", 15169, _ASN),
    Field("ip.asn_org", "str", "Organisation of the autonomous system.", "Google LLC", _ASN),
    Field("ip.hosting", "bool", "Hosting, cloud or datacenter network: a listed datacenter or cloud range, a "
                                "listed datacenter ASN, or the Anonymous IP database says hosting provider. Never "
                                "true on a privacy relay.", False, f"{_NETINTEL}; {_ANON}"),
    Field("ip.cloud", "str", "Cloud provider whose published ranges hold the IP (amazon, google, microsoft, "
                             "oracle, digitalocean, linode, vultr, github, cloudflare).", "amazon", _NETINTEL),
    Field("ip.crawler", "str", "Crawler, link-preview or monitoring network whose operator publishes it "
                               "(googlebot, bingbot, openai, perplexity, facebook, pingdom, ...).", "googlebot",
          _NETINTEL),
    Field("ip.privacy_relay", "str", "A privacy relay ordinary people use: icloud_private_relay (Apple's "
                                     "published egress ranges) or cloudflare_warp (Cloudflare's network outside "
                                     "its published reverse-proxy ranges). Neither hosting nor VPN.",
          "icloud_private_relay", _NETINTEL),
    Field("ip.anonymous", "bool", "Any anonymiser: VPN, hosting, Tor, public or residential proxy.", False, _ANON),
    Field("ip.vpn", "bool", "Commercial VPN exit: a listed VPN range or VPN provider ASN, or the Anonymous IP "
                            "database says so. Never true on a privacy relay.", False, f"{_NETINTEL}; {_ANON}"),
    Field("ip.tor", "bool", "Tor exit node (the bundled list is a 2024 snapshot: exits churn; refresh it).", False,
          f"{_NETINTEL}; {_ANON}"),
    Field("ip.public_proxy", "bool", "Open or public proxy.", False, _ANON),
    Field("ip.residential_proxy", "bool", "Residential proxy network exit.", False, _ANON),
    Field("ip.phone_country_mismatch", "bool", "The IP's country differs from the phone number's region.",
          False, "ip.country vs phone.region"),
    Field("ip.timezone_country_mismatch", "bool", "The IP's country is not the country of the browser's "
                                                  "timezone.", False, "ip.country vs device.timezone_country"),
    Field("ip.locale_country_mismatch", "bool", "The IP's country differs from the region of the browser's "
                                                "locale (en-US -> US).", False, "ip.country vs device.locale_region"),
)

_PREFIX = {4: 24, 6: 64}
# The documentation ranges (RFC 5737, RFC 3849). No client on the Internet has one, so only an
# integration's staging, its tests and examples send them (the contract's signup example is
# 203.0.113.7): holding them as private would put every test signup in the review queue, and they
# say nothing about the person. They are read as public addresses whose location is unknown.
_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                         "2001:db8::/32"))


@lru_cache(maxsize=65536)
def _address(ip: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str] | None:
    """The address and its network (_prefix): all its identifiers need."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped:       # ::ffff:1.2.3.4 is the IPv4 address
        addr = addr.ipv4_mapped
    return addr, _prefix(addr)


@lru_cache(maxsize=65536)
def _facts(ip: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[str, Any]] | None:
    """The address and its own facts, for its signals. Apart from _address, which is all an
    activity report's identifiers read: is_global (a network built, the private ranges walked)
    made network_identifiers of a new address 11.8-12.9 us, 7.4-8.5 without (100,000 random
    addresses, three alternated runs, load ~4): ~4.5 ms of a bulk call from 1,000 addresses."""
    parsed = _address(ip)
    if parsed is None:
        return None
    addr, prefix = parsed
    if addr.is_global:
        return addr, {"version": addr.version, "private": False, "prefix": prefix}
    if any(addr in network for network in _DOCUMENTATION):
        return addr, {"version": addr.version, "private": False, "documentation": True, "prefix": prefix}
    return addr, {"version": addr.version, "private": True, "prefix": prefix}


def _prefix(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address's /24 (IPv4) or /64 (IPv6), as ipaddress writes that network. Masked as an integer:
    building the network object from text cost 16.6 µs a new address, the mask 3 µs."""
    bits = _PREFIX[addr.version]
    host = addr.max_prefixlen - bits
    return f"{type(addr)(int(addr) >> host << host)}/{bits}"


def network_signals(ip: str | None, geoip: GeoIP | None = None) -> dict[str, Any]:
    parsed = _facts(ip) if ip and isinstance(ip, str) else None
    if parsed is None:
        return {}
    addr, base = parsed
    facts = dict(base)
    if geoip is not None and not base["private"] and "documentation" not in base:   # no data there
        facts.update(geoip.lookup(addr))
    return facts


def mismatches(ip_country: str | None, phone_region: str | None, timezone_country: str | None,
               locale_region: str | None) -> dict[str, bool]:
    """Each comparison is made only when both sides are known; otherwise the fact is missing."""
    if not ip_country:
        return {}
    facts = {}
    for name, other in (("phone_country_mismatch", phone_region), ("timezone_country_mismatch", timezone_country),
                        ("locale_country_mismatch", locale_region)):
        if other:
            facts[name] = other != ip_country
    return facts


def network_of(ip: str | None) -> str | None:
    """The address's network, /24 or /64, as its identifiers name it (ip_prefix); None for no address."""
    parsed = _address(ip) if ip and isinstance(ip, str) else None
    return parsed[1] if parsed is not None else None


def network_identifiers(ip: str | None, asn: int | None = None, at: datetime | None = None,
                        day_kind: str = "ip_prefix_day") -> list[tuple[str, str]]:
    """The address, its network and (with `at`) the network within that UTC day, as `day_kind`:
    a signup's or a card's (ip_prefix_day), or the network an activity report came from
    (activity_prefix_day: where an account works, kyc.graph.SHARED_WORK)."""
    parsed = _address(ip) if ip and isinstance(ip, str) else None
    if parsed is None:
        return []
    addr, prefix = parsed
    identifiers = [("ip", str(addr)), ("ip_prefix", prefix)]
    if asn is not None:
        identifiers.append(("asn", str(asn)))
    if at is not None:
        # The network within one UTC day: a weak link (neighbours on one network the same day).
        identifiers.append((day_kind, f"{prefix}|{at.date().isoformat()}"))   # strftime: 4.6 µs, this 0.3
    return identifiers
