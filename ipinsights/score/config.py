"""Settings of the scoring job (``conf/score.yml``), checked when they load."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ipinsights.core.config import ConfigError, LeaseOptions, check_float, check_int
from ipinsights.score.cases import CaseSettings
from ipinsights.score.scorer import BATCH_ROWS


@dataclass(frozen=True)
class FusionSettings:
    """The fused risk score (``fusion:`` in ``conf/score.yml``; :mod:`ipinsights.score.fusion`): fitted by the
    scoring job as a sidecar of the model (``<model>.fusion.json``) when it has entity profiles and
    calibration days, and refitted when the model, the profiles, the table or these settings change."""

    enabled: bool = True  # false: no fusion (risk_score null; levels on anomaly_score, as before)
    path: str | None = None  # default: <model>.fusion.json
    sample_rows: int = 100_000  # calibration-day logins sampled for the fit (each with a drawn attack per kind)
    labelled: str | None = None  # labelled rows (entity,ip,label[,kind] CSV, or Parquet with ts) added to the fit
    labelled_weight: float = 1.0  # their total weight, relative to the drawn rows' (logins plus attacks)
    verdict_weight: float = 1.0  # investigators' verdicts (``verdicts``): the events of the cases they name
    hosting_asns: str | None = None  # hosting AS numbers, one a line (default: the shipped list)
    gate: str | None = None  # the split feature (default: as_seen with an ip2asn table, else subnet_seen)
    features_new: tuple[str, ...] | None = None  # the "new network" leaf's features (default: the shipped list)
    features_seen: tuple[str, ...] | None = None  # the "known network" leaf's features
    l2: float = 0.001  # the L2 penalty, per unit of weight
    seed: int = 0

    def __post_init__(self) -> None:
        from ipinsights.score.fusion import check_names

        check_int("fusion.sample_rows", self.sample_rows, 100, 100_000_000)
        check_float("fusion.labelled_weight", self.labelled_weight, 0.0, 1000.0)
        check_float("fusion.verdict_weight", self.verdict_weight, 0.0, 1000.0)
        check_float("fusion.l2", self.l2, 0.0, 100.0)
        check_int("fusion.seed", self.seed, 0, 2**31 - 1)
        try:
            check_names([n for n in (self.gate, *(self.features_new or ()), *(self.features_seen or ())) if n])
        except ValueError as exc:
            raise ConfigError(f"fusion: {exc}") from None


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
    lease: LeaseOptions = field(default_factory=LeaseOptions)  # overlapping runs (ipinsights.storage.lease)
    fusion: FusionSettings = FusionSettings()

    def __post_init__(self) -> None:
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
        if not self.cases:
            _beside(self.flagged, "cases")  # an unusable default fails when the settings load, before any work
        for a, b in (("calibration_start_date", "calibration_end_date"), ("train_start_date", "train_end_date")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ConfigError(f"set both {a} and {b}, or neither")

    @property
    def cases_table(self) -> str:
        """The cases table: ``cases``, or ``cases`` beside the flagged table."""
        return self.cases or _beside(self.flagged, "cases")

    def window(self, name: str) -> tuple[str, str] | None:
        """The events table's days named by ``<name>_start_date``/``<name>_end_date`` (``train`` or
        ``calibration``), or None when they or the events table are not set."""
        first, last = getattr(self, f"{name}_start_date"), getattr(self, f"{name}_end_date")
        return (first, last) if self.events is not None and first is not None and last is not None else None

    def with_model_windows(self, manifest: Mapping[str, Any]) -> ScoreConfig:
        """This config with the day windows the model was trained on (``training.windows`` in its manifest,
        written by the training job) where its own are unset: the calibration on the model's validation
        days (never its training days), the profiles and the flagged events' context from its training days.
        A model without windows (trained on CSV files, or before they were recorded) changes nothing."""
        windows = (manifest.get("training") or {}).get("windows") or {}
        if self.events is None or not windows:
            return self
        changes: dict[str, Any] = {}
        for name, prefix in (("validation", "calibration"), ("train", "train")):
            days = windows.get(name)
            if days and all(days) and getattr(self, f"{prefix}_start_date") is None:
                changes[f"{prefix}_start_date"], changes[f"{prefix}_end_date"] = days
        return replace(self, **changes) if changes else self

    def case_settings(self, floor: float | None = None) -> CaseSettings:
        """How a day's flagged events become cases, with the case floor in force."""
        return CaseSettings(self.max_cases, self.network_case_entities, self.case_events, floor)


def _beside(table: str, name: str) -> str:
    """The table ``name`` in the folder of ``table`` (a path or URI)."""
    path = table.rstrip("/")
    _, scheme, rest = path.rpartition("://")
    if scheme and "/" not in rest:  # s3://bucket: "beside" it would be another bucket
        raise ConfigError(f"flagged={table!r} is a bucket's root: set {name} (where the {name} table goes)")
    return f"{path.rsplit('/', 1)[0]}/{name}" if "/" in path else name
