"""Calibrating thresholds on Spark: quantiles of normal traffic's scores, never collected to the driver.

The file format and the thresholds it yields live in :mod:`ipinsights.score.calibration`, which needs
no Spark (the endpoint reads calibrations too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from ipinsights.score.calibration import medium_fpr
from ipinsights.score.rules import ANOMALY_SCORE, CAL_LEVELS, RISK_SCORE, RULE_SCORE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["LevelThresholds", "calibrate_levels"]


class LevelThresholds(TypedDict):
    """What :func:`calibrate_levels` measures (the :class:`~ipinsights.score.calibration.Calibration` fields)."""

    threshold: float
    medium_threshold: float
    prior_threshold: float | None  # None: no population-prior scores (no entity profiles)
    prior_medium_threshold: float | None
    score_quantiles: list[float]  # at CAL_LEVELS
    prior_quantiles: list[float] | None


def calibrate_levels(
    scores: DataFrame, target_fpr: float, accuracy: int = 1_000_000, score: str = ANOMALY_SCORE
) -> tuple[LevelThresholds, int]:
    """Thresholds of the levels on normal traffic scored by ``score_events``, in one Spark aggregation.

    Entity scores (rule ``model_score``) and population-prior scores (every valid row: the prior is
    what judges any entity in its learning period) each get their ``1 - target_fpr`` (high) and
    ``1 - medium_fpr`` (medium) quantiles. With ``score="risk_score"`` (a fusion), the fused score of every
    valid row is one scale, whatever its rule: its quantiles are the thresholds, and there are no prior
    ones. Returns the thresholds by name and the rows of the score calibrated.
    """
    from pyspark.sql import functions as F

    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr={target_fpr} must be in (0, 1)")
    qs = [1.0 - target_fpr, 1.0 - medium_fpr(target_fpr), *CAL_LEVELS.tolist()]
    a, p = F.col("anomaly_score").cast("double"), F.col("prior_score").cast("double")
    entity = F.when((F.col("rule") == RULE_SCORE) & a.isNotNull() & ~F.isnan(a), a)
    prior = F.when(p.isNotNull() & ~F.isnan(p), p)
    if score == RISK_SCORE:
        r = F.col("risk_score").cast("double")
        entity, prior = F.when(r.isNotNull() & ~F.isnan(r), r), F.lit(None).cast("double")
    row = scores.agg(
        F.percentile_approx(entity, qs, accuracy).alias("e"),
        F.count(entity).alias("n"),
        F.percentile_approx(prior, qs, accuracy).alias("p"),
        F.count(prior).alias("np"),
    ).first()
    if row is None or not row["n"]:
        raise ValueError("no scored rows to calibrate on (empty traffic, or every entity in its learning period)")
    e: list[float] = row["e"]
    pr: list[float] | None = row["p"] if row["np"] else None  # no prior scores: no entity profiles
    out: LevelThresholds = {
        "threshold": float(e[0]),
        "medium_threshold": float(e[1]),
        "prior_threshold": None if pr is None else float(pr[0]),
        "prior_medium_threshold": None if pr is None else float(pr[1]),
        "score_quantiles": [float(x) for x in e[2:]],
        "prior_quantiles": None if pr is None else [float(x) for x in pr[2:]],
    }
    return out, int(row["n"])
