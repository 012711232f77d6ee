"""Scoring events on Spark: scores, verdicts, flagged cases with context, and the daily run that ties them.

Columns added to events by :func:`score_events` (one Arrow batch at a time, in Spark's Python workers,
with the model loaded once per worker through :func:`ipinsights.scorer.load_scorer`):

    dot_product     float   SageMaker's raw output (higher = more compatible); null for a non-IPv4 address
    anomaly_score   float   -dot_product (higher = more suspicious); null when the score means nothing:
                            the entity was never seen in training, or the address is not IPv4
    training_count  long    the entity's events in training (0 = unseen; null if the model has no entity stats)
    unseen_entity   boolean training_count == 0

:func:`apply_threshold` then adds the verdict: ``rule`` (which rule decided: ``unseen_entity``,
``not_ipv4`` or ``model_score``) and ``flagged``. Flagged rows get their context from the training days
of the events table in :func:`flagged_with_context` (was the IP, its /24, its /16 seen for this entity).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.evaluate import BASELINES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "RULE_UNSEEN",
    "RULE_NOT_IPV4",
    "RULE_SCORE",
    "ScoreConfig",
    "Threshold",
    "ScoreRun",
    "score_events",
    "apply_threshold",
    "ipv4_int",
    "flagged_with_context",
    "resolve_threshold",
    "run_score_job",
]

log = logging.getLogger(__name__)

RULE_UNSEEN = "unseen_entity"
RULE_NOT_IPV4 = "not_ipv4"
RULE_SCORE = "model_score"

_SCORE_FIELDS = "dot_product float, anomaly_score float, training_count long, unseen_entity boolean"
_SCORE_FIELDS_NAMES = [f.strip().split()[0] for f in _SCORE_FIELDS.split(",")]
#: Columns of the scores table, in order.
SCORE_COLUMNS = ("entity", "ip", "ts", "dot_product", "anomaly_score", "training_count", "unseen_entity",
                 "rule", "flagged", "dt")  # fmt: skip
SCORES_SCHEMA = (
    "entity string, ip string, ts timestamp, dot_product float, anomaly_score float, training_count long, "
    "unseen_entity boolean, rule string, flagged boolean, dt string"
)


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the scoring job (``conf/score.yml``); paths may be any Hadoop file system URI except ``reports``.

    Exactly one of ``threshold`` (fixed) and ``target_fpr`` (calibrated) is set. Calibration traffic is
    the events of ``calibration_start_date..calibration_end_date`` (e.g. the validation days); context of
    flagged cases comes from ``train_start_date..train_end_date`` (the days the model was trained on).
    """

    model: str
    scores: str
    flagged: str
    reports: str  # local folder: reports are written by the driver
    events: str | None = None
    threshold: float | None = None
    target_fpr: float | None = None
    calibration: str | None = None  # default: <model>.calibration.json
    recalibrate: bool = False
    calibration_start_date: str | None = None
    calibration_end_date: str | None = None
    train_start_date: str | None = None
    train_end_date: str | None = None
    flag_unseen: bool = True
    quantile_accuracy: int = 1_000_000
    top_n: int = 50
    histogram_bins: int = 60
    arrow_batch_size: int = 20_000
    scorer_batch_size: int = 8192  # rows per torch call: small batches stay in cache (faster on CPU)

    def __post_init__(self) -> None:
        from ipinsights.config import ConfigError, _check_float, _check_int

        if (self.threshold is None) == (self.target_fpr is None):
            raise ConfigError("set exactly one of threshold (fixed) and target_fpr (calibrated)")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError(f"threshold={self.threshold!r} must be a finite number")
        if self.target_fpr is not None:
            _check_float("target_fpr", self.target_fpr, 1e-6, 0.5)
        _check_int("quantile_accuracy", self.quantile_accuracy, 100, 100_000_000)
        _check_int("top_n", self.top_n, 1, 100_000)
        _check_int("histogram_bins", self.histogram_bins, 5, 1000)
        _check_int("arrow_batch_size", self.arrow_batch_size, 100, 10_000_000)
        _check_int("scorer_batch_size", self.scorer_batch_size, 64, 10_000_000)
        for a, b in (("calibration_start_date", "calibration_end_date"), ("train_start_date", "train_end_date")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ConfigError(f"set both {a} and {b}, or neither")


# ---------------------------------------------------------------------------------------------
# The UDF: Arrow batches in, Arrow batches out; no pandas objects on the hot path.
# ---------------------------------------------------------------------------------------------


def _scorer_fn(model_path: str, batch_size: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: a picklable closure over the model path, loading it once per worker."""

    def score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from ipinsights.scorer import load_scorer

        # Spark runs one Python worker per task slot: more torch threads per worker only oversubscribe cores.
        torch.set_num_threads(1)
        scorer = load_scorer(model_path)
        scorer.batch_size = batch_size
        for batch in batches:
            ent, ip = batch.column("entity"), batch.column("ip")
            dp = scorer.dot_product(ent, ip)
            bad_ip = np.isnan(dp)
            counts = scorer.training_counts(ent)
            unseen = counts == 0 if counts is not None else np.zeros(len(dp), bool)
            cols = [
                pa.array(dp, mask=bad_ip),
                pa.array(-dp, mask=bad_ip | unseen),
                pa.array(counts, pa.int64()) if counts is not None else pa.nulls(len(dp), pa.int64()),
                pa.array(unseen) if counts is not None else pa.nulls(len(dp), pa.bool_()),
            ]
            yield pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *_SCORE_FIELDS_NAMES])

    return score_batches


def score_events(df: DataFrame, model_path: str, batch_size: int = 8192) -> DataFrame:
    """``df`` (with string columns ``entity`` and ``ip``) plus the score columns (see the module docstring).

    Every input column passes through unchanged. Arrow batch size is Spark's
    ``spark.sql.execution.arrow.maxRecordsPerBatch``; ``batch_size`` is rows per torch call.
    """
    from pyspark.sql.types import StructType

    model_path = str(Path(model_path).resolve()) if "://" not in str(model_path) else str(model_path)
    out_schema = StructType(df.schema.fields + StructType.fromDDL(_SCORE_FIELDS).fields)
    return df.mapInArrow(_scorer_fn(model_path, batch_size), out_schema)


def apply_threshold(scored: DataFrame, threshold: float, flag_unseen: bool = True) -> DataFrame:
    """Add ``rule`` and ``flagged``: unseen entities (flagged if ``flag_unseen``), non-IPv4, else score > threshold."""
    from pyspark.sql import functions as F

    rule = (
        F.when(F.col("unseen_entity"), F.lit(RULE_UNSEEN))
        .when(F.col("dot_product").isNull(), F.lit(RULE_NOT_IPV4))
        .otherwise(F.lit(RULE_SCORE))
    )
    flagged = (
        F.when(F.col("unseen_entity"), F.lit(bool(flag_unseen)))
        .when(F.col("anomaly_score").isNull(), F.lit(False))
        .otherwise(F.col("anomaly_score") > F.lit(float(threshold)))
    )
    return scored.withColumn("rule", rule).withColumn("flagged", flagged)


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


def flagged_with_context(flagged: DataFrame, history: DataFrame | None, threshold: float) -> DataFrame:
    """Flagged rows plus what training knew: ``seen_exact_ip``, ``seen_same_24``, ``seen_same_16``, ``threshold``.

    ``history`` is the training days of the events table (``entity``, ``ip_int``); the lookups are the
    evaluation baselines' (``evaluate.BASELINES``), done as left joins on (entity, ip_int >> (32 - length))
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
    return out.select(*keep, *BASELINES, F.lit(float(threshold)).alias("threshold"), "dt")


# ---------------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """The threshold in force and where it came from (shown in every report)."""

    value: float
    source: str  # "fixed" or a description of the calibration
    target_fpr: float | None = None


def resolve_threshold(spark: SparkSession, cfg: ScoreConfig) -> Threshold:
    """The fixed threshold, a stored calibration for this model, or a new calibration (then stored)."""
    from ipinsights.calibration import (
        Calibration,
        CalibrationError,
        calibrate_threshold,
        calibration_path,
        load_calibration,
        model_fingerprint,
        save_calibration,
    )
    from ipinsights.io import read_events_days as read_events

    if cfg.threshold is not None:
        return Threshold(cfg.threshold, "fixed (--threshold)")
    assert cfg.target_fpr is not None
    path = Path(cfg.calibration) if cfg.calibration else calibration_path(cfg.model)
    if not cfg.recalibrate and path.exists():
        try:
            cal = load_calibration(path, cfg.model)
            if math.isclose(cal.target_fpr, cfg.target_fpr):
                log.info("using calibration %s: threshold %.6g (%s)", path, cal.threshold, cal.source)
                return Threshold(cal.threshold, _describe(cal, path), cal.target_fpr)
            log.info("calibration %s is for target_fpr %g, not %g: recalibrating", path, cal.target_fpr, cfg.target_fpr)
        except CalibrationError as exc:
            log.warning("%s: recalibrating", exc)
    if cfg.events is None or cfg.calibration_start_date is None or cfg.calibration_end_date is None:
        raise ValueError(
            f"target_fpr needs a calibration: none usable at {path}; set events, calibration_start_date and "
            "calibration_end_date (normal traffic, e.g. the validation days) or give a fixed threshold"
        )
    events = read_events(spark, cfg.events, cfg.calibration_start_date, cfg.calibration_end_date)
    scored = score_events(events.select("entity", "ip"), cfg.model, cfg.scorer_batch_size)
    value, rows = calibrate_threshold(scored, cfg.target_fpr, cfg.quantile_accuracy)
    cal = Calibration(
        threshold=value,
        target_fpr=cfg.target_fpr,
        rows=rows,
        source=f"events dt {cfg.calibration_start_date}..{cfg.calibration_end_date}",
        model_fingerprint=model_fingerprint(cfg.model),
        accuracy=cfg.quantile_accuracy,
    )
    save_calibration(cal, path)
    log.info("calibrated threshold %.6g on %d rows (target FPR %g), saved to %s", value, rows, cfg.target_fpr, path)
    return Threshold(value, _describe(cal, path), cal.target_fpr)


def _describe(cal, path: Path) -> str:
    return f"calibrated to FPR {cal.target_fpr:g} on {cal.rows:,} rows of {cal.source} ({path.name})"


# ---------------------------------------------------------------------------------------------
# The run: score, write, flag, report
# ---------------------------------------------------------------------------------------------


@dataclass
class ScoreRun:
    """What a run did, per day (for logs and tests)."""

    threshold: Threshold
    days: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)


def run_score_job(spark: SparkSession, cfg: ScoreConfig, days: list[str], input_csv: str | None = None) -> ScoreRun:
    """Score ``days`` of the events table in one pass (or a batch-transform CSV, labelled ``days[0]``).

    Each day's scores and flagged partitions are replaced (dynamic partition overwrite; a day without
    rows has its old partitions removed), so a rerun or a backfill over already-scored days is idempotent.
    Then each day gets its report (HTML + CSV) under ``cfg.reports/dt=DAY/``.
    """
    from pyspark.sql import functions as F

    from ipinsights import io as sio
    from ipinsights.modelfile import read_manifest
    from ipinsights.report import day_counts, score_histograms, write_day_report

    read_manifest(cfg.model)  # a missing or foreign model fails here, clearly, not inside every Spark task
    # Arrow batches: big enough to amortise the per-batch JVM<->Python cost, small enough to stay in cache.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
    threshold = resolve_threshold(spark, cfg)
    if input_csv is not None:
        if len(days) != 1:
            raise ValueError("a batch-transform CSV is labelled with one day")
        events = sio.read_pairs_csv_spark(spark, input_csv, days[0])
        input_days = set(days)
    else:
        if cfg.events is None:
            raise ValueError("no input: set events (the events table) or give a CSV")
        events = sio.read_events_days(spark, cfg.events, days[0], days[-1])
        input_days = sio.present_days(events)
    empty = sorted(set(days) - input_days)
    if empty:
        log.info("no input events for %s: their outputs will be empty", ", ".join(empty))
    scored = apply_threshold(
        score_events(events.select("entity", "ip", "ts", "dt"), cfg.model, cfg.scorer_batch_size),
        threshold.value,
        cfg.flag_unseen,
    ).select(*SCORE_COLUMNS)
    sio.write_partitions(scored, cfg.scores)
    sio.delete_partitions(spark, cfg.scores, empty)

    # Everything downstream reads the written table back: the UDF runs once per row, never twice.
    scores = sio.read_table_days(spark, cfg.scores, SCORES_SCHEMA, days)
    counts = day_counts(scores, days)
    history = None
    if cfg.events is not None and cfg.train_start_date is not None and cfg.train_end_date is not None:
        history = sio.read_events_days(spark, cfg.events, cfg.train_start_date, cfg.train_end_date)
    else:
        log.warning("train_start_date/train_end_date not set: flagged cases get no /24 and /16 context")
    flagged = flagged_with_context(scores.where(F.col("flagged")), history, threshold.value)
    sio.write_partitions(flagged, cfg.flagged)
    sio.delete_partitions(spark, cfg.flagged, [d for d in days if counts[d]["flagged"] == 0])

    flagged_table = sio.read_table_days(spark, cfg.flagged, flagged_schema(), days)
    hists = score_histograms(scores, cfg.histogram_bins)
    run = ScoreRun(threshold=threshold, days=list(days), counts=counts)
    for day in days:
        run.reports[day] = write_day_report(
            Path(cfg.reports), day, counts[day], hists.get(day), flagged_table.where(F.col("dt") == day),
            threshold, cfg.top_n,
        )  # fmt: skip
        log.info("%s: %s; report %s", day, counts[day], run.reports[day])
    return run


def flagged_schema() -> str:
    """DDL of the flagged table: the scores columns, the context lookups and the threshold."""
    base = SCORES_SCHEMA.replace(", dt string", "")
    ctx = ", ".join(f"{name} boolean" for name in BASELINES)
    return f"{base}, {ctx}, threshold double, dt string"
