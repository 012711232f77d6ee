"""Evaluation on labelled (entity, ip, label[, kind]) rows: AUCs, threshold tables and baselines.

Labels: 1 = attack (anomalous), 0 = normal. Scores are oriented as anomaly scores (higher = more
suspicious), i.e. ``-dot_product`` for the model.

Per-kind AUC: the rows of that kind (positives) against the normal rows (kind ``normal`` when the
data has it, else every label-0 row). For a negative-control kind (label 0, e.g. a new address in a
network the entity already uses) an AUC near 0.5 is the right answer: it looks like normal traffic.

Baselines answer "was a learned model worth it?": per-entity lookups in the training data of the
exact IP, its /24 and its /16 (unseen = suspicious).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.core.hashing import hash_strings
from ipinsights.core.ip import key_prefix, parse_ip, to_string_array
from ipinsights.core.metrics import roc_auc, threshold_table
from ipinsights.score.scorer import Scorer
from ipinsights.score.verdict import BASELINES

__all__ = ["Evaluation", "evaluate_scores", "evaluate_model", "baseline_scores", "histogram_plot"]

#: The IPv6 analogue of each IPv4 prefix length: the /64 (interface ids churn, so "exact" is the
#: subnet), the /48 site, the /32 ISP allocation.
V6_ANALOGUE = {32: 64, 24: 48, 16: 32}
_BASELINE_SEED = 0x5EED

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """AUC overall and per kind for the model and each baseline, plus the threshold table."""

    auc: dict[str, dict[str, float]]  # method -> {"overall": x, kind: y, ...}
    thresholds: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    def auc_table(self) -> str:
        """Human-readable AUC table: one row per method, one column per kind."""
        methods = list(self.auc)
        kinds = list(self.auc[methods[0]])
        width = max(len(k) for k in kinds) + 2
        head = "method".ljust(16) + "".join(k.rjust(width) for k in kinds)
        lines = [head]
        for m in methods:
            lines.append(m.ljust(16) + "".join(f"{self.auc[m][k]:.4f}".rjust(width) for k in kinds))
        return "\n".join(lines)

    def threshold_text(self) -> str:
        """The tutorial's table: threshold, flagged, true positives, precision, recall."""
        lines = [f"{'threshold':>10} {'flagged':>8} {'true_pos':>8} {'precision':>9} {'recall':>7} {'fpr':>7}"]
        for r in self.thresholds:
            lines.append(
                f"{r['threshold']:>10.3f} {r['flagged']:>8d} {r['true_positives']:>8d} "
                f"{r['precision']:>9.3f} {r['recall']:>7.3f} {r['false_positive_rate']:>7.4f}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "thresholds": self.thresholds, "counts": self.counts}


def _keys(entities: Any, keys: np.ndarray, length: int) -> np.ndarray:
    """64-bit keys of (entity, network) so that membership is one vectorized ``np.isin``."""
    with np.errstate(over="ignore"):
        h = hash_strings(entities, _BASELINE_SEED)
        net = key_prefix(keys, length, V6_ANALOGUE[length]).view(np.uint64)
        return h * np.uint64(0x9E3779B97F4A7C15) ^ (net + np.uint64(length << 40))


def baseline_scores(train_entities: Any, train_ips: Any, entities: Any, ips: Any) -> dict[str, np.ndarray]:
    """Anomaly scores (1 = the entity never used this IP / /24 / /16 in training, else 0).

    IPv6 addresses are looked up by their :data:`V6_ANALOGUE` prefixes (/64, /48, /32).
    """
    tr = parse_ip(train_ips)
    te = parse_ip(ips)
    tr_ent = to_string_array(train_entities).filter(pa.array(tr.valid))
    out = {}
    for name, length in BASELINES.items():
        known = np.unique(_keys(tr_ent, tr.value[tr.valid], length))
        seen = np.isin(_keys(entities, te.value, length), known)
        out[name] = np.where(te.valid, 1.0 - seen, np.nan)
    return out


def _aucs(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    res = {"overall": roc_auc(scores, labels)}
    normal = (kinds == "normal") if (kinds == "normal").any() else (labels == 0)
    for kind in sorted(set(kinds.tolist()) - {"normal"}):
        mine = kinds == kind
        sel = mine | (normal & ~mine)
        res[kind] = roc_auc(scores[sel], mine[sel].astype(int))
    return res


def evaluate_scores(
    anomaly_scores: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str] | np.ndarray | None = None,
    baselines: dict[str, np.ndarray] | None = None,
    thresholds: Sequence[float] | None = None,
) -> Evaluation:
    """AUC overall and per kind for the model (and baselines), and the threshold table.

    ``thresholds`` default to quantiles of the scores of normal rows (so that the table shows
    false-positive rates of about 10%, 5%, 2%, 1%, 0.5% and 0.1%).
    """
    s = np.asarray(anomaly_scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    k = np.asarray(kinds if kinds is not None else ["all"] * len(y), dtype=object)
    auc = {"model": _aucs(s, y, k)}
    for name, b in (baselines or {}).items():
        auc[name] = _aucs(np.asarray(b, dtype=np.float64), y, k)
    if thresholds is None:
        normal = s[(y == 0) & ~np.isnan(s)]
        thresholds = np.quantile(normal, [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]) if normal.size else [0.0]
    counts = {"rows": int(y.size), "attacks": int(y.sum()), "normal": int((y == 0).sum())}
    for kind in sorted(set(k.tolist())):
        counts[f"kind:{kind}"] = int((k == kind).sum())
    return Evaluation(auc=auc, thresholds=threshold_table(s, y, np.asarray(thresholds)), counts=counts)


def evaluate_model(
    scorer: Scorer,
    test: pa.Table,
    train: pa.Table | None = None,
    thresholds: Sequence[float] | None = None,
    learning_period_events: int = 10,
) -> tuple[Evaluation, np.ndarray]:
    """Evaluate a model on labelled rows (``entity, ip, label, kind``) with the scoring job's rules.

    Rows are scored as production scores them: the entity's own score, or the population prior in its
    learning period (with the scorer's profiles; without them, the raw model score, as SageMaker).
    ``train`` (``entity, ip``) adds the per-entity lookup baselines. Returns the evaluation and the
    anomaly scores (NaN for an invalid address: ranked least suspicious).
    """
    verdict = scorer.assess(test["entity"], test["ip"], learning_period_events)
    scores = (
        verdict.anomaly_score if scorer.population is not None else scorer.anomaly_score(test["entity"], test["ip"])
    )
    rules = {str(r): int(n) for r, n in zip(*np.unique(verdict.rule.astype(str), return_counts=True), strict=True)}
    log.info("rows by rule: %s%s", rules, "" if scorer.population is not None else " (no profile: raw model scores)")
    n_bad = int(np.isnan(scores).sum())
    if n_bad:
        log.warning("%d test row(s) have an invalid IP and were scored NaN (ranked as least suspicious)", n_bad)
    labels = test["label"].to_numpy()
    kinds = test["kind"].to_numpy(zero_copy_only=False)
    baselines = baseline_scores(train["entity"], train["ip"], test["entity"], test["ip"]) if train is not None else None
    return evaluate_scores(scores, labels, kinds, baselines, thresholds), scores


def histogram_plot(anomaly_scores: np.ndarray, labels: np.ndarray, path: str, threshold: float | None = None) -> str:
    """The tutorial's histogram of scores for normal vs attack traffic, saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib ships with the spark/dev extras
        raise RuntimeError("plots need matplotlib: pip install 'ipinsights[spark]'") from exc
    s = np.asarray(anomaly_scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    ok = ~np.isnan(s)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # hist's stubs take a Sequence[float] of edges, not an array: the same edges as a list.
    bins: list[float] | int = np.histogram_bin_edges(s[ok], bins=60).tolist() if ok.any() else 10
    ax.hist(s[ok & ~y], bins=bins, alpha=0.6, density=True, label=f"normal ({int((ok & ~y).sum())})")
    ax.hist(s[ok & y], bins=bins, alpha=0.6, density=True, label=f"attack ({int((ok & y).sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("anomaly score (-dot_product)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
