"""The events table (``dt=YYYY-MM-DD`` partitions of entity, ip, ts, source file): readers and day windows.

The tutorial trains on the first days, validates on the next one and tests on the rest; here the
split is by whole UTC days (``dt`` partitions), so that each split reads only its own partitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
from datetime import date, timedelta

from ipinsights.storage.filesystems import path_exists


def read_events(spark, path: str, start_date: str | None = None, end_date: str | None = None):
    """The ingest job's events table, pruned to the ``dt`` partitions in [start_date, end_date]."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(path)
    if start_date:
        df = df.where(F.col("dt") >= F.lit(start_date))
    if end_date:
        df = df.where(F.col("dt") <= F.lit(end_date))
    return df


#: The ingest job's events table (partition column ``dt`` read as a string, not inferred as a date).
EVENTS_SCHEMA = "entity string, ip string, ip_int long, ip_version int, ts timestamp, dt string"


def day_range(start: str, end: str) -> list[str]:
    """``YYYY-MM-DD`` days from ``start`` to ``end`` inclusive (refuses a reversed or malformed range)."""
    try:
        a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as exc:
        raise ValueError(f"dates must look like 2024-01-31: {exc}") from None
    if b < a:
        raise ValueError(f"end date {end} is before start date {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def read_table_days(spark: SparkSession, path: str, schema: str, days: Iterable[str]) -> DataFrame:
    """Rows of the ``dt``-partitioned Parquet table at ``path`` for ``days`` (partition-pruned).

    A table that does not exist yet reads as empty (a first run, or a day nobody ingested), not an error.
    """
    from pyspark.sql import functions as F

    days = sorted(set(days))
    if not path_exists(spark, path):
        return spark.createDataFrame([], schema)
    df = spark.read.schema(schema).option("basePath", path).parquet(path)
    return df.where(F.col("dt").isin(days))


def read_events_days(spark: SparkSession, path: str, start: str, end: str) -> DataFrame:
    """The events table's rows for days ``start``..``end`` (UTC, inclusive): entity, ip, ip_int, ip_version, ts, dt."""
    return read_table_days(spark, path, EVENTS_SCHEMA, day_range(start, end))


def present_days(df: DataFrame) -> set[str]:
    """Distinct ``dt`` values of ``df`` (on a partitioned table this reads only file metadata)."""
    return {r["dt"] for r in df.select("dt").distinct().collect()}


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
    first = date.fromisoformat(start) if isinstance(start, str) else start

    def window(offset: int, n: int) -> tuple[date, date] | None:
        return (first + timedelta(days=offset), first + timedelta(days=offset + n - 1)) if n else None

    return DayWindows(
        train=window(0, train_days),  # type: ignore[arg-type]
        validation=window(train_days, validation_days),
        test=window(train_days + validation_days, test_days),
    )


def time_window_split(
    spark, events_path: str, train_days: int, validation_days: int = 1, test_days: int = 0, start: str | None = None
) -> dict:
    """``{"train": df, "validation": df, "test": df}`` (splits with 0 days left out) from the events table.

    ``start`` defaults to the table's first ``dt``, found from the partition column alone (a metadata
    query over the ``dt=`` folder names, not a scan of the data).
    """
    from pyspark.sql import functions as F

    if start is None:
        first = read_events(spark, events_path).agg(F.min("dt")).first()[0]
        if first is None:
            raise ValueError(f"{events_path}: the events table holds no rows")
        start = str(first)
    windows = day_windows(start, train_days, validation_days, test_days)
    out = {}
    for name in ("train", "validation", "test"):
        w = getattr(windows, name)
        if w is not None:
            out[name] = read_events(spark, events_path, str(w[0]), str(w[1]))
    return out
