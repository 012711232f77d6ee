"""The scoring job's sidecars, resolved before anything is scored: entity profiles, the fusion, thresholds,
case floor.

Each follows the one rule of :mod:`ipinsights.score.sidecars` (use the stored file made for this model,
else build it from its days and store it; without those days, fail when it is required, warn when it
is optional). This module says how each is loaded and built on Spark; :func:`resolve_sidecars` resolves
all four in order: the fusion reads the profiles (:mod:`ipinsights.score.spark_fusion`); the thresholds
are calibrated with the profiles' population prior, on the fused ``risk_score`` when there is a fusion
(its fingerprint is part of the calibration's identity); the case floor on the calibration days scored
with those thresholds (the fusion's fingerprint is part of its identity too).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ipinsights.score.batches import ScoringSetup
from ipinsights.score.calibration import Calibration, load_calibration, medium_fpr, save_calibration
from ipinsights.score.cases import CaseFloor
from ipinsights.score.config import ScoreConfig
from ipinsights.score.fusion import FusionError, FusionModel, fusion_uri, load_fusion
from ipinsights.score.profiles import ProfileHeader
from ipinsights.score.rules import ANOMALY_SCORE, RISK_SCORE, Threshold
from ipinsights.score.sidecars import Sidecar, StaleSidecarError, resolve
from ipinsights.score.spark_calibration import calibrate_levels
from ipinsights.score.spark_cases import calibrate_floor, group_cases
from ipinsights.score.spark_context import entity_day_events, flagged_with_context
from ipinsights.score.spark_fusion import build_fusion, fusion_spec, hosting_asns
from ipinsights.score.spark_profiles import build_profiles
from ipinsights.score.spark_scoring import score_events, with_devices
from ipinsights.score.worker import ScorerSource
from ipinsights.storage.events import read_events
from ipinsights.storage.files import read_text, uri_name, write_bytes
from ipinsights.storage.lease import Leases
from ipinsights.storage.modelfile import (
    calibration_uri,
    model_fingerprint,
    network_table,
    profile_uri,
    read_manifest,
    sidecar_uri,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "Sidecars",
    "resolve_case_floor",
    "resolve_fusion",
    "resolve_profile",
    "resolve_sidecars",
    "resolve_threshold",
]

_CALIBRATION_DAYS = "calibration_start_date and calibration_end_date (normal traffic, e.g. the validation days)"
_TRAINING_DAYS = "train_start_date and train_end_date (the days the model was trained on)"


@dataclass(frozen=True)
class Sidecars:
    """What a scoring run resolved before scoring: profiles (header), thresholds, the workers' setup, case floor."""

    profile: ProfileHeader | None
    threshold: Threshold
    setup: ScoringSetup
    case_floor: float | None
    fusion: FusionModel | None = None


def _leases(spark: SparkSession, cfg: ScoreConfig, run_id: str) -> Leases:
    """The leases a run takes on the sidecars it resolves, one at a time (``run_id``: the scoring run's).
    A run always waits for a sidecar (up to ``lease.wait_minutes``), even with ``on_busy: fail``: runs of
    other days share it without writing the same thing, and the run that holds it stores it for them."""
    return Leases(run_id or f"sidecars-{uuid.uuid4().hex[:8]}", replace(cfg.lease, on_busy="wait"), spark)


def resolve_sidecars(spark: SparkSession, cfg: ScoreConfig, run_id: str = "") -> Sidecars:
    """Every sidecar of ``cfg.model``, in dependency order (see the module docstring), each under its lease
    (:func:`ipinsights.score.sidecars.resolve`) taken in the name of the scoring run ``run_id``."""
    leases = _leases(spark, cfg, run_id)
    header = resolve_profile(spark, cfg, leases)
    profile = header.path if header is not None else None
    fusion = resolve_fusion(spark, cfg, header, leases)
    fusion_path = _fusion_path(cfg) if fusion is not None else None
    threshold = resolve_threshold(spark, cfg, profile, fusion, leases)
    setup = ScoringSetup(
        ScorerSource.with_profile(cfg.model, profile, cfg.asn_table, fusion_path),
        batch_size=cfg.scorer_batch_size,
        learning_period_events=cfg.learning_period_events,
        thresholds=threshold.thresholds,
        flag_unseen=cfg.flag_unseen,
        profile_rows=header.files if header is not None else None,
    )
    floor = resolve_case_floor(spark, cfg, setup, threshold, fusion, leases)
    return Sidecars(header, threshold, setup, floor, fusion)


def _fusion_path(cfg: ScoreConfig) -> str:
    return cfg.fusion.path or fusion_uri(cfg.model)


def _table_fingerprint(cfg: ScoreConfig) -> str | None:
    """The fingerprint of the ip2asn table the scorers use: the model's own, else the ``asn_table`` setting's."""
    trained = read_manifest(cfg.model).get("asn_table_fingerprint")
    if trained:
        return str(trained)
    return network_table(cfg.asn_table).fingerprint if cfg.asn_table else None


def resolve_fusion(
    spark: SparkSession, cfg: ScoreConfig, header: ProfileHeader | None, leases: Leases | None = None
) -> FusionModel | None:
    """The fused risk score's model: the stored one made for this model, profile build, table and settings,
    or a new one fitted on the calibration days (:func:`~ipinsights.score.spark_fusion.build_fusion`). None
    when ``fusion.enabled`` is off or there are no profiles (the features read them)."""
    if not cfg.fusion.enabled:
        return None
    if header is None:
        log.warning("no entity profiles: no fused risk score (levels on anomaly_score)")
        return None
    table = _table_fingerprint(cfg)
    spec = fusion_spec(cfg, table is not None)
    hosting = hosting_asns(cfg)

    def load(p: str) -> FusionModel:
        try:
            found = load_fusion(p, model_fingerprint(cfg.model), table, header.build)
        except FusionError as exc:
            raise StaleSidecarError(str(exc)) from None
        leaves = {leaf.when: leaf.features for leaf in found.leaves}
        if (found.gate, leaves.get(0), leaves.get(1), found.hosting_asns) != (spec.gate, spec.new, spec.seen, hosting):
            raise StaleSidecarError("fitted with other features or hosting AS numbers than the settings'")
        return found

    def build(fence: Callable[[], None]) -> FusionModel:
        return build_fusion(spark, cfg, header, path, table, fence)

    path = _fusion_path(cfg)
    days = cfg.window("calibration") is not None
    without = "no risk_score (levels on the model's anomaly_score)"
    sidecar = Sidecar("fusion", path, load, build, days, _CALIBRATION_DAYS, without)
    return resolve(sidecar, cfg.recalibrate, leases or _leases(spark, cfg, ""))


def resolve_profile(spark: SparkSession, cfg: ScoreConfig, leases: Leases | None = None) -> ProfileHeader | None:
    """Usable entity profiles for the model: the stored ones, or new ones built from the training days.

    Only the header is read here; the rows stay a table that scoring joins onto its batches.
    """

    def build(fence: Callable[[], None]) -> ProfileHeader:
        assert cfg.events is not None and cfg.train_start_date is not None and cfg.train_end_date is not None
        history = read_events(spark, cfg.events, cfg.train_start_date, cfg.train_end_date)
        header = build_profiles(history, cfg.model, path, cfg.asn_table, cfg.max_networks, fence=fence)
        log.info(
            "entity profiles of %d entities (dt %s..%s) saved to %s",
            header.entities,
            cfg.train_start_date,
            cfg.train_end_date,
            path,
        )
        return header

    def load(p: str) -> ProfileHeader:
        return ProfileHeader.load(p, cfg.model)  # a ProfileError (a ValueError) when it is not this model's

    path = cfg.profile or profile_uri(cfg.model)
    sidecar = Sidecar(
        "entity profiles",
        path,
        load,
        build,
        cfg.window("train") is not None,
        _TRAINING_DAYS,
        "no percentiles or explanations",
    )
    return resolve(sidecar, cfg.recalibrate, leases or _leases(spark, cfg, ""))


def resolve_threshold(
    spark: SparkSession,
    cfg: ScoreConfig,
    profile: str | None = None,
    fusion: FusionModel | None = None,
    leases: Leases | None = None,
) -> Threshold:
    """The fixed threshold, a stored calibration for this model, or a new calibration (then stored).

    ``profile`` (entity profiles, see :func:`resolve_profile`) gives the population prior its scores,
    so that the learning period's thresholds are calibrated too. With a ``fusion`` the thresholds are on
    its ``risk_score`` (a fixed one too), and a calibration made without it (or with another) is redone.
    """
    on = RISK_SCORE if fusion is not None else ANOMALY_SCORE
    if cfg.threshold is not None:
        return Threshold(cfg.threshold, f"fixed (--threshold, on {on})", score=on)
    target = cfg.target_fpr
    assert target is not None  # ScoreConfig sets exactly one of them
    fused = fusion.fingerprint if fusion is not None else None

    def load(p: str) -> Calibration:
        cal = load_calibration(p, cfg.model)  # a CalibrationError (a ValueError) for another model
        if not math.isclose(cal.target_fpr, target):
            raise StaleSidecarError(f"for target_fpr {cal.target_fpr:g}, not {target:g}")
        if cal.score != on or cal.fusion_fingerprint != fused:
            raise StaleSidecarError(f"made for {cal.score} of another fusion (or none), not this run's {on}")
        return cal

    def build(fence: Callable[[], None]) -> Calibration:
        return _calibrate(spark, cfg, profile, path, fusion, fence)

    path = cfg.calibration or calibration_uri(cfg.model)
    hint = f"{_CALIBRATION_DAYS}, or give a fixed threshold (target_fpr needs a calibration)"
    days = cfg.window("calibration") is not None
    found = Sidecar("calibration", path, load, build, days, hint, None)
    cal = resolve(found, cfg.recalibrate, leases or _leases(spark, cfg, ""))
    assert cal is not None  # required: resolve raises rather than return None
    return Threshold(cal.threshold, _describe(cal, path), cal.target_fpr, cal.thresholds())


def _calibrate(
    spark: SparkSession,
    cfg: ScoreConfig,
    profile: str | None,
    path: str,
    fusion: FusionModel | None,
    fence: Callable[[], None],
) -> Calibration:
    """Thresholds of the levels on the calibration days (on ``fusion``'s risk score when given), stored at
    ``path``."""
    assert cfg.events and cfg.calibration_start_date and cfg.calibration_end_date and cfg.target_fpr
    events = read_events(spark, cfg.events, cfg.calibration_start_date, cfg.calibration_end_date)
    fusion_path = _fusion_path(cfg) if fusion is not None else None
    source = ScorerSource.with_profile(cfg.model, profile, cfg.asn_table, fusion_path)
    setup = ScoringSetup(
        source,
        cfg.scorer_batch_size,
        cfg.learning_period_events,
        profile_rows=ProfileHeader.load(profile).files if fusion is not None and profile else None,
    )
    # The timestamps feed the fusion's recency features, as when the days are scored.
    scored = score_events(
        with_devices(events, "entity", "ip", "ts") if fusion is not None else events.select("entity", "ip"), setup
    )
    on = RISK_SCORE if fusion is not None else ANOMALY_SCORE
    levels, rows = calibrate_levels(scored, cfg.target_fpr, cfg.quantile_accuracy, on)
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
        score=on,
        fusion_fingerprint=fusion.fingerprint if fusion is not None else None,
    )
    fence()
    save_calibration(cal, path)
    log.info(
        "calibrated threshold %.6g on %d rows (target FPR %g), saved to %s", cal.threshold, rows, cfg.target_fpr, path
    )
    return cal


def _describe(cal: Calibration, path: str) -> str:
    return f"calibrated to FPR {cal.target_fpr:g} on {cal.rows:,} rows of {cal.source} ({uri_name(path)})"


def resolve_case_floor(
    spark: SparkSession,
    cfg: ScoreConfig,
    setup: ScoringSetup,
    threshold: Threshold,
    fusion: FusionModel | None = None,
    leases: Leases | None = None,
) -> float | None:
    """The case floor (:mod:`ipinsights.score.cases`): stored for this model, fusion, threshold and budget, or
    calibrated on the calibration days (scored with the threshold in force, grouped like a real day) and
    stored as ``<model>.cases.json``. None (every case open) when neither is possible."""
    fingerprint = model_fingerprint(cfg.model)
    fused = fusion.fingerprint if fusion is not None else None

    def load(p: str) -> CaseFloor:
        stored = CaseFloor.from_json(read_text(p))  # a ValueError when it is not a case floor of this version
        if not stored.matches(fingerprint, threshold.value, cfg.normal_cases_per_day, fused):
            raise StaleSidecarError("for another model, fusion, threshold or budget")
        return stored

    def build(fence: Callable[[], None]) -> CaseFloor:
        assert cfg.events and cfg.calibration_start_date and cfg.calibration_end_date
        from pyspark.sql import functions as F

        events = read_events(spark, cfg.events, cfg.calibration_start_date, cfg.calibration_end_date)
        scored = score_events(with_devices(events, "entity", "ip", "ts", "dt"), setup)
        flagged = flagged_with_context(scored.where(F.col("flagged")), None, threshold.value, setup)
        cases = group_cases(flagged, cfg.case_settings(), day_events=entity_day_events(events)).cases
        floor = calibrate_floor(cases, cfg.normal_cases_per_day)
        source = f"events dt {cfg.calibration_start_date}..{cfg.calibration_end_date}"
        stored = CaseFloor(
            floor, cfg.normal_cases_per_day, threshold.value, fingerprint, source, fusion_fingerprint=fused
        )
        fence()
        write_bytes(path, stored.to_json().encode())
        log.info(
            "case floor %s (%d normal cases a day on %s), saved to %s", floor, cfg.normal_cases_per_day, source, path
        )
        return stored

    path = cfg.case_floor or sidecar_uri(cfg.model, ".cases.json")
    days = cfg.window("calibration") is not None
    without = "every case is open (the report still shows at most max_cases)"
    sidecar = Sidecar("case floor", path, load, build, days, _CALIBRATION_DAYS, without)
    found = resolve(sidecar, cfg.recalibrate, leases or _leases(spark, cfg, ""))
    return found.floor if found is not None else None
