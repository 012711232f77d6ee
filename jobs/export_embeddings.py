"""``ipinsights export-embeddings``: IP and entity embeddings of a model to Parquet.

    ipinsights export-embeddings --model model/ --output ips.parquet --ip-range 10.0.0.0/16 192.0.2.0/24
    ipinsights export-embeddings --model model/ --output ips.parquet --ips addresses.txt
    ipinsights export-embeddings --model model/ --output users.parquet --entities users.txt
    ipinsights export-embeddings --model model/ --output ips.parquet --ip-range 10.0.0.0/8 \\
        --entities users.txt --entities-out users.parquet

``--ips``: one address or CIDR range per line; ``--entities``: one entity per line (blank lines and
``#`` comments skipped in both). Columns: ``ip`` or ``entity``, and ``embedding`` (float32 x vector_dim).
At most ``--max-addresses`` addresses (default 16,777,216: a /8), refused before anything is written.

Exit status: 0 ok, 2 a bad range, input line or model (nothing half-written is left behind).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ipinsights.serve.export import DEFAULT_BATCH, DEFAULT_MAX_ADDRESSES, ExportError, export_requested
from ipinsights.storage.modelfile import ModelFileError
from ipinsights_jobs._common import EXIT_USAGE, Job, JobContext, add_output_arg, require

JOB = Job("export-embeddings", spark=False, errors=[(ExportError, EXIT_USAGE), (ModelFileError, EXIT_USAGE)])


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, export, print what was written."""
    parser = argparse.ArgumentParser(
        prog="ipinsights export-embeddings", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model directory")
    add_output_arg(parser, "Parquet file for the IP embeddings (or the entities' alone)", old="--out")
    parser.add_argument("--ips", help="file: one IPv4 address or CIDR range per line")
    parser.add_argument("--ip-range", nargs="+", default=[], metavar="CIDR", help="IPv4 ranges, e.g. 10.0.0.0/24")
    parser.add_argument("--entities", help="file: one entity per line")
    parser.add_argument("--entities-out", help="Parquet file for the entity embeddings when IPs are exported too")
    parser.add_argument("--asn-table", help="ip2asn TSV(s) of a model trained with one (default: where it was then)")
    parser.add_argument("--max-addresses", type=int, default=DEFAULT_MAX_ADDRESSES, help="refuse more addresses")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows per batch (bounds memory)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    require(parser, args, "output")
    want_ips = bool(args.ips or args.ip_range)
    if not want_ips and not args.entities:
        parser.error("nothing to export: give --ips, --ip-range and/or --entities")
    if want_ips and args.entities and not args.entities_out:
        parser.error("exporting IPs and entities together: give --entities-out for the entities")
    if args.batch_size < 1 or args.max_addresses < 1:
        parser.error("--batch-size and --max-addresses must be positive")

    def body(ctx: JobContext) -> None:
        from ipinsights.score.scorer import Scorer

        scorer = Scorer.load(args.model, asn_table=args.asn_table)
        exported = export_requested(
            scorer,
            args.output,
            ip_ranges=args.ip_range,
            ip_file=args.ips,
            entity_file=args.entities,
            entities_out=args.entities_out,
            batch=args.batch_size,
            max_addresses=args.max_addresses,
        )
        for kind, out, rows in exported:
            print(f"{out}: {rows} {kind} embeddings (vector_dim {scorer.vector_dim})")

    return JOB.run(args, body)


if __name__ == "__main__":
    sys.exit(main())
