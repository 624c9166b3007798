"""Network (ip.*) signals: the bundled open data on public IPs of well-known networks, MaxMind's
own test databases through the KYC_GEOIP_* settings, and an Anonymous IP file written with
mmdb-writer."""

from __future__ import annotations

from pathlib import Path

import netaddr
import pytest
from mmdb_writer import MMDBWriter

from kyc.config import PROJECT_ROOT
from kyc.engine.loader import load_list
from kyc.signals import network
from kyc.signals.geoip import BUNDLED_ASN, BUNDLED_COUNTRY, GeoIPError, open_geoip

MAXMIND = Path(__file__).parents[1] / "data" / "maxmind"


@pytest.fixture(scope="module")
def bundled():
    assert BUNDLED_ASN.exists() and BUNDLED_COUNTRY.exists(), "bundled GeoIP data missing: run `kyc geoip build`"
    return open_geoip(None, None, None)


@pytest.fixture(scope="module")
def maxmind():
    return open_geoip(str(MAXMIND / "GeoIP2-City-Test.mmdb"), str(MAXMIND / "GeoLite2-ASN-Test.mmdb"),
                      str(MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"))


def test_readers_are_opened_once_per_process(bundled):
    assert open_geoip(None, None, None) is bundled


def test_google_public_dns_is_on_googles_listed_network(bundled):
    # X4B's datacenter list holds AS15169 and ipranges publishes Google's ranges: not an eyeball network.
    for ip in ("8.8.8.8", "2001:4860:4860::8888"):
        facts = network.network_signals(ip, bundled)
        assert facts["asn"] == 15169 and facts["asn_org"] == "Google LLC"
        assert facts["hosting"] is True and facts["cloud"] == "google" and "privacy_relay" not in facts
    assert network.network_signals("8.8.8.8", bundled)["country"] == "US"


@pytest.mark.parametrize("ip, asn, country", [
    ("34.120.0.1", 396982, None),                  # Google Cloud
    ("52.94.0.1", 16509, None),                    # Amazon AWS
    ("20.0.0.1", 8075, None),                      # Microsoft Azure
    ("167.99.0.1", 14061, None),                   # DigitalOcean
])
def test_well_known_networks_with_the_bundled_data(bundled, ip, asn, country):
    facts = network.network_signals(ip, bundled)
    assert facts["asn"] == asn and facts["announced"] is True
    assert facts["hosting"] is True               # all of these are cloud / hosting networks
    assert len(facts["country"]) == 2
    if country:
        assert facts["country"] == country


def test_bundled_data_gives_country_and_network_not_city(bundled):
    facts = network.network_signals("8.8.8.8", bundled)
    assert facts["asn_org"] == "Google LLC" and facts["country"] == "US"
    # City, region and location need a city-level file (KYC_GEOIP_CITY_DB or --only city).
    assert not {"city", "region", "latitude", "longitude"} & set(facts)
    home = network.network_signals("81.2.69.160", bundled)     # Andrews & Arnold, a UK ISP
    assert home["country"] == "GB" and home["asn"] == 20712 and home["hosting"] is False


def test_ipv4_mapped_ipv6_is_the_ipv4_address(bundled):
    mapped = network.network_signals("::ffff:8.8.8.8", bundled)
    assert mapped == network.network_signals("8.8.8.8", bundled)
    assert ("ip", "8.8.8.8") in network.network_identifiers("::ffff:8.8.8.8")


@pytest.mark.parametrize("ip", ["10.0.0.1", "192.168.1.20", "127.0.0.1", "100.64.0.1", "169.254.1.1",
                                "::1", "fe80::1", "fc00::1", "240.0.0.1", "198.18.0.1"])
def test_private_and_reserved_ranges(bundled, ip):
    facts = network.network_signals(ip, bundled)
    assert facts["private"] is True and "documentation" not in facts
    assert "asn" not in facts and "country" not in facts and "hosting" not in facts


@pytest.mark.parametrize("ip", ["192.0.2.1", "198.51.100.255", "203.0.113.7", "2001:db8::1", "2001:db8:ffff::7",
                                "::ffff:203.0.113.7"])
def test_documentation_ranges_are_public_addresses_of_unknown_location(bundled, ip):
    facts = network.network_signals(ip, bundled)
    assert facts["private"] is False and facts["documentation"] is True
    # no GeoIP facts: neither a country nor an unannounced network (which unannounced_ip would hold)
    assert not {"asn", "country", "announced", "hosting", "vpn"} & set(facts)


@pytest.mark.parametrize("ip", ["192.0.1.255", "192.0.3.0", "198.51.99.1", "203.0.114.1", "2001:db9::1", "8.8.8.8"])
def test_the_neighbours_of_the_documentation_ranges_are_not_documentation(ip):
    assert "documentation" not in network.network_signals(ip)


def test_prefix_for_velocity_and_linking():
    assert network.network_signals("203.0.113.77")["prefix"] == "203.0.113.0/24"
    assert network.network_signals("2001:db8:1:2:3::4")["prefix"] == "2001:db8:1:2::/64"
    assert network.network_identifiers("8.8.8.8", 15169) == [("ip", "8.8.8.8"), ("ip_prefix", "8.8.8.0/24"),
                                                              ("asn", "15169")]


@pytest.mark.parametrize("ip", [None, "", "999.1.1.1", "8.8.8", "not an ip", "1.2.3.4/24", 12345, "::ffff::1"])
def test_absent_or_malformed_ip_gives_missing_signals(bundled, ip):
    assert network.network_signals(ip, bundled) == {}
    assert network.network_identifiers(ip) == []


def test_maxmind_databases_through_the_settings(maxmind):
    london = network.network_signals("81.2.69.160", maxmind)
    assert (london["country"], london["region"], london["city"]) == ("GB", "England", "London")
    assert london["latitude"] == pytest.approx(51.5142)
    telstra = network.network_signals("1.128.0.1", maxmind)
    assert telstra["asn"] == 1221 and telstra["asn_org"] == "Telstra Pty Ltd" and telstra["hosting"] is False
    vpn = network.network_signals("1.2.0.1", maxmind)
    assert vpn["anonymous"] is True and vpn["vpn"] is True and vpn["tor"] is False
    tor = network.network_signals("1.124.213.1", maxmind)
    assert tor["tor"] is True
    # MaxMind's test file marks 81.2.69.160 as everything, hosting provider included.
    assert london["tor"] and london["residential_proxy"] and london["hosting"] is True
    clean = network.network_signals("89.160.20.112", maxmind)
    assert clean["country"] == "SE" and clean["anonymous"] is False and clean["vpn"] is False


def test_anonymous_ip_file_written_with_mmdb_writer(tmp_path):
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Anonymous-IP",
                        languages=["en"], description={"en": "kyc test"})
    writer.insert_network(netaddr.IPSet(["198.51.100.0/24"]), {"is_anonymous": True, "is_hosting_provider": True})
    writer.insert_network(netaddr.IPSet(["192.0.2.0/24"]), {"is_anonymous": True, "is_residential_proxy": True})
    writer.insert_network(netaddr.IPSet(["81.2.69.0/24"]), {"is_anonymous": True, "is_public_proxy": True})
    path = tmp_path / "anon.mmdb"
    writer.to_db_file(str(path))
    readers = open_geoip(str(MAXMIND / "GeoIP2-City-Test.mmdb"), str(MAXMIND / "GeoLite2-ASN-Test.mmdb"), str(path))
    proxy = network.network_signals("81.2.69.160", readers)
    assert proxy["public_proxy"] is True and proxy["hosting"] is False
    # Documentation ranges carry no GeoIP data, so the anonymous facts of 198.51.100/24 never apply.
    assert "hosting" not in network.network_signals("198.51.100.1", readers)


def test_a_configured_file_of_the_wrong_type_is_refused():
    with pytest.raises(GeoIPError, match="expected"):
        open_geoip(str(MAXMIND / "GeoLite2-ASN-Test.mmdb"), None, None)
    with pytest.raises(GeoIPError):
        open_geoip("/nonexistent/GeoIP2-City.mmdb", None, None)


@pytest.mark.parametrize("ip_country, phone, zone, locale, expected", [
    ("US", "US", "US", "US", {"phone_country_mismatch": False, "timezone_country_mismatch": False,
                              "locale_country_mismatch": False}),
    ("NG", "GB", "US", "US", {"phone_country_mismatch": True, "timezone_country_mismatch": True,
                              "locale_country_mismatch": True}),
    ("US", None, None, "US", {"locale_country_mismatch": False}),
    (None, "GB", "GB", "GB", {}),
])
def test_mismatches_only_when_both_sides_are_known(ip_country, phone, zone, locale, expected):
    assert network.mismatches(ip_country, phone, zone, locale) == expected


def test_settings_point_the_runtime_at_maxmind_files(tmp_path):
    from kyc.config import Config
    from kyc.runtime import Runtime

    env = {"KYC_GEOIP_CITY_DB": str(MAXMIND / "GeoIP2-City-Test.mmdb"),
           "KYC_GEOIP_ASN_DB": str(MAXMIND / "GeoLite2-ASN-Test.mmdb"),
           "KYC_GEOIP_ANON_DB": str(MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb")}
    config = Config.from_env(env, database_url=f"sqlite:///{tmp_path}/kyc.db", data_dir=tmp_path, secret_key=b"k")
    runtime = Runtime.start(config, migrate=True)
    try:
        assert runtime.geoip is open_geoip(*env.values())           # one set of readers per process
        assert runtime.geoip.anon is not None
        facts = network.network_signals("1.128.0.1", runtime.geoip)
        assert facts["asn"] == 1221
    finally:
        runtime.engine.dispose()
