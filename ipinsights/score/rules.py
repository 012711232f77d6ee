"""The verdict on a scored row: which rule decided it, its level against calibrated thresholds, whether
it is flagged, and the training lookups that give a flagged row its context. Imports nothing else of the
score stage, so the endpoint and the batch job share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


#: Which rule produced a row's anomaly score.
RULE_INVALID = "invalid_ip"  # no valid address (or an IPv6 one for an IPv4-only model): no score


RULE_LEARNING = "learning_period"  # too few training events: scored against the population prior


RULE_SCORE = "model_score"  # the entity's own embedding


#: ``Assessment.rule_code`` indexes this tuple.
RULES = (RULE_INVALID, RULE_LEARNING, RULE_SCORE)


RULE_INVALID_CODE, RULE_LEARNING_CODE, RULE_SCORE_CODE = range(len(RULES))


#: The scores a calibration's thresholds may apply to: the rule's (``anomaly_score``) or the fused one.
ANOMALY_SCORE, RISK_SCORE = "anomaly_score", "risk_score"


LEVELS = ("low", "medium", "high")  # ``Assessment.level_code`` indexes it; -1 = no level


HIGH_CODE = LEVELS.index("high")


#: The "seen before" lookups in the training days, name -> IPv4 prefix length: the context of a flagged
#: row in the scoring job, and the baselines that evaluations compare the model with.
BASELINES = {"seen_exact_ip": 32, "seen_same_24": 24, "seen_same_16": 16}


#: Probability levels of the calibration's quantile tables: dense in the tail, where alerts live.
CAL_LEVELS = np.unique(np.concatenate([np.linspace(0, 0.9, 46), np.linspace(0.9, 0.99, 46), np.linspace(0.99, 1, 21)]))


@dataclass(frozen=True)
class Thresholds:
    """Anomaly-score thresholds of the levels, for entity scores and for population-prior scores.

    ``high`` is the alerting threshold (calibrated to the target FPR, or fixed); ``medium`` (optional)
    a looser one, calibrated to a higher FPR. A level is the highest whose threshold the score exceeds.
    """

    high: float
    medium: float | None = None
    prior_high: float | None = None  # None: the same as ``high``
    prior_medium: float | None = None
    # Quantiles (at CAL_LEVELS) of normal traffic's entity scores and prior scores: the normal percentile.
    score_table: tuple[float, ...] | None = None
    prior_table: tuple[float, ...] | None = None
    # What the thresholds apply to: the rule's anomaly_score, or (with a fusion) the risk_score of every row.
    score: str = ANOMALY_SCORE

    def normal_percentile(self, anomaly: np.ndarray, scored: np.ndarray, learning: np.ndarray) -> np.ndarray:
        """0-100: the share of normal (calibration) traffic of the row's rule that scored lower (``scored``:
        rows of the entity's own score, ``learning``: rows of the population prior). Entity scores and prior
        scores live on different scales; this puts both on one, so that rows decided by different rules rank
        together (the report's order, the cases). NaN without a table for the rule or without a score."""
        out = np.full(len(anomaly), np.nan)
        for table, rows in ((self.score_table, scored), (self.prior_table, learning)):
            ok = rows & np.isfinite(anomaly)
            if table is not None and ok.any():
                out[ok] = 100.0 * np.interp(anomaly[ok], np.maximum.accumulate(np.asarray(table)), CAL_LEVELS)
        return out

    def level_codes(self, anomaly: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Index into LEVELS per row, -1 where there is no score (``prior``: rows scored by the prior)."""
        hi = np.where(prior, self.high if self.prior_high is None else self.prior_high, self.high)
        med_e = -np.inf if self.medium is None else self.medium
        med_p = med_e if self.prior_high is None else (-np.inf if self.prior_medium is None else self.prior_medium)
        med = np.where(prior, med_p, med_e)
        with np.errstate(invalid="ignore"):
            code = np.where(anomaly > hi, 2, np.where((anomaly > med) & np.isfinite(med), 1, 0)).astype(np.int8)
        code[~np.isfinite(anomaly)] = -1
        return code


def flag_rows(level_code: np.ndarray, unseen_entity: np.ndarray | None, flag_unseen: bool = False) -> np.ndarray:
    """The alert rule: a row is flagged when its level is high, or (with ``flag_unseen``) when its entity
    was never seen in training (``unseen_entity`` None: the model cannot tell, so only the level counts)."""
    flagged = level_code == HIGH_CODE
    if flag_unseen and unseen_entity is not None:
        flagged = flagged | unseen_entity
    return flagged


# Object arrays indexed by codes: rows get shared str objects, no per-row string building.
RULE_OBJECTS = np.array(RULES, dtype=object)


LEVEL_OBJECTS = np.array([*LEVELS, None], dtype=object)  # code -1 -> None


@dataclass(frozen=True)
class Threshold:
    """The threshold in force and where it came from (shown in every report), with the levels' thresholds."""

    value: float
    source: str  # "fixed" or a description of the calibration
    target_fpr: float | None = None
    levels: Thresholds | None = None

    score: str = ANOMALY_SCORE  # what a fixed threshold applies to (a calibration's levels say it themselves)

    @property
    def thresholds(self) -> Thresholds:
        return self.levels if self.levels is not None else Thresholds(self.value, score=self.score)

    @property
    def on(self) -> str:
        """The score the threshold applies to (``anomaly_score`` or ``risk_score``)."""
        return self.levels.score if self.levels is not None else self.score
