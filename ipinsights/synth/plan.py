"""Address plans: IPv4 ranges with an AS, a country, a kind (broadband, mobile, business, hosting), an IPv6 prefix.

Real registry files (iptoasn.com's ``ip2asn-v4.tsv``) cannot be downloaded here, so
:meth:`AddressPlan.synthetic` lays out a plausible plan: countries own a few blocks of the address
space each (as regional registries allocate), ISPs of each kind own CIDR-aligned ranges inside them,
and reserved ranges (private, loopback, multicast, ...) are skipped. A user-supplied file loads with
:meth:`AddressPlan.from_ip2asn_tsv`; :meth:`AddressPlan.to_ip2asn_tsv` writes the same format, and the
kind survives the round trip because synthetic AS descriptions name it (real ones are classified by
keywords).

IPv6: every network (row) also gets an IPv6 prefix, laid out by :func:`ipv6_allocations` from the rows
and the plan seed alone (so a plan loaded from an ip2asn-v4 file gets them the same way, and a
synthetic plan written and read back gets the same ones). As the registries do, each country's
networks come from its regional registry's /12 (``2600::/12`` ARIN, ``2a00::/12`` RIPE NCC,
``2400::/12`` APNIC, ``2800::/12`` LACNIC, ``2c00::/12`` AFRINIC), one contiguous stretch per
country, so same-country networks are near each other in IPv6 order as in IPv4 order; each AS gets
one block, split into one prefix per row (its regional ranges). Sizes follow the kind and the IPv4
size: broadband and mobile /28-/32, hosting /32-/40, business /40-/48. All of it is global unicast
outside the special ranges (``2001::/23``, ``2001:db8::/32``, ``2002::/16``, ``3fff::/20``).
:meth:`AddressPlan.to_ip2asn_v6_tsv` writes the prefixes in iptoasn.com's ``ip2asn-v6`` format
(reading such a file back is not supported: the prefixes are derived, not loaded).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.core.asn import read_ip2asn
from ipinsights.core.ip import ipv4_to_str
from ipinsights.storage.files import atomic_write
from ipinsights.synth.ipv6 import ipv6_to_str

__all__ = [
    "COUNTRY_USER_SHARES",
    "COUNTRY_UTC_OFFSETS",
    "KINDS",
    "AddressPlan",
    "ipv6_allocations",
    "kind_of_description",
]

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
    (0x00000000, 8),
    (0x0A000000, 8),
    (0x64400000, 10),
    (0x7F000000, 8),
    (0xA9FE0000, 16),
    (0xAC100000, 12),
    (0xC0000000, 24),
    (0xC0000200, 24),
    (0xC0A80000, 16),
    (0xC6120000, 15),
    (0xC6336400, 24),
    (0xCB007100, 24),
    (0xE0000000, 3),
)

# Synthetic range sizes (prefix lengths) and ranges per ISP, by kind: "blocks", a few large ranges per ISP
# (the plan before issue 19) and "scattered", the real routing table's shape: broadband and mobile ISPs
# announce tens of prefixes of mixed sizes (/14-/24), business and hosting networks a few.
_PREFIXES = {"broadband": (13, 18), "mobile": (12, 16), "business": (22, 26), "hosting": (16, 22)}
_RANGES_PER_ISP = {"broadband": (1, 6), "mobile": (1, 4), "business": (1, 1), "hosting": (1, 3)}
_SCATTERED_PREFIXES = {"broadband": (14, 22), "mobile": (14, 20), "business": (20, 24), "hosting": (16, 24)}
_SCATTERED_RANGES_PER_ISP = {"broadband": (4, 40), "mobile": (4, 30), "business": (1, 3), "hosting": (1, 8)}
_KIND_SHARE = {"broadband": 0.45, "mobile": 0.15, "business": 0.3, "hosting": 0.1}
_KIND_WORD = {"broadband": "Broadband", "mobile": "Mobile", "business": "Business", "hosting": "Hosting"}
_SYLLABLES = ("ka", "lo", "net", "tel", "vo", "ra", "com", "sky", "li", "no", "ve", "tri", "max", "on", "zen", "ar")

# A synthetic range before layout: (country, kind, AS number, AS description, IPv4 prefix length);
# and a plan row after it: (start, end, AS number, country, kind, AS description).
_Range = tuple[str, str, int, str, int]
_PlanRow = tuple[int, int, int, str, str, str]

# Keywords that classify a real AS description (first match wins, in this order; default broadband).
_KIND_KEYWORDS = (
    ("hosting", re.compile(r"hosting|cloud|amazon|google|microsoft|digitalocean|ovh|hetzner|linode|data ?cent", re.I)),
    ("mobile", re.compile(r"mobile|wireless|cellular|\blte\b|\bgsm\b|\b[345]g\b", re.I)),
    ("business", re.compile(r"business|enterprise|universit|bank|corp|government|ministry|school", re.I)),
)
# IPv6: the /12 each regional registry allocates from (first 12 bits), and the countries it serves
# (countries missing here, e.g. of a real plan, go to a registry chosen by a hash of their code).
_RIR_V6_BLOCKS = {"AFRINIC": 0x2C0, "APNIC": 0x240, "ARIN": 0x260, "LACNIC": 0x280, "RIPE": 0x2A0}
_RIR_COUNTRIES = {
    "AFRINIC": "AO BF BJ BW CD CI CM DZ EG ET GA GH KE LY MA MG ML MU MZ NA NG RW SD SN TN TZ UG ZA ZM ZW",
    "APNIC": "AU BD BN BT CN FJ HK ID IN JP KH KR LA LK MM MN MO MV MY NP NZ PG PH PK SG TH TL TW VN",
    "ARIN": "AG BB BS BM CA DM GD JM KN KY LC PR US VC VI",
    "LACNIC": "AR BO BR BZ CL CO CR CU DO EC GT GY HN HT MX NI PA PE PY SR SV TT UY VE",
    "RIPE": "AD AE AL AM AT AZ BA BE BG BH BY CH CY CZ DE DK EE ES FI FO FR GB GE GR HR HU IE IL IQ IR IS IT "
    "JO KG KW KZ LB LI LT LU LV MC MD ME MK MT NL NO OM PL PS PT QA RO RS RU SA SE SI SK SM SY TJ TM TR "
    "UA UZ VA YE",
}
_COUNTRY_RIR = {code: rir for rir, codes in _RIR_COUNTRIES.items() for code in codes.split()}
_RIR_BITS = 12
# IPv6 prefix length of a network: its IPv4 prefix length + 16, within its kind's range.
_V6_LENGTHS = {"broadband": (28, 32), "mobile": (28, 32), "hosting": (32, 40), "business": (40, 48)}
_V6_MAX_LEN = 48  # every network holds at least a /48 (a business site; homes get /56s)
# Special-purpose IPv6 blocks (first 64 bits, prefix length) that no allocation may touch.
_RESERVED_V6 = ((0x2001 << 48, 23), (0x20010DB8 << 32, 32), (0x2002 << 48, 16), (0x3FFF << 48, 20))


def kind_of_description(description: str) -> str:
    """Classify an AS description into one of :data:`KINDS` by keywords (broadband if none match)."""
    for kind, pattern in _KIND_KEYWORDS:
        if pattern.search(description):
            return kind
    return "broadband"


@dataclass(frozen=True, eq=False)
class AddressPlan:
    """Non-overlapping IPv4 ranges sorted by address, each with an IPv6 prefix; row ``i`` is "network ``i``".

    ``start``/``end`` are inclusive ``int64`` addresses; ``country``, ``kind`` and ``description`` are
    numpy arrays of Python strings (a few thousand to a few hundred thousand rows). ``v6_start`` is
    the first 64 bits of the row's IPv6 prefix (``int64``: every prefix is in ``2000::/3``) and
    ``v6_len`` its length (``int8``, at most 48); :meth:`with_ipv6` derives them from the other columns
    with :func:`ipv6_allocations`, as :meth:`synthetic` and :meth:`from_ip2asn_tsv` do.
    """

    start: np.ndarray
    end: np.ndarray
    asn: np.ndarray
    country: np.ndarray
    kind: np.ndarray
    description: np.ndarray
    v6_start: np.ndarray
    v6_len: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.start)
        if n == 0:
            raise ValueError("an address plan needs at least one range")
        if any(len(getattr(self, f)) != n for f in ("end", "asn", "country", "kind", "description")):
            raise ValueError("address plan columns must all have the same length")
        if np.any(self.end < self.start) or np.any(self.start[1:] <= self.end[:-1]):
            raise ValueError("address plan ranges must be sorted, non-empty and non-overlapping")
        _check_v6(self.v6_start, self.v6_len, n)

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

    @property
    def v6_size(self) -> np.ndarray:
        """Number of /64s of each row's IPv6 prefix (``int64``)."""
        return np.left_shift(1, 64 - self.v6_len.astype(np.int64))

    @property
    def v6_end(self) -> np.ndarray:
        """Last /64 (first 64 bits) of each row's IPv6 prefix (``int64``)."""
        return self.v6_start + self.v6_size - 1

    @cached_property
    def _v6_order(self) -> np.ndarray:
        return np.argsort(self.v6_start, kind="stable")

    def lookup_v6(self, hi: np.ndarray) -> np.ndarray:
        """Index of the range whose IPv6 prefix holds each address (given by its first 64 bits), or -1."""
        hi = np.asarray(hi).astype(np.int64)  # addresses outside 2000::/3 (negative here) match nothing
        order = self._v6_order
        pos = np.searchsorted(self.v6_start[order], hi, side="right") - 1
        idx = order[np.maximum(pos, 0)]
        return np.where((pos >= 0) & (hi <= self.v6_end[idx]), idx, -1)

    def v6_prefix_text(self) -> pa.StringArray:
        """Each row's IPv6 prefix as text, e.g. ``2a00:1c40::/32``."""
        text = ipv6_to_str(self.v6_start, np.zeros(len(self), np.uint64))
        return pc.binary_join_element_wise(text, pc.cast(pa.array(self.v6_len, pa.int64()), pa.string()), "/")

    def to_table(self) -> pa.Table:
        """The plan as an Arrow table (``range_start``/``range_end`` dotted, as in ip2asn; ``ipv6_prefix`` CIDR)."""
        return pa.table(
            {
                "range_start": ipv4_to_str(self.start),
                "range_end": ipv4_to_str(self.end),
                "as_number": pa.array(self.asn, pa.int64()),
                "country_code": pa.array(self.country.tolist(), pa.string()),
                "as_description": pa.array(self.description.tolist(), pa.string()),
                "kind": pa.array(self.kind.tolist(), pa.string()),
                "ipv6_prefix": self.v6_prefix_text(),
            }
        )

    # ip2asn TSV ---------------------------------------------------------------------------------

    def to_ip2asn_tsv(self, path: str | Path, dotted: bool = True) -> Path:
        """Write ``range_start range_end AS_number country_code AS_description`` lines (tab-separated)."""
        if dotted:
            starts, ends = ipv4_to_str(self.start).to_pylist(), ipv4_to_str(self.end).to_pylist()
        else:
            starts, ends = self.start.tolist(), self.end.tolist()
        return _write_tsv(path, starts, ends, self.asn, self.country, self.description)

    def to_ip2asn_v6_tsv(self, path: str | Path) -> Path:
        """Write the IPv6 prefixes as iptoasn.com's ``ip2asn-v6`` lines (first and last address, in IPv6 order)."""
        order = self._v6_order
        zeros = np.zeros(len(self), np.uint64)
        starts = ipv6_to_str(self.v6_start[order], zeros).to_pylist()
        ends = ipv6_to_str(self.v6_end[order], ~zeros).to_pylist()
        return _write_tsv(path, starts, ends, self.asn[order], self.country[order], self.description[order])

    @classmethod
    def from_ip2asn_tsv(cls, path: str | Path, keep_unrouted: bool = False, seed: int = 0) -> AddressPlan:
        """Load an ip2asn-v4 file (plain or ``.gz``; addresses as integers or dotted quads).

        Blank lines and ``#`` comments are skipped, and so are "Not routed" ranges (AS 0) unless
        ``keep_unrouted``. Any other malformed line raises :class:`~ipinsights.core.errors.DataFormatError`
        naming ``file:line``, as do overlapping ranges. The IPv6 prefixes are derived from the rows
        and ``seed`` (:func:`ipv6_allocations`), as for a synthetic plan of that seed.
        """
        rows = read_ip2asn(path, keep_unrouted)
        return cls.with_ipv6(
            seed,
            start=rows.start,
            end=rows.end,
            asn=rows.asn,
            country=rows.country,
            kind=np.array([kind_of_description(d) for d in rows.description], dtype=object),
            description=rows.description,
        )

    @classmethod
    def with_ipv6(
        cls,
        seed: int,
        *,
        start: np.ndarray,
        end: np.ndarray,
        asn: np.ndarray,
        country: np.ndarray,
        kind: np.ndarray,
        description: np.ndarray,
    ) -> AddressPlan:
        """A plan of these IPv4 columns, its IPv6 prefixes derived from them and ``seed`` (:func:`ipv6_allocations`)."""
        v6_start, v6_len = ipv6_allocations(end - start + 1, asn, country, kind, seed)
        return cls(start, end, asn, country, kind, description, v6_start, v6_len)

    # Synthetic plan -----------------------------------------------------------------------------

    @classmethod
    def synthetic(cls, seed: int = 0, networks: int = 3000, shape: str = "blocks") -> AddressPlan:
        """A deterministic plan of about ``networks`` ranges over the countries of :data:`COUNTRY_UTC_OFFSETS`.

        ``shape``: ``blocks`` lays each country out in a few blocks of the address space and gives an ISP
        a few large ranges in them; ``scattered`` gives broadband and mobile ISPs tens of prefixes of
        mixed sizes (a heavy tail: most have a few, some 30-40) placed anywhere in the address space,
        as ASes announce them in the real routing table, so an ISP's prefixes share no short prefix.
        """
        from ipinsights.synth.spec import plan_rng

        scattered = shape == "scattered"
        if shape not in ("scattered", "blocks"):
            raise ValueError(f"shape={shape!r} must be scattered or blocks")
        prefixes = _SCATTERED_PREFIXES if scattered else _PREFIXES
        ranges_per_isp = _SCATTERED_RANGES_PER_ISP if scattered else _RANGES_PER_ISP
        rng = plan_rng(seed)
        codes = [c for c, _, _ in _COUNTRIES]
        shares = np.array([s for _, s, _ in _COUNTRIES])
        shares /= shares.sum()
        # ISPs: (country, kind) with range counts; each country gets some of every kind.
        isps: list[tuple[str, str, int]] = []
        # Scattered counts are skewed towards the low end (u**2): many small ASes, a few large ones.
        per_range = {k: (lo + (hi - lo) / 3 if scattered else (lo + hi) / 2) for k, (lo, hi) in ranges_per_isp.items()}
        for code, share in zip(codes, shares, strict=True):
            for kind, kshare in _KIND_SHARE.items():
                n_isp = max(2 if kind != "hosting" else 1, round(networks * share * kshare / per_range[kind]))
                lo, hi = ranges_per_isp[kind]
                if scattered:
                    counts = lo + np.floor(rng.random(n_isp) ** 2 * (hi - lo + 1)).astype(np.int64)
                else:
                    counts = rng.integers(lo, hi + 1, size=n_isp)
                isps.extend((code, kind, int(k)) for k in counts)
        # Distinct public-looking AS numbers (4-byte ones too when there are more ISPs than 2-byte numbers).
        asns = 1000 + rng.choice(63_000 if len(isps) <= 63_000 else 4 * len(isps), size=len(isps), replace=False)
        names = [_isp_name(rng) for _ in isps]
        # One row per range: (country, kind, asn, description, prefix length).
        ranges: list[_Range] = []
        for (code, kind, k), asn, name in zip(isps, asns.tolist(), names, strict=True):
            lo, hi = prefixes[kind]
            for plen in rng.integers(lo, hi + 1, size=k).tolist():
                ranges.append((code, kind, asn, f"{name.upper()}-AS - {name} {_KIND_WORD[kind]} {code}", plen))
        rows = _lay_out(ranges, codes, rng, scattered)
        return cls.with_ipv6(
            seed,
            start=np.array([r[0] for r in rows], np.int64),
            end=np.array([r[1] for r in rows], np.int64),
            asn=np.array([r[2] for r in rows], np.int64),
            country=np.array([r[3] for r in rows], dtype=object),
            kind=np.array([r[4] for r in rows], dtype=object),
            description=np.array([r[5] for r in rows], dtype=object),
        )

    @cached_property
    def asn_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows sorted by AS number; each row's position in that order, and its AS's first position and count."""
        order = np.argsort(self.asn, kind="stable")
        position = np.empty(len(order), np.int64)
        position[order] = np.arange(len(order))
        sorted_asn = self.asn[order]
        first = np.searchsorted(sorted_asn, self.asn, side="left")
        count = np.searchsorted(sorted_asn, self.asn, side="right") - first
        return order, position, first, count

    def sibling_networks(self, rng: np.random.Generator, networks: np.ndarray) -> np.ndarray:
        """Another range of the same AS as each given one (the range itself where the AS has one), bigger
        ranges likelier (in proportion to their size: where an ISP has more addresses, it puts more customers)."""
        networks = np.asarray(networks, np.int64)
        rows, owner = self.networks_of_as(networks)
        weight = np.where(rows == networks[owner], 0.0, self.size[rows].astype(np.float64))
        cum = np.cumsum(weight)
        n = np.bincount(owner, minlength=len(networks))
        end = np.cumsum(n)
        begin = end - n
        base = np.where(begin > 0, cum[np.maximum(begin - 1, 0)], 0.0)
        total = cum[np.maximum(end - 1, 0)] - base
        u = base + rng.random(len(networks)) * total
        pick = np.minimum(np.searchsorted(cum, u, side="right"), np.maximum(end - 1, 0))
        return np.where(total > 0, rows[np.minimum(pick, len(rows) - 1)], networks)

    def networks_of_as(self, networks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, owner)``: every range of the AS of each given range, and the index of the range asked about."""
        order, _, first, count = self.asn_groups
        networks = np.asarray(networks, np.int64)
        n = count[networks]
        owner = np.repeat(np.arange(len(networks)), n)
        offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        return order[np.repeat(first[networks], n) + offset], owner


def _write_tsv(path: str | Path, starts: list, ends: list, asn, country, description) -> Path:
    rows = zip(starts, ends, asn.tolist(), country.tolist(), description.tolist(), strict=True)
    text = "".join(f"{s}\t{e}\t{a}\t{c}\t{d}\n" for s, e, a, c, d in rows)
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return Path(path)


def _isp_name(rng: np.random.Generator) -> str:
    parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(2, 4)))
    return "".join(_SYLLABLES[i] for i in parts).capitalize()


def _lay_out(
    ranges: list[_Range], codes: list[str], rng: np.random.Generator, scattered: bool = False
) -> list[_PlanRow]:
    """Place ranges CIDR-aligned in address order, random gaps, no reserved space: each country in a few
    blocks, or (``scattered``) every range anywhere.

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
    if scattered:  # drawn after the blocks, so a blocks plan's random stream is unchanged
        sequence = rng.permutation(len(ranges))
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
    out: list[_PlanRow] = []
    for i, start in placed:
        code, kind, asn, description, _ = ranges[i]
        out.append((start, start + (1 << (32 - int(plens[i]))) - 1, asn, code, kind, description))
    return out


def _place(
    sequence: list[int], plens: np.ndarray, gaps: list[int], reserved: list[tuple[int, int]]
) -> list[tuple[int, int]] | None:
    """``(range, start)`` in address order, CIDR-aligned, past reserved blocks; None if it overflows."""
    out: list[tuple[int, int]] = []
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


# ---------------------------------------------------------------------------------------------
# IPv6 allocations.
# ---------------------------------------------------------------------------------------------


def region_of_country(code: str) -> str:
    """The regional registry whose /12 a country's IPv6 networks come from (a stable hash for unknown codes)."""
    rir = _COUNTRY_RIR.get(code)
    return rir if rir is not None else sorted(_RIR_V6_BLOCKS)[zlib.crc32(code.encode()) % len(_RIR_V6_BLOCKS)]


def ipv6_allocations(
    size: np.ndarray, asn: np.ndarray, country: np.ndarray, kind: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """IPv6 prefixes of a plan's rows: ``(v6_start, v6_len)``, first 64 bits (``int64``) and length (``int8``).

    Deterministic for the rows (IPv4 sizes in plan order, AS numbers, countries, kinds) and ``seed``.
    A row's length is its IPv4 prefix length + 16, kept within its kind's range (``_V6_LENGTHS``);
    each AS gets one aligned block holding a prefix per row (all of the AS's longest-prefix size, in
    IPv4 order), placed in the /12 of its first row's country's registry: countries one after the
    other (in a random order), the ASes of a country in a random order with random gaps. A registry
    whose /12 would be more than half full gets longer prefixes (up to /48) instead. A loop over
    ASes (thousands), never over addresses.
    """
    from ipinsights.synth.spec import plan_rng

    rng = plan_rng(seed, stream=1)
    n = len(size)
    v4_len = 32 - np.floor(np.log2(np.maximum(np.asarray(size, np.float64), 1.0))).astype(np.int64)
    bounds = np.array([_V6_LENGTHS.get(k, _V6_LENGTHS["broadband"]) for k in kind.tolist()], np.int64).reshape(n, 2)
    row_len = np.clip(v4_len + 16, bounds[:, 0], bounds[:, 1])
    _, first, group = np.unique(np.asarray(asn), return_index=True, return_inverse=True)
    group = group.reshape(-1)
    counts = np.bincount(group)
    by_group = np.argsort(group, kind="stable")  # rows of each AS, in IPv4 (plan) order
    rank = np.empty(n, np.int64)
    rank[by_group] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    group_len = np.full(len(counts), _V6_MAX_LEN, np.int64)
    np.minimum.at(group_len, group, row_len)
    slot_bits = np.ceil(np.log2(counts)).astype(np.int64)  # a block of 2**slot_bits row prefixes
    group_country = country[first]
    group_region = np.array([region_of_country(str(c)) for c in group_country.tolist()], dtype=object)
    group_start = np.zeros(len(counts), np.int64)
    for region in sorted(_RIR_V6_BLOCKS):
        members = np.flatnonzero(group_region == region)
        if len(members):
            group_len[members], group_start[members] = _place_v6(
                rng, region, members, group_len, slot_bits, group_country
            )
    length = group_len[group]
    start = group_start[group] + (rank << (64 - length))
    return start, length.astype(np.int8)


def _place_v6(
    rng: np.random.Generator,
    region: str,
    members: np.ndarray,
    group_len: np.ndarray,
    slot_bits: np.ndarray,
    group_country: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Row prefix lengths and block starts of one registry's ASes (``members``), inside its /12."""
    base = _RIR_V6_BLOCKS[region] << (64 - _RIR_BITS)
    capacity = 1 << (64 - _RIR_BITS)
    lengths = group_len[members].copy()
    while True:
        block_bits = 64 - lengths + slot_bits[members]
        total = int(np.sum(np.left_shift(1, block_bits).astype(np.float64)))
        if 2 * total <= capacity:
            break
        if np.all(lengths >= _V6_MAX_LEN):
            raise ValueError(f"the address plan's {region} networks do not fit in its IPv6 /12")
        lengths = np.minimum(lengths + 1, _V6_MAX_LEN)
    # Countries in a random order, each one stretch; its ASes in a random order with random gaps.
    countries = group_country[members]
    codes = sorted(set(countries.tolist()))
    sequence = np.concatenate(
        [
            members[np.flatnonzero(countries == codes[c])][rng.permutation(int(np.sum(countries == codes[c])))]
            for c in rng.permutation(len(codes)).tolist()
        ]
    )
    position = {int(g): i for i, g in enumerate(members.tolist())}
    sizes = [1 << int(block_bits[position[g]]) for g in sequence.tolist()]
    unit_gaps = rng.exponential(1.0, size=len(sequence))
    mean_gap = (capacity - 2 * total) / len(sequence)
    for scale in (0.8, 0.4, 0.2, 0.1, 0.0):
        starts, cursor = [], base
        for size, gap in zip(sizes, (unit_gaps * mean_gap * scale).tolist(), strict=True):
            start = -(-(cursor + int(gap)) // size) * size  # align up
            starts.append(start)
            cursor = start + size
        if cursor <= base + capacity:
            break
    out = np.zeros(len(members), np.int64)
    out[[position[g] for g in sequence.tolist()]] = starts
    return lengths, out


def _check_v6(v6_start: np.ndarray, v6_len: np.ndarray, n: int) -> None:
    """IPv6 prefixes must be one per row, aligned, global unicast, outside special ranges, non-overlapping."""
    if len(v6_start) != n or len(v6_len) != n:
        raise ValueError("address plan IPv6 columns must have one value per range")
    length = np.asarray(v6_len, np.int64)
    start = np.asarray(v6_start, np.int64)
    if np.any((length < 3) | (length > 64)):
        raise ValueError("IPv6 prefix lengths must be in 3..64")
    size = np.left_shift(1, 64 - length)
    end = start + size - 1
    if np.any(start % size) or np.any(start >> 61 != 1):
        raise ValueError("IPv6 prefixes must be aligned and inside 2000::/3")
    for r_start, r_len in _RESERVED_V6:
        r_end = r_start + (1 << (64 - r_len)) - 1
        if np.any((start <= r_end) & (end >= r_start)):
            raise ValueError(f"IPv6 prefixes must not touch the special range {r_start:#x}/{r_len}")
    order = np.argsort(start, kind="stable")
    if np.any(start[order][1:] <= end[order][:-1]):
        raise ValueError("IPv6 prefixes must not overlap")
