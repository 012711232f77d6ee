"""Scoring on Spark: events in, events with their score columns out (and explanations for flagged rows).

Each is one ``mapInArrow`` (:func:`~ipinsights.score.spark_arrow.map_in_arrow`): every Python worker
loads its scorer once (:mod:`ipinsights.score.worker`) and runs a batch function of
:mod:`ipinsights.score.batches` over its batches, with the entity profiles' rows streamed along with the
events when there are profiles (each entity's once, not once per event).
"""

from __future__ import annotations

from functools import partial, reduce
from typing import TYPE_CHECKING

from ipinsights.score.batches import ScoringSetup, explain_batch, score_batch
from ipinsights.score.clients import DEVICE_COLUMNS
from ipinsights.score.profile_stream import attach_profiles
from ipinsights.score.schemas import EXPLAIN_FIELDS, SCORE_FIELDS, SCORES
from ipinsights.score.scorer import BATCH_ROWS
from ipinsights.score.spark_arrow import map_in_arrow, struct_type
from ipinsights.score.spark_profiles import join_profile_rows, with_profile_rows
from ipinsights.score.worker import BatchFn, ScorerSource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

__all__ = ["explain_rows", "score_events", "scores_by_day", "with_devices"]


def _map_with_profiles(
    df: DataFrame, setup: ScoringSetup, fn: BatchFn, fields: StructType, few: bool = False
) -> DataFrame:
    """``df`` plus ``fields``, by ``fn`` over its batches, which bring their entities' profile rows when
    ``setup`` has them: streamed along (:func:`with_profile_rows`), or joined on when ``df`` is ``few``
    rows (:func:`join_profile_rows`)."""
    schema = _appended(df, fields)
    if setup.profile_rows is None:
        return map_in_arrow(df, setup.source, fn, schema, setup.batch_size)
    if few:
        return map_in_arrow(join_profile_rows(df, setup.profile_rows), setup.source, fn, schema, setup.batch_size)
    both = with_profile_rows(df, setup.profile_rows)
    return map_in_arrow(both, setup.source, fn, schema, setup.batch_size, attach_profiles)


def _appended(df: DataFrame, fields: StructType) -> StructType:
    from pyspark.sql.types import StructType

    return StructType(df.schema.fields + fields.fields)


def score_events(df: DataFrame, setup: ScoringSetup | str, batch_size: int = BATCH_ROWS) -> DataFrame:
    """``df`` (with string columns ``entity`` and ``ip``) plus the score columns
    (:data:`~ipinsights.score.schemas.SCORE_FIELDS`).

    ``setup`` is a :class:`ScoringSetup` or just a model path (no profile, no thresholds: ``level`` and
    ``flagged`` null). Every input column passes through unchanged. Arrow batch size is Spark's
    ``spark.sql.execution.arrow.maxRecordsPerBatch``; ``batch_size`` (with a model path) is rows per torch call.
    """
    if not isinstance(setup, ScoringSetup):
        setup = ScoringSetup(ScorerSource(str(setup)), batch_size)
    return _map_with_profiles(df, setup, partial(score_batch, setup), struct_type(SCORE_FIELDS))


def with_devices(df: DataFrame, *columns: str) -> DataFrame:
    """``df``'s ``columns`` and the user-agent columns it has (:data:`~ipinsights.score.features.DEVICE_COLUMNS`,
    none in an events table written before them): what the fused score's device features read."""
    return df.select(*columns, *(c for c in DEVICE_COLUMNS if c in df.columns and c not in columns))


def explain_rows(df: DataFrame, setup: ScoringSetup) -> DataFrame:
    """``df`` (flagged rows with ``entity``, ``ip``) plus the explanation columns."""
    return _map_with_profiles(df, setup, explain_batch, struct_type(EXPLAIN_FIELDS), few=True)


def scores_by_day(events: DataFrame, days: list[str], setup: ScoringSetup) -> DataFrame | None:
    """The scores table's rows of ``events`` (:data:`~ipinsights.score.schemas.SCORES`), one day at a time;
    None without days.

    Each day is scored apart and gets its ``dt`` back in the JVM as a constant: the day never travels to
    the Python workers and back with every row (~5% of the job's CPU time).
    """
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    # The scores keep the user agent (the flagged events' explanations and cases name the device); the
    # parsed columns are read again from it where needed, for the few flagged rows.
    agent = [] if "user_agent" in events.columns else [F.lit(None).cast("string").alias("user_agent")]
    parts = [
        score_events(with_devices(events.where(F.col("dt") == day), "entity", "ip", "ts"), setup)
        .select("*", *agent)
        .withColumn("dt", F.lit(day))
        .select(*SCORES.names)
        for day in days
    ]
    return reduce(DataFrame.unionByName, parts) if parts else None
