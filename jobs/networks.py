"""The networks cache: fetch ip2asn tables (and MaxMind's GeoLite2 CSVs) for ``model.asn_table: auto``.

    ipinsights networks fetch [--cache DIR_OR_URI] [--url URL] [--maxmind-license-key KEY]
    ipinsights networks list [--cache DIR_OR_URI] [--json]

``fetch`` downloads iptoasn.com's ``ip2asn-combined.tsv.gz`` (``--url``), verifies it (intact gzip, an
ip2asn table the project reads) and keeps it in the cache as a new version unless the same content is
there already; with a MaxMind license key (``--maxmind-license-key`` or ``$MAXMIND_LICENSE_KEY``) also
the GeoLite2 ASN and Country CSV zips, checked against the sha256 MaxMind publishes. The cache is
``--cache``, else ``$IPINSIGHTS_NETWORKS_CACHE``, else ``~/.cache/ipinsights/networks``. Prints one JSON
line per source fetched. Exit status: 0 ok, 1 a download failed or did not verify (the cache unchanged),
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict

from ipinsights.storage.network_cache import (
    IP2ASN_URL,
    MAXMIND_EDITIONS,
    MAXMIND_URL,
    DownloadError,
    NetworkCache,
    fetch_geolite2,
    fetch_ip2asn,
)
from ipinsights_jobs._common import EXIT_FAILURE, Job, JobContext

LICENSE_ENV = "MAXMIND_LICENSE_KEY"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ipinsights networks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the tables into the cache (verified, one version per content)")
    fetch.add_argument("--url", default=IP2ASN_URL, help=f"the ip2asn table (default {IP2ASN_URL})")
    fetch.add_argument("--no-ip2asn", action="store_true", help="fetch only the GeoLite2 CSVs")
    fetch.add_argument(
        "--maxmind-license-key", help=f"MaxMind license key: also fetch GeoLite2 (default ${LICENSE_ENV})"
    )
    fetch.add_argument(
        "--maxmind-url",
        default=MAXMIND_URL,
        help="GeoLite2 download URL template with {edition}, {license_key} and {suffix} (default MaxMind's)",
    )
    fetch.add_argument(
        "--maxmind-editions",
        default=",".join(MAXMIND_EDITIONS),
        help="comma-separated GeoLite2 editions (default %(default)s)",
    )
    fetch.add_argument("--timeout", type=float, default=300.0, help="seconds without data before a download fails")
    listing = sub.add_parser("list", help="the versions in the cache, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per version")
    for q in (fetch, listing):
        q.add_argument("--cache", help="the cache folder or URI (default $IPINSIGHTS_NETWORKS_CACHE or the user cache)")
        q.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.license_key = getattr(args, "maxmind_license_key", None) or os.environ.get(LICENSE_ENV)
    if args.command == "fetch" and args.no_ip2asn and not args.license_key:
        p.error(f"--no-ip2asn leaves nothing to fetch without a MaxMind license key (${LICENSE_ENV})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(ctx: JobContext) -> None:
        cache = NetworkCache(args.cache)
        if args.command == "list":
            _print_versions(cache, args.json)
            return
        done = [] if args.no_ip2asn else [fetch_ip2asn(cache, args.url, args.timeout)]
        if args.license_key:
            editions = [e.strip() for e in args.maxmind_editions.split(",") if e.strip()]
            done += fetch_geolite2(cache, args.license_key, editions, args.maxmind_url, args.timeout)
        for f in done:
            print(json.dumps({"id": f.version.id, "source": f.version.source, "added": f.added, "path": f.path}))

    return Job("networks", spark=False, errors=[(DownloadError, EXIT_FAILURE)]).run(args, body)


def _print_versions(cache: NetworkCache, as_json: bool) -> None:
    versions = cache.versions()
    if as_json:
        for v in versions:
            print(json.dumps({**asdict(v), "path": cache.path(v)}, sort_keys=True))
        return
    if not versions:
        print(f"no versions in {cache.root}: run `ipinsights networks fetch`")
        return
    print(f"{cache.root}:")
    print(f"  {'id':<44} {'date':<20} {'fetched':<20} {'MB':>7} {'ranges':>8}  fingerprint")
    for v in versions:
        ranges = "" if v.ranges is None else str(v.ranges)
        fp = (v.fingerprint or "")[:12]
        date = v.last_modified or v.fetched_at
        print(f"  {v.id:<44} {date:<20} {v.fetched_at:<20} {v.bytes / 1e6:>7.1f} {ranges:>8}  {fp}")


if __name__ == "__main__":
    sys.exit(main())
