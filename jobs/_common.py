"""What every job entry point shares: logging, Spark session building, config overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; jobs print their results to stdout so that they can be piped.

    Our loggers (``ipinsights.*``) and Spark's TorchDistributor log at INFO; everything else only
    warnings, because some libraries (Horovod's rendezvous server) log chatter on the root logger.
    """
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    for name in ("ipinsights", "TorchDistributor"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """Parse the declared options; everything else must be a ``--name=value`` setting override."""
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (settings are given as --name=value)")
    return args, rest


def add_spark_args(parser: argparse.ArgumentParser) -> None:
    """``--master`` and ``--spark-conf k=v``: only used when the job builds its own session."""
    parser.add_argument("--master", default=None, help="Spark master (default: as spark-submit set it, else local[2])")
    parser.add_argument(
        "--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting (repeatable)"
    )


def build_spark(app_name: str, master: str | None = None, conf: Mapping[str, str] | list[str] = ()):
    """Get or create the SparkSession for a job.

    Under spark-submit the master and settings come from spark-submit; run directly (``python jobs/x.py``)
    the job gets a local[2] session so that it works on a laptop as it does on a cluster.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not _under_spark_submit():
        builder = builder.master("local[2]")
    for key, value in (
        ("spark.ui.showConsoleProgress", "false"),  # progress bars garble the job's log
        ("spark.sql.session.timeZone", "UTC"),
        ("spark.sql.execution.arrow.pyspark.enabled", "true"),
    ):
        builder = builder.config(key, value)
    items = conf.items() if isinstance(conf, Mapping) else (kv.split("=", 1) for kv in conf)
    for key, value in items:
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _under_spark_submit() -> bool:
    # spark-submit's PythonRunner hands the driver a py4j gateway; a plain `python jobs/x.py` has none.
    return "PYSPARK_GATEWAY_PORT" in os.environ
