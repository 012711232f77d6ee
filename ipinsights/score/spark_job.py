"""The scoring job: a day (or a backfill range) of events scored, flagged, grouped into cases, published, reported.

The run reads top to bottom (:func:`run_score_job`):

1. **sidecars**: entity profiles, thresholds and the case floor of the model, each used as stored or
   rebuilt (:mod:`ipinsights.score.spark_sidecars`), before anything is scored;
2. **score**: every event of the days (:mod:`ipinsights.score.spark_scoring`), written to this run's
   staging folder and read back, so the model runs once per event;
3. **flag**: the flagged events with what training knew and their explanations
   (:mod:`ipinsights.score.spark_context`), staged;
4. **group**: the flagged events as cases, the investigators' verdicts applied
   (:mod:`ipinsights.score.spark_cases`), staged;
5. **publish**: each day's scores, flagged and cases partitions replace the old ones together
   (journalled: all or nothing, even when the run is killed);
6. **report**: each day's page and CSV (:mod:`ipinsights.score.spark_report`, :mod:`ipinsights.score.report`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipinsights.core.errors import UsageError
from ipinsights.score.config import ScoreConfig
from ipinsights.score.report import write_day_report
from ipinsights.score.rules import Threshold
from ipinsights.score.schemas import FLAGGED, SCORES
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_cases import group_cases, ranked
from ipinsights.score.spark_context import entity_day_events, flagged_with_context
from ipinsights.score.spark_report import case_views, day_counts, flagged_rows, score_histograms
from ipinsights.score.spark_scoring import scores_by_day
from ipinsights.score.spark_sidecars import Sidecars, resolve_sidecars
from ipinsights.score.spark_verdicts import case_rules
from ipinsights.score.verdicts import Rule, VerdictSet, read_verdicts
from ipinsights.storage.events import present_days, read_events, read_table_days
from ipinsights.storage.filesystems import HadoopStore, check_reachable
from ipinsights.storage.lease import LeaseLostError
from ipinsights.storage.modelfile import read_manifest
from ipinsights.storage.publish import JOURNAL_PREFIX, Publisher, PublishError, write_partitions
from ipinsights.storage.sagemaker_csv import read_pairs_csv_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = ["ScoreRun", "run_score_job"]


@dataclass
class ScoreRun:
    """What a run did, per day (for logs and tests)."""

    threshold: Threshold
    days: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    reports: dict[str, str | Path] = field(default_factory=dict)  # a Path for local reports
    cases: dict[str, dict[str, int]] = field(default_factory=dict)  # per day: cases, open, network, suppressed...


@dataclass(frozen=True)
class _Staging:
    """This run's staging folder under the scores table's, and its publisher (store and leases)."""

    pub: Publisher
    root: str  # <scores>_staging: every run's, and the journals of interrupted publishes
    run_id: str

    @property
    def store(self) -> HadoopStore:
        assert isinstance(self.pub.store, HadoopStore)
        return self.pub.store

    @property
    def folder(self) -> str:
        return f"{self.root}/run_id={self.run_id}"


@dataclass(frozen=True)
class _Staged:
    """What steps 2-4 computed before the publish: counts and histograms are collected while staged."""

    counts: dict[str, dict[str, int]]
    hists: dict[str, Any]
    suppressed: dict[str, dict[str, Any]]
    verdicts: VerdictSet
    rules: list[Rule]


def run_score_job(
    spark: SparkSession, cfg: ScoreConfig, days: list[str], input_csv: str | None = None, output: str | None = None
) -> ScoreRun:
    """Score ``days`` of the events table in one pass (or a batch-transform CSV, labelled ``days[0]``).

    Each day's scores, flagged and cases partitions are replaced (a day without rows has its old ones
    removed), so a rerun or a backfill over already-scored days is idempotent. Then each day gets its
    report (HTML + CSV) under ``cfg.reports/dt=DAY/``.

    A batch-transform CSV is no day of production traffic: its scores, flagged rows, cases and report go
    under ``output`` (``scores/``, ``flagged/``, ``cases/``, ``reports/``), never into the daily tables of ``cfg``.
    """
    cfg = _batch_transform_config(cfg, input_csv, output, days)
    # A missing or foreign model fails here, clearly, not inside every Spark task; the days it was trained
    # and validated on are where its sidecars come from, unless the settings name others.
    cfg = cfg.with_model_windows(read_manifest(cfg.model))
    staging = _start(spark, cfg, days)
    with staging.pub:  # the days' leases, held until the reports are written
        # Arrow batches: big enough to amortise the per-batch JVM<->Python cost, small enough to stay in cache.
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        sidecars = resolve_sidecars(spark, cfg, staging.run_id)
        events, input_days = _input_events(spark, cfg, days, input_csv)
        staged = _stage(spark, cfg, staging.folder, events, days, input_days, sidecars)
        _publish(cfg, staging, days)
        return _report(spark, cfg, days, sidecars, staged)


def _batch_transform_config(
    cfg: ScoreConfig, input_csv: str | None, output: str | None, days: list[str]
) -> ScoreConfig:
    """``cfg`` with its tables and reports under ``output`` for a batch-transform CSV (``cfg`` otherwise)."""
    if input_csv is None:
        if output is not None:
            raise UsageError("output is for a batch-transform CSV; the events table is scored into cfg's tables")
        return cfg
    if not output:
        raise UsageError("a batch-transform CSV needs its own output folder (--output), not the daily tables")
    if len(days) != 1:
        raise UsageError("a batch-transform CSV is labelled with one day")
    out = output.rstrip("/")
    return replace(cfg, scores=f"{out}/scores", flagged=f"{out}/flagged", reports=f"{out}/reports")


def _start(spark: SparkSession, cfg: ScoreConfig, days: list[str]) -> _Staging:
    """This run's staging, holding the leases of its days in the three tables (waiting for a run that
    writes one of them), and with any publish a killed run left half done on them finished or undone."""
    check_reachable(cfg.reports, "reports")
    for sidecar in (cfg.calibration, cfg.profile, cfg.fusion.path):
        if sidecar:
            check_reachable(sidecar, "sidecar")
    root = f"{cfg.scores.rstrip('/')}_staging"
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    pub = Publisher(HadoopStore(spark), root, run_id, cfg.lease, spark)
    try:
        pub.hold(f"{table.rstrip('/')}/dt={d}" for table in (cfg.scores, cfg.flagged, cfg.cases_table) for d in days)
    except BaseException:
        pub.leases.release()
        raise
    return _Staging(pub, root, run_id)


def _input_events(
    spark: SparkSession, cfg: ScoreConfig, days: list[str], input_csv: str | None
) -> tuple[DataFrame, set[str]]:
    """The events to score and the days that have any."""
    if input_csv is not None:
        return read_pairs_csv_spark(spark, input_csv, days[0]), set(days)
    if cfg.events is None:
        raise UsageError("no input: set events (the events table) or give a CSV")
    events = read_events(spark, cfg.events, days[0], days[-1])
    return events, present_days(events)


def _history(spark: SparkSession, cfg: ScoreConfig) -> DataFrame | None:
    """The training days' events (the flagged events' /24 and /16 context), when the settings name them."""
    window = cfg.window("train")
    if window is not None:
        assert cfg.events is not None  # window() says so
        return read_events(spark, cfg.events, *window)
    log.warning("train_start_date/train_end_date not set: flagged cases get no /24 and /16 context")
    return None


def _stage(
    spark: SparkSession,
    cfg: ScoreConfig,
    staging: str,
    events: DataFrame,
    days: list[str],
    input_days: set[str],
    sidecars: Sidecars,
) -> _Staged:
    """Steps 2-4: score, flag and group the days into ``staging`` (each step reads the previous one back)."""
    from pyspark.sql import functions as F

    empty = sorted(set(days) - input_days)
    if empty:
        log.info("no input events for %s: their outputs will be empty", ", ".join(empty))
    scored = scores_by_day(events, sorted(input_days), sidecars.setup)
    if scored is not None:
        write_partitions(scored, f"{staging}/scores")
    # Everything downstream reads the written table back: the UDF runs once per row, never twice.
    scores = read_table_days(spark, f"{staging}/scores", struct_type(SCORES), days)
    counts = day_counts(scores, days)
    # (collected now: the staged files move at publish)
    hists = score_histograms(scores, cfg.histogram_bins, sidecars.threshold.on)
    threshold = sidecars.threshold.value
    flagged = flagged_with_context(scores.where(F.col("flagged")), _history(spark, cfg), threshold, sidecars.setup)
    write_partitions(flagged, f"{staging}/flagged")
    # Cases are grouped from the staged flagged rows (read back: the explanations run once per row).
    verdicts = read_verdicts(cfg.verdicts) if cfg.verdicts else VerdictSet()
    rules = case_rules(spark, verdicts, cfg.cases_table)
    staged_flagged = read_table_days(spark, f"{staging}/flagged", struct_type(FLAGGED), days)
    settings = cfg.case_settings(sidecars.case_floor)
    grouped = group_cases(staged_flagged, settings, rules, entity_day_events(scores))
    write_partitions(ranked(grouped.cases), f"{staging}/cases")
    suppressed = {r["dt"]: r.asDict() for r in grouped.suppressed.collect()}  # one row per day
    return _Staged(counts, hists, suppressed, verdicts, rules)


def _publish(cfg: ScoreConfig, staging: _Staging, days: list[str]) -> None:
    """Step 5: every day's staged partitions replace the tables' ones together (journalled, all or nothing)."""
    store, folder = staging.store, staging.folder
    moves: list[tuple[str | None, str]] = []
    for name, table in (("scores", cfg.scores), ("flagged", cfg.flagged), ("cases", cfg.cases_table)):
        for d in days:  # a day without rows in this run loses its old ones (src None): days are replaced whole
            staged = f"{folder}/{name}/dt={d}"
            moves.append((staged if store.exists(staged) else None, f"{table.rstrip('/')}/dt={d}"))
    journal = f"{staging.root}/{JOURNAL_PREFIX}{staging.run_id}.json"
    try:
        staging.pub.replace_folders(moves, f"{folder}/_replaced", journal)
    except (PublishError, LeaseLostError):
        raise  # folders that could not be put back, or that the run which took the lease over settles: keep it
    except BaseException:
        store.delete(folder)  # rolled back: nothing of this run is needed
        raise
    store.delete(folder)


def _report(spark: SparkSession, cfg: ScoreConfig, days: list[str], sidecars: Sidecars, staged: _Staged) -> ScoreRun:
    """Step 6: each day's report from the published tables."""
    from pyspark.sql import functions as F

    threshold = sidecars.threshold
    flagged_table = read_table_days(spark, cfg.flagged, struct_type(FLAGGED), days)
    run = ScoreRun(threshold=threshold, days=list(days), counts=staged.counts)
    settings = cfg.case_settings(sidecars.case_floor)
    views = case_views(
        spark, cfg.cases_table, cfg.scores, days, staged.suppressed, staged.verdicts, staged.rules, settings
    )
    for day in days:
        counts = staged.counts[day]
        rows = flagged_rows(flagged_table.where(F.col("dt") == day), counts)
        run.cases[day] = views[day].counts
        run.reports[day] = write_day_report(
            cfg.reports, day, counts, staged.hists.get(day), rows, threshold, views[day]
        )
        log.info("%s: %s; cases %s; report %s", day, counts, run.cases[day], run.reports[day])
    return run
