"""Export helpers: time-window splits of the events table and SageMaker's training CSV.

The tutorial trains on the first days, validates on the next one and tests on the rest; here the
split is by whole UTC days (``dt`` partitions), so that each split reads only its own partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ipinsights import io

__all__ = ["DayWindows", "day_windows", "time_window_split", "export_pairs_csv"]


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
        first = io.read_events(spark, events_path).agg(F.min("dt")).first()[0]
        if first is None:
            raise ValueError(f"{events_path}: the events table holds no rows")
        start = str(first)
    windows = day_windows(start, train_days, validation_days, test_days)
    out = {}
    for name in ("train", "validation", "test"):
        w = getattr(windows, name)
        if w is not None:
            out[name] = io.read_events(spark, events_path, str(w[0]), str(w[1]))
    return out


def export_pairs_csv(df, path: str, single_file: bool = True, ipv4_only: bool = True) -> None:
    """Write ``entity,ip`` as headerless CSV in SageMaker's training format (atomically).

    SageMaker's IP Insights only accepts IPv4, so IPv6 events are left out unless ``ipv4_only=False``.
    """
    from pyspark.sql import functions as F

    if ipv4_only:
        df = df.where(F.col("ip_version") == 4)
    io.write_pairs_csv_spark(df.select("entity", "ip"), path, single_file=single_file)
