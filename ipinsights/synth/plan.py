"""Address plans: IPv4 ranges with an AS number, a country and a kind (broadband, mobile, business, hosting).

Real registry files (iptoasn.com's ``ip2asn-v4.tsv``) cannot be downloaded here, so
:meth:`AddressPlan.synthetic` lays out a plausible plan: countries own a few blocks of the address
space each (as regional registries allocate), ISPs of each kind own CIDR-aligned ranges inside them,
and reserved ranges (private, loopback, multicast, ...) are skipped. A user-supplied file loads with
:meth:`AddressPlan.from_ip2asn_tsv`; :meth:`AddressPlan.to_ip2asn_tsv` writes the same format, and the
kind survives the round trip because synthetic AS descriptions name it (real ones are classified by
keywords).
"""

from __future__ import annotations

import gzip
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ipinsights.io import DataFormatError, atomic_write
from ipinsights.ip import ipv4_to_str

__all__ = ["COUNTRY_USER_SHARES", "COUNTRY_UTC_OFFSETS", "KINDS", "AddressPlan", "kind_of_description"]

KINDS: tuple[str, ...] = ("broadband", "mobile", "business", "hosting")

#: Countries of the synthetic plan: (code, share of users, UTC offsets in minutes). Offsets include
#: half- and quarter-hour zones (India, Nepal) so that log parsers must handle ``+0530``/``+0545``.
_COUNTRIES: tuple[tuple[str, float, tuple[int, ...]], ...] = (
    ("US", 0.24, (-300, -360, -420, -480)),
    ("CA", 0.03, (-300, -480)),
    ("MX", 0.03, (-360,)),
    ("BR", 0.06, (-180,)),
    ("AR", 0.02, (-180,)),
    ("GB", 0.06, (0,)),
    ("DE", 0.07, (60,)),
    ("FR", 0.05, (60,)),
    ("ES", 0.03, (60,)),
    ("PL", 0.02, (60,)),
    ("NG", 0.02, (60,)),
    ("ZA", 0.02, (120,)),
    ("TR", 0.03, (180,)),
    ("RU", 0.04, (180,)),
    ("IN", 0.08, (330,)),
    ("NP", 0.01, (345,)),
    ("ID", 0.03, (420,)),
    ("CN", 0.06, (480,)),
    ("JP", 0.05, (540,)),
    ("KR", 0.03, (540,)),
    ("AU", 0.03, (600, 480)),
    ("NZ", 0.01, (720,)),
)
#: UTC offsets (minutes) by country code; countries of real files that are missing here get UTC.
COUNTRY_UTC_OFFSETS: dict[str, tuple[int, ...]] = {c: offs for c, _, offs in _COUNTRIES}
#: Share of the simulated users living in each country.
COUNTRY_USER_SHARES: dict[str, float] = {c: share for c, share, _ in _COUNTRIES}

# Reserved IPv4 blocks (start, prefix length) that no plan may use.
_RESERVED = (
    (0x00000000, 8), (0x0A000000, 8), (0x64400000, 10), (0x7F000000, 8), (0xA9FE0000, 16),
    (0xAC100000, 12), (0xC0000000, 24), (0xC0000200, 24), (0xC0A80000, 16), (0xC6120000, 15),
    (0xC6336400, 24), (0xCB007100, 24), (0xE0000000, 3),
)  # fmt: skip

# Synthetic range sizes (prefix lengths) and ranges per ISP, by kind.
_PREFIXES = {"broadband": (13, 18), "mobile": (12, 16), "business": (22, 26), "hosting": (16, 22)}
_RANGES_PER_ISP = {"broadband": (1, 6), "mobile": (1, 4), "business": (1, 1), "hosting": (1, 3)}
_KIND_SHARE = {"broadband": 0.45, "mobile": 0.15, "business": 0.3, "hosting": 0.1}
_KIND_WORD = {"broadband": "Broadband", "mobile": "Mobile", "business": "Business", "hosting": "Hosting"}
_SYLLABLES = ("ka", "lo", "net", "tel", "vo", "ra", "com", "sky", "li", "no", "ve", "tri", "max", "on", "zen", "ar")

# Keywords that classify a real AS description (first match wins, in this order; default broadband).
_KIND_KEYWORDS = (
    ("hosting", re.compile(r"hosting|cloud|amazon|google|microsoft|digitalocean|ovh|hetzner|linode|data ?cent", re.I)),
    ("mobile", re.compile(r"mobile|wireless|cellular|\blte\b|\bgsm\b|\b[345]g\b", re.I)),
    ("business", re.compile(r"business|enterprise|universit|bank|corp|government|ministry|school", re.I)),
)  # fmt: skip
_INT_OR_DOTTED = re.compile(r"^(\d{1,10}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$")


def kind_of_description(description: str) -> str:
    """Classify an AS description into one of :data:`KINDS` by keywords (broadband if none match)."""
    for kind, pattern in _KIND_KEYWORDS:
        if pattern.search(description):
            return kind
    return "broadband"


@dataclass(frozen=True, eq=False)
class AddressPlan:
    """Non-overlapping IPv4 ranges sorted by address; row ``i`` is "network ``i``".

    ``start``/``end`` are inclusive ``int64`` addresses; ``country``, ``kind`` and ``description`` are
    numpy arrays of Python strings (a few thousand to a few hundred thousand rows).
    """

    start: np.ndarray
    end: np.ndarray
    asn: np.ndarray
    country: np.ndarray
    kind: np.ndarray
    description: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.start)
        if n == 0:
            raise ValueError("an address plan needs at least one range")
        if any(len(getattr(self, f)) != n for f in ("end", "asn", "country", "kind", "description")):
            raise ValueError("address plan columns must all have the same length")
        if np.any(self.end < self.start) or np.any(self.start[1:] <= self.end[:-1]):
            raise ValueError("address plan ranges must be sorted, non-empty and non-overlapping")

    def __len__(self) -> int:
        return len(self.start)

    @property
    def size(self) -> np.ndarray:
        """Number of addresses of each range (``int64``)."""
        return self.end - self.start + 1

    def lookup(self, ips: np.ndarray) -> np.ndarray:
        """Index of the range holding each address, or -1 where none does (vectorized)."""
        ips = np.asarray(ips, dtype=np.int64)
        idx = np.searchsorted(self.start, ips, side="right") - 1
        inside = (idx >= 0) & (ips <= self.end[np.maximum(idx, 0)])
        return np.where(inside, idx, -1)

    def to_table(self) -> pa.Table:
        """The plan as an Arrow table (``range_start``/``range_end`` dotted, as in ip2asn)."""
        return pa.table(
            {
                "range_start": ipv4_to_str(self.start),
                "range_end": ipv4_to_str(self.end),
                "as_number": pa.array(self.asn, pa.int64()),
                "country_code": pa.array(self.country.tolist(), pa.string()),
                "as_description": pa.array(self.description.tolist(), pa.string()),
                "kind": pa.array(self.kind.tolist(), pa.string()),
            }
        )

    # ip2asn-v4 TSV ----------------------------------------------------------------------------

    def to_ip2asn_tsv(self, path: str | Path, dotted: bool = True) -> Path:
        """Write ``range_start range_end AS_number country_code AS_description`` lines (tab-separated)."""
        if dotted:
            starts, ends = ipv4_to_str(self.start).to_pylist(), ipv4_to_str(self.end).to_pylist()
        else:
            starts, ends = self.start.tolist(), self.end.tolist()
        rows = zip(starts, ends, self.asn.tolist(), self.country.tolist(), self.description.tolist(), strict=True)
        text = "".join(f"{s}\t{e}\t{a}\t{c}\t{d}\n" for s, e, a, c, d in rows)
        with atomic_write(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        return Path(path)

    @classmethod
    def from_ip2asn_tsv(cls, path: str | Path, keep_unrouted: bool = False) -> AddressPlan:
        """Load an ip2asn-v4 file (plain or ``.gz``; addresses as integers or dotted quads).

        Blank lines and ``#`` comments are skipped, and so are "Not routed" ranges (AS 0) unless
        ``keep_unrouted``. Any other malformed line raises :class:`~ipinsights.io.DataFormatError`
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
        descriptions = np.array([r[4] for r in rows], dtype=object)
        return cls(
            start=np.array([r[0] for r in rows], np.int64),
            end=np.array([r[1] for r in rows], np.int64),
            asn=np.array([r[2] for r in rows], np.int64),
            country=np.array([r[3] for r in rows], dtype=object),
            kind=np.array([kind_of_description(d) for d in descriptions], dtype=object),
            description=descriptions,
        )

    # Synthetic plan -----------------------------------------------------------------------------

    @classmethod
    def synthetic(cls, seed: int = 0, networks: int = 3000) -> AddressPlan:
        """A deterministic plan of about ``networks`` ranges over the countries of :data:`COUNTRY_UTC_OFFSETS`."""
        from ipinsights.synth.spec import plan_rng

        rng = plan_rng(seed)
        codes = [c for c, _, _ in _COUNTRIES]
        shares = np.array([s for _, s, _ in _COUNTRIES])
        shares /= shares.sum()
        # ISPs: (country, kind) with range counts; each country gets some of every kind.
        isps: list[tuple[str, str, int]] = []
        per_range = {k: np.mean(v) for k, v in _RANGES_PER_ISP.items()}
        for code, share in zip(codes, shares, strict=True):
            for kind, kshare in _KIND_SHARE.items():
                n_isp = max(2 if kind != "hosting" else 1, round(networks * share * kshare / per_range[kind]))
                lo, hi = _RANGES_PER_ISP[kind]
                isps.extend((code, kind, int(k)) for k in rng.integers(lo, hi + 1, size=n_isp))
        asns = 1000 + rng.choice(63_000, size=len(isps), replace=False)  # distinct public-looking AS numbers
        names = [_isp_name(rng) for _ in isps]
        # One row per range: (country, kind, asn, description, prefix length).
        ranges = []
        for (code, kind, k), asn, name in zip(isps, asns.tolist(), names, strict=True):
            lo, hi = _PREFIXES[kind]
            for plen in rng.integers(lo, hi + 1, size=k).tolist():
                ranges.append((code, kind, asn, f"{name.upper()}-AS - {name} {_KIND_WORD[kind]} {code}", plen))
        ranges = _lay_out(ranges, codes, rng)
        return cls(
            start=np.array([r[0] for r in ranges], np.int64),
            end=np.array([r[1] for r in ranges], np.int64),
            asn=np.array([r[2] for r in ranges], np.int64),
            country=np.array([r[3] for r in ranges], dtype=object),
            kind=np.array([r[4] for r in ranges], dtype=object),
            description=np.array([r[5] for r in ranges], dtype=object),
        )


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


def _isp_name(rng: np.random.Generator) -> str:
    parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(2, 4)))
    return "".join(_SYLLABLES[i] for i in parts).capitalize()


def _lay_out(ranges: list, codes: list[str], rng: np.random.Generator) -> list[tuple]:
    """Place ranges CIDR-aligned in address order: each country in a few blocks, random gaps, no reserved space.

    A loop over ranges (thousands), not over events; it also shrinks every range if the plan would not fit.
    """
    reserved = [(s, s + (1 << (32 - p))) for s, p in _RESERVED]
    usable = (1 << 32) - sum(e - s for s, e in reserved)
    plens = np.array([r[4] for r in ranges])
    while (np.sum(2.0 ** (32 - plens)) * 2.5) > usable:  # room for gaps and alignment
        plens = np.minimum(plens + 1, 30)
    # Each country is split into 1-3 blocks, and the blocks are shuffled, so countries interleave.
    order = rng.permutation(len(ranges))
    by_country: dict[str, list[int]] = {c: [] for c in codes}
    for i in order.tolist():
        by_country[ranges[i][0]].append(i)
    blocks = []
    for code in codes:
        members = by_country[code]
        cuts = sorted(rng.choice(np.arange(1, len(members)), size=min(2, len(members) - 1), replace=False).tolist())
        blocks.extend(np.split(np.array(members), cuts))
    sequence = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
    total = float(np.sum(2.0 ** (32 - plens)))
    # Spread the plan over the whole space with random gaps; alignment wastes space too, so if the
    # plan overflows, the gaps shrink (halved, then none) until it fits.
    mean_gap = max(0.0, (usable - 2.2 * total) / len(ranges))
    unit_gaps = rng.exponential(1.0, size=len(ranges))
    for scale in (1.0, 0.5, 0.25, 0.125, 0.0):
        placed = _place(sequence.tolist(), plens, (unit_gaps * mean_gap * scale).astype(np.int64).tolist(), reserved)
        if placed is not None:
            break
    else:
        raise ValueError("synthetic address plan does not fit below 224.0.0.0; lower networks")
    out = []
    for i, start in placed:
        code, kind, asn, description, _ = ranges[i]
        out.append((start, start + (1 << (32 - int(plens[i]))) - 1, asn, code, kind, description))
    return out


def _place(sequence: list[int], plens: np.ndarray, gaps: list[int], reserved: list) -> list | None:
    """``(range, start)`` in address order, CIDR-aligned, past reserved blocks; None if it overflows."""
    out = []
    cursor = 1 << 24  # 1.0.0.0
    for i, gap in zip(sequence, gaps, strict=True):
        size = 1 << (32 - int(plens[i]))
        start = -(-(cursor + gap) // size) * size  # align up
        for rs, re_ in reserved:  # skip past reserved blocks it would touch (they are in address order)
            if start < re_ and start + size > rs:
                start = -(-re_ // size) * size
        if start + size > 0xE0000000:
            return None
        out.append((i, start))
        cursor = start + size
    return out
