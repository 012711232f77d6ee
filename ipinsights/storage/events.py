"""The events table (``dt=`` partitions of entity, ip, ts, source file, user agent): its reader and day windows.

The tutorial trains on the first days, validates on the next one and tests on the rest; here the
split is by whole UTC days (``dt`` partitions), so that each split reads only its own partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from ipinsights.core.config import ConfigError
from ipinsights.storage.filesystems import path_exists, resolve_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

#: The ingest job's events table. ``dt`` is read as a string (not inferred as a date), so that days
#: compare and print the same in every reader. The user agent and its family, OS and device type
#: (:mod:`ipinsights.core.useragent`) came later: a table written before them reads them as nulls.
EVENTS_SCHEMA = (
    "entity string, ip string, ip_int long, ip_version int, ts timestamp, source_file string, "
    "user_agent string, ua_family string, ua_os string, ua_device string, dt string"
)
#: The columns an event gets from its user agent (the ingest's classifier fills them).
AGENT_FIELDS = ("user_agent", "ua_family", "ua_os", "ua_device")


def _parse_day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} must look like 2024-01-31") from None


def day_range(start: str, end: str) -> list[str]:
    """``YYYY-MM-DD`` days from ``start`` to ``end`` inclusive.

    A reversed or malformed range is a bad setting (:class:`ConfigError`, a ``ValueError``): every job
    maps it to a usage error.
    """
    a, b = _parse_day(start, "start date"), _parse_day(end, "end date")
    if b < a:
        raise ConfigError(f"end date {end} is before start date {start}")
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _partitioned(spark: SparkSession, path: str, schema: str | StructType) -> DataFrame:
    # basePath: ``dt`` stays a column even where ``path`` is one partition's folder.
    path = resolve_uri(spark, path)  # s3:// is s3a:// to plain Hadoop
    return spark.read.schema(schema).option("basePath", path).parquet(path)


def read_events(spark: SparkSession, path: str, start: str | None = None, end: str | None = None) -> DataFrame:
    """The events table's rows of days ``start``..``end`` (UTC, inclusive; either bound may be left
    open), partition-pruned: entity, ip, ip_int, ip_version, ts, source_file, user_agent, ua_family, ua_os,
    ua_device (null in rows ingested before these columns, and for Common-format lines), dt.

    The missing-table rule: a ``path`` that does not exist is an error (:class:`FileNotFoundError`
    naming it), because a typo must never read as "no events"; a day that the table does not hold
    reads as no rows (a day nobody ingested, or a quiet one).
    """
    from pyspark.sql import functions as F

    if start is not None and end is not None:
        day_range(start, end)  # checks both dates and their order
    else:
        for text, what in ((start, "start date"), (end, "end date")):
            if text is not None:
                _parse_day(text, what)
    if not path_exists(spark, path):
        raise FileNotFoundError(f"events table {path} does not exist (run the ingest job first, or check the path)")
    df = _partitioned(spark, path, EVENTS_SCHEMA)
    if start is not None:
        df = df.where(F.col("dt") >= F.lit(start))  # ISO days order as strings
    if end is not None:
        df = df.where(F.col("dt") <= F.lit(end))
    return df


def read_table_days(spark: SparkSession, path: str, schema: str | StructType, days: Iterable[str]) -> DataFrame:
    """Rows of ``days`` from a ``dt``-partitioned table a job writes (scores, flagged), partition-pruned.

    Unlike the events table (:func:`read_events`), such an output table is read back by the job that
    writes it: where no day had rows it was never created, and it reads as empty.
    """
    from pyspark.sql import functions as F

    if not path_exists(spark, path):
        return spark.createDataFrame([], schema)
    return _partitioned(spark, path, schema).where(F.col("dt").isin(sorted(set(days))))


def present_days(df: DataFrame) -> set[str]:
    """Distinct ``dt`` values of ``df`` (on a partitioned table this reads only file metadata)."""
    return {str(r["dt"]) for r in df.select("dt").distinct().collect()}


@dataclass(frozen=True)
class DayWindows:
    """Inclusive ``(first, last)`` dates of each split; a split with 0 days is ``None``."""

    train: tuple[date, date]
    validation: tuple[date, date] | None
    test: tuple[date, date] | None


def day_windows(start: date | str, train_days: int, validation_days: int = 1, test_days: int = 0) -> DayWindows:
    """Consecutive windows of whole days starting at ``start`` (train, then validation, then test)."""
    if train_days < 1 or validation_days < 0 or test_days < 0:
        raise ValueError(
            f"need train_days >= 1 and non-negative others, got {train_days}/{validation_days}/{test_days}"
        )
    first = _parse_day(start, "start date") if isinstance(start, str) else start

    def window(offset: int, n: int) -> tuple[date, date]:
        return first + timedelta(days=offset), first + timedelta(days=offset + n - 1)

    return DayWindows(
        train=window(0, train_days),
        validation=window(train_days, validation_days) if validation_days else None,
        test=window(train_days + validation_days, test_days) if test_days else None,
    )


def time_window_split(
    spark: SparkSession,
    events_path: str,
    train_days: int,
    validation_days: int = 1,
    test_days: int = 0,
    start: str | None = None,
) -> dict[str, DataFrame]:
    """``{"train": df, "validation": df, "test": df}`` (splits with 0 days left out) from the events table.

    ``start`` defaults to the table's first ``dt``, found from the partition column alone (a metadata
    query over the ``dt=`` folder names, not a scan of the data).
    """
    from pyspark.sql import functions as F

    if start is None:
        row = read_events(spark, events_path).agg(F.min("dt")).first()
        if row is None or row[0] is None:
            raise ValueError(f"{events_path}: the events table holds no rows")
        start = str(row[0])
    windows = day_windows(start, train_days, validation_days, test_days)
    out = {}
    for name in ("train", "validation", "test"):
        w = getattr(windows, name)
        if w is not None:
            out[name] = read_events(spark, events_path, str(w[0]), str(w[1]))
    return out
