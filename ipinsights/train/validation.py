"""Validation metrics of a model after each epoch (no Spark): SageMaker's ``discriminator_auc``, the harder
``shuffled_auc`` and, on labelled rows, per attack kind AUC and recall at 1% FPR."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ipinsights.core.metrics import per_kind, recall_at_fpr, roc_auc
from ipinsights.core.model import IPInsightsModel
from ipinsights.train.data import EncodedPairs, LabelledPairs
from ipinsights.train.negatives import random_ips_like

__all__ = ["LABELLED_FPR", "VALIDATION_SAMPLE", "discriminator_auc", "labelled_metrics", "shuffled_auc"]

#: Rows of validation data that ``shuffled_auc`` scores, and of each kind that ``labelled_metrics`` scores, at
#: most: a fixed seeded sample, the same every epoch and run, so that a tuning objective keeps its meaning.
#: The AUC's standard error on 100k pairs is below 0.001; the whole set would cost more than its information
#: (scoring twice the validation set after every epoch, then sorting it).
VALIDATION_SAMPLE = 100_000


@torch.no_grad()
def discriminator_auc(
    model: IPInsightsModel,
    data: EncodedPairs,
    seed: int = 12345,
    batch_size: int = 65536,
    sample: int = VALIDATION_SAMPLE,
) -> float:
    """SageMaker's validation metric: AUC of real pairs vs one random-IP negative each (R=1, S=0).

    The negatives come from a fixed seed so that epochs (and runs) are compared on the same set; on at most
    ``sample`` rows of ``data`` (a seeded sample, the same every epoch and run; all rows when no more).
    """
    if len(data) == 0:
        return float("nan")
    entity_rows, all_ips = _bounded(data, sample, seed)
    n = entity_rows.size
    device = model.entity_table.device
    g = torch.Generator(device=device).manual_seed(seed)
    pos, neg = [], []
    for start in range(0, n, batch_size):
        ent = torch.as_tensor(entity_rows[start : start + batch_size], device=device)
        ips = torch.as_tensor(all_ips[start : start + batch_size], device=device)
        pos.append(model(ent, ips).float().cpu().numpy())
        neg.append(model(ent, random_ips_like(ips, g)).float().cpu().numpy())
    real, fake = np.concatenate(pos), np.concatenate(neg)
    return roc_auc(np.concatenate([real, fake]), np.concatenate([np.ones(real.size), np.zeros(fake.size)]))


@torch.no_grad()
def shuffled_auc(
    model: IPInsightsModel,
    data: EncodedPairs,
    seed: int = 54321,
    batch_size: int = 65536,
    sample: int = VALIDATION_SAMPLE,
) -> float:
    """AUC of real pairs vs the same rows' addresses re-paired with other entities: "someone else's normal
    network". Harder than :func:`discriminator_auc` (a random address is rarely anyone's network), so it
    tells models apart where that one is near 1. Pairs that re-pair an address with its own entity row
    are left out; the permutation comes from a fixed seed, the same for every epoch and run.

    On at most ``sample`` rows of ``data``: a seeded sample, the same for every epoch and run (all rows,
    in their order, when there are no more than that).
    """
    n = len(data)
    if n < 2:
        return float("nan")
    ent, ips = _bounded(data, sample, seed)
    n = ent.size
    other = ent[np.random.default_rng(seed).permutation(n)]
    keep = other != ent
    if not keep.any():
        return float("nan")
    p = _dot_products(model, ent, ips, batch_size)
    q = _dot_products(model, other[keep], ips[keep], batch_size)
    return roc_auc(np.concatenate([p, q]), np.concatenate([np.ones(p.size), np.zeros(q.size)]))


def _dot_products(model: IPInsightsModel, entity_rows: np.ndarray, ips: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's dot products of (entity row, address key) pairs, ``batch_size`` at a time (float32)."""
    device = model.entity_table.device
    out = []
    for s in range(0, len(entity_rows), batch_size):
        ent = torch.as_tensor(entity_rows[s : s + batch_size], device=device)
        out.append(model(ent, torch.as_tensor(ips[s : s + batch_size], device=device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _bounded(data: EncodedPairs, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``data``'s entity rows and addresses, or those of its seeded sample of ``sample`` rows when it has more."""
    ent, ips = np.asarray(data.entity_rows), np.asarray(data.ips)
    if len(ent) <= sample:
        return ent, ips
    rows = _sample_rows(len(ent), sample, seed)
    return ent[rows], ips[rows]


def _sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` of ``range(n)`` drawn without replacement from ``seed``, in increasing order (the same every call)."""
    # A generator of its own (not the permutation's): the sample does not depend on how it is used.
    return np.sort(np.random.default_rng([seed, 1]).choice(n, size=k, replace=False))


#: False-positive rate of the labelled recall metrics (``recall1_<kind>``, ``labelled_recall``).
LABELLED_FPR = 0.01


@torch.no_grad()
def labelled_metrics(
    model: IPInsightsModel,
    data: LabelledPairs,
    batch_size: int = 65536,
    sample: int = VALIDATION_SAMPLE,
    seed: int = 24680,
) -> dict[str, float]:
    """Per attack kind of labelled rows (that kind vs the normal rows, on the raw model score): ``auc_<kind>``
    and ``recall1_<kind>`` (recall at 1% FPR), and ``labelled_recall``, the mean of the latter over the
    attack kinds (label 1): what an analyst catches with a threshold that flags 1% of normal traffic.

    On at most ``sample`` rows of each kind (normal traffic is the large one): a seeded sample, the same
    for every epoch and run; a kind with no more rows than that is scored whole."""
    if len(data) == 0:
        return {}
    data = _bounded_kinds(data, sample, seed)
    anomaly = -_dot_products(model, data.pairs.entity_rows, data.pairs.ips, batch_size)
    aucs = per_kind(anomaly, data.labels, data.kinds, roc_auc)
    recalls = per_kind(anomaly, data.labels, data.kinds, partial(recall_at_fpr, fpr=LABELLED_FPR))
    out = {**{f"auc_{k}": v for k, v in aucs.items()}, **{f"recall1_{k}": v for k, v in recalls.items()}}
    attacks = [r for k, r in recalls.items() if (data.labels[data.kinds == k] == 1).all()]
    if attacks:
        out["labelled_recall"] = float(np.mean(attacks))
    return out


def _bounded_kinds(data: LabelledPairs, sample: int, seed: int) -> LabelledPairs:
    """``data`` with at most ``sample`` rows of each kind (a seeded sample per kind), rows in their order."""
    kinds, counts = np.unique(data.kinds, return_counts=True)
    if counts.max() <= sample:
        return data
    keep = []
    for i, (kind, count) in enumerate(zip(kinds.tolist(), counts.tolist(), strict=True)):
        rows = np.flatnonzero(data.kinds == kind)
        keep.append(rows if count <= sample else rows[_sample_rows(count, sample, seed + i)])
    rows = np.sort(np.concatenate(keep))
    return LabelledPairs(data.pairs.take(rows), data.labels[rows], data.kinds[rows])
