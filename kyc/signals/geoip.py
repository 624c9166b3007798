"""GeoIP readers: where an IP address is, which network announces it, whether it is anonymised.

Three MaxMind DB files, each optional, opened once per process (`open_geoip` is cached on the
paths) and handed to signals through Lookups:

- city: GeoIP2/GeoLite2 City or Country schema. Default: kyc-city.mmdb if an operator built it
  (`kyc geoip build --only city`), else the bundled kyc-country.mmdb (DB-IP Country Lite,
  CC BY 4.0), which answers the country only.
- asn: GeoLite2 ASN schema. Default: the bundled file built from @ip-location-db/asn
  (RouteViews, NRO, DB-IP; CC BY 4.0).
- anon: GeoIP2 Anonymous IP (vpn, hosting, tor, public and residential proxy). No open data
  exists in its schema, so there is no default; point KYC_GEOIP_ANON_DB at MaxMind's file.

Beside them, the bundled network intelligence (kyc/signals/netintel.py: datacenter, VPN, cloud,
crawler, Tor and privacy-relay lists) answers hosting, vpn and tor from open data; the Anonymous
IP database, when configured, adds what it knows (either one saying yes is a yes).

Records are read with `maxminddb` (the C extension under geoip2) as plain dicts: the same
GeoIP2 schema geoip2's typed readers use, without building model objects on the hot path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb

from kyc.signals.netintel import NetIntel, open_bundled

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "geoip"
BUNDLED_CITY = DATA_DIR / "kyc-city.mmdb"          # opt-in, not shipped (size)
BUNDLED_COUNTRY = DATA_DIR / "kyc-country.mmdb"
BUNDLED_ASN = DATA_DIR / "kyc-asn.mmdb"

# database_type words each role accepts (MaxMind's names and ours both contain them).
_ACCEPTS = {"city": ("City", "Country"), "asn": ("ASN", "ISP"), "anon": ("Anonymous",)}


class GeoIPError(Exception):
    """A configured database file is missing, unreadable or of the wrong type."""


def _open(role: str, path: Path | None) -> maxminddb.Reader | None:
    if path is None:
        return None
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise GeoIPError(f"{role} database {path}: {exc}") from None
    kind = reader.metadata().database_type
    if not any(word in kind for word in _ACCEPTS[role]):
        reader.close()
        raise GeoIPError(f"{role} database {path} is a {kind!r} database; expected one of "
                         f"{', '.join(_ACCEPTS[role])}")
    return reader


@dataclass(frozen=True)
class GeoIP:
    city: maxminddb.Reader | None = None
    asn: maxminddb.Reader | None = None
    anon: maxminddb.Reader | None = None
    netintel: NetIntel | None = None

    def lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dict[str, Any]:
        """Facts for a parsed, globally routable address; absent facts are simply left out."""
        facts: dict[str, Any] = {}
        if self.city is not None:
            record = _get(self.city, address)
            if record:
                _city_facts(record, facts)
        if self.asn is not None:
            record = _get(self.asn, address)
            facts["announced"] = bool(record and record.get("autonomous_system_number"))
            if record:
                if record.get("autonomous_system_number"):
                    facts["asn"] = int(record["autonomous_system_number"])
                if record.get("autonomous_system_organization"):
                    facts["asn_org"] = str(record["autonomous_system_organization"])
        if self.netintel is not None:
            facts.update(self.netintel.facts(address, facts.get("asn")))
        if self.anon is not None:
            record = _get(self.anon, address) or {}
            relay = "privacy_relay" in facts
            facts["anonymous"] = bool(record.get("is_anonymous"))
            facts["vpn"] = facts.get("vpn", False) or (bool(record.get("is_anonymous_vpn")) and not relay)
            facts["tor"] = facts.get("tor", False) or bool(record.get("is_tor_exit_node"))
            facts["public_proxy"] = bool(record.get("is_public_proxy"))
            facts["residential_proxy"] = bool(record.get("is_residential_proxy"))
            facts["hosting"] = facts.get("hosting", False) or (bool(record.get("is_hosting_provider"))
                                                               and not relay)
        return facts

    def data_dates(self) -> dict[str, datetime]:
        """When each source's data was made: a GeoIP database's build date (its metadata) and each
        network list's upstream date, by name (geoip_city, geoip_asn, geoip_anon, netintel_tor, ...)."""
        dates = {f"geoip_{role}": datetime.fromtimestamp(reader.metadata().build_epoch, timezone.utc)
                 for role, reader in (("city", self.city), ("asn", self.asn), ("anon", self.anon)) if reader is not None}
        if self.netintel is not None:
            dates.update({f"netintel_{name}": date for name, date in self.netintel.sources.items()})
        return dates

    def close(self) -> None:
        for reader in (self.city, self.asn, self.anon, self.netintel):
            if reader is not None:
                reader.close()


def _get(reader: maxminddb.Reader, address) -> dict | None:
    try:
        record = reader.get(address)
    except ValueError:          # an IPv6 address asked of an IPv4-only database
        return None
    return record if isinstance(record, dict) else None


def _city_facts(record: dict, facts: dict[str, Any]) -> None:
    country = record.get("country") or record.get("registered_country") or {}
    if country.get("iso_code"):
        facts["country"] = str(country["iso_code"])
    subdivisions = record.get("subdivisions") or []
    if subdivisions:
        first = subdivisions[0]
        name = (first.get("names") or {}).get("en") or first.get("iso_code")
        if name:
            facts["region"] = str(name)
    city = (record.get("city") or {}).get("names", {}).get("en")
    if city:
        facts["city"] = str(city)
    location = record.get("location") or {}
    if location.get("latitude") is not None and location.get("longitude") is not None:
        facts["latitude"] = float(location["latitude"])
        facts["longitude"] = float(location["longitude"])


@lru_cache(maxsize=8)
def open_geoip(city: str | None, asn: str | None, anon: str | None) -> GeoIP:
    """The readers for these paths, opened once per process. A missing bundled default is
    tolerated (the facts it would give are left out); a configured file must open."""
    return GeoIP(
        city=_open("city", Path(city)) if city else _open_bundled("city", BUNDLED_CITY, BUNDLED_COUNTRY),
        asn=_open("asn", Path(asn)) if asn else _open_bundled("asn", BUNDLED_ASN),
        anon=_open("anon", Path(anon)) if anon else None,
        netintel=open_bundled(),
    )


def _open_bundled(role: str, *paths: Path) -> maxminddb.Reader | None:
    return next((_open(role, path) for path in paths if path.exists()), None)
