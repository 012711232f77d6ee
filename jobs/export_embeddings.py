"""``ipinsights export-embeddings``: IP and entity embeddings of a model to Parquet.

    ipinsights export-embeddings --model model/ --out ips.parquet --ip-range 10.0.0.0/16 192.0.2.0/24
    ipinsights export-embeddings --model model/ --out ips.parquet --ips addresses.txt
    ipinsights export-embeddings --model model/ --out users.parquet --entities users.txt
    ipinsights export-embeddings --model model/ --out ips.parquet --ip-range 10.0.0.0/8 \\
        --entities users.txt --entities-out users.parquet

``--ips``: one address or CIDR range per line; ``--entities``: one entity per line (blank lines and
``#`` comments skipped in both). Columns: ``ip`` or ``entity``, and ``embedding`` (float32 x vector_dim).
At most ``--max-addresses`` addresses (default 16,777,216: a /8), refused before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

try:  # installed as ipinsights_jobs; also runnable as a file from the repository
    from ipinsights_jobs._common import setup_logging
except ImportError:  # pragma: no cover
    from _common import setup_logging

log = logging.getLogger("ipinsights.export")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, export, print what was written."""
    from ipinsights.score.scorer import Scorer
    from ipinsights.serve.export import (
        DEFAULT_BATCH,
        DEFAULT_MAX_ADDRESSES,
        ExportError,
        export_embeddings,
        ip_batches,
        parse_ranges,
        read_lines,
    )
    from ipinsights.storage.modelfile import ModelFileError

    parser = argparse.ArgumentParser(
        prog="ipinsights export-embeddings", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--out", required=True, help="Parquet file for the IP embeddings (or the entities' alone)")
    parser.add_argument("--ips", help="file: one IPv4 address or CIDR range per line")
    parser.add_argument("--ip-range", nargs="+", default=[], metavar="CIDR", help="IPv4 ranges, e.g. 10.0.0.0/24")
    parser.add_argument("--entities", help="file: one entity per line")
    parser.add_argument("--entities-out", help="Parquet file for the entity embeddings when IPs are exported too")
    parser.add_argument("--max-addresses", type=int, default=DEFAULT_MAX_ADDRESSES, help="refuse more addresses")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows per batch (bounds memory)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    want_ips = bool(args.ips or args.ip_range)
    if not want_ips and not args.entities:
        parser.error("nothing to export: give --ips, --ip-range and/or --entities")
    if want_ips and args.entities and not args.entities_out:
        parser.error("exporting IPs and entities together: give --entities-out for the entities")
    if args.batch_size < 1 or args.max_addresses < 1:
        parser.error("--batch-size and --max-addresses must be positive")
    try:
        ranges = parse_ranges(args.ip_range)
        scorer = Scorer.load(args.model)
        jobs = []
        if want_ips:
            batches = ip_batches(ranges, args.ips, batch=args.batch_size, max_addresses=args.max_addresses)
            jobs.append(("ip", args.out, {"ips": batches}))
        if args.entities:
            entities = (text for _, text in read_lines(args.entities))
            jobs.append(("entity", args.entities_out or args.out, {"entities": entities}))
        for kind, out, source in jobs:
            t0 = time.perf_counter()
            rows = export_embeddings(scorer, out, batch=args.batch_size, **source)
            log.info("%s embeddings: %d rows in %.1f s", kind, rows, time.perf_counter() - t0)
            print(f"{out}: {rows} {kind} embeddings (vector_dim {scorer.vector_dim})")
    except (ExportError, ModelFileError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
