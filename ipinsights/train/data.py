"""Training data as tensors: encoded (entity row, address key) pairs, in memory or as an epoch's batch source."""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ipinsights.core.hashing import entity_buckets
from ipinsights.core.ip import parse_ip, to_string_array

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedPairs:
    """(entity row, address key) pairs ready for training: two int64 arrays of equal length.

    Address keys are :func:`ipinsights.core.ip.parse_ip`'s: IPv4 values, or IPv6 top 64 bits.
    """

    entity_rows: np.ndarray
    ips: np.ndarray
    n_invalid: int = 0

    def __post_init__(self) -> None:
        if self.entity_rows.shape != self.ips.shape or self.entity_rows.ndim != 1:
            raise ValueError("entity_rows and ips must be 1-D arrays of the same length")

    def __len__(self) -> int:
        return int(self.entity_rows.shape[0])

    def take(self, index: np.ndarray | slice) -> EncodedPairs:
        return EncodedPairs(self.entity_rows[index], self.ips[index])

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu", order: np.ndarray | None = None
    ) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        """(entity rows, address keys) batches of ``batch_size`` in ``order`` (default: as stored).

        All pairs go to ``device`` once, and batches are gathered there (cheaper than a copy per batch).
        """
        ent = torch.as_tensor(self.entity_rows, device=device)
        ips = torch.as_tensor(self.ips, device=device)
        idx = torch.as_tensor(order if order is not None else np.arange(len(self)), device=device)
        for start in range(0, len(self), batch_size):
            b = idx[start : start + batch_size]
            yield ent[b], ips[b]


class BatchSource(Protocol):
    """Training data of one epoch (:meth:`ipinsights.train.trainer.Trainer.fit`): pairs in memory
    (:class:`EncodedPairs`) or a rank's shard streamed from files (:mod:`ipinsights.train.stream`)."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]: ...


def encode_pairs(
    entities: Any, ips: Any, num_entity_vectors: int, hash_seed: int, what: str = "data", ipv6: bool = True
) -> EncodedPairs:
    """Hash entities and parse IPv4/IPv6 addresses; rows with an invalid address are dropped and reported.

    A training set with a few garbage addresses should still train, but nobody should have to guess
    that rows were lost: the count and the first offending rows are logged. ``ipv6=False`` (a model
    without IPv6 levels) also drops IPv6 rows, with their count logged.
    """
    ent = to_string_array(entities)
    parsed = parse_ip(ips)
    rows = entity_buckets(ent, hash_seed, num_entity_vectors)
    if parsed.n_invalid:
        bad = parsed.invalid_rows()
        ip_arr = to_string_array(ips)
        examples = ", ".join(f"row {int(r) + 1}: {ip_arr[int(r)].as_py()!r}" for r in bad)
        log.warning("%s: dropped %d row(s) with an invalid IP address (%s)", what, parsed.n_invalid, examples)
        if parsed.n_invalid == len(parsed.valid):
            raise ValueError(f"{what}: no row has a valid IP address (first: {examples})")
    keep = parsed.valid
    if not ipv6 and parsed.is_v6.any():
        log.warning("%s: dropped %d IPv6 row(s): the model has no IPv6 levels", what, int(parsed.is_v6.sum()))
        keep = keep & ~parsed.is_v6
    return EncodedPairs(rows[keep], parsed.value[keep].astype(np.int64), n_invalid=parsed.n_invalid)


@dataclass(frozen=True)
class LabelledPairs:
    """Labelled validation rows (``entity,ip,label,kind``; label 1 = attack), encoded like the training pairs."""

    pairs: EncodedPairs
    labels: np.ndarray  # int8
    kinds: np.ndarray  # object (str); the normal rows' kind is "normal"

    def __len__(self) -> int:
        return len(self.pairs)


def encode_labelled(table: Any, num_entity_vectors: int, hash_seed: int, what: str = "labelled") -> LabelledPairs:
    """Encode labelled rows (columns ``entity``, ``ip``, ``label``, ``kind``), dropping and reporting invalid
    addresses as :func:`encode_pairs` does (the labels and kinds stay with their rows)."""
    parsed = parse_ip(table["ip"])
    keep = parsed.valid
    if parsed.n_invalid:
        log.warning("%s: dropped %d labelled row(s) with an invalid IP address", what, parsed.n_invalid)
    rows = entity_buckets(to_string_array(table["entity"]), hash_seed, num_entity_vectors)
    labels = np.asarray(table["label"].to_numpy(zero_copy_only=False), np.int8)
    kinds = np.asarray(table["kind"].to_numpy(zero_copy_only=False), dtype=object)
    pairs = EncodedPairs(rows[keep], parsed.value[keep].astype(np.int64), n_invalid=parsed.n_invalid)
    return LabelledPairs(pairs, labels[keep], kinds[keep])
