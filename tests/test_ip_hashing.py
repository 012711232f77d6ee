"""IP parsing and the stable entity hash."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from ipinsights.core.hashing import entity_buckets, hash_strings
from ipinsights.core.ip import InvalidAddressError, ipv4_to_str, parse_ipv4, prefix, require_ipv4

VALID = {"0.0.0.0": 0, "1.2.3.4": 0x01020304, "255.255.255.255": 0xFFFFFFFF, "192.168.100.200": 0xC0A864C8}
INVALID = [
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "a.b.c.d",
    "",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1..2.3",
    "1.2.3.-4",
    "+1.2.3.4",
    "١.2.3.4",
    "1.2.3.4/24",
    "::1",
    "1.2.3.1000",
]


def test_parse_valid_and_invalid():
    values = [*VALID, *INVALID, None]
    p = parse_ipv4(values)
    assert p.valid.tolist() == [True] * len(VALID) + [False] * (len(INVALID) + 1)
    assert p.value[: len(VALID)].tolist() == list(VALID.values())
    assert (p.value[len(VALID) :] == 0).all()
    assert p.n_invalid == len(INVALID) + 1


def test_small_batches_parse_the_same_way():
    """Short lists take a pure-Python path; it must follow exactly the same grammar."""
    values = [*VALID, *INVALID, None]
    big = parse_ipv4(np.array(values * 10, dtype=object))  # Arrow path
    for v in values:
        small = parse_ipv4([v])
        assert small.valid[0] == big.valid[values.index(v)] and small.value[0] == big.value[values.index(v)], v


def test_round_trip_random_addresses():
    x = np.random.default_rng(1).integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    s = ipv4_to_str(x)
    p = parse_ipv4(s)
    assert p.valid.all() and (p.value == x).all()
    # every input flavour gives the same answer
    assert (parse_ipv4(s.to_pylist()).value == x).all()
    assert (parse_ipv4(np.array(s.to_pylist(), dtype=object)).value == x).all()
    assert (parse_ipv4(pa.chunked_array([s.slice(0, 10), s.slice(10)])).value == x).all()


def test_sliced_arrow_array():
    s = pa.array(["9.9.9.9", "1.2.3.4", "5.6.7.8"]).slice(1)
    assert parse_ipv4(s).value.tolist() == [0x01020304, 0x05060708]


def test_require_names_rows():
    with pytest.raises(InvalidAddressError, match=r"2 invalid .*row 1: '300.1.1.1'.*row 2: 'x'"):
        require_ipv4(["1.1.1.1", "300.1.1.1", "x"])


def test_prefix():
    assert prefix(np.array([0xC0A864C8]), 24).tolist() == [0xC0A864]
    assert prefix(np.array([0xC0A864C8]), 0).tolist() == [0]
    with pytest.raises(ValueError):
        prefix(np.array([1]), 33)


def _reference_hash(s: str, seed: int) -> int:
    """The documented algorithm, in plain Python, byte by byte."""
    mask = 2**64 - 1

    def splitmix(x):
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    h = splitmix(seed)
    data = s.encode("utf-8")
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & mask
    return splitmix(h ^ len(data))


WORDS = ["", "a", "user_1", "user_10", "Ünïcødé", "名前", "x" * 300, "alice@example.com"]


def test_hash_matches_documented_algorithm():
    for seed in (0, 1, 2**62 + 12345):
        got = hash_strings(WORDS, seed).tolist()
        assert got == [_reference_hash(w, seed) for w in WORDS]


def test_hash_seed_changes_buckets():
    a = entity_buckets(WORDS, 0, 1000)
    b = entity_buckets(WORDS, 1, 1000)
    assert (a != b).any()
    assert ((a >= 0) & (a < 1000)).all()


def test_hash_identical_across_processes():
    """Python's hash() is salted per process; ours must not be."""
    code = (
        "import sys, json; from ipinsights.core.hashing import hash_strings; "
        f"print(json.dumps([str(x) for x in hash_strings({WORDS!r}, 7)]))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str([str(x) for x in hash_strings(WORDS, 7)]).replace("'", '"')


def test_hash_distribution_is_even():
    b = entity_buckets([f"user_{i}" for i in range(100_000)], 3, 100)
    counts = np.bincount(b, minlength=100)
    assert counts.min() > 850 and counts.max() < 1150  # ~ Poisson(1000): 5 sigma is +-160
