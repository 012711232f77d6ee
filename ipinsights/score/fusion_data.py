"""The fusion's training rows, without labels: real held-out logins, and attacks drawn for each of them.

For every sampled login of the calibration days (scored against profiles of the training days, so it is
held out from both the model and the profiles), :func:`draw_attacks` draws one address per kind of
attack, paired with the same entity at the same time:

* ``routed``: a uniform routed address of the same family (with an ip2asn table: a range drawn by its
  size (IPv6: uniformly), an address in it; without one: a uniform public IPv4 address, or an IPv6 one
  in 2000::/3);
* ``other_entity``: another entity's address from the same sample, of the same family;
* ``same_country``: an address of another AS of the login's own country (needs the table);
* ``hosting``: an address of a hosting range of the same family (needs the table and hosting ranges);
* ``uniform``: a uniform address of the same family, wherever it falls (IPv4: every octet uniform, as the
  model's own random negatives; IPv6: in 2000::/3). Unlike ``routed`` it lands in unrouted and reserved
  space and outside the table, so the fusion learns what such an address means: without it those
  features never vary in the fit, get no weight, and a login from unrouted space (the demo's ``random_ip``
  attacks) fuses to no more than a routed one.

Each drawn attack also gets a client (:func:`draw_clients`): half of them keep the login's own user agent
(an attacker who copies the victim's browser), the other half take another login's of the sample (one who
does not: a client as common as it is in the traffic, so it matches the victim's by chance as often).

The draws are made per chunk of rows (:func:`fixed_chunks`): a group of entities (a hash bucket) in a fixed
order, cut every :data:`CHUNK_ROWS` rows, so that the same sample gives the same rows whatever Spark's
partitions and Arrow batches are (the session's settings, adaptive execution, the cluster's size).

A kind that cannot be drawn for a row (no table, no range of the family, the other entity is the same
one) leaves that row out of the kind. :func:`fusion_rows` computes the features of the logins (label 0)
and of the attacks (label 1); rows that come with a ``label`` column (labelled rows, investigators'
verdicts) keep their label and draw nothing. The weights are set on the driver
(:func:`ipinsights.score.spark_fusion.row_weights`): equal total weight per attack kind, attacks and
logins balanced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.core.config import IPV4_KEYS
from ipinsights.score.clients import EventDevices, event_devices
from ipinsights.score.features import event_days, event_features, reserved
from ipinsights.score.hosting import hosting_rows

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable
    from ipinsights.score.scorer import Scorer

__all__ = ["ATTACKS", "NORMAL", "draw_attacks", "draw_clients", "fusion_rows", "rows_schema"]

#: The kinds of drawn attacks, and the kind of the real logins.
ATTACKS = ("routed", "other_entity", "same_country", "hosting", "uniform")
NORMAL = "normal"
_V6_UNICAST = 1 << 61  # 2000::/3: its address keys are [2**61, 2**62)


def _is_v6(keys: np.ndarray) -> np.ndarray:
    return (keys < 0) | (keys >= IPV4_KEYS)


def _in_rows(table: AsnTable, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform address key inside each of the table's ``rows``."""
    lo, hi = table.start[rows], table.end[rows]
    span = (hi - lo).astype(np.float64) + 1.0
    return lo + np.minimum((rng.random(rows.size) * span).astype(np.int64), hi - lo)


def _pick(candidates: np.ndarray, weights: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the table rows ``candidates`` (by ``weights``, else uniformly); empty candidates: -1."""
    if not candidates.size:
        return np.full(n, -1, np.int64)
    p = None if weights is None else weights / weights.sum()
    return rng.choice(candidates, n, p=p)


def _public_v4(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform public IPv4 addresses (special-purpose ones drawn again)."""
    out = rng.integers(0, IPV4_KEYS, n)
    for _ in range(8):  # ~14% of the space is reserved: a few rounds leave none
        bad = reserved(out)
        if not bad.any():
            break
        out[bad] = rng.integers(0, IPV4_KEYS, int(bad.sum()))
    return out


def _unicast_v6(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform IPv6 address keys in 2000::/3 (global unicast)."""
    return rng.integers(0, _V6_UNICAST, n) + _V6_UNICAST


def _routed(keys: np.ndarray, table: AsnTable | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    v6 = _is_v6(keys)
    n = keys.size
    if table is None:
        return np.where(v6, _unicast_v6(n, rng), _public_v4(n, rng)), np.ones(n, bool)
    six = _is_v6(table.start)
    size = (table.end - table.start).astype(np.float64) + 1.0
    rows4 = _pick(np.flatnonzero(~six), size[~six], n, rng)
    rows6 = _pick(np.flatnonzero(six), None, n, rng)
    rows = np.where(v6, rows6, rows4)
    return _in_rows(table, np.maximum(rows, 0), rng), rows >= 0


def _uniform(keys: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniform address of each key's family, reserved and unrouted space included."""
    n = keys.size
    v6 = _unicast_v6(n, rng)
    return np.where(_is_v6(keys), v6, rng.integers(0, IPV4_KEYS, n)), np.ones(n, bool)


def _other_entity(keys: np.ndarray, hashes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each row's address replaced by another row's of the same family (a permutation within each family)."""
    out, source = keys.copy(), np.arange(keys.size)
    for family in (False, True):
        idx = np.flatnonzero(_is_v6(keys) == family)
        perm = rng.permutation(idx)
        out[idx], source[idx] = keys[perm], perm
    return out, hashes[source] != hashes


def _same_country(keys: np.ndarray, table: AsnTable, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An address of a range of the same country and family, of another AS (a few tries; else not drawn)."""
    row = table.find(keys)
    country = np.where(row >= 0, table.country[np.maximum(row, 0)], -1)
    asn = np.where(row >= 0, table.asn[np.maximum(row, 0)], -1)
    group_of_row = table.country * 2 + _is_v6(table.start)
    order = np.argsort(group_of_row, kind="stable")
    groups = group_of_row[order]
    want = country * 2 + _is_v6(keys)
    lo, hi = np.searchsorted(groups, want, "left"), np.searchsorted(groups, want, "right")
    chosen = np.full(keys.size, -1, np.int64)
    for _ in range(5):
        todo = (chosen < 0) & (country >= 0) & (hi > lo)
        if not todo.any():
            break
        pos = lo + (rng.random(keys.size) * np.maximum(hi - lo, 1)).astype(np.int64)
        cand = order[np.minimum(pos, order.size - 1)]
        ok = todo & (table.asn[cand] != asn)
        chosen[ok] = cand[ok]
    return _in_rows(table, np.maximum(chosen, 0), rng), chosen >= 0


def _hosting(
    keys: np.ndarray, table: AsnTable, hosting_asns: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    host = hosting_rows(table, hosting_asns)
    six = _is_v6(table.start)
    rows4 = _pick(np.flatnonzero(host & ~six), None, keys.size, rng)
    rows6 = _pick(np.flatnonzero(host & six), None, keys.size, rng)
    rows = np.where(_is_v6(keys), rows6, rows4)
    return _in_rows(table, np.maximum(rows, 0), rng), rows >= 0


def draw_attacks(
    keys: np.ndarray,
    hashes: np.ndarray,
    table: AsnTable | None,
    rng: np.random.Generator,
    hosting_asns: Sequence[int] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per kind of :data:`ATTACKS` (those the table allows), an address key per login (address ``keys`` of
    entities ``hashes``) and whether it was drawn (see the module docstring)."""
    keys = np.asarray(keys, np.int64)
    out = {"routed": _routed(keys, table, rng), "other_entity": _other_entity(keys, hashes, rng)}
    if table is not None:
        out["same_country"] = _same_country(keys, table, rng)
        out["hosting"] = _hosting(keys, table, hosting_asns, rng)
    out["uniform"] = _uniform(keys, rng)
    return out


def draw_clients(clients: EventDevices, rng: np.random.Generator) -> EventDevices:
    """An attacker's client for each login of ``clients``: its own (copied) for half of them, another login's
    for the rest (see the module docstring)."""
    n = clients.device.size
    if not n:
        return clients
    other = rng.integers(0, n, n)
    own = rng.random(n) < 0.5
    return EventDevices(
        np.where(own, clients.device, clients.device[other]), np.where(own, clients.agent, clients.agent[other])
    )


#: Rows per chunk the attacks are drawn in (another login of the chunk, a seed from its first entity).
CHUNK_ROWS = 1000


def fixed_chunks(column: str, batches: Iterator[pa.RecordBatch], size: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """``batches`` (sorted by ``column``, a group key) cut again: each group's rows in runs of ``size`` (its
    last run shorter), without ``column``. The chunks depend only on the rows and their order, not on how
    they came cut; at most ``size`` rows are held beyond the batch at hand."""
    pending: list[pa.RecordBatch] = []
    held, group = 0, None

    def cut(rows: list[pa.RecordBatch]) -> pa.RecordBatch:
        table = pa.Table.from_batches(rows).combine_chunks()
        return table.drop_columns([column]).to_batches()[0]

    for batch in batches:
        keys = batch.column(column).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.empty(0, np.int64)
        for start, end in zip(starts, np.r_[starts[1:], keys.size], strict=True):
            if held and keys[start] != group:  # a new group: the last one's rest is a chunk of its own
                yield cut(pending)
                pending, held = [], 0
            group, offset = keys[start], int(start)
            while offset < end:
                take = min(int(end) - offset, size - held)
                pending.append(batch.slice(offset, take))
                held, offset = held + take, offset + take
                if held == size:
                    yield cut(pending)
                    pending, held = [], 0
    if held:
        yield cut(pending)


def rows_schema(names: Sequence[str]) -> pa.Schema:
    """The training rows: kind, label and each feature (float64)."""
    return pa.schema([("kind", pa.string()), ("label", pa.float64()), *((n, pa.float64()) for n in names)])


def fusion_rows(
    names: Sequence[str],
    hosting_asns: Sequence[int],
    seed: int,
    labelled: str | None,
    scorer: Scorer,
    batch: pa.RecordBatch,
) -> pa.RecordBatch:
    """The training rows (:func:`rows_schema`) of a batch of ``entity``, ``ip``, ``ts`` (and their entities'
    profile rows): its logins (label 0) and an attack of each kind for each (label 1); or, with
    ``labelled`` (a kind: ``labelled``, ``verdict``), its rows with the labels of its ``label`` column.
    Invalid addresses are left out. The draws are seeded by ``seed`` and the batch's first entity (a batch
    is one of :func:`fixed_chunks`): a retried task, or another session, draws the same."""
    from ipinsights.score.batches import split_joined

    batch, joined = split_joined(scorer, batch)
    if joined is None:
        raise ValueError("the fusion's training rows need the entity profile rows joined on")
    profiles, rows = joined
    parsed = scorer.parse(batch.column("ip"))
    ok = parsed.valid
    hashes = scorer.entity_hashes(batch.column("entity"))[ok]
    keys, rows = parsed.value[ok], rows[ok]
    ts = batch.column("ts") if "ts" in batch.schema.names else None
    days = event_days(ts, batch.num_rows)[ok]
    clients = event_devices(batch).take(ok)
    # kind, label, keys, which logins, their clients
    sets: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, EventDevices]] = []
    if labelled is not None:
        label = np.asarray(batch.column("label").to_numpy(zero_copy_only=False), np.float64)[ok]
        sets.append((labelled, label, keys, np.arange(keys.size), clients))
    else:
        sets.append((NORMAL, np.zeros(keys.size), keys, np.arange(keys.size), clients))
        rng = np.random.default_rng([seed, int(hashes[0]) & 0xFFFFFFFF if hashes.size else 0, keys.size])
        for kind, (drawn, fine) in draw_attacks(keys, hashes, scorer.asn_table, rng, hosting_asns).items():
            pick = np.flatnonzero(fine)
            sets.append((kind, np.ones(pick.size), drawn[pick], pick, draw_clients(clients.take(pick), rng)))
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    kinds, labels = [], []
    for kind, label, k, pick, client in sets:
        h = hashes[pick]
        dp = scorer.dot_product_of_hashes(h, k)
        feats = event_features(
            names,
            k,
            rows[pick],
            profiles,
            dp,
            scorer.asn_table,
            days[pick],
            hosting_asns,
            client,
        )
        for n in names:
            out[n].append(feats[n])
        kinds.append(np.full(k.size, kind, object))
        labels.append(label)
    schema = rows_schema(names)
    arrays = [pa.array(np.concatenate(kinds), pa.string()), pa.array(np.concatenate(labels))]
    arrays += [pa.array(np.concatenate(out[n])) for n in names]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
