"""Ranking metrics without scikit-learn: ROC AUC (ties counted half) and threshold tables."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["per_kind", "recall_at_fpr", "roc_auc", "threshold_table"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for ``scores`` where higher means ``label == 1``.

    Computed as the Mann-Whitney U statistic with average ranks, so tied scores count one half
    (a constant score gives 0.5). Returns NaN when one class is absent. NaN scores rank lowest.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank of each tie group (1-based)
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Share of ``label == 1`` rows caught at a false-positive rate of ``fpr`` on the ROC curve.

    Between two thresholds the curve is interpolated linearly (flagging a random share of a tied group),
    so a yes/no score such as a lookup baseline gets a fair figure: its recall, scaled down when its own
    false-positive rate is above ``fpr``. NaN scores rank lowest; NaN when a class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-s, kind="mergesort")
    sorted_s, sorted_y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(sorted_s)), s.size - 1]  # end of each tie group, highest scores first
    tpr = np.r_[0.0, np.cumsum(sorted_y)[last] / n_pos]
    fprs = np.r_[0.0, np.cumsum(~sorted_y)[last] / n_neg]
    return float(np.interp(fpr, fprs, tpr))


def per_kind(
    scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float]
) -> dict[str, float]:
    """``metric(scores, is_kind)`` of each kind's rows against the normal rows (kind ``normal`` when the data
    has it, else every label-0 row), for every kind but ``normal``."""
    normal = (kinds == "normal") if (kinds == "normal").any() else (labels == 0)
    out = {}
    for kind in sorted(set(kinds.tolist()) - {"normal"}):
        mine = kinds == kind
        sel = mine | normal
        out[kind] = metric(scores[sel], mine[sel].astype(int))
    return out


def threshold_table(
    anomaly_scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> list[dict[str, int | float]]:
    """Flag counts, true positives, precision and recall when flagging ``anomaly_score > threshold``.

    Mirrors the SageMaker tutorial's threshold table. ``labels``: 1 = attack, 0 = normal.
    """
    s = np.asarray(anomaly_scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    total_pos = int(y.sum())
    rows = []
    for t in np.asarray(thresholds, dtype=np.float64):
        flagged = s > t
        n_flag = int(flagged.sum())
        tp = int((flagged & y).sum())
        fp = n_flag - tp
        rows.append(
            {
                "threshold": float(t),
                "flagged": n_flag,
                "true_positives": tp,
                "false_positives": fp,
                "precision": tp / n_flag if n_flag else float("nan"),
                "recall": tp / total_pos if total_pos else float("nan"),
                "false_positive_rate": fp / max(1, int((~y).sum())),
            }
        )
    return rows
