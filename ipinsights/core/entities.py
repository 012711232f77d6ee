"""What the model knows about the entities it was trained on: who they are and how often they appeared.

Stored in the model directory as ``entities.safetensors``: the sorted 64-bit stable hashes of every
training entity (the same seeded hash as the embedding buckets, but all 64 bits, so two entities
that share an embedding row are still told apart) and their training event counts. Scoring uses it
to flag an entity the model never saw instead of pretending its (random) vector means something.
Size: 16 bytes per entity (16 MB for a million entities).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ipinsights.core.hashing import hash_strings

__all__ = ["ENTITY_FILE", "EntityStats", "find_sorted", "write_entity_file"]

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
    def open(cls, path: str | Path) -> EntityStats:
        """The stats of a local ``entities.safetensors``, memory-mapped rather than read: a lookup touches a
        few pages, and every process on the host shares them through the page cache, so a scoring worker's
        own memory does not grow with the number of entities. ``ValueError``/``KeyError`` if malformed."""
        file_size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8).ljust(8, b"\0"))
            if not 2 <= size <= min(file_size - 8, 1 << 20):  # a header is a small JSON object
                raise ValueError(f"not a safetensors file (header size {size} of a {file_size}-byte file)")
            header = json.loads(fh.read(size))
        start = 8 + size

        def column(name: str) -> np.ndarray:
            info = header[name]
            begin, end = info["data_offsets"]
            if info["dtype"] != "I64" or list(info["shape"]) != [(end - begin) // 8] or start + end > file_size:
                raise ValueError(f"{name}: expected a 1-D I64 tensor within the file, got {info}")
            if end == begin:
                return np.zeros(0, np.int64)
            return np.memmap(path, dtype="<i8", mode="r", offset=start + begin, shape=((end - begin) // 8,))

        hashes, counts = column("hashes"), column("counts")
        if hashes.shape != counts.shape:
            raise ValueError(f"hashes {hashes.shape} and counts {counts.shape} differ in length")
        return cls(hashes.view(np.uint64), counts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityStats:
        from safetensors.numpy import load

        t = load(data)
        return cls(t["hashes"].view(np.uint64), t["counts"])


def write_entity_file(out: IO[bytes], n: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``entities.safetensors`` (what :meth:`EntityStats.to_bytes` holds) to ``out`` from chunks: ``n``
    entities as (hashes, counts) int64 chunks, the 64-bit hashes in unsigned ascending order. The training
    job streams them from a sorted Parquet folder in one pass, so no process ever holds every entity
    (``ValueError`` if the chunks do not add up to ``n`` or are out of order).

    The file holds every count before the first hash: the hashes wait in a temporary file meanwhile
    (on disk, not in memory), then follow the counts."""
    import shutil
    import tempfile

    header = {
        "counts": {"dtype": "I64", "shape": [n], "data_offsets": [0, 8 * n]},
        "hashes": {"dtype": "I64", "shape": [n], "data_offsets": [8 * n, 16 * n]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data that follows to 8 bytes
    out.write(struct.pack("<Q", len(text)) + text)
    written = 0
    last: np.uint64 | None = None
    with tempfile.TemporaryFile() as spill:
        for hashes, counts in chunks:
            h = np.asarray(hashes).astype(np.int64).view(np.uint64)
            if h.size != len(counts):
                raise ValueError(f"a chunk of {h.size} hashes came with {len(counts)} counts")
            if h.size and ((last is not None and h[0] <= last) or bool((h[1:] <= h[:-1]).any())):
                raise ValueError("entity hashes are not unique and in ascending unsigned order")
            last = h[-1] if h.size else last
            out.write(np.ascontiguousarray(counts, dtype="<i8").tobytes())
            spill.write(h.view("<i8").tobytes())
            written += h.size
        if written != n:
            raise ValueError(f"expected {n} entities, got {written}")
        spill.seek(0)
        shutil.copyfileobj(spill, out, 1 << 20)
