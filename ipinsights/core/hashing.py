"""Stable, seeded hashing of entity strings into embedding buckets.

The bucket of an entity must be the same in the trainer, in every Spark executor, in the endpoint,
on any machine and any Python version, for as long as a model file lives, so Python's ``hash()``
(salted per process) is out. The function is part of the model file format (``hash_version``):

    h = splitmix64(seed)
    for each UTF-8 byte b:  h = (h XOR b) * 0x100000001B3   (FNV-1a step, mod 2**64)
    h = splitmix64(h XOR byte_length)
    bucket = h mod num_buckets

It runs vectorized over the Arrow string buffer: the Python loop is over byte positions, with the rows
sorted by length so that each step touches only the strings that are still that long.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ipinsights.core.ip import to_string_array

__all__ = ["HASH_VERSION", "buckets_of", "hash_strings", "entity_buckets"]

HASH_VERSION = 1
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_strings(values: Iterable[str] | pa.Array | np.ndarray, seed: int) -> np.ndarray:
    """64-bit stable hashes (``uint64``) of the UTF-8 bytes of each string; nulls hash like ``""``."""
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"hash seed must be in [0, 2**63), got {seed}")
    arr = to_string_array(values)
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    if arr.null_count:
        lengths = np.where(arr.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    with np.errstate(over="ignore"):
        basis = _splitmix64(np.array([int(seed)], dtype=np.uint64))[0]
        order = np.argsort(-lengths, kind="stable")  # longest first: active rows are a prefix
        pos = offsets[:-1].astype(np.int64)[order]  # next byte of each (sorted) row
        sorted_len = lengths[order]
        h = np.full(n, basis, dtype=np.uint64)
        max_len = int(sorted_len[0]) if n else 0
        # count of rows whose length exceeds position j, for every j, via one searchsorted
        active = np.searchsorted(-sorted_len, -np.arange(max_len), side="left")
        for j in range(max_len):
            k = int(active[j])
            hk, pk = h[:k], pos[:k]
            # In place: this loop runs once per byte position over every row, temporaries cost more than the math.
            np.bitwise_xor(hk, data.take(pk), out=hk)
            np.multiply(hk, _FNV_PRIME, out=hk)
            pk += 1
        h = _splitmix64(h ^ sorted_len.astype(np.uint64))
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def buckets_of(hashes: np.ndarray, num_buckets: int) -> np.ndarray:
    """Embedding row (``int64`` in ``[0, num_buckets)``) of each 64-bit entity hash."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    return (np.asarray(hashes, dtype=np.uint64) % np.uint64(num_buckets)).astype(np.int64)


def entity_buckets(values: Iterable[str] | pa.Array | np.ndarray, seed: int, num_buckets: int) -> np.ndarray:
    """Embedding row (``int64`` in ``[0, num_buckets)``) of each entity string."""
    return buckets_of(hash_strings(values, seed), num_buckets)
