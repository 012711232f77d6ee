"""How the cases of labelled days serve an investigator: precision of the top cases and attacks found
within the daily budget (``ipinsights evaluate --cases``, ``bench/cases_eval.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipinsights.score.cases import ENTITY, NETWORK
from ipinsights.score.schemas import CASES
from ipinsights.score.spark_arrow import struct_type
from ipinsights.storage.events import read_table_days

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["case_metrics"]


def case_metrics(
    spark: SparkSession,
    cases_table: str,
    scores_table: str,
    labelled_csv: str,
    days: Sequence[str],
    ks: Sequence[int] = (10, 50),
    budget: int = 50,
) -> dict[str, dict[str, Any]]:
    """How the cases of labelled days serve an investigator, per day.

    ``labelled_csv`` is headerless ``entity,ip,label,kind`` (the generator's ``test_labelled.csv``); an
    attack is a label-1 pair seen that day in the scores table. A case is **true** when one of its listed
    events is an attack (a network case: at least half of them). Per day: ``precision_at_K`` over the top
    K open cases (fewer when fewer are open; ``cases_at_K`` says how many), ``attacked_entities``,
    ``found_in_budget`` (attacked entities that are in one of the top ``budget`` open cases, a network
    case's members included) and their share, and the true cases' attack kinds. All joins run on Spark;
    only the top cases (at most ``max(ks, budget)`` a day) reach the driver.
    """
    from pyspark.sql import functions as F

    top_k = max([*ks, budget])
    labelled = spark.read.csv(labelled_csv, schema="entity string, ip string, label int, kind string")
    attacks = labelled.where(F.col("label") == 1).groupBy("entity", "ip").agg(F.first("kind").alias("kind"))
    scores = read_table_days(spark, scores_table, "entity string, ip string, dt string", days)
    attacked = scores.join(attacks, ["entity", "ip"]).select("dt", "entity").distinct()
    cases = read_table_days(spark, cases_table, struct_type(CASES), days).where(
        F.col("open") & (F.col("rank") <= top_k)
    )
    listed = cases.select("dt", "case_id", F.explode("events_detail").alias("e")).select(
        "dt", "case_id", F.col("e.entity").alias("entity"), F.col("e.ip").alias("ip")
    )
    truth = (
        listed.join(attacks, ["entity", "ip"], "left")
        .groupBy("dt", "case_id")
        .agg(
            F.count(F.lit(1)).alias("listed"),
            F.count("kind").alias("hits"),
            F.sort_array(F.collect_set("kind")).alias("kinds"),
        )
    )
    top = cases.select("dt", "case_id", "rank", "kind").join(truth, ["dt", "case_id"], "left").collect()
    members = cases.where(F.col("rank") <= budget).select("dt", F.explode("members").alias("entity")).distinct()
    found = {
        r["dt"]: r["n"]
        for r in members.join(attacked, ["dt", "entity"]).groupBy("dt").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    n_attacked = {r["dt"]: r["n"] for r in attacked.groupBy("dt").agg(F.count(F.lit(1)).alias("n")).collect()}
    out: dict[str, dict[str, Any]] = {}
    for d in days:
        rows = sorted((r for r in top if r["dt"] == d), key=lambda r: r["rank"])
        true = [bool(r["hits"]) and (r["kind"] == ENTITY or 2 * int(r["hits"]) >= int(r["listed"] or 0)) for r in rows]
        m: dict[str, Any] = {}
        for k in ks:
            shown = true[:k]
            m[f"cases_at_{k}"] = len(shown)
            m[f"precision_at_{k}"] = sum(shown) / len(shown) if shown else None
        a = int(n_attacked.get(d, 0))
        m["attacked_entities"] = a
        m["found_in_budget"] = int(found.get(d, 0))
        m["share_found_in_budget"] = m["found_in_budget"] / a if a else None
        m["network_cases"] = [
            {"case_id": r["case_id"], "rank": int(r["rank"]), "attack_kinds": list(r["kinds"] or [])}
            for r in rows
            if r["kind"] == NETWORK and r["rank"] <= budget
        ]
        out[d] = m
    return out
