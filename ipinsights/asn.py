"""Which autonomous system (network operator) an address belongs to: lookups in an ip2asn table.

The table is an ip2asn TSV (``range_start range_end AS_number country_code AS_description``, the
format of iptoasn.com, read by :meth:`ipinsights.synth.AddressPlan.from_ip2asn_tsv`; the generator
writes one for its synthetic plan). Its ranges are kept sorted in address-key space
(:func:`ipinsights.ip.parse_ip`), so a lookup of a whole batch is one ``searchsorted``. An ip2asn-v4
file says nothing about IPv6, so IPv6 addresses get no ASN (-1: unknown) rather than a guessed one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AsnTable", "load_asn_table"]


@dataclass(frozen=True)
class AsnTable:
    """Non-overlapping, sorted ``[start, end]`` address-key ranges and their AS numbers."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64, inclusive
    asn: np.ndarray  # int64

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """AS number of each address key, -1 where no range holds it."""
        k = np.asarray(keys, dtype=np.int64)
        i = np.searchsorted(self.start, k, side="right") - 1
        ok = (i >= 0) & (k <= self.end[np.maximum(i, 0)])
        return np.where(ok, self.asn[np.maximum(i, 0)], -1).astype(np.int64)

    @classmethod
    def from_plan(cls, plan) -> AsnTable:
        """The IPv4 ranges of an :class:`~ipinsights.synth.AddressPlan` (sorted and disjoint already)."""
        return cls(plan.start.astype(np.int64), plan.end.astype(np.int64), plan.asn.astype(np.int64))


@functools.lru_cache(maxsize=4)
def load_asn_table(path: str) -> AsnTable:
    """Read (once per process: Spark workers call this per batch) an ip2asn TSV, plain or gzip."""
    from ipinsights.synth.plan import AddressPlan

    return AsnTable.from_plan(AddressPlan.from_ip2asn_tsv(Path(path)))
