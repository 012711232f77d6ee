"""Evaluation on labelled (entity, ip, label[, kind]) rows: AUCs, threshold tables and baselines.

Labels: 1 = attack (anomalous), 0 = normal. Scores are oriented as anomaly scores (higher = more
suspicious), i.e. ``-dot_product`` for the model.

Per-kind AUC: the rows of that kind (positives) against the normal rows (kind ``normal`` when the
data has it, else every label-0 row). For a negative-control kind (label 0, e.g. a new address in a
network the entity already uses) an AUC near 0.5 is the right answer: it looks like normal traffic.

Baselines answer "was a learned model worth it?": per-entity lookups in the training data of the
exact IP, its /24 and its /16 (unseen = suspicious), and with an ip2asn table its AS (``seen_asn``).

Besides the AUC, each method's recall at fixed false-positive rates (:data:`RECALL_FPRS`, on the ROC
curve: what an analyst gets with a threshold that flags that share of normal traffic).

With a fusion beside the model (:mod:`ipinsights.score.fusion`, fitted by the scoring job), the fused
``risk_score`` is evaluated first (``fused``), then the model alone (``model``) and the baselines; the
threshold table is then the fused score's. Rows with a ``ts`` column get the fusion's recency features;
a labelled CSV has none (they are 0, as at the endpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.core.asn import AsnTable
from ipinsights.core.hashing import GOLDEN, hash_strings
from ipinsights.core.ip import key_prefix, parse_ip, to_string_array
from ipinsights.core.metrics import per_kind, recall_at_fpr, roc_auc, threshold_table
from ipinsights.score.clients import event_devices
from ipinsights.score.features import event_days
from ipinsights.score.rules import BASELINES
from ipinsights.score.scorer import Scorer

__all__ = [
    "RECALL_FPRS",
    "Evaluation",
    "asn_baseline_scores",
    "baseline_scores",
    "evaluate_model",
    "evaluate_scores",
    "histogram_plot",
]

#: The IPv6 analogue of each IPv4 prefix length: the /64 (interface ids churn, so "exact" is the
#: subnet), the /48 site, the /32 ISP allocation.
V6_ANALOGUE = {32: 64, 24: 48, 16: 32}
_BASELINE_SEED = 0x5EED
#: False-positive rates at which evaluations report each method's recall.
RECALL_FPRS = (0.01, 0.02)

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """AUC overall and per kind for the model and each baseline, plus the threshold table."""

    auc: dict[str, dict[str, float]]  # method -> {"overall": x, kind: y, ...}
    thresholds: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    recall: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # method -> fpr -> kind -> recall

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

    def recall_table(self) -> str:
        """Recall of each attack kind at each of :data:`RECALL_FPRS`: one row per method and rate."""
        methods = list(self.recall)
        if not methods:
            return ""
        fprs = list(self.recall[methods[0]])
        kinds = list(self.recall[methods[0]][fprs[0]])
        width = max(len(k) for k in kinds) + 2
        lines = ["recall".ljust(24) + "".join(k.rjust(width) for k in kinds)]
        for m in methods:
            for f in fprs:
                row = self.recall[m][f]
                lines.append(f"{m} @{f}".ljust(24) + "".join(f"{row[k]:.3f}".rjust(width) for k in kinds))
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
        return {"auc": self.auc, "recall": self.recall, "thresholds": self.thresholds, "counts": self.counts}


class _Lookups:
    """Training and scored pairs parsed and their entities hashed once, for every "seen in training" lookup."""

    def __init__(self, train_entities: Any, train_ips: Any, entities: Any, ips: Any) -> None:
        tr = parse_ip(train_ips)
        self.train_keys = tr.value[tr.valid]
        self.train_hashes = hash_strings(to_string_array(train_entities).filter(pa.array(tr.valid)), _BASELINE_SEED)
        self.test = parse_ip(ips)
        self.test_hashes = hash_strings(entities, _BASELINE_SEED)

    def unseen(self, train_net: np.ndarray, test_net: np.ndarray) -> np.ndarray:
        """1.0 where the entity never had the scored row's network (int64 ids) in training, else 0.0; NaN for an
        invalid address. One vectorized ``np.isin`` over 64-bit (entity, network) keys."""
        known = np.unique(_pair_keys(self.train_hashes, train_net))
        seen = np.isin(_pair_keys(self.test_hashes, test_net), known)
        return np.where(self.test.valid, 1.0 - seen, np.nan)


def _pair_keys(entity_hashes: np.ndarray, networks: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return entity_hashes * GOLDEN ^ np.asarray(networks, np.int64).view(np.uint64)


def baseline_scores(train_entities: Any, train_ips: Any, entities: Any, ips: Any) -> dict[str, np.ndarray]:
    """Anomaly scores (1 = the entity never used this IP / /24 / /16 in training, else 0).

    IPv6 addresses are looked up by their :data:`V6_ANALOGUE` prefixes (/64, /48, /32).
    """
    look = _Lookups(train_entities, train_ips, entities, ips)
    return {
        name: look.unseen(
            key_prefix(look.train_keys, n, V6_ANALOGUE[n]), key_prefix(look.test.value, n, V6_ANALOGUE[n])
        )
        for name, n in BASELINES.items()
    }


def asn_baseline_scores(
    table: AsnTable, train_entities: Any, train_ips: Any, entities: Any, ips: Any
) -> dict[str, np.ndarray]:
    """``seen_asn``: 1 where the entity never used the address's AS in training (or it is outside the table)."""
    look = _Lookups(train_entities, train_ips, entities, ips)
    asn = table.lookup(look.test.value)
    unseen = look.unseen(table.lookup(look.train_keys), asn)
    return {"seen_asn": np.where(look.test.valid & (asn < 0), 1.0, unseen)}


def _aucs(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {"overall": roc_auc(scores, labels), **per_kind(scores, labels, kinds, roc_auc)}


def _recalls(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, dict[str, float]]:
    return {str(f): per_kind(scores, labels, kinds, partial(recall_at_fpr, fpr=f)) for f in RECALL_FPRS}


def evaluate_scores(
    anomaly_scores: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str] | np.ndarray | None = None,
    baselines: dict[str, np.ndarray] | None = None,
    thresholds: Sequence[float] | None = None,
    fused: np.ndarray | None = None,
) -> Evaluation:
    """AUC overall and per kind for the model (and the ``fused`` risk score first, and baselines), and the
    threshold table (of the fused score when given, else the model's).

    ``thresholds`` default to quantiles of the scores of normal rows (so that the table shows
    false-positive rates of about 10%, 5%, 2%, 1%, 0.5% and 0.1%).
    """
    y = np.asarray(labels).astype(int)
    k = np.asarray(kinds if kinds is not None else ["all"] * len(y), dtype=object)
    methods = {} if fused is None else {"fused": np.asarray(fused, dtype=np.float64)}
    methods["model"] = np.asarray(anomaly_scores, dtype=np.float64)
    auc = {name: _aucs(v, y, k) for name, v in methods.items()}
    recall = {name: _recalls(v, y, k) for name, v in methods.items()}
    s = next(iter(methods.values()))  # the score in force: the threshold table's
    for name, b in (baselines or {}).items():
        auc[name] = _aucs(np.asarray(b, dtype=np.float64), y, k)
        recall[name] = _recalls(np.asarray(b, dtype=np.float64), y, k)
    if thresholds is None:
        normal = s[(y == 0) & ~np.isnan(s)]
        thresholds = np.quantile(normal, [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]) if normal.size else [0.0]
    counts = {"rows": int(y.size), "attacks": int(y.sum()), "normal": int((y == 0).sum())}
    for kind in sorted(set(k.tolist())):
        counts[f"kind:{kind}"] = int((k == kind).sum())
    return Evaluation(auc=auc, thresholds=threshold_table(s, y, np.asarray(thresholds)), counts=counts, recall=recall)


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
    ``train`` (``entity, ip``) adds the per-entity lookup baselines (``seen_asn`` too when the scorer has an
    ip2asn table). With a fusion (``scorer.fusion``) the fused risk score comes first. Returns the
    evaluation and the scores in force, fused or the model's (NaN for an invalid address: ranked least
    suspicious).
    """
    days = event_days(test["ts"], test.num_rows) if "ts" in test.column_names else None
    verdict = scorer.assess(test["entity"], test["ip"], learning_period_events, days=days, devices=event_devices(test))
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
    baselines = None
    if train is not None:
        baselines = baseline_scores(train["entity"], train["ip"], test["entity"], test["ip"])
        if scorer.asn_table is not None:
            baselines.update(
                asn_baseline_scores(scorer.asn_table, train["entity"], train["ip"], test["entity"], test["ip"])
            )
    fused = verdict.risk_score
    evaluation = evaluate_scores(scores, labels, kinds, baselines, thresholds, fused)
    return evaluation, (scores if fused is None else fused)


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
