"""Investigator cases: a day's flagged events grouped, ranked by severity, capped by a daily budget.

Grouping (per UTC day, on Spark):

* a **network case** for every source (IPv4 /24, IPv6 /48) from which at least ``network_case_entities``
  distinct entities had flagged events that day: password spraying, credential stuffing, a shared
  attacker proxy. Its events belong to it and to no entity case;
* an **entity case** for every entity with flagged events left: its new networks (ASes when the scorer
  has an ASN table, else /24s and /48s), first and last time, event count, the highest-scoring event.

Severity (:func:`severity`), in decades of rarity (each point ~ ten times less likely on a normal day):

* ``score``: ``-log10(1 - p/100)`` with ``p`` the case's normal percentile (the highest event's for an
  entity case, the median event's for a network case), capped at 5 (above every calibration row):
  2 at the 1 % threshold, 3 at 99.9 %. A fixed threshold without calibration tables counts as 2;
* entity cases: ``+ settled`` (0-1, the share of the entity's training logins from its two most used
  networks: a sudden new network means more for someone with one ISP than for a traveller; an entity
  never seen in training gets none), ``+ 0.25 * log10(events)``, ``+ log10(new networks)`` and ``+ 1`` when
  the entity also logged in that day from places that were not flagged (``usual_today``): two people on
  one account, where a traveller's day comes from the trip's network alone. Measured on the demo's world
  with rare attacks (``bench/cases_eval.py``), that point lifted the precision of the top 50 from 0.06 to
  0.12 on one test day (0.14 to 0.16 on the other), and events weighing half as much helped a little;
* network cases: ``+ 3 * log10(entities)`` (5 accounts: +2.1, 10: +3, 100: +6): one source into many
  accounts in a day is a campaign, not a traveller.

Budget: a case is ``open`` when its severity reaches the **case floor**, calibrated on normal traffic
(the calibration days, with the threshold in force) so that a normal day opens about
``normal_cases_per_day`` cases (half the default budget of 50: room for a noisier day). The report leads
with the top ``max_cases`` open cases; every case stays in the table. Case ids are a hash of the day, the
kind and the entity or source, so a rerun of a day gives its cases the same ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ipinsights.score.verdicts import ANY_ENTITY, Rule, VerdictSet, rules

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SEVERITY_VERSION = 1  # bump when the formula changes: stored case floors are then recalibrated
RARITY_FLOOR = 1e-5  # the score points' cap: 5 decades
MAX_MEMBERS = 1000  # entities listed per network case (``entities`` is the exact count)
MAX_NETWORKS = 20  # networks listed per case
ENTITY, NETWORK = "entity", "network"

_EVENT = (
    "struct<anomaly_score:float,ts:timestamp,entity:string,ip:string,normal_percentile:double,"
    "network_name:string,new_network:boolean,network_key:string,subnet:string,network:string>"
)
#: The aggregated columns (before :func:`finish_batch`), shared by both kinds.
_GROUPED = (
    f"kind string, entity string, source string, entities long, events long, networks long, "
    f"first_ts timestamp, last_ts timestamp, score_percentile double, top_score float, top_ip string, "
    f"top_network string, top_new boolean, training_count long, known_networks int, usual_events long, "
    f"usual_today long, "
    f"usual_ases string, network_keys array<string>, network_names array<string>, members array<string>, "
    f"events_detail array<{_EVENT}>, prior_verdict string, dt string"
)
_FINISHED = "case_id string, severity double, open boolean, summary string"
#: The cases table (``rank`` 1 = most severe case of its day).
CASES_SCHEMA = _GROUPED.replace(", dt string", f", {_FINISHED}, rank int, dt string")


@dataclass(frozen=True)
class CaseSettings:
    """How a day's flagged events become cases (``ScoreConfig`` carries them)."""

    max_cases: int = 50
    network_case_entities: int = 5
    case_events: int = 50  # events kept per case for the report's details (counts stay exact)
    floor: float | None = None  # the case floor (None: every case is open)


def case_id(day: str, kind: str, key: str) -> str:
    """Stable id of a case: ``E`` (entity) or ``N`` (network), its day, and 12 hex digits of
    sha256(day, kind, entity or source): ``E-20240109-3f9c2a7d01b4``. The day in the id lets a verdict
    find its case by reading one day of the table."""
    digest = hashlib.sha256(f"{day}\x1f{kind}\x1f{key}".encode()).hexdigest()[:12]
    return f"{'E' if kind == ENTITY else 'N'}-{day.replace('-', '')}-{digest}"


def day_of_case(case: str) -> str | None:
    """The day (``YYYY-MM-DD``) a case id names, None when it is not a case id."""
    parts = case.split("-")
    if len(parts) != 3 or parts[0] not in ("E", "N") or len(parts[1]) != 8 or not parts[1].isdigit():
        return None
    d = parts[1]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def score_points(percentile: np.ndarray) -> np.ndarray:
    """``-log10`` of the share of normal traffic scoring higher, capped at 5; 2 (the 1 % threshold) when unknown."""
    p = np.asarray(percentile, np.float64)
    rarity = np.clip(1.0 - p / 100.0, RARITY_FLOOR, 1.0)
    return np.where(np.isfinite(p), -np.log10(rarity), 2.0)


def severity(
    kind: np.ndarray,
    percentile: np.ndarray,
    events: np.ndarray,
    networks: np.ndarray,
    entities: np.ndarray,
    settled: np.ndarray,
    usual_today: np.ndarray | None = None,
) -> np.ndarray:
    """The documented severity of cases (see the module docstring); arrays of one value per case."""
    pts = score_points(percentile)
    ev = np.maximum(np.asarray(events, np.float64), 1.0)
    nets = np.maximum(np.asarray(networks, np.float64), 1.0)
    ents = np.maximum(np.asarray(entities, np.float64), 1.0)
    settled = np.nan_to_num(np.clip(np.asarray(settled, np.float64), 0.0, 1.0))
    both = np.zeros(len(pts)) if usual_today is None else (np.nan_to_num(np.asarray(usual_today, np.float64)) > 0)
    entity_sev = pts + settled + 0.25 * np.log10(ev) + np.log10(nets) + both
    network_sev = pts + 3.0 * np.log10(ents)
    return np.round(np.where(np.asarray(kind) == NETWORK, network_sev, entity_sev), 6)


def _hhmm(t: dt.datetime | None) -> str:
    return "?" if t is None else t.astimezone(dt.timezone.utc).strftime("%H:%M")


def _percent(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "score above the threshold"
    if p >= 100.0:
        return "score above all normal traffic"
    # Rounded down, so 99.996 never reads as 100.
    return f"score above {math.floor(p * 100) / 100:g}% of normal"


def summary(case: Mapping[str, Any]) -> str:
    """The case in one line of words (what the report shows first)."""
    events, first, last = int(case["events"]), case["first_ts"], case["last_ts"]
    when = f"{events} event{'s' if events != 1 else ''} {_hhmm(first)}-{_hhmm(last)} UTC"
    names = [n for n in (case["network_names"] or []) if n]
    if case["kind"] == NETWORK:
        return (
            f"{int(case['entities'])} entities logged in from {case['source']} "
            f"({case['top_network'] or 'unknown AS'}), "
            f"none of them ever from there; {when}; median {_percent(case['score_percentile'])}"
        )
    top = case["top_network"] or case["top_ip"]
    more = f" and {len(names) - 1} other network{'s' if len(names) > 2 else ''}" if len(names) > 1 else ""
    head = f"{'first login' if case['top_new'] else 'login'} from {top}{more}, {when}"
    n_train = case["training_count"]
    if not n_train:
        history = "entity never seen in training"
    else:
        usual = (case["usual_ases"] or "").split("; ")[0]
        known = case["known_networks"]
        parts = [f"usually {usual}" if usual else None,
                 f"{known} network{'s' if known != 1 else ''}" if known else None,
                 f"{int(n_train)} logins in training"]  # fmt: skip
        history = ", ".join(p for p in parts if p)
    today = case.get("usual_today") or 0
    also = f"; also {today} login{'s' if today != 1 else ''} that day from places not flagged" if today else ""
    return f"{head}; {history}{also}; {_percent(case['score_percentile'])}"


def finish_batch(batch: pa.RecordBatch, floor: float | None) -> pa.RecordBatch:
    """Grouped cases plus ``case_id``, ``severity``, ``open`` and ``summary`` (one Python pass per case)."""
    n = batch.num_rows
    col = {name: batch.column(name) for name in batch.schema.names}
    kind = np.asarray(col["kind"].to_pylist(), dtype=object)
    training = np.asarray(col["training_count"].to_numpy(zero_copy_only=False), np.float64)
    usual = np.asarray(col["usual_events"].to_numpy(zero_copy_only=False), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        settled = np.where(training > 0, usual / training, 0.0)
    sev = severity(
        kind,
        col["score_percentile"].to_numpy(zero_copy_only=False).astype(np.float64),
        col["events"].to_numpy(zero_copy_only=False),
        col["networks"].to_numpy(zero_copy_only=False),
        col["entities"].to_numpy(zero_copy_only=False),
        settled,
        col["usual_today"].to_numpy(zero_copy_only=False),
    )
    # Only what the summary reads: the events' structs stay in Arrow.
    rows = batch.select(_SUMMARY_COLUMNS).to_pylist()
    days, entities, sources = col["dt"].to_pylist(), col["entity"].to_pylist(), col["source"].to_pylist()
    ids = [case_id(days[i], kind[i], entities[i] if kind[i] == ENTITY else sources[i]) for i in range(n)]
    opened = np.ones(n, bool) if floor is None else sev >= floor
    cols = [
        pa.array(ids, pa.string()),
        pa.array(sev, pa.float64()),
        pa.array(opened),
        pa.array([summary(r) for r in rows], pa.string()),
    ]
    # The table's order: the grouped columns, the new ones, then ``dt`` (Spark matches Arrow columns by position).
    keep = [name for name in batch.schema.names if name != "dt"]
    return pa.RecordBatch.from_arrays(
        [*(batch.column(name) for name in keep), *cols, batch.column("dt")], names=[*keep, *_FINISHED_NAMES, "dt"]
    )


_FINISHED_NAMES = [f.split()[0] for f in _FINISHED.split(", ")]
_SUMMARY_COLUMNS = ["kind", "entities", "source", "events", "first_ts", "last_ts", "network_names", "top_network",
                    "top_ip", "top_new", "score_percentile", "training_count", "usual_ases", "known_networks",
                    "usual_today"]  # fmt: skip


def _finish(floor: float | None):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield finish_batch(b, floor)

    return run


def _network_columns(ev: DataFrame) -> DataFrame:
    """Flagged rows plus ``source`` (the /24 or /48), ``network_key`` (``AS<n>`` or the subnet) and its name."""
    from pyspark.sql import functions as F

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


def _rule_match() -> Any:
    """The join condition of a verdict rule (``v_*`` columns) and a flagged row (see :mod:`.verdicts`)."""
    from pyspark.sql import functions as F

    key = F.col("v_key")
    return (
        ((F.col("v_entity") == F.col("entity")) | (F.col("v_entity") == F.lit(ANY_ENTITY)))
        & ((key == F.lit("")) | (key == F.col("network_key")) | (key == F.col("subnet")) | (key == F.col("network"))
           | (key == F.col("ip")))
        & (F.col("dt") >= F.col("v_first"))
        & (F.col("dt") < F.col("v_end"))
    )  # fmt: skip


def _rules_df(spark: SparkSession, verdict_rules: Sequence[Rule], verdict: str) -> DataFrame:
    rows = [r[1:] for r in verdict_rules if r[0] == verdict]
    return spark.createDataFrame(rows, "v_entity string, v_key string, v_first string, v_end string")


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
    from pyspark.sql import functions as F

    today = None
    if day_events is not None:
        flagged_today = flagged.groupBy("dt", "entity").agg(F.count(F.lit(1)).alias("_flagged"))
        today = day_events.join(flagged_today, ["dt", "entity"]).select(
            "dt", "entity", (F.col("events") - F.col("_flagged")).alias("usual_today")
        )

    spark = flagged.sparkSession
    ev = _network_columns(flagged)
    benign = F.broadcast(_rules_df(spark, verdict_rules, "benign"))
    malicious = F.broadcast(_rules_df(spark, verdict_rules, "malicious"))
    hit = ev.join(benign, _rule_match(), "left_semi")
    suppressed = hit.groupBy("dt").agg(
        F.count(F.lit(1)).alias("suppressed_events"), F.countDistinct("entity").alias("suppressed_entities")
    )
    ev = ev.join(benign, _rule_match(), "left_anti")
    bad = ev.join(malicious, _rule_match(), "left_semi").select("dt", "entity", "source").distinct()

    sources = (
        ev.groupBy("dt", "source")
        .agg(F.countDistinct("entity").alias("_n"))
        .where(F.col("_n") >= settings.network_case_entities)
        .select("dt", "source", F.lit(True).alias("_in_network_case"))
    )
    ev = ev.join(sources, ["dt", "source"], "left").withColumn(
        "_in_network_case", F.coalesce(F.col("_in_network_case"), F.lit(False))
    )
    event = F.struct(
        F.col("anomaly_score").cast("float").alias("anomaly_score"), "ts", "entity", "ip", "normal_percentile",
        "network_name", "new_network", "network_key", "subnet", "network",
    )  # fmt: skip
    common = [
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("network_key").alias("networks"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
        F.max(F.col("anomaly_score").cast("float")).alias("top_score"),
        F.max_by("ip", "anomaly_score").alias("top_ip"),
        F.max_by("network_name", "anomaly_score").alias("top_network"),
        F.max_by("new_network", "anomaly_score").alias("top_new"),
        F.slice(F.sort_array(F.collect_set("network_key")), 1, MAX_NETWORKS).alias("network_keys"),
        F.slice(F.sort_array(F.collect_set("network_name")), 1, MAX_NETWORKS).alias("network_names"),
        F.slice(F.sort_array(F.collect_list(event), asc=False), 1, settings.case_events).alias("events_detail"),
    ]
    net_cases = (
        ev.where(F.col("_in_network_case"))
        .groupBy("dt", "source")
        .agg(
            F.countDistinct("entity").alias("entities"),
            F.percentile_approx("normal_percentile", 0.5).cast("double").alias("score_percentile"),
            F.slice(F.sort_array(F.collect_set("entity")), 1, MAX_MEMBERS).alias("members"),
            *common,
        )
        .join(
            bad.select("dt", "source", F.lit("malicious").alias("prior_verdict")).distinct(), ["dt", "source"], "left"
        )
        .select(
            F.lit(NETWORK).alias("kind"),
            F.lit(None).cast("string").alias("entity"),
            "*",
            *[
                F.lit(None).cast(t).alias(c)
                for c, t in (
                    ("training_count", "long"),
                    ("known_networks", "int"),
                    ("usual_events", "long"),
                    ("usual_today", "long"),
                    ("usual_ases", "string"),
                )
            ],
        )
    )
    ent_cases = (
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
        .join(
            bad.select("dt", "entity", F.lit("malicious").alias("prior_verdict")).distinct(), ["dt", "entity"], "left"
        )
    )
    if today is not None:
        ent_cases = ent_cases.join(today, ["dt", "entity"], "left")
    else:
        ent_cases = ent_cases.withColumn("usual_today", F.lit(None).cast("long"))
    ent_cases = ent_cases.select(F.lit(ENTITY).alias("kind"), F.lit(None).cast("string").alias("source"), "*")
    names = _names(_GROUPED)
    grouped = net_cases.select(*names).unionByName(ent_cases.select(*names))
    finished = grouped.mapInArrow(_finish(settings.floor), CASES_SCHEMA.replace(", rank int", ""))
    return Grouped(finished, suppressed)


def _names(ddl: str) -> list[str]:
    """Column names of a DDL field list (parsed by Spark: commas inside ``struct<...>`` are its business)."""
    from pyspark.sql.types import StructType

    return StructType.fromDDL(ddl).fieldNames()  # type: ignore[attr-defined]


def ranked(cases: DataFrame) -> DataFrame:
    """``cases`` plus ``rank`` within their day (1 = most severe; ties by case id), in table order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("dt").orderBy(F.desc("severity"), "case_id")
    return cases.withColumn("rank", F.row_number().over(w)).select(*_names(CASES_SCHEMA))


def case_rules(spark: SparkSession, verdicts: VerdictSet, cases_table: str | None) -> list[Rule]:
    """The matching rules of ``verdicts``, their case ids resolved in ``cases_table`` (only those rows read)."""
    from pyspark.sql import functions as F

    from ipinsights.storage.events import read_table_days

    ids = sorted({v.case_id for v in verdicts.by_case() if v.case_id})
    days = sorted({d for d in map(day_of_case, ids) if d})
    resolved: dict[str, tuple[str, str | None, list[str]]] = {}
    if ids and days and cases_table is not None:
        table = read_table_days(spark, cases_table, CASES_SCHEMA, days).where(F.col("case_id").isin(ids))
        for r in table.select("case_id", "dt", "kind", "entity", "source", "network_keys").collect():
            keys = [r["source"]] if r["kind"] == NETWORK else list(r["network_keys"] or [])
            resolved[r["case_id"]] = (r["dt"], r["entity"], keys)
    return rules(verdicts, resolved)


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


@dataclass(frozen=True)
class CaseFloor:
    """A stored case floor (``<model>.cases.json``): valid for one model, threshold, budget and formula."""

    floor: float | None
    normal_cases_per_day: int
    threshold: float
    model_fingerprint: str
    source: str
    severity_version: int = SEVERITY_VERSION

    def matches(self, fingerprint: str, threshold: float, per_day: int) -> bool:
        return (
            self.model_fingerprint == fingerprint
            and math.isclose(self.threshold, threshold, rel_tol=1e-9, abs_tol=1e-12)
            and self.normal_cases_per_day == per_day
            and self.severity_version == SEVERITY_VERSION
        )

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps({"format": "ipinsights-case-floor", **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CaseFloor:
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("format", None) != "ipinsights-case-floor":
            raise ValueError("not an ipinsights case floor file")
        return cls(**data)


@dataclass(frozen=True)
class CaseView:
    """What a day's report shows of its cases: small (bounded by ``max_cases``, 7 days, the verdict list)."""

    top: list[dict[str, Any]]  # the open cases the report leads with, by rank
    counts: dict[str, int]  # cases, open, network_cases, suppressed_events, suppressed_entities, verdicts_rejected
    trend: list[tuple[str, int | None]]  # (day, open cases) for the 7 days ending with this one (None: not scored)
    floor: float | None = None
    max_cases: int = 50
    returning: list[dict[str, Any]] = field(default_factory=list)  # malicious-verdict entities seen this day
    rejected: tuple[str, ...] = ()  # verdict rows left out (file:line: why)


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

    from ipinsights.storage.events import day_range, present_days, read_table_days

    first = (dt.date.fromisoformat(min(days)) - dt.timedelta(days=TREND_DAYS - 1)).isoformat()
    window = day_range(first, max(days))
    table = read_table_days(spark, cases_table, CASES_SCHEMA, window)
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
    bad = [(e, f, end) for v, e, _, f, end in verdict_rules if v == "malicious" and e != ANY_ENTITY]
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

    from ipinsights.storage.events import read_table_days

    top_k = max([*ks, budget])
    labelled = spark.read.csv(labelled_csv, schema="entity string, ip string, label int, kind string")
    attacks = labelled.where(F.col("label") == 1).groupBy("entity", "ip").agg(F.first("kind").alias("kind"))
    scores = read_table_days(spark, scores_table, "entity string, ip string, dt string", days)
    attacked = scores.join(attacks, ["entity", "ip"]).select("dt", "entity").distinct()
    cases = read_table_days(spark, cases_table, CASES_SCHEMA, days).where(F.col("open") & (F.col("rank") <= top_k))
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
    found = {r["dt"]: r["n"] for r in members.join(attacked, ["dt", "entity"]).groupBy("dt").agg(
        F.count(F.lit(1)).alias("n")).collect()}  # fmt: skip
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


VERDICT_LOOKBACK_DAYS = 366  # how far before its verdict a confirmed pair's events are looked for


def verdict_pairs(spark: SparkSession, verdicts: VerdictSet, cases_table: str, until: str) -> DataFrame:
    """The (entity, ip) pairs investigators confirmed benign: the listed events of the cases (from a year
    before the earliest verdict up to day ``until``) that a benign verdict unexpired on ``until`` matches,
    whatever day the verdict was made (the events it is about came before it). Training takes them as
    extra positives (``train --include-verdicts``), so a confirmed new ISP stops scoring as anomalous."""
    from pyspark.sql import functions as F

    from ipinsights.storage.events import day_range, read_table_days

    # Whatever day a rule starts on: the events it confirms came before the verdict.
    benign = [(v, e, k, "0000-01-01", end) for v, e, k, _, end in case_rules(spark, verdicts, cases_table)
              if v == "benign" and until < end]  # fmt: skip
    rule_df = F.broadcast(_rules_df(spark, benign, "benign"))
    first = min((v.when for v in verdicts.verdicts), default=dt.date.fromisoformat(until))
    days = day_range((first - dt.timedelta(days=VERDICT_LOOKBACK_DAYS)).isoformat(), until)
    events = (
        read_table_days(spark, cases_table, CASES_SCHEMA, days)
        .select("dt", F.explode("events_detail").alias("e"))
        .select("dt", *(F.col(f"e.{c}").alias(c) for c in ("entity", "ip", "network_key", "subnet", "network")))
    )
    # Every listed event, not distinct pairs: a network used all day weighs more than one login.
    return events.join(rule_df, _rule_match(), "left_semi").select("entity", "ip")
