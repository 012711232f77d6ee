"""Which autonomous system (network operator) and country an address belongs to: lookups in an ip2asn table.

The table is an ip2asn TSV (``range_start range_end AS_number country_code AS_description``, the
format of iptoasn.com: ``ip2asn-v4``, ``ip2asn-v4-u32``, ``ip2asn-v6`` or ``ip2asn-combined``; the
generator writes the first and the third for its synthetic plan), read by :func:`read_ip2asn`. Several
files (e.g. the v4 and the v6 one) make one table.

Ranges are kept sorted in address-key space (:func:`ipinsights.core.ip.parse_ip`: an IPv4 address is
its value, an IPv6 address its top 64 bits), so a lookup of a whole batch is one ``searchsorted``, in
numpy here and in torch inside the model (:class:`ipinsights.core.model.IPInsightsModel`). IPv6 ranges
are kept at /64 granularity, as the keys are: a range inside one /64 (rare: announcements are /48 or
shorter) becomes that /64, and where several do, the first one holds it.

The table's **fingerprint** (:attr:`AsnTable.fingerprint`, a sha256 of the ranges, AS numbers and
countries, not of the file's bytes: a gzipped or re-sorted copy has the same one) is saved in a model
trained with it, so a model is never scored with another table's network rows.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipinsights.core.config import COUNTRY_ROWS, IPV4_KEYS
from ipinsights.core.errors import DataFormatError

__all__ = ["COUNTRY_ROWS", "AsnTable", "Ip2AsnRows", "country_index", "load_asn_table", "read_ip2asn"]


def country_index(codes: Sequence[str] | np.ndarray) -> np.ndarray:
    """Slot (0..COUNTRY_ROWS-1) of each ISO 3166 two-letter country code, -1 where it is not two letters
    A-Z (``None``, ``Unknown``)."""
    out = np.full(len(codes), -1, np.int64)
    for i, code in enumerate(codes):
        c = str(code).strip().upper()
        if len(c) == 2 and "A" <= c[0] <= "Z" and "A" <= c[1] <= "Z":
            out[i] = (ord(c[0]) - 65) * 26 + ord(c[1]) - 65
    return out


@dataclass(frozen=True, eq=False)
class AsnTable:
    """Non-overlapping, sorted ``[start, end]`` address-key ranges with their AS number, country and name."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64, inclusive
    asn: np.ndarray  # int64
    country: np.ndarray  # int64 country slot (country_index), -1 unknown
    country_code: np.ndarray  # object (str), as the file has it
    description: np.ndarray  # object (str)
    source: str = ""

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of the range holding each address key, -1 where none does."""
        k = np.asarray(keys, dtype=np.int64)
        i = np.searchsorted(self.start, k, side="right") - 1
        ok = (i >= 0) & (k <= self.end[np.maximum(i, 0)])
        return np.where(ok, i, -1)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """AS number of each address key, -1 where no range holds it."""
        i = self.find(keys)
        return np.where(i >= 0, self.asn[np.maximum(i, 0)], -1).astype(np.int64)

    def describe(self, keys: np.ndarray) -> list[str | None]:
        """``AS64512 Kalonet Mobile (BR)`` for each address key (None outside the table): for people."""
        out: list[str | None] = []
        for i in self.find(keys).tolist():
            out.append(None if i < 0 else describe_as(int(self.asn[i]), self.description[i], self.country_code[i]))
        return out

    def describe_asns(self, asns: Sequence[int] | np.ndarray) -> list[str]:
        """:meth:`describe` of AS numbers (``AS<n>`` alone for one the table does not hold)."""
        first = self._first_row_of_as
        out = []
        for a in np.asarray(asns, np.int64).tolist():
            i = first.get(a)
            out.append(f"AS{a}" if i is None else describe_as(a, self.description[i], self.country_code[i]))
        return out

    @functools.cached_property
    def _first_row_of_as(self) -> dict[int, int]:
        asn, first = np.unique(self.asn, return_index=True)
        return dict(zip(asn.tolist(), first.tolist(), strict=True))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the ranges, AS numbers and countries (what the model's network rows depend on)."""
        h = hashlib.sha256(b"ipinsights-asn-table-v1")
        for column in (self.start, self.end, self.asn, self.country):
            h.update(np.ascontiguousarray(column, dtype="<i8").tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.start)


def describe_as(asn: int, description: str, country: str) -> str:
    """``AS<n> <name> (<country>)``: the AS name without its ``<HANDLE> - `` prefix when it has one."""
    name = str(description).split(" - ", 1)[-1].strip() if " - " in str(description) else str(description).strip()
    return f"AS{asn} {name} ({country})".replace("  ", " ") if name else f"AS{asn} ({country})"


def load_asn_table(paths: str) -> AsnTable:
    """Read (once per process and file version: Spark workers call this per batch) local ip2asn TSVs, plain
    or gzip.

    ``paths`` may name several files separated by commas (e.g. ``ip2asn-v4.tsv,ip2asn-v6.tsv``): one
    table. For URIs, :func:`ipinsights.storage.modelfile.network_table` makes local copies first.
    """
    files = tuple(p.strip() for p in paths.split(",") if p.strip())
    stamps = []
    for f in files:
        try:
            st = Path(f).stat()
        except OSError:
            raise DataFormatError(f"{f}: no such file") from None
        stamps.append((st.st_mtime_ns, st.st_size))  # a replaced file is read again
    return _load(files, tuple(stamps))


@functools.lru_cache(maxsize=4)
def _load(files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> AsnTable:
    rows = read_ip2asn([Path(f) for f in files])
    return AsnTable(
        rows.start, rows.end, rows.asn, country_index(rows.country), rows.country, rows.description, ",".join(files)
    )


@dataclass(frozen=True)
class Ip2AsnRows:
    """The routed ranges of ip2asn files in address-key space, sorted by start and checked to be disjoint."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64, inclusive
    asn: np.ndarray  # int64
    country: np.ndarray  # object (str)
    description: np.ndarray  # object (str)


def read_ip2asn(
    paths: str | Path | Sequence[str | Path], keep_unrouted: bool = False, ipv4_only: bool = False
) -> Ip2AsnRows:
    """Load ip2asn files (plain or ``.gz``; IPv4 addresses as integers or dotted quads, IPv6 as text).

    Blank lines and ``#`` comments are skipped, and so are "Not routed" ranges (AS 0) unless
    ``keep_unrouted``; ``ipv4_only`` skips IPv6 rows (an address plan is IPv4). Any other malformed
    line raises :class:`~ipinsights.core.errors.DataFormatError` naming ``file:line``, as do
    overlapping ranges.
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    rows: list[tuple[int, int, int, str, str, str]] = []  # 128-bit-safe start/end (Python ints), where
    for path in files:
        rows.extend(_read_file(path, keep_unrouted, ipv4_only))
    if not rows:
        raise DataFormatError(f"{', '.join(map(str, files))}: no routed ranges found (expected ip2asn TSV lines)")
    rows.sort(key=lambda r: r[0])
    for prev, cur in itertools.pairwise(rows):
        if cur[0] <= prev[1]:
            raise DataFormatError(f"{cur[5]}: range overlaps the range of {prev[5]}")
    keys = [(_key(r[0]), _key(r[1])) for r in rows]
    # IPv6 ranges narrower than a /64 collapse onto their /64 key: the first range of a /64 keeps it.
    keep = [0] if rows else []
    for i in range(1, len(rows)):
        if keys[i][0] > keys[keep[-1]][1]:
            keep.append(i)
    # IPv6 keys are signed top halves; in 2000::/3 they are positive and sort after every IPv4 key.
    order = sorted(keep, key=lambda i: keys[i][0])
    return Ip2AsnRows(
        start=np.array([keys[i][0] for i in order], np.int64),
        end=np.array([keys[i][1] for i in order], np.int64),
        asn=np.array([rows[i][2] for i in order], np.int64),
        country=np.array([rows[i][3] for i in order], dtype=object),
        description=np.array([rows[i][4] for i in order], dtype=object),
    )


_V6_BASE = 1 << 128  # IPv6 addresses sort after every IPv4 one in the reader's combined order


def _key(value: int) -> int:
    """Address key of a reader value: IPv4 as is, IPv6 (offset by ``_V6_BASE``) its top 64 bits, signed."""
    if value < _V6_BASE:
        return value
    hi = (value - _V6_BASE) >> 64
    return hi - (1 << 64) if hi >= 1 << 63 else hi


def _read_file(path: Path, keep_unrouted: bool, ipv4_only: bool) -> list[tuple[int, int, int, str, str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                start, end, asn, country, description = _parse_ip2asn_line(line, path, lineno)
                if (asn == 0 and not keep_unrouted) or (ipv4_only and start >= _V6_BASE):
                    continue
                if start >= _V6_BASE and not IPV4_KEYS <= (start - _V6_BASE) >> 64 < 1 << 63:
                    continue  # ::/32 is keyed as IPv4 or invalid; 8000::/1 is no client address (no 2000::/3)
                rows.append((start, end, asn, country, description, f"{path}:{lineno}"))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise DataFormatError(f"{path}: cannot read: {exc}") from None
    return rows


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
    if (start >= _V6_BASE) != (end >= _V6_BASE):
        raise DataFormatError(
            f"{where}: range_start {fields[0]!r} and range_end {fields[1]!r} are of different families"
        )
    if end < start:
        raise DataFormatError(f"{where}: range_end {fields[1]!r} is before range_start {fields[0]!r}")
    asn_text = fields[2].strip().upper().removeprefix("AS")
    if not asn_text.isdigit():
        raise DataFormatError(f"{where}: AS_number {fields[2]!r} must be a non-negative integer")
    description = "\t".join(fields[4:]).strip() if len(fields) > 4 else ""
    return start, end, int(asn_text), fields[3].strip(), description


def _parse_address(text: str, where: str, name: str) -> int:
    """An IPv4 address as its value; an IPv6 one as ``_V6_BASE +`` its 128-bit value (one sort order)."""
    if ":" in text:
        try:
            return _V6_BASE + int(ipaddress.IPv6Address(text))
        except ValueError:
            raise DataFormatError(f"{where}: {name} {text!r} is not an IPv6 address") from None
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
