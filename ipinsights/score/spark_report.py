"""The daily report's queries on Spark: per-day counts, score histograms, the cases it leads with and the
flagged events of its CSV; all bounded (days, bins, ``max_cases``, the verdict list), never a table of scores.
The page itself is written by :mod:`ipinsights.score.report`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ipinsights.score.cases import NETWORK, CaseSettings
from ipinsights.score.report import CASE_COLUMNS, COUNT_NAMES, CaseView, Histogram
from ipinsights.score.rules import RULE_INVALID, RULE_LEARNING, RULE_SCORE
from ipinsights.score.schemas import CASES
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.verdicts import ANY_ENTITY, Rule, VerdictSet
from ipinsights.storage.events import day_range, present_days, read_table_days

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["case_views", "day_counts", "flagged_rows", "score_histograms"]


def day_counts(scores: DataFrame, days: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per-day counts (:data:`COUNT_NAMES`) in one aggregation; days without rows get zeros."""
    from pyspark.sql import functions as F

    def n(cond: Column) -> Column:
        return F.sum(F.when(cond, 1).otherwise(0)).cast("long")

    rows = (
        scores.groupBy("dt")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.count("anomaly_score").alias("scored"),
            n(F.col("unseen_entity")).alias("unseen_entity"),
            n(F.col("rule") == RULE_LEARNING).alias("learning_period"),
            n(F.col("rule") == RULE_INVALID).alias("invalid_ip"),
            n(F.col("level") == "medium").alias("level_medium"),
            n(F.col("flagged")).alias("flagged"),
            n(F.col("flagged") & (F.col("rule") == RULE_SCORE)).alias("flagged_by_score"),
            n(F.col("flagged") & (F.col("rule") == RULE_LEARNING)).alias("flagged_learning_period"),
            n(F.col("flagged") & F.col("unseen_entity")).alias("flagged_unseen"),
        )
        .collect()
    )
    out = {d: dict.fromkeys(COUNT_NAMES, 0) for d in days}
    for r in rows:
        out[r["dt"]] = {k: int(r[k] or 0) for k in COUNT_NAMES}
    return out


def score_histograms(scores: DataFrame, bins: int = 60, column: str = "anomaly_score") -> dict[str, Histogram]:
    """Per-day histograms of ``column`` (the score in force: ``anomaly_score``, or ``risk_score`` with a fusion)
    over bins shared by all days (comparable across a backfill).

    Two small aggregations: the range, then counts per (day, flagged, bin): at most ``days * 2 * bins`` rows.
    """
    from pyspark.sql import functions as F

    s = F.col(column).cast("double")
    valid = scores.where(s.isNotNull() & ~F.isnan(s))
    row = valid.agg(F.min(s), F.max(s)).first()
    assert row is not None  # an aggregation without grouping has exactly one row
    lo, hi = row
    if lo is None:
        return {}
    width = (hi - lo) / bins if hi > lo else 1.0
    b = F.least(F.greatest(F.floor((s - F.lit(lo)) / F.lit(width)), F.lit(0)), F.lit(bins - 1)).cast("int")
    rows = valid.groupBy("dt", "flagged", b.alias("bin")).count().collect()
    edges = lo + width * np.arange(bins + 1)
    out: dict[str, Histogram] = {}
    for r in rows:
        h = out.setdefault(r["dt"], Histogram(edges, np.zeros(bins, np.int64), np.zeros(bins, np.int64)))
        (h.flagged if r["flagged"] else h.normal)[r["bin"]] += r["count"]
    return out


TREND_DAYS = 7


def case_views(
    spark: SparkSession,
    cases_table: str,
    scores_table: str,
    days: Sequence[str],
    suppressed: Mapping[str, Mapping[str, Any]],
    verdicts: VerdictSet,
    verdict_rules: Sequence[Rule],
    settings: CaseSettings,
) -> dict[str, CaseView]:
    """Each day's :class:`CaseView`, from the published tables: three small queries for all days."""
    from pyspark.sql import functions as F

    first = (dt.date.fromisoformat(min(days)) - dt.timedelta(days=TREND_DAYS - 1)).isoformat()
    window = day_range(first, max(days))
    table = read_table_days(spark, cases_table, struct_type(CASES), window)
    scored = present_days(read_table_days(spark, scores_table, "entity string, dt string", window)) | set(days)
    per_day = {
        r["dt"]: r.asDict()
        for r in table.groupBy("dt")
        .agg(
            F.count(F.lit(1)).alias("cases"),
            F.sum(F.col("open").cast("int")).alias("open"),
            F.sum((F.col("kind") == NETWORK).cast("int")).alias("network_cases"),
        )
        .collect()
    }
    top: dict[str, list[dict[str, Any]]] = {d: [] for d in days}
    for r in (
        table.where(F.col("dt").isin(list(days)) & F.col("open") & (F.col("rank") <= settings.max_cases))
        .orderBy("dt", "rank")
        .collect()
    ):
        top[r["dt"]].append(r.asDict(recursive=True))
    returning: dict[str, list[dict[str, Any]]] = {d: [] for d in days}
    bad = [(r.entity, r.first, r.end) for r in verdict_rules if r.verdict == "malicious" and r.entity != ANY_ENTITY]
    if bad:
        scores = read_table_days(spark, scores_table, "entity string, ip string, ts timestamp, dt string", days)
        marks = F.broadcast(spark.createDataFrame(bad, "v_entity string, v_first string, v_end string"))
        seen = (
            scores.join(
                marks,
                (F.col("entity") == F.col("v_entity"))
                & (F.col("dt") >= F.col("v_first"))
                & (F.col("dt") < F.col("v_end")),
                "left_semi",
            )
            .groupBy("dt", "entity")
            .agg(
                F.count(F.lit(1)).alias("events"),
                F.min("ts").alias("first_ts"),
                F.max("ts").alias("last_ts"),
                F.slice(F.sort_array(F.collect_set("ip")), 1, 5).alias("ips"),
            )
            .orderBy("dt", "entity")
        )
        for r in seen.collect():
            returning[r["dt"]].append(r.asDict(recursive=True))
    out = {}
    for d in days:
        c = per_day.get(d, {})
        s = suppressed.get(d, {})
        counts = {
            "cases": int(c.get("cases") or 0),
            "open": int(c.get("open") or 0),
            "network_cases": int(c.get("network_cases") or 0),
            "suppressed_events": int(s.get("suppressed_events") or 0),
            "suppressed_entities": int(s.get("suppressed_entities") or 0),
            "verdicts_rejected": len(verdicts.rejected),
        }
        trend = [(t, int(per_day.get(t, {}).get("open") or 0) if t in scored else None) for t in window if t <= d]
        trend = trend[-TREND_DAYS:]
        out[d] = CaseView(top[d], counts, trend, settings.floor, settings.max_cases, returning[d], verdicts.rejected)
    return out


def flagged_rows(flagged: DataFrame, counts: Mapping[str, int]) -> Iterator[dict[str, Any]]:
    """The day's flagged events for its CSV (:data:`CASE_COLUMNS`), streamed to the driver a partition at a
    time: rarest first on one scale across rules (``normal_percentile``), raw score next (fixed thresholds
    have no table)."""
    from pyspark.sql import functions as F

    if not counts.get("flagged"):
        return iter(())
    ordered = flagged.select(*CASE_COLUMNS).orderBy(
        F.desc_nulls_last("normal_percentile"), F.desc_nulls_last("anomaly_score"), "entity", "ip"
    )
    return (r.asDict() for r in ordered.toLocalIterator())
