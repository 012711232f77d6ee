"""Stable, seeded hashing of entity strings into embedding buckets.

The bucket of an entity must be the same in the trainer, in every Spark executor, in the endpoint,
on any machine and any Python version, for as long as a model file lives, so Python's ``hash()``
(salted per process) is out. The function is part of the model file format (``hash_version``):

    h = splitmix64(seed)
    for each UTF-8 byte b:  h = (h XOR b) * 0x100000001B3   (FNV-1a step, mod 2**64)
    h = splitmix64(h XOR byte_length)
    bucket = h mod num_buckets

It runs vectorized over the Arrow string buffer. Many strings: the Python loop is over byte positions,
with the rows sorted by length so that each step touches only the strings that are still that long.
Few long strings (the tail of that loop, or one huge entity): one loop step per byte would cost
microseconds a byte, so their remaining bytes go through :func:`_fnv_segments`, which computes the same
FNV-1a chain for all bytes at once (a fixed number of array passes, whatever the length).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ipinsights.core.ip import to_string_array

__all__ = [
    "GOLDEN",
    "GOLDEN_I64",
    "HASH_VERSION",
    "MAX_ENTITY_BYTES",
    "MIX1",
    "MIX1_I64",
    "MIX2",
    "buckets_of",
    "entity_buckets",
    "hash_strings",
    "mix64",
]

HASH_VERSION = 1
#: Default cap on an entity's UTF-8 length, for ingest and the endpoint: real user names, ids and agents are
#: far shorter, and hashing (and storing) megabytes of one entity is work an attacker would choose.
MAX_ENTITY_BYTES = 1024
_FNV_PRIME = np.uint64(0x100000001B3)

# SplitMix64's constants, the package's only copy: the entity hash here, the model's prefix, AS and country
# hashes and the generator's keyed hashes all mix with them (changing one changes every saved model's rows).
#: The golden-ratio increment ``2**64 / phi`` (SplitMix64's state step).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: SplitMix64's first finalizer multiplier.
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
#: SplitMix64's second finalizer multiplier.
MIX2 = np.uint64(0x94D049BB133111EB)


def _signed(value: np.uint64) -> int:
    """The two's-complement int64 value of a 64-bit constant (torch has no uint64 arithmetic)."""
    return int(value) - (1 << 64) if int(value) >= 1 << 63 else int(value)


#: :data:`GOLDEN` as a signed 64-bit integer, for int64 tensors (multiplication wraps the same way).
GOLDEN_I64 = _signed(GOLDEN)
#: :data:`MIX1` as a signed 64-bit integer.
MIX1_I64 = _signed(MIX1)


def mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finalizer: a bijective scramble of ``uint64`` values (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * MIX1
    x = (x ^ (x >> np.uint64(27))) * MIX2
    return x ^ (x >> np.uint64(31))


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    return mix64(x + GOLDEN)


# The position loop hands the rest of the rows to _fnv_segments once fewer than this many are still active
# and at least _SCAN_MIN_BYTES positions remain: a loop step costs a few numpy calls (microseconds) whatever
# the row count, _fnv_segments about a hundred calls once plus tens of nanoseconds a byte.
_SCAN_ROWS = 64
_SCAN_MIN_BYTES = 128
# Bytes given to one _fnv_segments call (it needs ~50 bytes of scratch memory a byte); a longer row goes alone.
_SCAN_CHUNK_BYTES = 1 << 20


def _prefix_xor(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Inclusive running XOR of a 0/1 array, 64 bits a word (numpy's accumulate goes one element a step)."""
    n = len(bits)
    words = np.packbits(np.concatenate([bits, np.zeros(-n % 64, np.uint8)]), bitorder="little").view("<u8")
    for shift in (1, 2, 4, 8, 16, 32):  # running XOR inside each word
        words ^= words << np.uint64(shift)
    parity = (words >> np.uint64(63)).astype(np.uint8)
    carry = np.zeros(len(words), np.uint64)
    carry[1:] = np.bitwise_xor.accumulate(parity)[:-1]
    words ^= np.uint64(0) - carry  # flip a word whose preceding bits XOR to 1
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:n]


def _fnv_segments(data: npt.NDArray[np.uint8], lengths: npt.NDArray[np.int64], h: npt.NDArray[np.uint64]) -> np.ndarray:
    """The FNV-1a steps of every byte: row ``i`` starts from ``h[i]`` and eats the next ``lengths[i]`` bytes of
    ``data`` (the rows' bytes, back to back). Vectorised over bytes as well as rows, so one long row is fast.

    Why it can be: ``(h ^ b) * P`` equals ``(h + d) * P`` with ``d = (low8(h) ^ b) - low8(h)``, so once the low
    byte of every state is known the result is a sum, ``h * P**n + sum_i d_i * P**(n - i)`` (mod 2**64). The
    low bytes form a chain of their own (low bits of a product depend only on low bits), and bit ``k`` of
    ``(x * P)`` is ``x_k`` XOR a function of bits ``0..k-1`` of ``x`` (P is odd), so with the lower bits of
    every state known, bit ``k`` of every state is a running XOR: eight passes give the whole low byte.
    """
    out = h.copy()
    nz = np.flatnonzero(lengths > 0)
    if not nz.size:
        return out
    ln = lengths[nz]
    start = np.cumsum(ln) - ln
    s0 = (h[nz] & np.uint64(0xFF)).astype(np.uint8)  # low byte of each row's state before its first byte
    n = len(data)
    low = np.zeros(n, np.uint8)  # low byte of the state after each byte, built a bit per pass
    prev = np.empty(n, np.uint8)  # ... and before it
    x = np.empty(n, np.uint8)
    low_p = np.uint8(_FNV_PRIME & np.uint64(0xFF))
    for k in range(8):
        prev[1:] = low[:-1]
        prev[start] = s0
        np.bitwise_xor(prev, data, out=x)
        np.bitwise_and(x, np.uint8((1 << k) - 1), out=x)
        np.multiply(x, low_p, out=x)  # bit k of (lower bits of x) * P: what the lower bits carry into bit k
        np.right_shift(x, np.uint8(k), out=x)
        np.bitwise_xor(x, np.right_shift(data, np.uint8(k)), out=x)
        np.bitwise_and(x, np.uint8(1), out=x)  # how bit k of the state changes at each byte
        run = _prefix_xor(x)
        # restart the running XOR at each row, from bit k of the row's initial state
        base = np.zeros(len(nz), np.uint8)
        base[1:] = run[start[1:] - 1]
        base ^= (s0 >> np.uint8(k)) & np.uint8(1)
        run ^= np.repeat(base, ln)
        low |= run << np.uint8(k)
    prev[1:] = low[:-1]
    prev[start] = s0
    d = (prev ^ data).astype(np.int64) - prev.astype(np.int64)  # (h ^ b) - h, in [-255, 255]
    powers = np.cumprod(np.full(int(ln.max()) + 1, _FNV_PRIME, np.uint64))  # P**1 .. P**(max + 1)
    # byte at position p of a row ending at e (exclusive) is multiplied by P**(e - p)
    exponent = np.repeat(start + ln, ln) - np.arange(n)
    terms = d.view(np.uint64) * powers[exponent - 1]
    out[nz] = h[nz] * powers[ln - 1] + np.add.reduceat(terms, start)
    return out


def _fnv_rows(data: np.ndarray, begin: np.ndarray, lengths: np.ndarray, h: np.ndarray) -> np.ndarray:
    """:func:`_fnv_segments` of the rows ``data[begin[i] : begin[i] + lengths[i]]``, in bounded chunks."""
    out = np.empty_like(h)
    ends = np.cumsum(lengths)
    i = 0
    while i < len(h):
        # the rows up to _SCAN_CHUNK_BYTES past this one's start (at least one row)
        j = max(i + 1, int(np.searchsorted(ends, ends[i] - lengths[i] + _SCAN_CHUNK_BYTES, side="right")))
        ln = lengths[i:j]
        idx = np.repeat(begin[i:j] - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))
        out[i:j] = _fnv_segments(data[idx], ln, h[i:j])
        i = j
    return out


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
        few = np.flatnonzero(active < _SCAN_ROWS)
        stop = int(few[0]) if few.size and max_len - int(few[0]) >= _SCAN_MIN_BYTES else max_len
        for j in range(stop):
            k = int(active[j])
            hk, pk = h[:k], pos[:k]
            # In place: this loop runs once per byte position over every row, temporaries cost more than the math.
            np.bitwise_xor(hk, data.take(pk), out=hk)
            np.multiply(hk, _FNV_PRIME, out=hk)
            pk += 1
        if stop < max_len:
            k = int(active[stop])
            h[:k] = _fnv_rows(data, pos[:k], sorted_len[:k] - stop, h[:k])
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
