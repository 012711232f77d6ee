"""The training task: a batch's real pairs and their negatives as logits through the model, and the loss.

The model scores pairs; what it is trained on is decided here (as torchrec separates a two-tower model
from its train task): binary cross-entropy of every real pair (label 1) against the negatives that
:mod:`ipinsights.train.negatives` draws for it (label 0). No Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ipinsights.core.model import BatchVectors, IPInsightsModel
from ipinsights.train.negatives import Negatives, NegativeSampler

__all__ = ["BatchLoss", "batch_loss"]


@dataclass(frozen=True)
class BatchLoss:
    """One batch's loss, its logits and labels (real pairs first), and the vectors' table rows (their
    gradients after ``loss.backward()``)."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    vectors: BatchVectors


def batch_loss(
    model: IPInsightsModel, sampler: NegativeSampler, entity_rows: torch.Tensor, ips: torch.Tensor
) -> BatchLoss:
    """The mean binary cross-entropy of a batch of (entity row, address key) pairs and their negatives.

    Every address, real or random, is encoded once (:meth:`IPInsightsModel.batch_vectors`); the
    negatives only re-pair those vectors with the batch's entity vectors.
    """
    B = entity_rows.numel()
    negatives = sampler.draw(ips, model.network_ranges)
    all_ips = ips if negatives.addresses is None else torch.cat([ips, negatives.addresses])
    vectors = model.batch_vectors(entity_rows, all_ips)
    logits = _logits(vectors.entities, vectors.ips, negatives)
    labels = torch.zeros_like(logits)
    labels[:B] = 1.0
    return BatchLoss(F.binary_cross_entropy_with_logits(logits, labels), logits, labels, vectors)


def _logits(e: torch.Tensor, v: torch.Tensor, negatives: Negatives) -> torch.Tensor:
    """Dot products of the ``B`` real pairs (entity vectors ``e``, the first ``B`` IP vectors of ``v``),
    then of the random negatives (the rest of ``v``), then of the shuffled ones."""
    B = e.shape[0]
    v_pos = v[:B]
    logits = [(e * v_pos).sum(-1)]
    # Negatives re-pair entities of the batch by rolls (a roll by k != 0 never pairs a row with
    # itself): offsets 0..R-1 for the shared random addresses, random non-zero ones for shuffled.
    if negatives.addresses is not None and negatives.shared:
        logits.extend((e.roll(k, 0) * v[B:]).sum(-1) for k in range(negatives.rolls))
    elif negatives.addresses is not None:
        logits.append((v[B:].view(negatives.rolls, B, -1) * e).sum(-1).flatten())
    logits.extend((e.roll(k, 0) * v_pos).sum(-1) for k in negatives.shuffle_shifts)
    return torch.cat(logits)
