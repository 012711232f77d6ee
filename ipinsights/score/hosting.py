"""Hosting ranges: the AS names and numbers that make an address a hosting, cloud or VPS range."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable

__all__ = ["HOSTING_WORDS", "hosting_rows", "parse_asn_list", "shipped_hosting_asns"]

#: Words of an AS name that make it a hosting range (lower case, matched anywhere in the name).
HOSTING_WORDS = ("hosting", "cloud", "server", "datacenter", "data center", "vps", "colo")


@functools.lru_cache(maxsize=1)
def shipped_hosting_asns() -> tuple[int, ...]:
    """The hosting AS numbers shipped with the package (``ipinsights/score/hosting_asns.txt``: one number a
    line, ``#`` comments; documented there)."""
    text = files("ipinsights.score").joinpath("hosting_asns.txt").read_text(encoding="utf-8")
    return parse_asn_list(text, "hosting_asns.txt")


def parse_asn_list(text: str, where: str) -> tuple[int, ...]:
    """AS numbers of a list file: one a line (``AS`` prefix optional), ``#`` starts a comment."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip().upper().removeprefix("AS")
        if not item:
            continue
        if not item.isdigit():
            raise ValueError(f"{where}:{lineno}: {line.strip()!r} is not an AS number")
        out.append(int(item))
    return tuple(sorted(set(out)))


def hosting_rows(table: AsnTable, hosting_asns: Sequence[int] = ()) -> np.ndarray:
    """Whether each row of ``table`` is a hosting range: its AS name has one of :data:`HOSTING_WORDS`, or its
    AS number is one of ``hosting_asns``."""
    return _hosting_rows(table, tuple(sorted(hosting_asns)))


@functools.lru_cache(maxsize=4)  # per table object (AsnTable hashes by identity) and list
def _hosting_rows(table: AsnTable, hosting_asns: tuple[int, ...]) -> np.ndarray:
    asn, first = np.unique(table.asn, return_index=True)
    named = np.array([any(w in str(table.description[i]).lower() for w in HOSTING_WORDS) for i in first], bool)
    by_as = named | np.isin(asn, np.asarray(hosting_asns, np.int64))
    return by_as[np.searchsorted(asn, table.asn)]
