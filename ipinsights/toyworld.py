"""A tiny in-code world of entities with home and work networks, for tests and benchmarks.

Far simpler than the access-log generator (``ipinsights.synth``): no logs, no time, just pairs with
a known structure, so that model tests can check what was learned in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ipinsights.ip import ipv4_to_str

__all__ = ["ToyWorld", "make_toy_world"]


@dataclass(frozen=True)
class ToyWorld:
    """Training pairs and labelled test rows (label 1 = attack) as Arrow tables."""

    train: pa.Table  # entity, ip
    validation: pa.Table  # entity, ip
    test: pa.Table  # entity, ip, label, kind
    home_pool: np.ndarray  # per entity: its home /20 address pool (ip >> 12)
    entity_names: np.ndarray


def _events(rng: np.random.Generator, ent: np.ndarray, home: np.ndarray, work: np.ndarray, travel: float) -> np.ndarray:
    n = ent.size
    u = rng.random(n)
    pool = np.where(u < 0.6, home[ent], work[ent])
    ips = (pool << 12) | rng.integers(1, 4095, n)  # DHCP hands out any host of the /20 pool
    travelling = u > 1 - travel
    ips[travelling] = rng.integers(1 << 24, 224 << 24, int(travelling.sum()))
    return ips


def make_toy_world(
    n_entities: int = 500, events_per_entity: int = 60, n_test: int = 4000, travel: float = 0.02, seed: int = 0
) -> ToyWorld:
    """Entities each with a home and a work address pool (a /20 each, as ISPs allocate DHCP pools).

    Test rows: half normal events (new hosts in the entity's own pools, often in a /24 it never used:
    label 0, kind ``normal``); a quarter attacks from uniformly random addresses (``random_ip``); a
    quarter attacks from another pool of the entity's home /16 (``same_16_other_pool``), which a
    "same /16 seen" lookup cannot tell from normal traffic.
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
    return ToyWorld(
        train=pairs(ent[n_val:], ips[n_val:]),
        validation=pairs(ent[:n_val], ips[:n_val]),
        test=test,
        home_pool=home,
        entity_names=names,
    )
