"""Network intelligence from the bundled open lists (kyc/data/netintel), and `kyc netintel build`
compiling newer copies of them. Addresses are real entries of the bundled snapshots."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timezone
from pathlib import Path

import maxminddb
import pytest
from click.testing import CliRunner

from kyc import netintel_build
from kyc.cli import main
from kyc.signals import network
from kyc.signals.geoip import open_geoip
from kyc.signals.netintel import DATA_DIR, NetIntel


@pytest.fixture(scope="module")
def bundled():
    readers = open_geoip(None, None, None)
    assert readers.netintel is not None, "bundled kyc/data/netintel missing: run `kyc netintel build --from DIR`"
    return readers


def test_licences_and_sources_are_beside_the_data():
    manifest = json.loads((DATA_DIR / "MANIFEST.json").read_text())
    assert set(manifest["sources"]) == {"x4bnet-lists_vpn", "ipranges", "tor"}
    for source in manifest["sources"].values():
        assert source.startswith("commit ")
    assert "MIT License" in (DATA_DIR / "x4bnet-lists_vpn" / "README.md").read_text()
    assert "CC0" in (DATA_DIR / "ipranges" / "LICENSE").read_text() or \
        "Creative Commons" in (DATA_DIR / "ipranges" / "LICENSE").read_text()
    assert "MIT" in (DATA_DIR / "tor" / "License.md").read_text()
    assert manifest["listed_ranges"]["hosting"] > 40000 and manifest["listed_ranges"]["vpn"] > 10000


@pytest.mark.parametrize("ip, expected", [
    ("73.15.1.1", {"hosting": False, "vpn": False, "tor": False}),                      # Comcast, a home ISP
    ("52.94.0.1", {"hosting": True, "cloud": "amazon", "vpn": False}),
    ("167.99.0.1", {"hosting": True, "cloud": "digitalocean"}),
    ("66.249.66.1", {"hosting": True, "crawler": "googlebot"}),
    ("185.220.101.1", {"tor": True}),
])
def test_facts_of_well_known_networks(bundled, ip, expected):
    facts = network.network_signals(ip, bundled)
    assert {k: facts.get(k) for k in expected} == expected
    assert "privacy_relay" not in facts


@pytest.mark.parametrize("ip, relay", [
    ("172.224.226.1", "icloud_private_relay"),            # Apple's published egress (on Akamai, AS36183)
    ("2a02:26f7:b00a:4000::1", "icloud_private_relay"),
    ("104.28.1.1", "cloudflare_warp"),                    # Cloudflare's network, outside its proxy ranges
])
def test_privacy_relays_are_neither_hosting_nor_vpn(bundled, ip, relay):
    facts = network.network_signals(ip, bundled)
    assert facts["privacy_relay"] == relay
    assert facts["hosting"] is False and facts["vpn"] is False
    # ... although the datacenter and VPN lists do cover Apple's relay egress
    if relay == "icloud_private_relay":
        assert maxminddb.open_database(str(DATA_DIR / "kyc-netintel.mmdb")).get(ip).get("hosting") is True


def test_cloudflare_reverse_proxy_ranges_are_cloud_not_relay(bundled):
    facts = network.network_signals("104.16.0.1", bundled)
    assert facts["cloud"] == "cloudflare" and "privacy_relay" not in facts and facts["hosting"] is True


def test_vpn_from_the_vpn_lists(bundled):
    listed = next(line for line in (DATA_DIR / "vpn_asns.txt").read_text().splitlines() if line[:1].isdigit())
    intel = bundled.netintel
    assert int(listed.split()[0]) in intel.vpn_asns
    # a ProtonVPN exit (ipranges/protonvpn) and an X4B VPN range (output/vpn/ipv4.txt)
    assert network.network_signals("2.58.241.66", bundled)["vpn"] is True
    assert network.network_signals("2.26.157.9", bundled)["vpn"] is True


def test_datacenter_asn_is_hosting_outside_the_listed_ranges(bundled):
    intel = bundled.netintel
    assert 16509 in intel.datacenter_asns                           # AMAZON-02
    unlisted = ipaddress.ip_address("73.15.1.1")                    # a Comcast address...
    assert intel.facts(unlisted, None)["hosting"] is False
    assert intel.facts(unlisted, 16509)["hosting"] is True          # ...announced by AMAZON-02 tomorrow


# --- the build -------------------------------------------------------------------------------------

def _source_tree(root: Path) -> Path:
    """A miniature copy of the three upstream layouts, with rows taken from the real snapshots."""
    files = {
        "x4bnet-lists_vpn/output/datacenter/ipv4.txt": "1.12.0.0/14\n5.0.0.0/24\n",
        "x4bnet-lists_vpn/output/datacenter/ipv6.txt": "2001:550:1d05::/48\n",
        "x4bnet-lists_vpn/output/vpn/ipv4.txt": "5.0.0.128/25\n",
        "x4bnet-lists_vpn/output/vpn/ipv6.txt": "",
        "x4bnet-lists_vpn/input/datacenter/ASN.txt": "AS16509 # AMAZON-02 - Amazon.com, Inc., US\n",
        "x4bnet-lists_vpn/input/vpn/ASN.txt": "AS9009 # M247, GB (NordVPN)\n",
        "x4bnet-lists_vpn/README.md": "# VPN & datacenter IPs\nMIT License\n",
        "x4bnet-lists_vpn/SOURCE": "commit 14dd971b18758c856dd47b2fc51c9376d2413c6a 2026-08-22T16:37:12+00:00\n",
        "ipranges/amazon/ipv4_merged.txt": "52.94.0.0/22\n",
        "ipranges/apple-proxy/ipv4_merged.txt": "172.224.226.0/27\n5.0.0.0/26\n",
        "ipranges/apple-proxy/ipv6_merged.txt": "2a02:26f7:b00a:4000::/64\n",
        "ipranges/LICENSE": "CC0 1.0 Universal\n",
        "ipranges/SOURCE": "commit 167937a76d424a1a176eccda7d929e40cedd6b40 2026-08-22T09:44:53+00:00\n",
        "tor/tor-exit-nodes.lst": "185.220.101.1\n",
        "tor/License.md": "MIT License\n",
        "tor/SOURCE": "commit 8a1ac761a5230b328748b5c5353af38e83652b0b 2024-02-27T09:27:52+05:30\n",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_build_labels_overlaps_with_every_list_and_is_reproducible(tmp_path):
    src = _source_tree(tmp_path / "src")
    first = netintel_build.build(src, tmp_path / "a")
    second = netintel_build.build(src, tmp_path / "b")
    assert (tmp_path / "a" / "kyc-netintel.mmdb").read_bytes() == (tmp_path / "b" / "kyc-netintel.mmdb").read_bytes()
    assert first == second and first["ranges"] == 9
    intel = NetIntel.open(tmp_path / "a")
    ip = ipaddress.ip_address
    assert intel.ranges.get(ip("5.0.0.1")) == {"hosting": True, "privacy_relay": "icloud_private_relay"}
    assert intel.ranges.get(ip("5.0.0.130")) == {"hosting": True, "vpn": True}
    assert intel.ranges.get(ip("5.0.0.70")) == {"hosting": True}
    assert intel.ranges.get(ip("5.0.1.1")) is None
    assert intel.facts(ip("5.0.0.1"), None) == {"hosting": False, "vpn": False, "tor": False,
                                                "privacy_relay": "icloud_private_relay"}
    assert intel.facts(ip("185.220.101.1"), None)["tor"] is True
    assert intel.facts(ip("52.94.1.1"), None) == {"hosting": True, "vpn": False, "tor": False, "cloud": "amazon"}
    assert intel.datacenter_asns == {16509} and intel.vpn_asns == {9009}
    assert (tmp_path / "a" / "tor" / "SOURCE").read_text().startswith("commit 8a1ac76")
    assert (tmp_path / "a" / "ipranges" / "LICENSE").exists()
    manifest = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    assert manifest["listed_ranges"]["privacy_relay:icloud_private_relay"] == 3
    # Each list's upstream date, offsets honoured; the database is dated by the newest.
    utc = timezone.utc
    assert intel.sources == {"x4bnet-lists_vpn": datetime(2026, 8, 22, 16, 37, 12, tzinfo=utc),
                             "ipranges": datetime(2026, 8, 22, 9, 44, 53, tzinfo=utc),
                             "tor": datetime(2024, 2, 27, 3, 57, 52, tzinfo=utc)}
    assert intel.ranges.metadata().build_epoch == int(datetime(2026, 8, 22, 16, 37, 12, tzinfo=utc).timestamp())


def test_cli_refreshes_from_a_directory_and_names_bad_lines(tmp_path):
    src = _source_tree(tmp_path / "src")
    result = CliRunner().invoke(main, ["netintel", "build", "--from", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "kyc-netintel.mmdb: 9 listed ranges" in result.output
    (src / "ipranges" / "amazon" / "ipv4_merged.txt").write_text("52.94.0.0/22\n52.94.999.0/24\n")
    before = (tmp_path / "out" / "kyc-netintel.mmdb").read_bytes()
    bad = CliRunner().invoke(main, ["netintel", "build", "--from", str(src), "--out", str(tmp_path / "out")])
    assert bad.exit_code != 0
    assert "ipranges/amazon/ipv4_merged.txt:2: not an address or network" in bad.output
    assert (tmp_path / "out" / "kyc-netintel.mmdb").read_bytes() == before        # nothing changed
    missing = CliRunner().invoke(main, ["netintel", "build", "--from", str(tmp_path / "out")])
    assert missing.exit_code != 0 and "output/datacenter/ipv4.txt is missing" in missing.output
