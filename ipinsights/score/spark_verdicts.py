"""Investigators' verdicts on Spark: matching them to flagged events, finding the cases they name, and the
confirmed pairs that training takes as extra positives (:mod:`ipinsights.score.verdicts` reads the file)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ipinsights.score.cases import NETWORK, day_of_case
from ipinsights.score.schemas import CASES
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.verdicts import ANY_ENTITY, Rule, VerdictSet, rules

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["case_rules", "rule_match", "rules_df", "verdict_pairs"]


def rule_match() -> Column:
    """The join condition of a verdict rule (``v_*`` columns) and a flagged row
    (see :mod:`ipinsights.score.verdicts`)."""
    from pyspark.sql import functions as F

    key = F.col("v_key")
    any_network = key == F.lit("")
    network = any_network | (key == F.col("network_key")) | (key == F.col("subnet")) | (key == F.col("network"))
    return (
        ((F.col("v_entity") == F.col("entity")) | (F.col("v_entity") == F.lit(ANY_ENTITY)))
        & (network | (key == F.col("ip")))
        & (F.col("dt") >= F.col("v_first"))
        & (F.col("dt") < F.col("v_end"))
    )


def rules_df(spark: SparkSession, verdict_rules: Sequence[Rule], verdict: str) -> DataFrame:
    """The ``verdict`` rules as a small DataFrame of ``v_entity``, ``v_key``, ``v_first``, ``v_end`` (broadcast it)."""
    rows = [(r.entity, r.network, r.first, r.end) for r in verdict_rules if r.verdict == verdict]
    return spark.createDataFrame(rows, "v_entity string, v_key string, v_first string, v_end string")


def case_rules(spark: SparkSession, verdicts: VerdictSet, cases_table: str | None) -> list[Rule]:
    """The matching rules of ``verdicts``, their case ids resolved in ``cases_table`` (only those rows read)."""
    from pyspark.sql import functions as F

    from ipinsights.storage.events import read_table_days

    ids = sorted({v.case_id for v in verdicts.by_case() if v.case_id})
    days = sorted({d for d in map(day_of_case, ids) if d})
    resolved: dict[str, tuple[str, str | None, list[str]]] = {}
    if ids and days and cases_table is not None:
        table = read_table_days(spark, cases_table, struct_type(CASES), days).where(F.col("case_id").isin(ids))
        for r in table.select("case_id", "dt", "kind", "entity", "source", "network_keys").collect():
            keys = [r["source"]] if r["kind"] == NETWORK else list(r["network_keys"] or [])
            resolved[r["case_id"]] = (r["dt"], r["entity"], keys)
    return rules(verdicts, resolved)


VERDICT_LOOKBACK_DAYS = 366  # how far before its verdict a confirmed pair's events are looked for


def verdict_pairs(
    spark: SparkSession,
    verdicts: VerdictSet,
    cases_table: str,
    until: str,
    verdict: str = "benign",
    columns: tuple[str, ...] = ("entity", "ip"),
) -> DataFrame:
    """The (entity, ip) pairs investigators confirmed benign: the listed events of the cases (from a year
    before the earliest verdict up to day ``until``) that a benign verdict unexpired on ``until`` matches,
    whatever day the verdict was made (the events it is about came before it). Training takes them as
    extra positives (``train --include-verdicts``), so a confirmed new ISP stops scoring as anomalous.
    ``verdict="malicious"``: the events that malicious verdicts match (the fused score's fit takes both);
    ``columns``: of the events (``ts`` too)."""
    from pyspark.sql import functions as F

    from ipinsights.storage.events import day_range, read_table_days

    # Whatever day a rule starts on: the events it confirms came before the verdict.
    resolved = case_rules(spark, verdicts, cases_table)
    chosen = [r._replace(first="0000-01-01") for r in resolved if r.verdict == verdict and until < r.end]
    rule_df = F.broadcast(rules_df(spark, chosen, verdict))
    first = min((v.when for v in verdicts.verdicts), default=dt.date.fromisoformat(until))
    days = day_range((first - dt.timedelta(days=VERDICT_LOOKBACK_DAYS)).isoformat(), until)
    events = (
        read_table_days(spark, cases_table, struct_type(CASES), days)
        .select("dt", F.explode("events_detail").alias("e"))
        .select("dt", *(F.col(f"e.{c}").alias(c) for c in ("entity", "ip", "ts", "network_key", "subnet", "network")))
    )
    # Every listed event, not distinct pairs: a network used all day weighs more than one login.
    return events.join(rule_df, rule_match(), "left_semi").select(*columns)
