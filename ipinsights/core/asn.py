"""Which autonomous system (network operator) an address belongs to: lookups in an ip2asn table.

The table is an ip2asn TSV (``range_start range_end AS_number country_code AS_description``, the
format of iptoasn.com, read by :func:`read_ip2asn`; the generator
writes one for its synthetic plan). Its ranges are kept sorted in address-key space
(:func:`ipinsights.core.ip.parse_ip`), so a lookup of a whole batch is one ``searchsorted``. An ip2asn-v4
file says nothing about IPv6, so IPv6 addresses get no ASN (-1: unknown) rather than a guessed one.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipinsights.core.errors import DataFormatError

__all__ = ["AsnTable", "Ip2AsnRows", "load_asn_table", "read_ip2asn"]


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


@functools.lru_cache(maxsize=4)
def load_asn_table(path: str) -> AsnTable:
    """Read (once per process: Spark workers call this per batch) an ip2asn TSV, plain or gzip."""
    rows = read_ip2asn(path)
    return AsnTable(rows.start, rows.end, rows.asn)


@dataclass(frozen=True)
class Ip2AsnRows:
    """The routed ranges of an ip2asn file, sorted by start and checked to be disjoint."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64, inclusive
    asn: np.ndarray  # int64
    country: np.ndarray  # object (str)
    description: np.ndarray  # object (str)


def read_ip2asn(path: str | Path, keep_unrouted: bool = False) -> Ip2AsnRows:
    """Load an ip2asn-v4 file (plain or ``.gz``; addresses as integers or dotted quads).

    Blank lines and ``#`` comments are skipped, and so are "Not routed" ranges (AS 0) unless
    ``keep_unrouted``. Any other malformed line raises :class:`~ipinsights.core.errors.DataFormatError`
    naming ``file:line``, as do overlapping ranges.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[tuple[int, int, int, str, str, int]] = []
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                row = _parse_ip2asn_line(line, path, lineno)
                if row[2] == 0 and not keep_unrouted:
                    continue
                rows.append((*row, lineno))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise DataFormatError(f"{path}: cannot read: {exc}") from None
    if not rows:
        raise DataFormatError(f"{path}: no routed ranges found (expected ip2asn-v4 TSV lines)")
    rows.sort(key=lambda r: r[0])
    for prev, cur in itertools.pairwise(rows):
        if cur[0] <= prev[1]:
            raise DataFormatError(f"{path}:{cur[5]}: range overlaps the range of line {prev[5]}")
    return Ip2AsnRows(
        start=np.array([r[0] for r in rows], np.int64),
        end=np.array([r[1] for r in rows], np.int64),
        asn=np.array([r[2] for r in rows], np.int64),
        country=np.array([r[3] for r in rows], dtype=object),
        description=np.array([r[4] for r in rows], dtype=object),
    )


_INT_OR_DOTTED = re.compile(r"^(\d{1,10}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$")


def _parse_ip2asn_line(line: str, path: Path, lineno: int) -> tuple[int, int, int, str, str]:
    where = f"{path}:{lineno}"
    fields = line.split("\t")
    if len(fields) < 4:
        fields = line.split(None, 4)  # some copies have spaces instead of tabs
    if len(fields) < 4:
        raise DataFormatError(
            f"{where}: expected 5 tab-separated fields (range_start range_end AS_number country_code"
            f" AS_description), got {len(fields)}: {line[:120]!r}"
        )
    start, end = (_parse_address(fields[i].strip(), where, name) for i, name in ((0, "range_start"), (1, "range_end")))
    if end < start:
        raise DataFormatError(f"{where}: range_end {fields[1]!r} is before range_start {fields[0]!r}")
    asn_text = fields[2].strip().upper().removeprefix("AS")
    if not asn_text.isdigit():
        raise DataFormatError(f"{where}: AS_number {fields[2]!r} must be a non-negative integer")
    description = "\t".join(fields[4:]).strip() if len(fields) > 4 else ""
    return start, end, int(asn_text), fields[3].strip(), description


def _parse_address(text: str, where: str, name: str) -> int:
    if not _INT_OR_DOTTED.match(text):
        raise DataFormatError(f"{where}: {name} {text!r} is neither an integer nor a dotted IPv4 address")
    if "." in text:
        octets = [int(o) for o in text.split(".")]
        if max(octets) > 255:
            raise DataFormatError(f"{where}: {name} {text!r} has an octet above 255")
        return (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    value = int(text)
    if value > 0xFFFFFFFF:
        raise DataFormatError(f"{where}: {name} {text} is above 2^32-1")
    return value
