"""Ingest job: access logs -> dt-partitioned Parquet events, quarantine and a run summary.

    python jobs/ingest.py --config conf/ingest.yml --inputs='logs/*.gz' --output=out/events [--name=value ...]

Exit status: 0 ok, 2 bad configuration or no log files at an input, 3 too many bad lines (no events
written; see the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ipinsights.core.config import parse_overrides
from ipinsights.ingest.job import BadInputError, IngestConfig, run_ingest
from ipinsights.storage.logfiles import split_inputs
from ipinsights_jobs._common import EXIT_BAD_INPUT, Job, JobContext, add_spark_args, parse_with_overrides


def _print_summary(exc: BaseException) -> None:
    print(json.dumps(getattr(exc, "summary", {}), indent=2, sort_keys=True, default=str))


JOB = Job("ingest", IngestConfig, errors=[(BadInputError, EXIT_BAD_INPUT)], on_error=_print_summary)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: the project's conf/ingest.yml)")
    parser.add_argument("--verbose", action="store_true")
    add_spark_args(parser)
    args, overrides = parse_with_overrides(parser, argv)

    def body(ctx: JobContext) -> None:
        print(json.dumps(run_ingest(ctx.spark, ctx.cfg), indent=2, sort_keys=True, default=str))

    try:
        settings: dict[str, object] = dict(parse_overrides(overrides))
    except ValueError as exc:
        parser.error(str(exc))
    if "inputs" in settings:  # a list here: the generic comma split would cut {a,b} globs and strip [0-9]
        settings["inputs"] = split_inputs(str(settings["inputs"]))
    return JOB.run(args, body, args.config, settings)


if __name__ == "__main__":
    sys.exit(main())
