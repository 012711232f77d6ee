"""Cases on Spark: a day's flagged events grouped per source (network cases) and per entity, then finished
(id, severity, summary: :func:`ipinsights.score.cases.finish_batch`) and ranked within their day.

What the grouping does is documented in :mod:`ipinsights.score.cases`; the steps here are named after it:
verdicts applied (benign rows suppressed, malicious ones marked), sources that reach a network case, the
aggregates both kinds share, then each kind's own columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ipinsights.score.cases import AGENT_SOURCE, ENTITY, MAX_MEMBERS, MAX_NETWORKS, NETWORK, CaseSettings, finish_batch
from ipinsights.score.clients import NEW_DEVICE
from ipinsights.score.schemas import CASES, CASES_UNRANKED, GROUPED
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_verdicts import rule_match, rules_df
from ipinsights.score.verdicts import Rule

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["Grouped", "calibrate_floor", "group_cases", "ranked"]


def _finish(floor: float | None) -> Any:
    """The ``mapInArrow`` function that finishes each batch of grouped cases (:func:`finish_batch`)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield finish_batch(b, floor)

    return run


def _network_columns(ev: DataFrame) -> DataFrame:
    """Flagged rows plus ``source`` (the /24 or /48), ``network_key`` (``AS<n>`` or the subnet) and its name."""
    from pyspark.sql import functions as F

    for column in ("user_agent", "device"):  # scored from events without user agents
        if column not in ev.columns:
            ev = ev.withColumn(column, F.lit(None).cast("string"))
    asn_key = F.when(F.col("asn").isNotNull(), F.concat(F.lit("AS"), F.col("asn").cast("string")))
    new = F.when(F.col("asn_seen").isNotNull(), ~F.col("asn_seen")).otherwise(
        ~F.coalesce(F.col("subnet_seen"), F.lit(False))
    )
    return (
        ev.withColumn("source", F.coalesce(F.col("subnet"), F.col("ip")))
        .withColumn("network_key", F.coalesce(asn_key, F.col("subnet"), F.col("ip")))
        .withColumn("network_name", F.coalesce(F.col("as_name"), F.col("subnet"), F.col("ip")))
        .withColumn("new_network", new)
    )


@dataclass
class Grouped:
    """The cases of some days (not yet ranked) and per-day counts of suppressed flagged events."""

    cases: DataFrame
    suppressed: DataFrame  # dt, suppressed_events, suppressed_entities


def group_cases(
    flagged: DataFrame, settings: CaseSettings, verdict_rules: Sequence[Rule] = (), day_events: DataFrame | None = None
) -> Grouped:
    """Flagged rows (the flagged table's columns) grouped into cases, with severity and summary.

    Benign verdict rules drop their rows (counted per day in ``suppressed``); malicious ones mark the
    cases whose events they match (``prior_verdict``). ``day_events`` (``dt``, ``entity``, ``events``: every
    event of the entity that day, flagged or not) gives entity cases their ``usual_today``.
    """
    ev, suppressed, bad = _apply_verdicts(_network_columns(flagged), verdict_rules)
    ev = _mark_network_sources(ev, settings.network_case_entities)
    common = _shared_aggregates(settings.case_events)
    names = GROUPED.names
    net_cases = _network_cases(ev, common, bad).select(*names)
    ent_cases = _entity_cases(ev, common, bad, _usual_today(flagged, day_events)).select(*names)
    finished = net_cases.unionByName(ent_cases).mapInArrow(_finish(settings.floor), struct_type(CASES_UNRANKED))
    return Grouped(finished, suppressed)


def _usual_today(flagged: DataFrame, day_events: DataFrame | None) -> DataFrame | None:
    """Per (dt, entity): the entity's events that day that were not flagged (None without ``day_events``)."""
    from pyspark.sql import functions as F

    if day_events is None:
        return None
    flagged_today = flagged.groupBy("dt", "entity").agg(F.count(F.lit(1)).alias("_flagged"))
    return day_events.join(flagged_today, ["dt", "entity"]).select(
        "dt", "entity", (F.col("events") - F.col("_flagged")).alias("usual_today")
    )


def _apply_verdicts(ev: DataFrame, verdict_rules: Sequence[Rule]) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The events no benign rule matches, the per-day counts of those it did (``suppressed``), and the
    (dt, entity, source) of events a malicious rule matches."""
    from pyspark.sql import functions as F

    spark = ev.sparkSession
    benign = F.broadcast(rules_df(spark, verdict_rules, "benign"))
    malicious = F.broadcast(rules_df(spark, verdict_rules, "malicious"))
    hit = ev.join(benign, rule_match(), "left_semi")
    suppressed = hit.groupBy("dt").agg(
        F.count(F.lit(1)).alias("suppressed_events"), F.countDistinct("entity").alias("suppressed_entities")
    )
    ev = ev.join(benign, rule_match(), "left_anti")
    bad = ev.join(malicious, rule_match(), "left_semi").select("dt", "entity", "source").distinct()
    return ev, suppressed, bad


def _mark_network_sources(ev: DataFrame, min_entities: int) -> DataFrame:
    """``ev`` plus ``_in_network_case``: its source had flagged events of ``min_entities`` entities that day.

    Two kinds of source, in this order: the address's /24 (/48); else its user-agent string, when fewer
    than ``min_entities`` training entities used it (a client few people have: a credential-stuffing tool
    is one case across many /24s, a common browser string never forms one). An event of a /24 case stays
    in it; only the others are grouped by their string (its ``source`` becomes ``UA <string>``).
    """
    from pyspark.sql import functions as F

    def sources(rows: DataFrame, key: str, flag: str) -> DataFrame:
        return (
            rows.groupBy("dt", key)
            .agg(F.countDistinct("entity").alias("_n"))
            .where(F.col("_n") >= min_entities)
            .select("dt", key, F.lit(True).alias(flag))
        )

    ev = ev.join(sources(ev, "source", "_in_subnet_case"), ["dt", "source"], "left")
    rare = F.col("user_agent").isNotNull() & (F.coalesce(F.col("agent_entities"), F.lit(0)) < min_entities)
    candidates = ev.where(F.col("_in_subnet_case").isNull() & rare)
    ev = ev.join(sources(candidates, "user_agent", "_in_agent_case"), ["dt", "user_agent"], "left")
    by_agent = F.col("_in_subnet_case").isNull() & rare & F.col("_in_agent_case").isNotNull()
    # The string is user-controlled: the report escapes it; a bounded prefix names the case.
    agent_source = F.concat(F.lit(AGENT_SOURCE), F.substring("user_agent", 1, 120))
    return (
        ev.withColumn("source", F.when(by_agent, agent_source).otherwise(F.col("source")))
        .withColumn("_in_network_case", F.col("_in_subnet_case").isNotNull() | by_agent)
        .drop("_in_subnet_case", "_in_agent_case")
    )


def _shared_aggregates(case_events: int) -> list[Column]:
    """The aggregates of both kinds of case: counts, times, the top event (by the score in force: ``risk_score``
    where there is one, else ``anomaly_score``), networks, the listed events."""
    from pyspark.sql import functions as F

    score = F.coalesce(F.col("risk_score"), F.col("anomaly_score")).cast("float")
    event = F.struct(
        F.col("risk_score").cast("float").alias("risk_score"),
        F.col("anomaly_score").cast("float").alias("anomaly_score"),
        "ts",
        "entity",
        "ip",
        "normal_percentile",
        "network_name",
        "new_network",
        "network_key",
        "subnet",
        "network",
    )
    return [
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("network_key").alias("networks"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
        F.max(score).alias("top_score"),
        F.max_by("ip", score).alias("top_ip"),
        F.max_by("network_name", score).alias("top_network"),
        F.max_by("new_network", score).alias("top_new"),
        F.max_by("device", score).alias("top_device"),
        F.max_by(F.col("device").startswith(NEW_DEVICE), score).alias("top_new_device"),
        F.slice(F.sort_array(F.collect_set("network_key")), 1, MAX_NETWORKS).alias("network_keys"),
        F.slice(F.sort_array(F.collect_set("network_name")), 1, MAX_NETWORKS).alias("network_names"),
        F.slice(F.sort_array(F.collect_list(event), asc=False), 1, case_events).alias("events_detail"),
    ]


def _network_cases(ev: DataFrame, common: list[Column], bad: DataFrame) -> DataFrame:
    """One case per (dt, source) marked as a network case, with its members and median percentile."""
    from pyspark.sql import functions as F

    marked = bad.select("dt", "source", F.lit("malicious").alias("prior_verdict")).distinct()
    entity_only = [
        ("training_count", "long"),
        ("known_networks", "int"),
        ("usual_events", "long"),
        ("usual_today", "long"),
        ("usual_ases", "string"),
    ]
    return (
        ev.where(F.col("_in_network_case"))
        .groupBy("dt", "source")
        .agg(
            F.countDistinct("entity").alias("entities"),
            F.percentile_approx("normal_percentile", 0.5).cast("double").alias("score_percentile"),
            F.slice(F.sort_array(F.collect_set("entity")), 1, MAX_MEMBERS).alias("members"),
            *common,
        )
        .join(marked, ["dt", "source"], "left")
        .select(
            F.lit(NETWORK).alias("kind"),
            F.lit(None).cast("string").alias("entity"),
            "*",
            *[F.lit(None).cast(t).alias(c) for c, t in entity_only],
        )
    )


def _entity_cases(ev: DataFrame, common: list[Column], bad: DataFrame, today: DataFrame | None) -> DataFrame:
    """One case per (dt, entity) for the events in no network case, with the entity's history."""
    from pyspark.sql import functions as F

    marked = bad.select("dt", "entity", F.lit("malicious").alias("prior_verdict")).distinct()
    cases = (
        ev.where(~F.col("_in_network_case"))
        .groupBy("dt", "entity")
        .agg(
            F.lit(1).cast("long").alias("entities"),
            F.max("normal_percentile").alias("score_percentile"),
            F.array("entity").alias("members"),
            F.max("training_count").alias("training_count"),
            F.max("known_networks").alias("known_networks"),
            F.max("usual_events").alias("usual_events"),
            F.max("usual_ases").alias("usual_ases"),
            *common,
        )
        .join(marked, ["dt", "entity"], "left")
    )
    if today is not None:
        cases = cases.join(today, ["dt", "entity"], "left")
    else:
        cases = cases.withColumn("usual_today", F.lit(None).cast("long"))
    return cases.select(F.lit(ENTITY).alias("kind"), F.lit(None).cast("string").alias("source"), "*")


def ranked(cases: DataFrame) -> DataFrame:
    """``cases`` plus ``rank`` within their day (1 = most severe; ties by case id), in table order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("dt").orderBy(F.desc("severity"), "case_id")
    return cases.withColumn("rank", F.row_number().over(w)).select(*CASES.names)


def calibrate_floor(cases: DataFrame, per_day: int) -> float | None:
    """The severity that ``per_day`` cases a day reach on ``cases`` (normal traffic); None when fewer do."""
    from pyspark.sql import functions as F

    # Two queries over one grouping: kept, so the calibration days are scored once, not once per query.
    small = cases.select("dt", "severity").persist()
    try:
        days = small.select("dt").distinct().count()
        k = per_day * max(days, 1)
        rows = small.select("severity").orderBy(F.desc("severity")).limit(k).collect()
    finally:
        small.unpersist()
    if len(rows) < k:
        return None
    return float(rows[-1]["severity"])
