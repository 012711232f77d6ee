"""IPv6: parsing to address keys, the model's IPv6 prefix levels, and what training learns from them."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toyworld import make_toy_world

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.ip import (
    InvalidAddressError,
    is_ipv6_key,
    key_prefix,
    key_prefix_text,
    parse_ip,
    parse_ipv6,
    require_ip,
)
from ipinsights.core.model import IPInsightsModel
from ipinsights.score.scorer import Scorer
from ipinsights.train.data import encode_pairs
from ipinsights.train.negatives import random_ips_like
from ipinsights.train.trainer import build_model, train_model

EDGE = [
    "::",
    "::1",
    "1::",
    "2001:db8::1",
    "2001:DB8:0:0:8:800:200C:417A",
    "::ffff:1.2.3.4",
    "::1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5::1.2.3.4",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    ":::1",
    "12345::",
    "g::",
    "",
    ":1::",
    "1::2:",
    "1:2:3:4:5:6:7:8::",
    "::ffff:1.2.3",
    "::ffff:01.2.3.4",
    "[::1]",
    ":",
    "1:",
    "::ffff:1.2.3.4:5",
    "1.2.3.4::",
    "::1.2.3.4.5",
    "1:2:3:4:5:6:7:1.2.3.4",
    " 2001:db8::1",
    "2001:db8::1 ",
]


def _reference(text: str) -> int | None:
    try:
        return int(ipaddress.IPv6Address(text)) if "%" not in text else None  # zone ids are refused
    except ValueError:
        return None


def _check_v6(texts: list[str]) -> None:
    hi, lo, ok = parse_ipv6(texts)
    for i, t in enumerate(texts):
        ref = _reference(t)
        assert ok[i] == (ref is not None), t
        if ref is not None:
            assert (int(hi[i]) << 64) | int(lo[i]) == ref, t


def test_parse_ipv6_edge_cases_match_python():
    _check_v6([*EDGE, "fe80::1%eth0"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=50), st.sampled_from(["short", "full", "upper"]))
def test_parse_ipv6_round_trips_any_address(values, form):
    texts = [
        {"short": str, "full": lambda a: a.exploded, "upper": lambda a: str(a).upper()}[form](ipaddress.IPv6Address(v))
        for v in values
    ]
    _check_v6(texts + EDGE)  # the edge cases keep the Arrow path (more than a handful of rows)


def test_address_keys_tell_families_apart():
    texts = ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8:1:2::5", "::1", "::", "garbage", "ff02::1", "8000::1"]
    big = parse_ip(pa.array(texts * 5))  # the Arrow path, against the small-batch path
    for parsed in (parse_ip(texts), type(big)(big.value[:8], big.valid[:8])):
        assert parsed.valid.tolist() == [True, True, True, False, False, False, True, True]
        assert parsed.value[0] == parsed.value[1] == 0xC000_0201  # IPv4-mapped is the IPv4 address
        assert parsed.value[2] == 0x2001_0DB8_0001_0002  # the top 64 bits: the /64
        assert parsed.is_v6.tolist() == [False, False, True, False, False, False, True, True]
        assert parsed.value[7] < 0  # top bit set: negative int64, still IPv6
    assert is_ipv6_key(np.array([0, 2**32 - 1, 2**32, -5])).tolist() == [False, False, True, True]
    with pytest.raises(InvalidAddressError, match=r"row 1: '::1'"):
        require_ip(["2001:db8::1", "::1"])


def test_key_prefixes_and_their_text():
    keys = parse_ip(["192.0.2.77", "2001:db8:1234:5600::1", "2001:db8:1234:56ff::9", "2001:db8:1234:5700::1"]).value
    net = key_prefix(keys, 24, 56)
    assert net[1] == net[2] != net[3] and net[0] == 0xC00002
    assert len(set(key_prefix(keys, 24, 48).tolist())) == 2  # one /48 for the three IPv6 addresses
    assert key_prefix_text(keys[:2], 24, 48) == ["192.0.2.0/24", "2001:db8:1234::/48"]


def test_ipv6_levels_and_mixed_bags():
    hp = Hyperparameters(num_entity_vectors=10, vector_dim=8)
    m = IPInsightsModel(hp, ModelOptions(ip_hash_buckets=1000, ipv6_hash_buckets=5000))
    n4 = 256 + 4 * 1000  # /8 exact, /12 and longer hashed into 1000 rows each
    keys = torch.tensor(parse_ip(["192.0.2.1", "2001:db8:1:200::1", "2001:db8:1:2ff::1", "2400::1"]).value)
    rows, w = m.ip_bags(keys)
    assert rows.shape == (4, 6) and w is not None
    assert w[0].tolist() == [1, 1, 1, 1, 1, 0] and (w[1:] == 1).all()  # IPv4's 5 levels padded at weight 0
    assert rows[1, 0] == n4 + 0x200 and rows[3, 0] == n4 + 0x240  # /12 exact block after the IPv4 blocks
    assert (rows[1, :5] == rows[2, :5]).all() and rows[1, 5] != rows[2, 5]  # same /56, other /64
    assert (rows[1:, 1:] >= n4 + 4096).all() and (rows[1:, 1:] < n4 + 4096 + 5 * 5000).all()
    only6, w6 = m.ip_bags(keys[1:])
    assert w6 is None and torch.equal(only6, rows[1:])
    v = m.ip_vectors(keys)
    assert torch.allclose(v[1], v[2])  # untrained deeper levels are zero: defer to the /12
    m4 = IPInsightsModel(hp, ModelOptions(ip_hash_buckets=1000, ipv6_prefix_lengths=()))
    with pytest.raises(ValueError, match="no IPv6 levels"):
        m4.ip_bags(keys)


def test_random_negatives_keep_the_family():
    g = torch.Generator().manual_seed(0)
    like = torch.tensor(parse_ip(["192.0.2.1", "2001:db8::1"] * 500).value)
    r = random_ips_like(like, g)
    six = (r < 0) | (r >= 2**32)
    assert torch.equal(six, (like < 0) | (like >= 2**32))
    assert ((r[six] >= 2**61) & (r[six] < 2**62)).all()  # global unicast 2000::/3
    assert len(set(r.tolist())) == r.numel()


def test_mixed_batch_gradients_match_unpadded_ones():
    """Padding rows at weight 0 changes nothing: a mixed batch's gradients equal per-family ones."""
    hp = Hyperparameters(num_entity_vectors=10, vector_dim=8)
    m = build_model(hp, ModelOptions(ip_hash_buckets=1000, ipv6_hash_buckets=500), seed=0)
    with torch.no_grad():
        m.ip_table.normal_()
    keys = torch.tensor(parse_ip(["192.0.2.1", "2001:db8:1:200::1", "198.51.100.3", "2a00::7"]).value)
    ent = torch.tensor([1, 2, 3, 4])
    m(ent, keys).sum().backward()
    mixed = m.ip_table.grad.clone()
    m.ip_table.grad = None
    for sel in ([0, 2], [1, 3]):
        m(ent[sel], keys[sel]).sum().backward()
    assert torch.allclose(mixed, m.ip_table.grad, atol=1e-6)


@pytest.fixture(scope="module")
def world6():
    return make_toy_world(n_entities=300, events_per_entity=60, n_test=2000, seed=1, ipv6_share=0.4)


@pytest.fixture(scope="module")
def trained6(world6):
    hp = Hyperparameters(num_entity_vectors=1000, vector_dim=32, epochs=4, mini_batch_size=256)
    mo = ModelOptions()
    train = encode_pairs(world6.train["entity"], world6.train["ip"], hp.num_entity_vectors, mo.hash_seed)
    return train_model(hp, mo, TrainOptions(seed=3, num_threads=1, progress_bar="off"), train)


def test_new_address_in_own_56_scores_as_normal(world6, trained6):
    """A new address in an entity's own /56 beats that entity's random IPv6 scores in >= 90% of cases."""
    model = trained6.model
    rng = np.random.default_rng(7)
    users = np.flatnonzero(world6.home_v6 >= 0)
    wins = total = 0
    for u in rng.choice(users, 60, replace=False):
        own = (int(world6.home_v6[u]) << 8) | int(rng.integers(0, 256))  # any /64 of the own /56
        rand = rng.integers(2**61, 2**62, 20)
        ent = torch.full((21,), int(encode_pairs([world6.entity_names[u]], ["192.0.2.1"], 1000, 0).entity_rows[0]))
        with torch.no_grad():
            s = model(ent, torch.tensor([own, *rand.tolist()]))
        wins += int((s[0] > s[1:]).sum())
        total += 20
    assert wins / total >= 0.90, wins / total


def test_ipv6_attack_kinds_separate(world6, trained6, tmp_path):
    from ipinsights.score.evaluate import evaluate_scores
    from ipinsights.storage.modelfile import save_model

    scorer = Scorer.load(save_model(trained6.model, tmp_path / "m"))
    t = world6.test
    ev = evaluate_scores(
        scorer.anomaly_score(t["entity"], t["ip"]), t["label"].to_numpy(), t["kind"].to_numpy(zero_copy_only=False)
    )
    assert ev.auc["model"]["random_ipv6"] > 0.95 and ev.auc["model"]["random_ip"] > 0.95, ev.auc_table()
