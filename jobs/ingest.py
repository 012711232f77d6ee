"""Ingest job: access logs -> dt-partitioned Parquet events, quarantine and a run summary.

    python jobs/ingest.py --config conf/ingest.yml --inputs='logs/*.gz' --output=out/events [--name=value ...]

Exit status: 0 ok, 2 bad configuration or no log files at an input, 3 too many bad lines (no events
written; see the summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ipinsights.core.config import ConfigError, load_config
from ipinsights.ingest.job import BadInputError, IngestConfig, run_ingest
from ipinsights_jobs._common import add_spark_args, build_spark, setup_logging

log = logging.getLogger("ipinsights.jobs.ingest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="conf/ingest.yml", help="YAML config (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true")
    add_spark_args(parser)
    args, overrides = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(IngestConfig, args.config, overrides)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2

    from pyspark.sql import SparkSession

    owns_session = SparkSession.getActiveSession() is None  # stop only a session this job created
    spark = build_spark("ipinsights-ingest", args.master, args.spark_conf)
    try:
        summary = run_ingest(spark, cfg)
    except BadInputError as exc:
        log.error("%s", exc)
        print(json.dumps(exc.summary, indent=2, sort_keys=True, default=str))
        return 3
    except FileNotFoundError as exc:  # an input glob that matches nothing: a typo, not a crash
        log.error("%s", exc)
        return 2
    finally:
        if owns_session:
            spark.stop()
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
