"""What the model knows about the entities it was trained on: who they are and how often they appeared.

Stored in the model directory as ``entities.safetensors``: the sorted 64-bit stable hashes of every
training entity (the same seeded hash as the embedding buckets, but all 64 bits, so two entities
that share an embedding row are still told apart) and their training event counts. Scoring uses it
to flag an entity the model never saw instead of pretending its (random) vector means something.
Size: 16 bytes per entity (16 MB for a million entities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ipinsights.core.hashing import hash_strings

__all__ = ["ENTITY_FILE", "EntityStats", "find_sorted"]

ENTITY_FILE = "entities.safetensors"


def find_sorted(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each ``wanted`` value in the sorted ``keys`` (clipped to a valid index) and whether it is there."""
    if not keys.size:
        return np.zeros(wanted.shape, np.int64), np.zeros(wanted.shape, bool)
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    return pos, keys[pos] == wanted


@dataclass(frozen=True)
class EntityStats:
    """Sorted entity hashes with their training event counts."""

    hashes: np.ndarray  # uint64, sorted, unique
    counts: np.ndarray  # int64, same length

    @classmethod
    def from_entities(cls, entities: Any, hash_seed: int) -> EntityStats:
        """Count the events of each entity in a training set (vectorized)."""
        h, c = np.unique(hash_strings(entities, hash_seed), return_counts=True)
        return cls(h, c.astype(np.int64))

    @classmethod
    def from_hash_counts(cls, hashes: np.ndarray, counts: np.ndarray) -> EntityStats:
        """Merge (hash, count) rows, e.g. partial aggregates from Spark partitions."""
        h = np.asarray(hashes).astype(np.uint64)
        uniq, inv = np.unique(h, return_inverse=True)
        total = np.zeros(uniq.size, dtype=np.int64)
        np.add.at(total, inv, np.asarray(counts, dtype=np.int64))
        return cls(uniq, total)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def counts_for(self, entities: Any, hash_seed: int) -> np.ndarray:
        """Training event count of each entity (0 = never seen in training)."""
        return self.counts_of(hash_strings(entities, hash_seed))

    def counts_of(self, hashes: np.ndarray) -> np.ndarray:
        """Training event count of each entity hash (0 = never seen): scoring hashes a batch once."""
        return self.lookup(hashes)[0]

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training event count (0 = never seen) and position (-1 = absent) of each entity hash."""
        pos, found = find_sorted(self.hashes, np.asarray(hashes, dtype=np.uint64))
        if not self.hashes.size:
            return np.zeros(pos.size, np.int64), np.full(pos.size, -1, np.int64)
        return np.where(found, self.counts[pos], 0).astype(np.int64), np.where(found, pos, -1)

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({"hashes": self.hashes.view(np.int64), "counts": self.counts})

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityStats:
        from safetensors.numpy import load

        t = load(data)
        return cls(t["hashes"].view(np.uint64), t["counts"])
