"""`kyc netintel build --from DIR`: compile public network lists into kyc/data/netintel/.

Inputs are local copies of three openly licensed projects (kyc never downloads anything; get
newer copies with git and point --from at them), laid out as their repositories are:

  DIR/x4bnet-lists_vpn/  X4B lists_vpn (MIT): output/datacenter/ipv{4,6}.txt (hosting and
                         datacenter ranges), output/vpn/ipv{4,6}.txt (commercial VPN ranges),
                         input/datacenter/ASN.txt and input/vpn/ASN.txt (the ASNs they derive from)
  DIR/ipranges/          lord-alfred/ipranges (CC0): <provider>/ipv{4,6}_merged.txt for cloud
                         providers, crawlers and monitors, ProtonVPN and Apple's iCloud Private Relay
  DIR/tor/               Tor exit node addresses (MIT): tor-exit-nodes.lst

Each folder's licence, README and SOURCE (the upstream commit and date) are copied beside the
output. The ranges become one MaxMind DB, kyc-netintel.mmdb: one lookup (the C reader, about a
microsecond) answers every list at once. Where lists overlap, an address carries every label
that covers it. The ASN lists are written as datacenter_asns.txt and vpn_asns.txt, matched
against the ASN database's answer at lookup time (a datacenter's new prefixes are caught before
the lists are regenerated). MANIFEST.json records the SOURCE lines, the inputs' sha256 and the
counts per label; the bytes depend only on the inputs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

from kyc.signals.netintel import source_date

# ipranges folder -> (record key, value). Cloud: machines anyone can rent. Crawler: networks the
# operators publish for their crawlers, link-preview fetchers and uptime monitors.
IPRANGES = {
    "amazon": ("cloud", "amazon"), "google": ("cloud", "google"), "microsoft": ("cloud", "microsoft"),
    "oracle": ("cloud", "oracle"), "digitalocean": ("cloud", "digitalocean"), "linode": ("cloud", "linode"),
    "vultr": ("cloud", "vultr"), "github": ("cloud", "github"), "cloudflare": ("cloud", "cloudflare"),
    "googlebot": ("crawler", "googlebot"), "bing": ("crawler", "bingbot"), "openai": ("crawler", "openai"),
    "perplexity": ("crawler", "perplexity"), "duckduckbot": ("crawler", "duckduckbot"),
    "duckassistbot": ("crawler", "duckassistbot"), "facebook": ("crawler", "facebook"),
    "twitter": ("crawler", "twitter"), "telegram": ("crawler", "telegram"), "pingdom": ("crawler", "pingdom"),
    "statuscake": ("crawler", "statuscake"),
    "protonvpn": ("vpn", True),
    "apple-proxy": ("privacy_relay", "icloud_private_relay"),
}
X4BNET = {"datacenter": ("hosting", True), "vpn": ("vpn", True)}
SOURCES = ("x4bnet-lists_vpn", "ipranges", "tor")
# Files copied beside the output, per source folder: licences, readmes, SOURCE.
_BESIDE = ("LICENSE", "License.md", "README.md", "SOURCE")
_ASN = re.compile(r"^AS(\d+)\b")
DATABASE_TYPE = "kyc-NetIntel"


class BuildError(Exception):
    pass


def _text(path: Path) -> str:
    if not path.is_file():
        raise BuildError(f"{path} is missing")
    return path.read_text(encoding="utf-8")


def _networks(path: Path) -> Iterable[tuple[int, int, int]]:
    for number, line in enumerate(_text(path).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            net = ipaddress.ip_network(line, strict=False)
        except ValueError:
            raise BuildError(f"{path}:{number}: not an address or network: {line[:60]!r}") from None
        yield net.version, int(net.network_address), int(net.broadcast_address)


def _asns(path: Path) -> list[tuple[int, str]]:
    out = []
    for line in _text(path).splitlines():
        match = _ASN.match(line.strip())
        if match:
            out.append((int(match.group(1)), line.split("#", 1)[1].strip() if "#" in line else ""))
    if not out:
        raise BuildError(f"{path}: no ASN lines (AS<number> # name)")
    return out


def labelled_ranges(src: Path) -> tuple[list[tuple[int, int, int, tuple[str, Any]]], list[Path]]:
    """Every (version, first, last, (key, value)) the source folders list, and the files read."""
    for name in SOURCES:
        if not (src / name).is_dir():
            raise BuildError(f"{src / name} is missing: --from must hold {', '.join(SOURCES)}")
    rows: list[tuple[int, int, int, tuple[str, Any]]] = []
    read: list[Path] = []
    for folder, label in X4BNET.items():
        for version in (4, 6):
            path = src / "x4bnet-lists_vpn" / "output" / folder / f"ipv{version}.txt"
            rows.extend((*r, label) for r in _networks(path))
            read.append(path)
    for folder, label in IPRANGES.items():
        for version in (4, 6):
            path = src / "ipranges" / folder / f"ipv{version}_merged.txt"
            if path.exists():
                rows.extend((*r, label) for r in _networks(path))
                read.append(path)
    path = src / "tor" / "tor-exit-nodes.lst"
    rows.extend((*r, ("tor", True)) for r in _networks(path))
    read.append(path)
    return rows, read


def disjoint(rows: list[tuple[int, int, int, tuple[str, Any]]]) -> list[tuple[int, int, int, frozenset]]:
    """Split overlapping ranges at every boundary; each piece carries the labels covering it."""
    out: list[tuple[int, int, int, frozenset]] = []
    for version in (4, 6):
        events: dict[int, list[tuple[int, tuple[str, Any]]]] = {}
        for v, first, last, label in rows:
            if v == version:
                events.setdefault(first, []).append((1, label))
                events.setdefault(last + 1, []).append((-1, label))
        active: dict[tuple[str, Any], int] = {}
        points = sorted(events)
        for point, following in zip(points, points[1:] + [None]):
            for delta, label in events[point]:
                active[label] = active.get(label, 0) + delta
                if not active[label]:
                    del active[label]
            if active and following is not None:
                out.append((version, point, following - 1, frozenset(active)))
    return out


def record_of(labels: frozenset) -> dict[str, Any]:
    """{"hosting": true, "cloud": "amazon", ...}; two values for one key (a range two providers
    publish) keep the first in sorted order."""
    record: dict[str, Any] = {}
    for key, value in sorted(labels, key=repr):
        record.setdefault(key, value)
    return record


def build(src: Path, outdir: Path) -> dict[str, Any]:
    from kyc.geoip_build import _write, _writer

    rows, read = labelled_ranges(src)
    asn_lists = {kind: _asns(src / "x4bnet-lists_vpn" / "input" / kind / "ASN.txt") for kind in ("datacenter", "vpn")}
    pieces = disjoint(rows)
    groups: dict[Any, tuple[dict, list]] = {}
    for version, first, last, labels in pieces:
        record = record_of(labels)
        key = tuple(sorted(record.items(), key=repr))
        groups.setdefault(key, (record, []))[1].append((version, first, last))
    sources = {name: (src / name / "SOURCE").read_text(encoding="utf-8").strip()
               for name in SOURCES if (src / name / "SOURCE").exists()}
    epoch = _newest_source_date(sources.values())
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / "kyc-netintel.mmdb"
    writer = _writer(DATABASE_TYPE, "Hosting, VPN, cloud, crawler, Tor and privacy-relay ranges from X4B lists_vpn "
                     "(MIT), lord-alfred/ipranges (CC0) and a Tor exit list (MIT)", epoch)
    networks = _write(writer, groups, out)
    for kind, asns in asn_lists.items():
        read.append(src / "x4bnet-lists_vpn" / "input" / kind / "ASN.txt")
        lines = [f"# {kind} ASNs from X4B lists_vpn input/{kind}/ASN.txt (MIT); written by `kyc netintel build`",
                 "# kyc: numbers", *(f"{asn}  # {name}" if name else str(asn) for asn, name in sorted(asns))]
        (outdir / f"{kind}_asns.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in SOURCES:
        (outdir / name).mkdir(exist_ok=True)
        for filename in _BESIDE:
            if (src / name / filename).exists():
                shutil.copyfile(src / name / filename, outdir / name / filename)
    counts: dict[str, int] = {}
    for _v, _f, _l, label in rows:
        name = label[0] if label[1] is True else f"{label[0]}:{label[1]}"
        counts[name] = counts.get(name, 0) + 1
    manifest = {
        "sources": sources,
        "inputs": {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(read)},
        "listed_ranges": dict(sorted(counts.items())),
        "outputs": {out.name: hashlib.sha256(out.read_bytes()).hexdigest()},
    }
    (outdir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"file": out.name, "records": len(groups), "networks": networks, "bytes": out.stat().st_size,
            "ranges": len(rows)}


def _newest_source_date(lines: Iterable[str]) -> int:
    """The build epoch: the newest of the SOURCE lines' dates."""
    return max((int(date.timestamp()) for date in map(source_date, lines) if date is not None), default=0)
