"""A tiny in-code world of entities with home and work networks, for tests and benchmarks.

Far simpler than the access-log generator (``ipinsights.synth``): no logs, no time, just pairs with
a known structure, so that model tests can check what was learned in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ipinsights.core.ip import ipv4_to_str

__all__ = ["ToyWorld", "make_toy_world"]


@dataclass(frozen=True)
class ToyWorld:
    """Training pairs and labelled test rows (label 1 = attack) as Arrow tables."""

    train: pa.Table  # entity, ip
    validation: pa.Table  # entity, ip
    test: pa.Table  # entity, ip, label, kind
    home_pool: np.ndarray  # per entity: its home /20 address pool (ip >> 12)
    entity_names: np.ndarray
    home_v6: np.ndarray | None = None  # per entity: its home IPv6 /56 (top 56 bits), -1 = no IPv6


def ipv6_text(hi: np.ndarray, lo: np.ndarray) -> pa.StringArray:
    """RFC 5952 text of addresses given as uint64 halves (a small-data helper: a Python loop)."""
    import ipaddress

    return pa.array(
        [str(ipaddress.IPv6Address((int(h) << 64) | int(low))) for h, low in zip(hi, lo, strict=True)], pa.string()
    )


def _v6_addresses(rng: np.random.Generator, p56: np.ndarray, subnets: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Addresses in the given /56s: one of the first ``subnets`` /64s, a random interface id (churns)."""
    hi = (p56.astype(np.uint64) << np.uint64(8)) | rng.integers(0, subnets, p56.size).astype(np.uint64)
    return hi, rng.integers(0, 2**63, p56.size, dtype=np.int64).astype(np.uint64) * np.uint64(2)


def _events(rng: np.random.Generator, ent: np.ndarray, home: np.ndarray, work: np.ndarray, travel: float) -> np.ndarray:
    n = ent.size
    u = rng.random(n)
    pool = np.where(u < 0.6, home[ent], work[ent])
    ips = (pool << 12) | rng.integers(1, 4095, n)  # DHCP hands out any host of the /20 pool
    travelling = u > 1 - travel
    ips[travelling] = rng.integers(1 << 24, 224 << 24, int(travelling.sum()))
    return ips


def make_toy_world(
    n_entities: int = 500,
    events_per_entity: int = 60,
    n_test: int = 4000,
    travel: float = 0.02,
    seed: int = 0,
    ipv6_share: float = 0.0,
) -> ToyWorld:
    """Entities each with a home and a work address pool (a /20 each, as ISPs allocate DHCP pools).

    Test rows: half normal events (new hosts in the entity's own pools, often in a /24 it never used:
    label 0, kind ``normal``); a quarter attacks from uniformly random addresses (``random_ip``); a
    quarter attacks from another pool of the entity's home /16 (``same_16_other_pool``), which a
    "same /16 seen" lookup cannot tell from normal traffic.

    ``ipv6_share`` of the entities also have a home IPv6 /56 (in 2a00::/12) and log in over IPv6 half
    of the time (a /64 of four, fresh interface ids); the test rows then add, for such entities,
    ``own_prefix_ipv6`` (label 0: a new address in the own /56, possibly a new /64) and
    ``random_ipv6`` (label 1: a random global unicast address), n_test // 4 of each.
    """
    rng = np.random.default_rng(seed)
    names = np.array([f"user_{i}" for i in range(n_entities)], dtype=object)
    region = rng.integers(1 << 8, 223 << 8, (2, n_entities))  # a /16 per network (skip 0/8 and multicast)
    sub = rng.integers(0, 16, (3, n_entities))
    home = (region[0] << 4) | sub[0]
    work = (region[1] << 4) | sub[1]
    other = (region[0] << 4) | ((sub[0] + 1 + sub[2] % 15) % 16)  # same /16, a different /20
    n = n_entities * events_per_entity
    ent = rng.permutation(np.repeat(np.arange(n_entities), events_per_entity))
    ips = _events(rng, ent, home, work, travel)
    n_val = max(1, n // 10)

    def pairs(e: np.ndarray, i: np.ndarray) -> pa.Table:
        return pa.table({"entity": pa.array(names[e], pa.string()), "ip": ipv4_to_str(i)})

    half, quarter = n_test // 2, n_test // 4
    n_rand = n_test - half - quarter
    te = rng.integers(0, n_entities, n_test)
    t_ips = np.concatenate(
        [
            _events(rng, te[:half], home, work, 0.0),
            rng.integers(1 << 24, 224 << 24, n_rand),
            (other[te[half + n_rand :]] << 12) | rng.integers(1, 4095, quarter),
        ]
    )
    kinds = np.array(["normal"] * half + ["random_ip"] * n_rand + ["same_16_other_pool"] * quarter, dtype=object)
    test = pairs(te, t_ips)
    test = test.append_column("label", pa.array((kinds != "normal").astype(np.int8)))
    test = test.append_column("kind", pa.array(kinds, pa.string()))
    if ipv6_share <= 0:
        return ToyWorld(
            train=pairs(ent[n_val:], ips[n_val:]),
            validation=pairs(ent[:n_val], ips[:n_val]),
            test=test,
            home_pool=home,
            entity_names=names,
        )
    has6 = rng.random(n_entities) < ipv6_share
    p56 = np.where(has6, (0x2A0 << 44) | rng.integers(0, 2**44, n_entities), -1)
    ip_text = ipv4_to_str(ips).to_numpy(zero_copy_only=False).astype(object)
    over6 = has6[ent] & (rng.random(n) < 0.5)
    hi, lo = _v6_addresses(rng, p56[ent[over6]])
    ip_text[over6] = ipv6_text(hi, lo).to_numpy(zero_copy_only=False)
    v6_users = np.flatnonzero(has6)
    te6 = rng.choice(v6_users, 2 * quarter)
    own_hi, own_lo = _v6_addresses(rng, p56[te6[:quarter]], subnets=256)
    rand_hi = rng.integers(2**61, 2**62, quarter, dtype=np.int64).astype(np.uint64)
    rand_lo = rng.integers(0, 2**63, quarter, dtype=np.int64).astype(np.uint64)
    v6_test = pa.table(
        {
            "entity": pa.array(names[te6], pa.string()),
            "ip": ipv6_text(np.concatenate([own_hi, rand_hi]), np.concatenate([own_lo, rand_lo])),
            "label": pa.array(np.repeat(np.array([0, 1], np.int8), quarter)),
            "kind": pa.array(["own_prefix_ipv6"] * quarter + ["random_ipv6"] * quarter, pa.string()),
        }
    )

    def text_pairs(e: np.ndarray, i: np.ndarray) -> pa.Table:
        return pa.table({"entity": pa.array(names[e], pa.string()), "ip": pa.array(i, pa.string())})

    return ToyWorld(
        train=text_pairs(ent[n_val:], ip_text[n_val:]),
        validation=text_pairs(ent[:n_val], ip_text[:n_val]),
        test=pa.concat_tables([test, v6_test]),
        home_pool=home,
        entity_names=names,
        home_v6=p56,
    )
