"""Network levels from an ip2asn table: the lookup, the model's AS and country rows, and the refusal without
the table (issue 19). Needs only torch (no Spark)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest
import torch

from ipinsights.core.asn import country_index, load_asn_table, read_ip2asn
from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.errors import DataFormatError
from ipinsights.core.ip import parse_ip
from ipinsights.core.metrics import roc_auc
from ipinsights.core.model import NetworkTableError
from ipinsights.score.scorer import Scorer
from ipinsights.storage.modelfile import load_model, network_table, save_model
from ipinsights.train.data import encode_pairs
from ipinsights.train.negatives import TableNegatives
from ipinsights.train.trainer import build_model, train_model


def _write_table(path: Path, rows: list[tuple[str, str, int, str, str]]) -> str:
    path.write_text("".join(f"{a}\t{b}\t{asn}\t{cc}\t{name}\n" for a, b, asn, cc, name in rows))
    return str(path)


def _random_tables(tmp_path: Path, rng: np.random.Generator) -> tuple[str, list[tuple[int, int, int]]]:
    """A v4 and a v6 file of random disjoint ranges with gaps (and unrouted rows); the routed ranges as
    (first key, last key, AS) for the brute-force scan."""
    v4, v6, truth = [], [], []
    cursor = 1 << 24
    for i in range(300):
        cursor += int(rng.integers(0, 1 << 20))  # a gap (possibly none)
        size = int(rng.integers(1, 1 << 18))
        asn = 0 if i % 17 == 0 else int(rng.integers(1, 400_000))
        v4.append((str(ipaddress.IPv4Address(cursor)), str(ipaddress.IPv4Address(cursor + size - 1)), asn, "DE", "X"))
        if asn:
            truth.append((cursor, cursor + size - 1, asn))
        cursor += size
    hi = 0x2A00 << 48
    for _ in range(100):
        hi += int(rng.integers(0, 1 << 30))
        length = int(rng.integers(1, 1 << 24))  # in /64s
        asn = int(rng.integers(1, 400_000))
        first = ipaddress.IPv6Address(hi << 64)
        last = ipaddress.IPv6Address(((hi + length - 1) << 64) | ((1 << 64) - 1))
        v6.append((str(first), str(last), asn, "BR", "Y"))
        truth.append((hi, hi + length - 1, asn))
        hi += length
    a = _write_table(tmp_path / "v4.tsv", v4)
    b = _write_table(tmp_path / "v6.tsv", v6)
    return f"{a},{b}", truth


def test_the_lookup_agrees_with_a_brute_force_scan(tmp_path):
    rng = np.random.default_rng(5)
    paths, truth = _random_tables(tmp_path, rng)
    table = load_asn_table(paths)
    edges = [k for first, last, _ in truth for k in (first - 1, first, last, last + 1)]
    keys = np.array(
        edges
        + rng.integers(0, 1 << 32, 2000).tolist()
        + rng.integers(0x2A00 << 48, (0x2A00 << 48) + (1 << 40), 2000).tolist(),
        np.int64,
    )
    brute = np.full(len(keys), -1, np.int64)
    for first, last, asn in truth:
        brute[(keys >= first) & (keys <= last)] = asn
    assert np.array_equal(table.lookup(keys), brute)
    assert (brute >= 0).sum() > len(truth)  # edges and random keys inside ranges, and gaps, were all checked
    # The model's torch lookup gives every address its AS's row, and the shared unknown row outside the table.
    model = build_model(
        Hyperparameters(num_entity_vectors=10, vector_dim=8),
        ModelOptions(asn_table=paths, ip_hash_buckets=64, ipv6_hash_buckets=64),
        seed=0,
    )
    rows = model.networks.rows(torch.tensor(keys)).numpy()
    assert np.array_equal(rows[:, 0] == model.networks.unknown_asn, brute < 0)
    by_as = {}
    for a, r in zip(brute.tolist(), rows[:, 0].tolist(), strict=True):
        assert by_as.setdefault(a, r) == r  # one row per AS
    # IPv6 text keys as parse_ip makes them: the same lookup.
    text = [str(ipaddress.IPv6Address((int(k) << 64) | 5)) for k in keys[-5:]]
    assert np.array_equal(table.lookup(parse_ip(text).value), brute[-5:])


def test_the_reader_names_bad_lines_and_reads_countries(tmp_path):
    bad = _write_table(
        tmp_path / "bad.tsv", [("1.0.0.0", "1.0.0.255", 5, "US", "A"), ("2001:db8::", "1.2.3.4", 6, "US", "B")]
    )
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: .*different families"):
        read_ip2asn(bad)
    assert country_index(["US", "us", "None", "Unknown", ""]).tolist() == [20 * 26 + 18] * 2 + [-1, -1, -1]


def _isp_world(seed: int = 0) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Three ISPs of one country; ISP A holds two /16s far apart in the address space. 20 users per ISP log
    in from 3 addresses each of their ISP's first /16 (A's users never from its second one)."""
    rng = np.random.default_rng(seed)
    first = {"A": 11 << 24, "B": 50 << 24, "C": 90 << 24}
    train_e, train_ip = [], []
    for isp, base in first.items():
        for u in range(20):
            hosts = base + rng.integers(0, 1 << 16, 3)
            for _ in range(40):
                train_e.append(f"{isp}{u}")
                train_ip.append(str(ipaddress.IPv4Address(int(rng.choice(hosts)))))
    data = {"entity": train_e, "ip": train_ip}
    test = {
        "user": np.array([f"A{u}" for u in range(20)] * 10),
        "normal": (11 << 24) + rng.integers(0, 1 << 16, 200),  # A's first /16: other hosts than they used
        "second_prefix": (200 << 24) + (7 << 16) + rng.integers(0, 1 << 16, 200),  # A's second /16
        "other_isp": np.where(rng.random(200) < 0.5, 50 << 24, 90 << 24) + rng.integers(0, 1 << 16, 200),
    }
    return data, test


def test_a_new_prefix_of_the_users_isp_is_normal_with_the_table(tmp_path):
    table = _write_table(
        tmp_path / "isps.tsv",
        [
            ("11.0.0.0", "11.0.255.255", 64500, "XX", "AAA - Alpha Broadband"),
            ("50.0.0.0", "50.0.255.255", 64501, "XX", "BBB - Beta Broadband"),
            ("90.0.0.0", "90.0.255.255", 64502, "XX", "CCC - Gamma Broadband"),
            ("200.7.0.0", "200.7.255.255", 64500, "XX", "AAA - Alpha Broadband"),
        ],
    )
    data, test = _isp_world()
    hp = Hyperparameters(
        num_entity_vectors=200,
        vector_dim=16,
        epochs=6,
        learning_rate=0.02,
        mini_batch_size=64,
        random_negative_sampling_rate=3,
        shuffled_negative_sampling_rate=1,
    )
    aucs = {}
    for name, asn_table in (("table", table), ("prefixes", None)):
        opts = ModelOptions(ip_hash_buckets=4096, ipv6_prefix_lengths=(), asn_table=asn_table, asn_hash_buckets=64)
        enc = encode_pairs(data["entity"], data["ip"], hp.num_entity_vectors, opts.hash_seed)
        model = train_model(hp, opts, TrainOptions(seed=1, num_threads=1, progress_bar="off"), enc).model
        scorer = Scorer.load(save_model(model, tmp_path / name))

        def anomaly(keys: np.ndarray, scorer: Scorer = scorer) -> np.ndarray:
            return scorer.anomaly_score(test["user"], [str(ipaddress.IPv4Address(int(k))) for k in keys])

        normal = anomaly(test["normal"])
        aucs[name] = {
            kind: roc_auc(np.r_[normal, anomaly(test[kind])], np.r_[np.zeros(200), np.ones(200)])
            for kind in ("second_prefix", "other_isp")
        }
    # With the table, A's far-away second /16 is A's network: as normal as A's first one; other ISPs are not.
    assert aucs["table"]["second_prefix"] < 0.65, aucs
    assert aucs["table"]["other_isp"] > 0.95, aucs
    # Prefixes alone cannot know it: the second /16 looks as foreign as another ISP.
    assert aucs["prefixes"]["second_prefix"] > 0.8, aucs


def test_a_model_trained_with_a_table_refuses_to_score_without_it(tmp_path):
    paths, _ = _random_tables(tmp_path, np.random.default_rng(1))
    opts = ModelOptions(asn_table=paths, ip_hash_buckets=64, ipv6_hash_buckets=64, asn_hash_buckets=64)
    model = build_model(Hyperparameters(num_entity_vectors=10, vector_dim=8), opts, seed=0)
    path = save_model(model, tmp_path / "m")
    assert load_model(path).model.network_fingerprint == network_table(paths).fingerprint
    # The table it was trained with is gone: a clear error naming it, not a score from unknown rows.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("v4.tsv", "v6.tsv"):
        (tmp_path / name).rename(moved / name)
    with pytest.raises(NetworkTableError, match=r"trained with the ip2asn table .*v4.tsv.* cannot score without it"):
        Scorer.load(path)
    # Given where it is now, it scores; another table (other ranges, another fingerprint) is refused.
    scorer = Scorer.load(path, asn_table=f"{moved / 'v4.tsv'},{moved / 'v6.tsv'}")
    assert np.isfinite(scorer.anomaly_score(["e"], ["1.2.3.4"])).all()
    with pytest.raises(NetworkTableError, match="is not the one this model was trained with"):
        Scorer.load(path, asn_table=str(moved / "v4.tsv"))
    # Without its table the model cannot even encode an address.
    bare = build_model(Hyperparameters(num_entity_vectors=10, vector_dim=8), ModelOptions(), seed=0)
    assert bare.network_fingerprint is None
    unattached = load_model(path, asn_table=f"{moved / 'v4.tsv'},{moved / 'v6.tsv'}").model
    unattached.networks.fingerprint = None
    with pytest.raises(NetworkTableError, match="cannot encode addresses without it"):
        unattached.ip_vectors(torch.tensor([1 << 24]))


def test_table_negatives_keep_the_family_and_the_country(tmp_path):
    """Announced addresses drawn for a positive: its family and country, uniformly among the country's ranges;
    an address outside the table counts as of unknown country (the whole family where none is unknown)."""
    table = _write_table(
        tmp_path / "t.tsv",
        [
            ("10.0.0.0", "10.0.0.255", 1, "DE", "A"),
            ("20.0.0.0", "20.255.255.255", 2, "DE", "B"),
            ("30.0.0.0", "30.0.0.3", 3, "FR", "C"),
            ("40.0.0.0", "40.0.255.255", 4, "None", "D"),
            ("2a00::", "2a00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 5, "BR", "E"),
            ("2a01::", "2a01:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 6, "US", "F"),
        ],
    )
    opts = ModelOptions(asn_table=table, ip_hash_buckets=64, ipv6_hash_buckets=64, asn_hash_buckets=64)
    model = build_model(Hyperparameters(num_entity_vectors=10, vector_dim=8), opts, seed=0)
    asn = network_table(table)
    like = torch.tensor(parse_ip(["10.0.0.7", "30.0.0.1", "99.1.2.3", "2a00::1", "2c00::1"] * 2000).value)
    drawn = TableNegatives().keys_like(model.network_ranges, like, torch.Generator().manual_seed(0)).numpy()
    rows = asn.find(drawn)
    assert (rows >= 0).all()
    got = asn.asn[rows].reshape(-1, 5)
    assert set(got[:, 0].tolist()) == {1, 2}  # DE: both ranges, by count, not by size
    assert 0.4 < (got[:, 0] == 1).mean() < 0.6
    assert set(got[:, 1].tolist()) == {3}  # FR's only range
    assert set(got[:, 2].tolist()) == {4}  # outside the table: the IPv4 range of unknown country
    assert set(got[:, 3].tolist()) == {5}  # BR, IPv6
    assert set(got[:, 4].tolist()) == {5, 6}  # outside the table, no IPv6 range of unknown country: any
