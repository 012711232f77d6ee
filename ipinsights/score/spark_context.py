"""What a flagged event gets beside its score: what training knew of its network, and its explanation.

The training lookups (was the address, its /24, its /16 seen for this entity; IPv4) are the evaluation
baselines' (:data:`~ipinsights.score.rules.BASELINES`), done as Spark joins; the explanation comes from
the scorer and the entity profiles (:func:`~ipinsights.score.spark_scoring.explain_rows`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipinsights.score.batches import ScoringSetup
from ipinsights.score.rules import BASELINES
from ipinsights.score.schemas import EXPLAIN_FIELDS
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_scoring import explain_rows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["entity_day_events", "flagged_with_context", "ipv4_int"]


def ipv4_int(ip: Column) -> Column:
    """Unsigned value of a dotted-quad string column as long; null when it is not a plain IPv4 address."""
    from pyspark.sql import functions as F

    m = r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$"
    octets = [F.regexp_extract(ip, m, i).cast("long") for i in (1, 2, 3, 4)]
    value = octets[0] * (1 << 24) + octets[1] * (1 << 16) + octets[2] * (1 << 8) + octets[3]
    ok = ip.rlike(m)
    for o in octets:
        ok = ok & (o <= 255)
    return F.when(ok, value)


def flagged_with_context(
    flagged: DataFrame, history: DataFrame | None, threshold: float, setup: ScoringSetup | None = None
) -> DataFrame:
    """Flagged rows plus what training knew: ``seen_exact_ip``, ``seen_same_24``, ``seen_same_16``, the
    explanation columns (with ``setup``; null without a profile) and ``threshold``.

    ``history`` is the training days of the events table (``entity``, ``ip_int``); the lookups are the
    evaluation baselines' (``verdict.BASELINES``), done as left joins on (entity, ip_int >> (32 - length))
    against distinct training (entity, network) keys. Null when there is no history or no IPv4 address.
    """
    from pyspark.sql import functions as F

    keep = [c for c in flagged.columns if c != "dt"]
    # Explained first, on the flagged rows as read: the profile rows are joined onto those few rows, and
    # the training-history joins below carry the explanations along.
    if setup is None:
        nulls = [F.lit(None).cast(f.dataType).alias(f.name) for f in struct_type(EXPLAIN_FIELDS).fields]
        flagged = flagged.select("*", *nulls)
    else:
        flagged = explain_rows(flagged, setup)
    out = flagged.withColumn("_ip_int", ipv4_int(F.col("ip")))
    for name, length in BASELINES.items():
        key = f"_net{length}"
        out = out.withColumn(key, F.shiftright("_ip_int", 32 - length))
        if history is None:
            out = out.withColumn(name, F.lit(None).cast("boolean"))
            continue
        seen = (
            history.where(F.col("ip_int").isNotNull())
            .select("entity", F.shiftright("ip_int", 32 - length).alias(key))
            .distinct()
            .withColumn(f"_hit{length}", F.lit(True))
        )
        out = out.join(seen, on=["entity", key], how="left").withColumn(
            name, F.when(F.col(key).isNotNull(), F.coalesce(F.col(f"_hit{length}"), F.lit(False)))
        )
    return out.select(*keep, *BASELINES, *EXPLAIN_FIELDS.names, F.lit(float(threshold)).alias("threshold"), "dt")


def entity_day_events(events: DataFrame) -> DataFrame:
    """Every entity's events per day (``dt``, ``entity``, ``events``): the cases' ``usual_today`` comes from it."""
    from pyspark.sql import functions as F

    return events.groupBy("dt", "entity").agg(F.count(F.lit(1)).alias("events"))
