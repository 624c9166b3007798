"""Network intelligence: whether an address belongs to a datacenter, a VPN, a cloud provider, a
crawler or monitor network, a Tor exit, or a privacy relay that ordinary people use.

Read from kyc/data/netintel/ (built by `kyc netintel build --from DIR` from X4B lists_vpn, MIT;
lord-alfred/ipranges, CC0; a Tor exit list, MIT; licences and SOURCE lines beside the data):
kyc-netintel.mmdb answers every range list in one lookup, and the datacenter and VPN ASN lists
are matched against the ASN the ASN database gives.

Privacy relays are facts of their own and never count as hosting or VPN: iCloud Private Relay
egresses from Akamai and Cloudflare ranges that the datacenter lists cover, and its users are
ordinary iPhone and Mac owners. Cloudflare WARP has no published egress list; an address that
Cloudflare's network (AS13335) announces outside the reverse-proxy ranges Cloudflare publishes
is taken as WARP (WARP, Zero Trust gateways, and customers' own prefixes: people, not servers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import maxminddb

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "netintel"
DATABASE = "kyc-netintel.mmdb"
CLOUDFLARE_ASN = 13335
_SOURCE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})?")


def source_date(line: str) -> datetime | None:
    """The date of a SOURCE line, "commit <sha> <ISO date>" (its upstream commit's), or None."""
    match = _SOURCE_DATE.search(line)
    if match is None:
        return None
    parsed = datetime.fromisoformat(match.group(0))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _asn_list(path: Path) -> frozenset[int]:
    return frozenset(int(line.split("#", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()
                     if line.split("#", 1)[0].strip())


@dataclass(frozen=True)
class NetIntel:
    ranges: maxminddb.Reader
    datacenter_asns: frozenset[int]
    vpn_asns: frozenset[int]
    # Each list's upstream date (MANIFEST.json's SOURCE lines): how stale each is (a Tor exit
    # list goes stale within days), for the data-age gauge and the start-up warning. Not part
    # of the hash: readers are cache keys (kyc.simulate).
    sources: dict[str, datetime] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def open(cls, directory: Path = DATA_DIR) -> NetIntel:
        reader = maxminddb.open_database(str(directory / DATABASE))
        manifest = directory / "MANIFEST.json"
        lines = json.loads(manifest.read_text(encoding="utf-8")).get("sources", {}) if manifest.exists() else {}
        sources = {name: date for name, line in lines.items() if (date := source_date(line)) is not None}
        return cls(reader, _asn_list(directory / "datacenter_asns.txt"), _asn_list(directory / "vpn_asns.txt"),
                   sources)

    def facts(self, address, asn: int | None) -> dict[str, Any]:
        """hosting, vpn, tor (always), and cloud, crawler, privacy_relay when the address is in one."""
        try:
            record = self.ranges.get(address) or {}
        except ValueError:
            record = {}
        relay = record.get("privacy_relay")
        if relay is None and asn == CLOUDFLARE_ASN and record.get("cloud") != "cloudflare":
            relay = "cloudflare_warp"
        facts: dict[str, Any] = {
            "hosting": relay is None and (bool(record.get("hosting") or record.get("cloud"))
                                          or asn in self.datacenter_asns),
            "vpn": relay is None and (bool(record.get("vpn")) or asn in self.vpn_asns),
            "tor": bool(record.get("tor")),
        }
        for key in ("cloud", "crawler"):
            if key in record:
                facts[key] = record[key]
        if relay is not None:
            facts["privacy_relay"] = relay
        return facts

    def close(self) -> None:
        self.ranges.close()


def open_bundled() -> NetIntel | None:
    return NetIntel.open() if (DATA_DIR / DATABASE).exists() else None
