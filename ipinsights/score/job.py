"""Scoring events on Spark: scores, verdicts, flagged cases with context, and the daily run that ties them.

Columns added to events by :func:`score_events` (one Arrow batch at a time, in Spark's Python workers,
with the model loaded once per worker: :mod:`ipinsights.score.udf`):

    dot_product       float   SageMaker's raw output (higher = more compatible); null for an invalid address
    prior_score       float   anomaly score against the population prior (how unusual is this network for
                              everyone): what an entity in its learning period is judged by
    anomaly_score     float   the score of the row's rule (higher = more suspicious); null when there is none
    training_count    long    the entity's events in training (0 = unseen; null if the model has no entity stats)
    unseen_entity     boolean training_count == 0
    rule              string  which rule produced anomaly_score: ``model_score`` (the entity's own vector),
                              ``learning_period`` (fewer than ``learning_period_events`` training events:
                              the population prior; never a random vector) or ``invalid_ip`` (no score)
    entity_percentile double  0-100: where the score falls among the entity's own training scores (profile)
    normal_percentile double  0-100: where it falls among normal traffic of its rule (calibration): one scale
                              for both rules, so rows decided by different rules rank together
    level             string  low / medium / high from the calibrated (or fixed) thresholds of the rule
    flagged           boolean level == high (or an unseen entity, with ``flag_unseen``): ``verdict.flag_rows``

Flagged rows get their context in :func:`flagged_with_context`: exact lookups in the training days
(was the IP, its /24, its /16 seen for this entity; IPv4) and the explanations of
:meth:`ipinsights.score.scorer.Scorer.explain` (known networks nearest by embedding and by prefix, /24 or
/48, /16 or /32 and ASN seen, the entity's typical score range) from the entity profiles
(:mod:`ipinsights.score.profiles`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pyarrow as pa

from ipinsights.score.cases import CaseSettings
from ipinsights.score.profiles import JOINED, PopulationPrior, ProfileHeader, join_profile_rows, joined_profiles
from ipinsights.score.rules import BASELINES, LEVELS, RULES, Threshold, Thresholds
from ipinsights.score.scorer import BATCH_ROWS, Joined, Scorer
from ipinsights.score.udf import ScorerSource, map_in_arrow

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)


_SCORE_FIELDS = (
    "dot_product float, prior_score float, anomaly_score float, training_count long, unseen_entity boolean, "
    "rule string, entity_percentile double, normal_percentile double, level string, flagged boolean"
)


_SCORE_FIELDS_NAMES = [f.strip().split()[0] for f in _SCORE_FIELDS.split(",")]


#: Columns of the scores table, in order.
SCORE_COLUMNS = ("entity", "ip", "ts", *_SCORE_FIELDS_NAMES, "dt")


SCORES_SCHEMA = f"entity string, ip string, ts timestamp, {_SCORE_FIELDS}, dt string"


#: Explanation columns of the flagged table (see Scorer.explain).
_EXPLAIN_FIELDS = (
    "subnet string, subnet_seen boolean, network string, network_seen boolean, asn long, asn_seen boolean, "
    "as_name string, usual_ases string, "
    "nearest_networks string, closest_network string, shared_prefix_bits int, typical_low double, "
    "typical_high double, known_networks int, usual_events long"
)


_EXPLAIN_NAMES = [f.strip().split()[0] for f in _EXPLAIN_FIELDS.split(",")]


_ARROW = {"string": pa.string(), "boolean": pa.bool_(), "long": pa.int64(), "int": pa.int32(), "double": pa.float64()}


_EXPLAIN_TYPES = {f.split()[0]: _ARROW[f.split()[1]] for f in _EXPLAIN_FIELDS.split(",")}


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the scoring job (``conf/score.yml``); paths may be URIs (``s3://`` ...).

    Tables (``events``, ``scores``, ``flagged``) are read and written by Spark (any Hadoop file system);
    the model, its calibration and profile sidecars and the ``reports`` by Python (``pyarrow.fs``).

    Exactly one of ``threshold`` (fixed) and ``target_fpr`` (calibrated) is set. Calibration traffic is
    the events of ``calibration_start_date..calibration_end_date`` (e.g. the validation days); context of
    flagged cases comes from ``train_start_date..train_end_date`` (the days the model was trained on).
    """

    model: str
    scores: str
    flagged: str
    reports: str  # folder or URI: reports are written by the driver
    events: str | None = None
    threshold: float | None = None
    target_fpr: float | None = None
    calibration: str | None = None  # default: <model>.calibration.json
    recalibrate: bool = False
    calibration_start_date: str | None = None
    calibration_end_date: str | None = None
    train_start_date: str | None = None
    train_end_date: str | None = None
    flag_unseen: bool = False
    learning_period_events: int = 10
    profile: str | None = None  # default: <model>.profile.safetensors (built from the training days)
    asn_table: str | None = None  # ip2asn TSV: ASN context of flagged cases
    max_networks: int = 16  # known networks kept per entity in its profile
    quantile_accuracy: int = 1_000_000
    histogram_bins: int = 60
    arrow_batch_size: int = 50_000  # rows per Arrow batch: amortises per-batch costs (20k: ~10% slower)
    scorer_batch_size: int = BATCH_ROWS  # rows per torch call: small batches stay in cache (faster on CPU)
    # Cases (ipinsights.score.cases): the table, the daily budget and the investigators' verdicts.
    cases: str | None = None  # default: "cases" beside the flagged table
    verdicts: str | None = None  # CSV of investigators' verdicts (ipinsights.score.verdicts); none by default
    max_cases: int = 50  # cases the report leads with per day
    normal_cases_per_day: int = 25  # the case floor is calibrated so normal traffic opens about this many a day
    network_case_entities: int = 5  # entities one source must touch in a day to make a network case
    case_events: int = 50  # events kept per case (the report's details; counts stay exact)
    case_floor: str | None = None  # default: <model>.cases.json

    def __post_init__(self) -> None:
        from ipinsights.core.config import ConfigError, check_float, check_int

        if (self.threshold is None) == (self.target_fpr is None):
            raise ConfigError("set exactly one of threshold (fixed) and target_fpr (calibrated)")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError(f"threshold={self.threshold!r} must be a finite number")
        if self.target_fpr is not None:
            check_float("target_fpr", self.target_fpr, 1e-6, 0.5)
        check_int("quantile_accuracy", self.quantile_accuracy, 100, 100_000_000)
        check_int("learning_period_events", self.learning_period_events, 0, 1_000_000)
        check_int("max_networks", self.max_networks, 1, 1000)
        check_int("histogram_bins", self.histogram_bins, 5, 1000)
        check_int("arrow_batch_size", self.arrow_batch_size, 100, 10_000_000)
        check_int("scorer_batch_size", self.scorer_batch_size, 64, 10_000_000)
        check_int("max_cases", self.max_cases, 1, 100_000)
        check_int("normal_cases_per_day", self.normal_cases_per_day, 1, 1_000_000)
        check_int("network_case_entities", self.network_case_entities, 2, 1_000_000)
        check_int("case_events", self.case_events, 1, 10_000)
        for a, b in (("calibration_start_date", "calibration_end_date"), ("train_start_date", "train_end_date")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ConfigError(f"set both {a} and {b}, or neither")

    @property
    def cases_table(self) -> str:
        """The cases table: ``cases``, or ``cases`` beside the flagged table."""
        from ipinsights.core.config import ConfigError

        if self.cases:
            return self.cases
        flagged = self.flagged.rstrip("/")
        _, scheme, rest = flagged.rpartition("://")
        if scheme and "/" not in rest:  # s3://bucket: "beside" it would be another bucket
            raise ConfigError(f"flagged={self.flagged!r} is a bucket's root: set cases (where the cases table goes)")
        return f"{flagged.rsplit('/', 1)[0]}/cases" if "/" in flagged else "cases"

    def case_settings(self, floor: float | None = None) -> CaseSettings:
        return CaseSettings(self.max_cases, self.network_case_entities, self.case_events, floor)


@dataclass(frozen=True)
class ScoringSetup:
    """What every Python worker needs to score: what to load (model, profile, ASN table), rules and thresholds."""

    source: ScorerSource
    batch_size: int = BATCH_ROWS  # rows per torch call
    learning_period_events: int = 10
    thresholds: Thresholds | None = None  # None: ``level`` and ``flagged`` null
    flag_unseen: bool = False
    profile_rows: tuple[str, ...] | None = None  # the profile's rows files, joined on (percentiles, explanations)


def _with_profiles(df: DataFrame, setup: ScoringSetup) -> DataFrame:
    """``df`` with its entities' profile columns joined on (:func:`join_profile_rows`), when ``setup`` has rows."""
    if setup.profile_rows is None:
        return df
    return join_profile_rows(df, setup.profile_rows).select(*df.columns, *JOINED.values())


def _split_joined(scorer: Scorer, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, Joined | None]:
    """A batch without its joined profile columns, and those profiles (None when it has none)."""
    names = batch.schema.names
    if JOINED["q"] not in names:
        return batch, None
    joined = joined_profiles(batch, scorer.population or PopulationPrior())
    return batch.select([n for n in names if n not in JOINED.values()]), joined


def _score_batch(setup: ScoringSetup, scorer: Scorer, batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` plus the score columns (see the module docstring)."""
    batch, joined = _split_joined(scorer, batch)
    a = scorer.assess(
        batch.column("entity"), batch.column("ip"), setup.learning_period_events, setup.thresholds, setup.flag_unseen,
        joined,
    )  # fmt: skip
    n = len(a.dot_product)
    unseen = a.unseen_entity
    if a.level_code is not None and a.flagged is not None:
        flagged_col, level_col = pa.array(a.flagged), _strings(a.level_code, _LEVEL_STRINGS)
    else:
        flagged_col, level_col = pa.nulls(n, pa.bool_()), pa.nulls(n, pa.string())
    cols = [
        _floats(a.dot_product),
        _floats(a.prior_score),
        _floats(a.anomaly_score),
        pa.array(a.training_count, pa.int64()) if a.training_count is not None else pa.nulls(n, pa.int64()),
        pa.array(unseen) if unseen is not None else pa.nulls(n, pa.bool_()),
        _strings(a.rule_code, _RULE_STRINGS),
        _floats(a.entity_percentile),
        _floats(a.normal_percentile) if a.normal_percentile is not None else pa.nulls(n, pa.float64()),
        level_col,
        flagged_col,
    ]
    return pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *_SCORE_FIELDS_NAMES])


_RULE_STRINGS = pa.array(RULES, pa.string())


_LEVEL_STRINGS = pa.array(LEVELS, pa.string())


def _strings(codes: np.ndarray, strings: pa.Array) -> pa.Array:
    """String column of small codes (-1: null), taken from ``strings`` in Arrow: no Python string per row."""
    return strings.take(pa.array(codes, mask=codes < 0))


def _floats(values: np.ndarray) -> pa.Array:
    """Float column, null where not finite (Spark's null, not NaN, means "no score")."""
    return pa.array(values, mask=~np.isfinite(values))


def _struct_of(ddl: str) -> StructType:
    """The struct of a DDL field list (``fromDDL`` is typed as returning any ``DataType``)."""
    from pyspark.sql.types import StructType

    return cast(StructType, StructType.fromDDL(ddl))


def score_events(df: DataFrame, setup: ScoringSetup | str, batch_size: int = BATCH_ROWS) -> DataFrame:
    """``df`` (with string columns ``entity`` and ``ip``) plus the score columns (see the module docstring).

    ``setup`` is a :class:`ScoringSetup` or just a model path (no profile, no thresholds: ``level`` and
    ``flagged`` null). Every input column passes through unchanged. Arrow batch size is Spark's
    ``spark.sql.execution.arrow.maxRecordsPerBatch``; ``batch_size`` (with a model path) is rows per torch call.
    """
    from pyspark.sql.types import StructType

    if not isinstance(setup, ScoringSetup):
        setup = ScoringSetup(ScorerSource(str(setup)), batch_size)
    out_schema = StructType(df.schema.fields + _struct_of(_SCORE_FIELDS).fields)
    return map_in_arrow(_with_profiles(df, setup), setup.source, partial(_score_batch, setup), out_schema,
                        setup.batch_size)  # fmt: skip


def _explain_batch(scorer: Scorer, batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` plus the :meth:`Scorer.explain` columns (flagged rows are few: Python lists are fine)."""
    batch, joined = _split_joined(scorer, batch)
    ex = scorer.explain(batch.column("entity"), batch.column("ip"), joined=joined)
    ex["nearest_networks"] = [
        None if v is None else "; ".join(f"{x['network']} (cos {x['similarity']:.2f}, {x['events']} events)" for x in v)
        for v in ex["nearest_networks"]
    ]
    cols = [pa.array(ex[name], _EXPLAIN_TYPES[name]) for name in _EXPLAIN_NAMES]
    return pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *_EXPLAIN_NAMES])


def explain_rows(df: DataFrame, setup: ScoringSetup) -> DataFrame:
    """``df`` (flagged rows with ``entity``, ``ip``) plus the explanation columns."""
    from pyspark.sql.types import StructType

    out_schema = StructType(df.schema.fields + _struct_of(_EXPLAIN_FIELDS).fields)
    return map_in_arrow(_with_profiles(df, setup), setup.source, _explain_batch, out_schema, setup.batch_size)


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
    keep = [c for c in flagged.columns if c != "dt"]
    out = out.select(*keep, *BASELINES, F.lit(float(threshold)).alias("threshold"), "dt")
    if setup is None:
        return out.select(*keep, *BASELINES, *[F.lit(None).cast(t).alias(n) for n, t in
                          (f.split() for f in _EXPLAIN_FIELDS.split(","))], "threshold", "dt")  # fmt: skip
    return explain_rows(out, setup).select(*keep, *BASELINES, *_EXPLAIN_NAMES, "threshold", "dt")


def resolve_threshold(spark: SparkSession, cfg: ScoreConfig, profile: str | None = None) -> Threshold:
    """The fixed threshold, a stored calibration for this model, or a new calibration (then stored).

    ``profile`` (entity profiles, see :func:`resolve_profile`) gives the population prior its scores,
    so that the learning period's thresholds are calibrated too.
    """
    from ipinsights.score.calibration import (
        Calibration,
        CalibrationError,
        load_calibration,
        medium_fpr,
        save_calibration,
    )
    from ipinsights.score.spark_calibration import calibrate_levels
    from ipinsights.storage.events import read_events
    from ipinsights.storage.files import uri_exists
    from ipinsights.storage.modelfile import calibration_uri, model_fingerprint

    if cfg.threshold is not None:
        return Threshold(cfg.threshold, "fixed (--threshold)")
    assert cfg.target_fpr is not None
    path = cfg.calibration or calibration_uri(cfg.model)
    if not cfg.recalibrate and uri_exists(path):
        try:
            cal = load_calibration(path, cfg.model)
            if math.isclose(cal.target_fpr, cfg.target_fpr):
                log.info("using calibration %s: threshold %.6g (%s)", path, cal.threshold, cal.source)
                return Threshold(cal.threshold, _describe(cal, path), cal.target_fpr, cal.thresholds())
            log.info("calibration %s is for target_fpr %g, not %g: recalibrating", path, cal.target_fpr, cfg.target_fpr)
        except CalibrationError as exc:
            log.warning("%s: recalibrating", exc)
    if cfg.events is None or cfg.calibration_start_date is None or cfg.calibration_end_date is None:
        raise ValueError(
            f"target_fpr needs a calibration: none usable at {path}; set events, calibration_start_date and "
            "calibration_end_date (normal traffic, e.g. the validation days) or give a fixed threshold"
        )
    events = read_events(spark, cfg.events, cfg.calibration_start_date, cfg.calibration_end_date)
    setup = ScoringSetup(
        ScorerSource.with_profile(cfg.model, profile, cfg.asn_table), cfg.scorer_batch_size, cfg.learning_period_events
    )
    levels, rows = calibrate_levels(score_events(events.select("entity", "ip"), setup), cfg.target_fpr,
                                    cfg.quantile_accuracy)  # fmt: skip
    cal = Calibration(
        threshold=levels["threshold"],
        target_fpr=cfg.target_fpr,
        rows=rows,
        source=f"events dt {cfg.calibration_start_date}..{cfg.calibration_end_date}",
        model_fingerprint=model_fingerprint(cfg.model),
        accuracy=cfg.quantile_accuracy,
        medium_threshold=levels["medium_threshold"],
        medium_fpr=medium_fpr(cfg.target_fpr),
        prior_threshold=levels["prior_threshold"],
        prior_medium_threshold=levels["prior_medium_threshold"],
        score_quantiles=levels["score_quantiles"],
        prior_quantiles=levels["prior_quantiles"],
    )
    save_calibration(cal, path)
    log.info("calibrated threshold %.6g on %d rows (target FPR %g), saved to %s", cal.threshold, rows, cfg.target_fpr,
             path)  # fmt: skip
    return Threshold(cal.threshold, _describe(cal, path), cal.target_fpr, cal.thresholds())


def _describe(cal, path: str) -> str:
    from ipinsights.storage.files import uri_name

    return f"calibrated to FPR {cal.target_fpr:g} on {cal.rows:,} rows of {cal.source} ({uri_name(path)})"


def resolve_profile(spark: SparkSession, cfg: ScoreConfig) -> ProfileHeader | None:
    """Usable entity profiles for the model: the stored ones, or new ones built from the training days.

    Only the header is read here; the rows stay a table that scoring joins onto its batches.
    """
    from ipinsights.score.profiles import ProfileError
    from ipinsights.score.spark_profiles import build_profiles
    from ipinsights.storage.events import read_events
    from ipinsights.storage.files import uri_exists
    from ipinsights.storage.modelfile import profile_uri

    path = cfg.profile or profile_uri(cfg.model)
    if not cfg.recalibrate and uri_exists(path):
        try:
            return ProfileHeader.load(path, cfg.model)
        except ProfileError as exc:
            log.warning("%s: rebuilding", exc)
    if cfg.events is None or cfg.train_start_date is None or cfg.train_end_date is None:
        log.warning("no entity profiles at %s and no training days to build them from: no percentiles or "
                    "explanations (set train_start_date and train_end_date)", path)  # fmt: skip
        return None
    history = read_events(spark, cfg.events, cfg.train_start_date, cfg.train_end_date)
    header = build_profiles(history, cfg.model, path, cfg.asn_table, cfg.max_networks)
    log.info("entity profiles of %d entities (dt %s..%s) saved to %s", header.entities, cfg.train_start_date,
             cfg.train_end_date, path)  # fmt: skip
    return header


def resolve_case_floor(
    spark: SparkSession, cfg: ScoreConfig, setup: ScoringSetup, threshold: Threshold
) -> float | None:
    """The case floor (:mod:`ipinsights.score.cases`): stored for this model, threshold and budget, or
    calibrated on the calibration days (scored with the threshold in force, grouped like a real day) and
    stored as ``<model>.cases.json``. None (every case open) when neither is possible."""
    from pyspark.sql import functions as F

    from ipinsights.score.cases import CaseFloor, calibrate_floor, group_cases
    from ipinsights.storage.events import read_events
    from ipinsights.storage.files import read_text, uri_exists, write_bytes
    from ipinsights.storage.modelfile import model_fingerprint, sidecar_uri

    path = cfg.case_floor or sidecar_uri(cfg.model, ".cases.json")
    fingerprint = model_fingerprint(cfg.model)
    if not cfg.recalibrate and uri_exists(path):
        try:
            stored = CaseFloor.from_json(read_text(path))
            if stored.matches(fingerprint, threshold.value, cfg.normal_cases_per_day):
                log.info("using case floor %s: %s (%s)", path, stored.floor, stored.source)
                return stored.floor
            log.info("case floor %s is for another model, threshold or budget: recalibrating", path)
        except (ValueError, TypeError) as exc:
            log.warning("%s: %s: recalibrating", path, exc)
    if cfg.events is None or cfg.calibration_start_date is None or cfg.calibration_end_date is None:
        log.warning("no case floor at %s and no calibration days to calibrate one: every case is open (the "
                    "report still shows at most max_cases)", path)  # fmt: skip
        return None
    events = read_events(spark, cfg.events, cfg.calibration_start_date, cfg.calibration_end_date)
    scored = score_events(events.select("entity", "ip", "ts", "dt"), setup)
    flagged = flagged_with_context(scored.where(F.col("flagged")), None, threshold.value, setup)
    cases = group_cases(flagged, cfg.case_settings(), day_events=entity_day_events(events)).cases
    floor = calibrate_floor(cases, cfg.normal_cases_per_day)
    source = f"events dt {cfg.calibration_start_date}..{cfg.calibration_end_date}"
    stored = CaseFloor(floor, cfg.normal_cases_per_day, threshold.value, fingerprint, source)
    write_bytes(path, stored.to_json().encode())
    log.info("case floor %s (%d normal cases a day on %s), saved to %s", floor, cfg.normal_cases_per_day, source,
             path)  # fmt: skip
    return floor


def entity_day_events(events: DataFrame) -> DataFrame:
    """Every entity's events per day (``dt``, ``entity``, ``events``): the cases' ``usual_today`` comes from it."""
    from pyspark.sql import functions as F

    return events.groupBy("dt", "entity").agg(F.count(F.lit(1)).alias("events"))


@dataclass
class ScoreRun:
    """What a run did, per day (for logs and tests)."""

    threshold: Threshold
    days: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    reports: dict[str, str | Path] = field(default_factory=dict)  # a Path for local reports
    cases: dict[str, dict[str, int]] = field(default_factory=dict)  # per day: cases, open, network, suppressed...


def run_score_job(
    spark: SparkSession, cfg: ScoreConfig, days: list[str], input_csv: str | None = None, output: str | None = None
) -> ScoreRun:
    """Score ``days`` of the events table in one pass (or a batch-transform CSV, labelled ``days[0]``).

    Each day's scores and flagged partitions are replaced (dynamic partition overwrite; a day without
    rows has its old partitions removed), so a rerun or a backfill over already-scored days is idempotent.
    Then each day gets its report (HTML + CSV) under ``cfg.reports/dt=DAY/``.

    A batch-transform CSV is no day of production traffic: its scores, flagged rows and report go under
    ``output`` (``scores/``, ``flagged/``, ``reports/``), never into the daily tables of ``cfg``.
    """
    if input_csv is not None:
        from dataclasses import replace

        if not output:
            raise ValueError("a batch-transform CSV needs its own output folder (--output), not the daily tables")
        out = output.rstrip("/")
        cfg = replace(cfg, scores=f"{out}/scores", flagged=f"{out}/flagged", reports=f"{out}/reports")
    elif output is not None:
        raise ValueError("output is for a batch-transform CSV; the events table is scored into cfg's tables")
    from pyspark.sql import functions as F

    from ipinsights.score.cases import case_rules, case_views, group_cases, ranked
    from ipinsights.score.report import day_counts, score_histograms, write_day_report
    from ipinsights.score.verdicts import VerdictSet, read_verdicts
    from ipinsights.storage.events import present_days, read_events, read_table_days
    from ipinsights.storage.filesystems import HadoopStore, check_reachable
    from ipinsights.storage.modelfile import read_manifest
    from ipinsights.storage.publish import (
        JOURNAL_PREFIX,
        PublishError,
        recover_publishes,
        replace_folders,
        write_partitions,
    )
    from ipinsights.storage.sagemaker_csv import read_pairs_csv_spark

    read_manifest(cfg.model)  # a missing or foreign model fails here, clearly, not inside every Spark task
    cases_table = cfg.cases_table  # an unusable location fails here, before any work
    store = HadoopStore(spark)
    staging_root = f"{cfg.scores.rstrip('/')}_staging"
    # Before anything else: a run killed in the middle of its publish left a journal; finish or undo it.
    recover_publishes(store, staging_root)
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    staging = f"{staging_root}/run_id={run_id}"
    check_reachable(cfg.reports, "reports")
    for sidecar in (cfg.calibration, cfg.profile):
        if sidecar:
            check_reachable(sidecar, "sidecar")
    # Arrow batches: big enough to amortise the per-batch JVM<->Python cost, small enough to stay in cache.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
    header = resolve_profile(spark, cfg)
    profile = header.path if header is not None else None
    threshold = resolve_threshold(spark, cfg, profile)
    setup = ScoringSetup(
        ScorerSource.with_profile(cfg.model, profile, cfg.asn_table),
        batch_size=cfg.scorer_batch_size,
        learning_period_events=cfg.learning_period_events,
        thresholds=threshold.thresholds,
        flag_unseen=cfg.flag_unseen,
        profile_rows=header.files if header is not None else None,
    )
    if input_csv is not None:
        if len(days) != 1:
            raise ValueError("a batch-transform CSV is labelled with one day")
        events = read_pairs_csv_spark(spark, input_csv, days[0])
        input_days = set(days)
    else:
        if cfg.events is None:
            raise ValueError("no input: set events (the events table) or give a CSV")
        events = read_events(spark, cfg.events, days[0], days[-1])
        input_days = present_days(events)
    empty = sorted(set(days) - input_days)
    if empty:
        log.info("no input events for %s: their outputs will be empty", ", ".join(empty))
    scored = _scores_by_day(events, sorted(input_days), setup)
    # Both tables are written to this run's staging folder first, then their days are published together
    # (journalled, all or nothing): a run killed at any point leaves every day as it was or as it is now.
    if scored is not None:
        write_partitions(scored, f"{staging}/scores")

    # Everything downstream reads the written table back: the UDF runs once per row, never twice.
    scores = read_table_days(spark, f"{staging}/scores", SCORES_SCHEMA, days)
    counts = day_counts(scores, days)
    hists = score_histograms(scores, cfg.histogram_bins)  # (collected now: the staged files move at publish)
    history = None
    if cfg.events is not None and cfg.train_start_date is not None and cfg.train_end_date is not None:
        history = read_events(spark, cfg.events, cfg.train_start_date, cfg.train_end_date)
    else:
        log.warning("train_start_date/train_end_date not set: flagged cases get no /24 and /16 context")
    flagged = flagged_with_context(scores.where(F.col("flagged")), history, threshold.value, setup)
    write_partitions(flagged, f"{staging}/flagged")
    # Cases are grouped from the staged flagged rows (read back: the explanations run once per row).
    verdicts = read_verdicts(cfg.verdicts) if cfg.verdicts else VerdictSet()
    rules = case_rules(spark, verdicts, cases_table)
    floor = resolve_case_floor(spark, cfg, setup, threshold)
    grouped = group_cases(read_table_days(spark, f"{staging}/flagged", flagged_schema(), days),
                          cfg.case_settings(floor), rules, entity_day_events(scores))  # fmt: skip
    write_partitions(ranked(grouped.cases), f"{staging}/cases")
    suppressed = {r["dt"]: r.asDict() for r in grouped.suppressed.collect()}  # one row per day
    moves: list[tuple[str | None, str]] = []
    for name, table in (("scores", cfg.scores), ("flagged", cfg.flagged), ("cases", cases_table)):
        for d in days:  # a day without rows in this run loses its old ones (src None): days are replaced whole
            staged = f"{staging}/{name}/dt={d}"
            moves.append((staged if store.exists(staged) else None, f"{table.rstrip('/')}/dt={d}"))
    try:
        replace_folders(store, moves, f"{staging}/_replaced", f"{staging_root}/{JOURNAL_PREFIX}{run_id}.json")
    except PublishError:
        raise  # folders that could not be put back are in staging: keep it
    except BaseException:
        store.delete(staging)  # rolled back: nothing of this run is needed
        raise
    store.delete(staging)

    flagged_table = read_table_days(spark, cfg.flagged, flagged_schema(), days)
    run = ScoreRun(threshold=threshold, days=list(days), counts=counts)
    views = case_views(spark, cases_table, cfg.scores, days, suppressed, verdicts, rules, cfg.case_settings(floor))
    for day in days:
        run.cases[day] = views[day].counts
        run.reports[day] = write_day_report(
            cfg.reports, day, counts[day], hists.get(day), flagged_table.where(F.col("dt") == day), threshold,
            views[day],
        )  # fmt: skip
        log.info("%s: %s; cases %s; report %s", day, counts[day], run.cases[day], run.reports[day])
    return run


def _scores_by_day(events: DataFrame, days: list[str], setup: ScoringSetup) -> DataFrame | None:
    """The scores table's rows of ``events`` (``SCORE_COLUMNS``), one day at a time; None without days.

    Each day is scored apart and gets its ``dt`` back in the JVM as a constant: the day never travels to
    the Python workers and back with every row (~5% of the job's CPU time).
    """
    from functools import reduce

    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    parts = [
        score_events(events.where(F.col("dt") == day).select("entity", "ip", "ts"), setup)
        .withColumn("dt", F.lit(day))
        .select(*SCORE_COLUMNS)
        for day in days
    ]
    return reduce(DataFrame.unionByName, parts) if parts else None


def flagged_schema() -> str:
    """DDL of the flagged table: the scores columns, the context lookups, the explanations and the threshold."""
    base = SCORES_SCHEMA.replace(", dt string", "")
    ctx = ", ".join(f"{name} boolean" for name in BASELINES)
    return f"{base}, {ctx}, {_EXPLAIN_FIELDS}, threshold double, dt string"
