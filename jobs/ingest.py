"""Ingest job: access logs -> dt-partitioned Parquet events, quarantine and a run summary.

    python jobs/ingest.py --config conf/ingest.yml --inputs='logs/*.gz' --output=out/events [--name=value ...]
    python jobs/ingest.py --date 2026-01-09 --inputs='s3://my-bucket/logs/{date:%Y/%m/%d}/*.gz' --output=...
    python jobs/ingest.py --start-date 2026-01-01 --end-date 2026-01-07 --inputs='logs/{date:%Y%m%d}-*.log' ...

An input holding ``{date:FMT}`` (a strftime format; ``{date}``: YYYY-MM-DD) is read for the day of
``--date`` (as a scheduler gives it), or once per day of ``--start-date``..``--end-date`` (a backfill);
inputs without one are read as they are. A day whose input matches no log file is an error naming it.

Exit status: 0 ok, 2 a usage error (a bad setting or date; an input, or a day, without log files;
a {date:...} input without --date, or --date without one), 3 too many bad lines (no events written;
see the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ipinsights.core.config import parse_overrides
from ipinsights.ingest.job import BadInputError, IngestConfig, run_ingest
from ipinsights.storage.logfiles import split_inputs
from ipinsights_jobs._common import (
    EXIT_BAD_INPUT,
    Job,
    JobContext,
    add_date_args,
    add_spark_args,
    date_span,
    parse_with_overrides,
)


def _print_summary(exc: BaseException) -> None:
    """Too many bad lines: the summary that decided it, on stdout as a run's summary goes; any other error
    (a usage error: a setting, an input or a day without logs) its message, as every job prints one."""
    if isinstance(exc, BadInputError):
        print(json.dumps(exc.summary, indent=2, sort_keys=True, default=str))
    else:
        print(f"error: {exc}", file=sys.stderr)


JOB = Job("ingest", IngestConfig, errors=[(BadInputError, EXIT_BAD_INPUT)], on_error=_print_summary)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: the project's conf/ingest.yml)")
    add_date_args(
        parser,
        "the day to read: put into each input's {date:FMT} placeholder; refused where no input holds "
        "one (it would read the same files whatever the day)",
    )
    parser.add_argument("--verbose", action="store_true")
    add_spark_args(parser)
    args, overrides = parse_with_overrides(parser, argv)
    span = date_span(parser, args)

    def body(ctx: JobContext) -> None:
        print(json.dumps(run_ingest(ctx.spark, ctx.cfg), indent=2, sort_keys=True, default=str))

    try:
        settings: dict[str, object] = dict(parse_overrides(overrides))
    except ValueError as exc:
        parser.error(str(exc))
    if "inputs" in settings:  # a list here: the generic comma split would cut {a,b} globs and strip [0-9]
        settings["inputs"] = split_inputs(str(settings["inputs"]))
    if span is not None:
        settings["start_date"], settings["end_date"] = span
    return JOB.run(args, body, args.config, settings)


if __name__ == "__main__":
    sys.exit(main())
