"""What every job entry point shares: one skeleton (:func:`run_job`), logging, Spark, config overrides.

Every job is the same five steps, so that they all behave alike on a cluster and in a test::

    parse argv -> load, log (and let the library save) the typed config -> build Spark if the job needs it
    -> call ONE library function -> map its errors to exit codes -> stop the Spark session it created

A job module keeps only its argument parser and the lines that turn parsed arguments into the library
call; everything else (including what an error exits with) lives here, and the work in the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The checkout's conf/ folder: defaults are found relative to the project, never the working directory.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: Where an installed wheel keeps the same files (setup.py ships conf/ as ipinsights_jobs/conf).
PACKAGED_CONF = "conf"
#: Exit statuses, the same for every job (README, "Exit status"): 0 ok; 1 a failure (a step or trial that
#: failed, a diverged training; anything unexpected, with its traceback: a bug); 2 a usage error (a bad
#: setting or argument, a missing or unusable input, a refused model file); 3 input over its bad-line limit;
#: 4 another run holds (or took over) what this run writes: nothing was lost, retry later.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_BUSY = 4

log = logging.getLogger("ipinsights.jobs")
C = TypeVar("C")


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    """A dataclass of a job's inputs filled from the parsed options of the same names."""
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def default_config(name: str) -> Path | Traversable | None:
    """The shipped ``conf/NAME.yml``: the installed package's (``importlib.resources``), else the checkout's;
    None where there is none (then the dataclass defaults)."""
    from importlib.resources import files

    packaged = files("ipinsights_jobs").joinpath(PACKAGED_CONF, f"{name}.yml")
    if packaged.is_file():
        return packaged
    path = CONF_DIR / f"{name}.yml"
    return path if path.exists() else None


@dataclass
class Job(Generic[C]):
    """One job's shape: its name, its config type and default config, and what its errors exit with.

    ``errors`` maps exception types (checked in order) to exit statuses; a ``UsageError`` (``ConfigError``,
    ``DataFormatError``, a model file or table that cannot be used...) and ``FileNotFoundError`` always exit
    ``EXIT_USAGE`` with the message, not a traceback, and a ``LeaseError`` (another run holds or took over
    what this one writes) ``EXIT_BUSY``. Any other exception is a bug: exit 1 with its traceback.
    """

    name: str
    config_type: type[C] | None = None
    spark: bool = True
    errors: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = ()
    # What to print for one of ``errors`` instead of ``error: <message>`` (e.g. a summary that the error carries).
    on_error: Callable[[BaseException], None] | None = None
    config_name: str | None = None  # default conf/<config_name or name>.yml
    app_name: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.app_name = f"ipinsights-{self.name}"

    def load(self, config: str | Path | Traversable | None, overrides: Sequence[str] | Mapping[str, Any]) -> C:
        """The typed config from ``config`` (default: the project's) and overrides, logged as resolved."""
        from ipinsights.core.config import config_to_dict, load_config

        assert self.config_type is not None
        path = config if config is not None else default_config(self.config_name or self.name)
        cfg = load_config(self.config_type, path, overrides)
        log.info("%s: resolved config: %s", self.name, json.dumps(config_to_dict(cfg), sort_keys=True, default=str))
        return cfg

    def run(
        self,
        args: argparse.Namespace,
        body: Callable[[Any], int | None],
        config: str | Path | Traversable | None = None,
        overrides: Sequence[str] | Mapping[str, Any] = (),
    ) -> int:
        """Steps 2-5 of the skeleton: config, Spark, ``body(ctx)``, errors to exit codes, Spark stopped.

        ``body`` gets a :class:`JobContext` (``ctx.cfg``, ``ctx.spark``) and returns an exit status
        (None = 0). ``args`` must carry ``verbose`` and, for Spark jobs, ``master`` and ``spark_conf``.
        """
        from ipinsights.core.errors import UsageError
        from ipinsights.storage.lease import LeaseError

        setup_logging(getattr(args, "verbose", False))
        spark = None
        owns_session = False
        try:
            cfg = self.load(config, overrides) if self.config_type is not None else None
            if self.spark:
                from pyspark.sql import SparkSession

                owns_session = SparkSession.getActiveSession() is None  # stop only a session this job created
                spark = build_spark(self.app_name, getattr(args, "master", None), getattr(args, "spark_conf", ()))
            return body(JobContext(cfg, spark)) or 0
        except Exception as exc:
            known = [*self.errors, ((UsageError, FileNotFoundError), EXIT_USAGE), (LeaseError, EXIT_BUSY)]
            for i, (kind, status) in enumerate(known):
                if isinstance(exc, kind):
                    log.error("%s: %s", self.name, exc)
                    if self.on_error is not None and i < len(self.errors):  # the job's own errors
                        self.on_error(exc)
                    else:  # the message alone, on stderr: a bad input is not a crash
                        print(f"error: {exc}", file=sys.stderr)
                    return status
            raise
        finally:
            if spark is not None and owns_session:
                spark.stop()


@dataclass(frozen=True)
class JobContext:
    """What a job's body is handed: the resolved config and the SparkSession (None for non-Spark jobs)."""

    cfg: Any
    spark: Any


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


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stored under the new one's name, with a warning naming the new one."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        print(f"warning: {option} is deprecated: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_output_arg(parser: argparse.ArgumentParser, help: str, old: str | None = None, **kwargs: Any) -> None:
    """``--output``: what the job writes (one flag name in every job); ``old`` is a spelling it replaces,
    still accepted with a deprecation warning."""
    parser.add_argument("--output", help=help, **kwargs)
    if old is not None:
        parser.add_argument(old, dest="output", action=_DeprecatedFlag, new="--output", help=argparse.SUPPRESS)


def require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """A usage error (exit 2) naming the flags of ``names`` that were not given (for flags that have an old
    spelling, which argparse's ``required`` cannot express)."""
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def add_date_args(parser: argparse.ArgumentParser, date_help: str) -> None:
    """``--date`` (what the one day does is the job's: ``date_help``) and ``--start-date``/``--end-date``
    for a backfill; :func:`date_span` checks them."""
    parser.add_argument("--date", metavar="YYYY-MM-DD", help=date_help)
    parser.add_argument("--start-date", metavar="YYYY-MM-DD", help="first day of a backfill (inclusive)")
    parser.add_argument("--end-date", metavar="YYYY-MM-DD", help="last day of a backfill (inclusive)")


def date_span(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str] | None:
    """The (first, last) day of :func:`add_date_args`' flags (``--date D``: (D, D)), None where none is
    given; a usage error for ``--date`` with a range, half a range, or a malformed or reversed one."""
    from ipinsights.core.config import ConfigError
    from ipinsights.storage.events import day_range

    if args.date and (args.start_date or args.end_date):
        parser.error("give --date or --start-date/--end-date, not both")
    if bool(args.start_date) != bool(args.end_date):
        parser.error("a backfill needs both --start-date and --end-date")
    span = (args.date, args.date) if args.date else (args.start_date, args.end_date)
    if not span[0]:
        return None
    try:
        day_range(*span)  # the one check of a day's spelling and of the range's order
    except ConfigError as exc:
        parser.error(str(exc))
    return span


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
