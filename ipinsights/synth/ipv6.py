"""IPv6 helpers of the generator: RFC 5952 text of ``(hi, lo)`` halves, mixed-family columns, interface ids.

An IPv6 address is held as two 64-bit halves: ``hi`` (the routing prefix and subnet id, i.e. the /64;
every prefix the generator deals in, /28 allocations down to /64 subnets, lives in it) and ``lo`` (the
interface identifier). The generator only hands out global unicast addresses (``2000::/3``), so
``hi < 2**62`` and it is kept as ``int64``; ``lo`` is ``uint64``.

:func:`ipv6_to_str` formats halves as RFC 5952 canonical text without a Python loop per address: the
8 hextets come from a big-endian view of the halves, the longest run of zero hextets (two or more,
leftmost on ties) is found with 8 column operations, and the pieces are gathered from a table of the
65,536 hextet strings into an Arrow list array, joined with ``:`` in one kernel call. It writes pure
hex (no dotted-quad tail; the generator never makes IPv4-mapped addresses), which is what Python's
``ipaddress`` and the ingest job (``ipinsights.ingest.logparse.canonical_ip``) write for such addresses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.core.hashing import GOLDEN, mix64
from ipinsights.core.ip import ipv4_to_str

__all__ = ["address_columns", "hash64", "ipv6_to_str", "random_iid", "temporary_iid"]

_CHUNK = 1 << 20  # rows formatted per Arrow call (keeps every string buffer far below 2 GiB)
_EMPTY, _ONE_COLON, _TWO_COLONS = 65_536, 65_537, 65_538  # table entries that stand for a zero run
_PIECES: pa.StringArray | None = None
_UL_BIT = np.uint64(1 << 57)  # the universal/local bit of an interface id (RFC 4291 appendix A)


def _pieces() -> pa.StringArray:
    """``"0".."ffff"`` (index = value), then the three zero-run markers (built once)."""
    global _PIECES
    if _PIECES is None:
        _PIECES = pa.array([f"{i:x}" for i in range(65_536)] + ["", ":", "::"], pa.string())
    return _PIECES


def ipv6_to_str(hi: np.ndarray, lo: np.ndarray) -> pa.StringArray:
    """RFC 5952 text of IPv6 addresses given as 64-bit halves (vectorized; any integer dtype, bits as is).

    Lower case, no leading zeros, the longest run of two or more zero hextets (the first of equally
    long ones) written ``::``; a single zero hextet stays ``0``.
    """
    hi = np.asarray(hi).astype(np.uint64, copy=False)
    lo = np.asarray(lo).astype(np.uint64, copy=False)
    if hi.shape != lo.shape or hi.ndim != 1:
        raise ValueError("hi and lo must be 1-d arrays of the same length")
    if len(hi) == 0:
        return pa.array([], pa.string())
    parts = [_format_chunk(hi[i : i + _CHUNK], lo[i : i + _CHUNK]) for i in range(0, len(hi), _CHUNK)]
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _format_chunk(hi: np.ndarray, lo: np.ndarray) -> pa.StringArray:
    n = len(hi)
    groups = np.stack([hi, lo], axis=1).astype(">u8").view(">u2").reshape(n, 8).astype(np.int32)
    zero = groups == 0
    run = np.zeros((n, 8), np.int8)  # length of the zero run ending at each hextet
    run[:, 0] = zero[:, 0]
    for j in range(1, 8):
        run[:, j] = (run[:, j - 1] + 1) * zero[:, j]
    length = run.max(axis=1)
    end = run.argmax(axis=1)  # first maximum: the end of the leftmost longest run
    start = end - length + 1
    col = np.arange(8)
    compress = length >= 2
    in_run = compress[:, None] & (col >= start[:, None]) & (col <= end[:, None])
    first = in_run & (col == start[:, None])
    at_edge = (start == 0).astype(np.int32) + (end == 7)
    groups[first] = (_EMPTY + at_edge)[np.flatnonzero(compress)]  # "" inside, ":" at one edge, "::" for all
    keep = ~in_run | first
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    values = _pieces().take(pa.array(groups[keep]))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), ":")


def address_columns(v4: np.ndarray, hi: np.ndarray, lo: np.ndarray, is6: np.ndarray) -> tuple[pa.Array, ...]:
    """``(ip, ip_int, ip_version)`` columns of mixed-family addresses, as the events tables hold them.

    ``ip`` is dotted-quad or RFC 5952 text, ``ip_int`` the IPv4 value (null for IPv6, as the ingest
    job writes it) and ``ip_version`` 4 or 6 (``int8``). ``v4`` is read where ``~is6``, ``hi``/``lo``
    where ``is6``.
    """
    is6 = np.asarray(is6, bool)
    v4 = np.asarray(v4, np.int64)
    rows6 = np.flatnonzero(is6)
    if len(rows6) == 0:
        text = ipv4_to_str(v4)
    else:
        rows4 = np.flatnonzero(~is6)
        both = pa.concat_arrays([ipv4_to_str(v4[rows4]), ipv6_to_str(hi[rows6], lo[rows6])])
        where = np.empty(len(is6), np.int64)
        where[np.concatenate([rows4, rows6])] = np.arange(len(is6))
        text = both.take(pa.array(where))
    version = pa.array(np.where(is6, 6, 4).astype(np.int8), pa.int8())
    return text, pa.array(v4, pa.int64(), mask=is6), version


# ---------------------------------------------------------------------------------------------
# Interface identifiers.
# ---------------------------------------------------------------------------------------------


def hash64(*parts: np.ndarray | int) -> np.ndarray:
    """A well-mixed ``uint64`` hash of integer columns (broadcast together), the same on every machine."""
    h = np.array([GOLDEN], np.uint64)
    for part in parts:
        h = mix64(h ^ (np.asarray(part).astype(np.uint64) + GOLDEN))
    return h


def temporary_iid(seed: int, user: np.ndarray, day: np.ndarray, subnet: np.ndarray | int, path: int) -> np.ndarray:
    """The privacy-extension interface id (RFC 8981) a user's device has on ``day`` in ``subnet`` (uint64).

    A keyed hash, so it is the same for every login of that device that day and changes daily; the
    universal/local bit is 0, as in randomized identifiers. ``path`` separates home from work.
    """
    return hash64(seed, path, user, day, subnet) & ~_UL_BIT


def random_iid(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random interface ids (``uint64``, universal/local bit 0), e.g. one per mobile session."""
    return rng.integers(0, 1 << 64, size=n, dtype=np.uint64) & ~_UL_BIT
