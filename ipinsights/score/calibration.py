"""Thresholds calibrated on normal traffic to a target false-positive rate.

The model's raw score is unbounded, so SageMaker leaves every user to hand-pick a threshold. Here a
threshold is the ``(1 - target_fpr)`` quantile of the anomaly scores of traffic taken to be normal
(the validation days, or a held-out part of the training days): flagging ``anomaly_score > threshold``
then flags about ``target_fpr`` of normal traffic. The quantile comes from Spark's
``percentile_approx`` with a high accuracy (relative rank error ``1 / accuracy``), so the scores are
never collected to the driver.

Where it is stored: a sibling file ``<model_dir>.calibration.json`` beside the model directory, not
inside it. A calibration is a property of (model, traffic) that is redone as traffic drifts; keeping it
outside leaves the model directory immutable (its manifest checksums stay valid and a reader of the
model never races with a recalibration). The file records a fingerprint of the model's manifest
checksums and is refused for any other model, so a retrained model cannot silently inherit a stale
threshold.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ipinsights.core.errors import UsageError
from ipinsights.score.rules import ANOMALY_SCORE, Thresholds
from ipinsights.storage.files import atomic_write, read_text
from ipinsights.storage.modelfile import model_fingerprint

FORMAT = "ipinsights-calibration"


class CalibrationError(UsageError):
    """A calibration file is missing, malformed, or belongs to another model."""


@dataclass(frozen=True)
class Calibration:
    """A threshold on ``anomaly_score`` and how it was obtained."""

    threshold: float
    target_fpr: float
    rows: int  # normal rows the quantile was taken over
    source: str  # what traffic (e.g. "events dt 2024-01-08..2024-01-08")
    model_fingerprint: str
    method: str = "percentile_approx"
    accuracy: int = 1_000_000
    created_at: str = ""
    # Levels (files written before levels existed lack them: levels are then low/high only).
    medium_threshold: float | None = None  # at medium_fpr
    medium_fpr: float | None = None
    prior_threshold: float | None = None  # population-prior scores (learning period) at target_fpr
    prior_medium_threshold: float | None = None
    score_quantiles: list[float] | None = None  # at rules.CAL_LEVELS: the normal percentile
    prior_quantiles: list[float] | None = None
    # What the thresholds apply to: anomaly_score, or risk_score of the fusion with this fingerprint.
    score: str = ANOMALY_SCORE
    fusion_fingerprint: str | None = None

    def thresholds(self) -> Thresholds:
        """The :class:`~ipinsights.score.rules.Thresholds` of the levels and the normal percentile."""

        def table(q: list[float] | None) -> tuple[float, ...] | None:
            return None if q is None else tuple(q)

        return Thresholds(
            self.threshold,
            self.medium_threshold,
            self.prior_threshold,
            self.prior_medium_threshold,
            table(self.score_quantiles),
            table(self.prior_quantiles),
            self.score,
        )

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n"


def medium_fpr(target_fpr: float) -> float:
    """The looser false-positive rate of the ``medium`` level: ten times the target, at most 50 %."""
    return min(0.5, 10.0 * target_fpr)


def save_calibration(cal: Calibration, path: str | Path) -> str | Path:
    """Write ``cal`` as JSON atomically (a reader sees the old file or the new one, never half of one)."""
    if not cal.created_at:
        cal = Calibration(**{**asdict(cal), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    with atomic_write(path) as fh:  # a path or URI
        fh.write(cal.to_json())
    return path


def load_calibration(path: str | Path, model_dir: str | Path | None = None) -> Calibration:
    """Read a calibration file; with ``model_dir``, refuse it unless it was made for that model."""
    try:
        data: dict[str, Any] = json.loads(read_text(path))
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no calibration file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise CalibrationError(f"{path}: not an ipinsights calibration file")
    try:
        cal = Calibration(**data)
    except TypeError as exc:
        raise CalibrationError(f"{path}: malformed calibration ({exc})") from None
    if not math.isfinite(cal.threshold):
        raise CalibrationError(f"{path}: threshold {cal.threshold!r} is not a finite number")
    if model_dir is not None and cal.model_fingerprint != model_fingerprint(model_dir):
        raise CalibrationError(f"{path}: made for another model than {model_dir} (recalibrate it)")
    return cal
