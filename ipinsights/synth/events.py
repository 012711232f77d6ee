"""Login events and labelled attack traffic, one shard at a time, fully vectorized.

An event is a successful login ``(entity, ip, ts)``. Where it comes from depends on the user and the
moment: the home network most of the time, the work network in local working hours, the mobile
carrier for a share of mobile users' events, the trip network on trip days, and now and then a
one-off network elsewhere. Inside a network, addresses are sticky (same address), then churn inside
the /24, rarely move to a nearby /24; mobile addresses spread over the carrier's regional pool.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.ip import ipv4_to_str
from ipinsights.synth.plan import KINDS, AddressPlan
from ipinsights.synth.spec import (
    ATTACK_LABELS,
    STREAM_ATTACKS,
    STREAM_EVENTS,
    SynthSpec,
    shard_bounds,
    shard_rng,
)
from ipinsights.synth.world import (
    MOBILE_POOL_BITS,
    World,
    entity_index,
    random_address_in,
    sample_networks,
)

__all__ = [
    "EVENT_SCHEMA",
    "LABELLED_SCHEMA",
    "attacks_as_events",
    "day_strings",
    "generate_attacks",
    "generate_events",
    "shard_events",
    "shard_labelled",
    "with_kind",
]

EVENT_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("ip", pa.string()),
        ("ip_int", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("utc_offset_minutes", pa.int16()),
        ("dt", pa.string()),
    ]
)
LABELLED_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("ip", pa.string()),
        ("ip_int", pa.int64()),
        ("label", pa.int8()),
        ("kind", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("utc_offset_minutes", pa.int16()),
    ]
)
DAY_S = 86_400
# Relative login activity by local hour: quiet nights, a morning rise, busy evenings.
_DIURNAL = np.array([2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 10, 11, 10, 10, 10, 10, 10, 11, 12, 12, 10, 7, 4], float)
_HOME, _WORK, _MOBILE, _TRIP, _ROAM = range(5)
_POPULAR_TOP = 20  # "popular ISP" = one of the networks most users of the shard log in from
_MAX_REDRAWS = 30


def _columns(users: pa.Table, *names: str) -> list[np.ndarray]:
    return [users[n].to_numpy() for n in names]


def shard_events(plan: AddressPlan, spec: SynthSpec, users: pa.Table, shard: int) -> pa.Table:
    """Login events of one shard's users (:data:`EVENT_SCHEMA`), sorted by time."""
    rng = shard_rng(spec.seed, shard, STREAM_EVENTS)
    n_events, offset_min = _columns(users, "n_events", "utc_offset_minutes")
    uid = np.repeat(np.arange(users.num_rows), n_events)  # row of the user, per event
    total = len(uid)
    # When: a local day and a local hour from the diurnal profile; the UTC instant is wrapped into the
    # period (whole days, so the local time of day is kept) to stay inside [start, start + days).
    local_day = rng.integers(0, spec.days, size=total)
    cdf = np.cumsum(_DIURNAL) / _DIURNAL.sum()
    hour = np.searchsorted(cdf, rng.random(total), side="right")
    rel_s = local_day * DAY_S + hour * 3600 + rng.integers(0, 3600, size=total) - offset_min[uid].astype(np.int64) * 60
    rel_s %= spec.days * DAY_S

    category = _pick_categories(rng, spec, users, uid, local_day, hour)
    ip = _addresses(plan, rng, spec, users, uid, category)

    order = np.argsort(rel_s, kind="stable")
    uid, ip, rel_s = uid[order], ip[order], rel_s[order]
    return events_table(spec, users["entity"].take(pa.array(uid)), ip, rel_s, offset_min[uid])


def events_table(
    spec: SynthSpec, entity: pa.Array, ip: np.ndarray, rel_s: np.ndarray, offset_min: np.ndarray
) -> pa.Table:
    """Assemble :data:`EVENT_SCHEMA` rows from seconds since the start of the period."""
    ts_us = (spec.start_epoch_s + rel_s.astype(np.int64)) * 1_000_000
    return pa.table(
        {
            "entity": entity,
            "ip": ipv4_to_str(ip),
            "ip_int": pa.array(ip, pa.int64()),
            "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
            "utc_offset_minutes": pa.array(offset_min, pa.int16()),
            "dt": day_strings(spec).take(pa.array(rel_s // DAY_S)),
        },
        schema=EVENT_SCHEMA,
    )


def day_strings(spec: SynthSpec) -> pa.StringArray:
    """``YYYY-MM-DD`` of each UTC day of the period (a lookup table: a few entries, not one per event)."""
    start = _dt.date.fromisoformat(spec.start_date)
    return pa.array([(start + _dt.timedelta(days=d)).isoformat() for d in range(spec.days)], pa.string())


def _pick_categories(
    rng: np.random.Generator, spec: SynthSpec, users: pa.Table, uid: np.ndarray, local_day: np.ndarray, hour: np.ndarray
) -> np.ndarray:
    mobile_net, trip_net, trip_start, trip_days = _columns(
        users, "mobile_net", "trip_net", "trip_start_day", "trip_days"
    )
    total = len(uid)
    weekday = (_dt.date.fromisoformat(spec.start_date).weekday() + local_day) % 7 < 5
    work_hours = weekday & (hour >= 9) & (hour < 18)
    category = np.where(rng.random(total) < np.where(work_hours, 0.65, 0.08), _WORK, _HOME)
    is_mobile = (mobile_net[uid] >= 0) & (rng.random(total) < spec.mobile_share)
    category[is_mobile] = _MOBILE
    start = trip_start[uid].astype(np.int64)
    on_trip = (trip_net[uid] >= 0) & (local_day >= start) & (local_day < start + trip_days[uid])
    category[on_trip & ~(is_mobile & (rng.random(total) < 0.5))] = _TRIP  # phones keep working abroad
    category[rng.random(total) < spec.roam_rate] = _ROAM
    return category


def _addresses(
    plan: AddressPlan, rng: np.random.Generator, spec: SynthSpec, users: pa.Table, uid: np.ndarray, category: np.ndarray
) -> np.ndarray:
    """An int64 address per event, by category (see the module docstring)."""
    ip = np.zeros(len(uid), np.int64)
    for cat, net_col, ip_col, sticky in (
        (_HOME, "home_net", "home_ip", 0.7),
        (_WORK, "work_net", "work_ip", 0.85),
        (_TRIP, "trip_net", "trip_ip", 0.6),
    ):
        rows = np.flatnonzero(category == cat)
        nets, base = _columns(users, net_col, ip_col)
        ip[rows] = _jitter(plan, rng, nets[uid[rows]], base[uid[rows]], sticky)
    rows = np.flatnonzero(category == _MOBILE)
    mobile_net, pool = _columns(users, "mobile_net", "mobile_pool")
    net = mobile_net[uid[rows]]
    ip[rows] = np.minimum(pool[uid[rows]] + rng.integers(0, 1 << MOBILE_POOL_BITS, size=len(rows)), plan.end[net])
    rows = np.flatnonzero(category == _ROAM)
    if len(rows):
        (country,) = _columns(users, "country")
        countries = country[uid[rows]].astype(object)
        abroad = rng.random(len(rows)) < spec.abroad_share
        all_codes = np.array(sorted(set(plan.country.tolist())), dtype=object)
        countries[abroad] = all_codes[rng.integers(0, len(all_codes), size=int(abroad.sum()))]
        net = sample_networks(plan, rng, countries, KINDS)
        net = np.where(net < 0, users["home_net"].to_numpy()[uid[rows]], net)
        ip[rows] = random_address_in(plan, rng, net)
    return ip


def _jitter(
    plan: AddressPlan, rng: np.random.Generator, nets: np.ndarray, base: np.ndarray, sticky: float
) -> np.ndarray:
    """Mostly the user's own address, else a new host in its /24, rarely a nearby /24; kept inside the network."""
    r = rng.random(len(base))
    host = rng.integers(1, 255, size=len(base))
    same24 = (base & ~0xFF) | host
    nearby = same24 + rng.integers(-8, 9, size=len(base)) * 256
    ip = np.where(r < sticky, base, np.where(r < sticky + (1 - sticky) * 0.85, same24, nearby))
    return np.clip(ip, plan.start[nets], plan.end[nets])


def generate_events(world: World, spec: SynthSpec) -> pa.Table:
    """All login events of ``world`` (:data:`EVENT_SCHEMA`): shard after shard, each sorted by time."""
    tables = [shard_events(world.plan, spec, world.shard_users(spec, s), s) for s in range(spec.n_files)]
    return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()


# ---------------------------------------------------------------------------------------------
# Labelled evaluation rows.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _History:
    """What the users of a shard did, as the attack generator needs it (computed once per shard).

    The ``used_*`` arrays are sorted, distinct int64 keys of (user, network), (user, AS) and
    (user, address) pairs over all days; membership is a binary search (:func:`_contains`).
    """

    user: np.ndarray  # row of the user in the shard's users table, per event
    ip: np.ndarray
    rel_s: np.ndarray  # seconds since the start of the period
    train: np.ndarray  # rows of training-day events
    used_net: np.ndarray
    used_asn: np.ndarray
    used_ip: np.ndarray
    popular: np.ndarray  # the networks most training users log in from (broadband/mobile only)

    @classmethod
    def of(cls, plan: AddressPlan, spec: SynthSpec, users: pa.Table, events: pa.Table) -> _History:
        first_user = int(users["user_index"][0].as_py()) if users.num_rows else 0
        user = entity_index(events["entity"]) - first_user
        ip = events["ip_int"].to_numpy()
        rel_s = pc.cast(events["ts"], pa.int64()).to_numpy() // 1_000_000 - spec.start_epoch_s
        train = np.flatnonzero(rel_s < spec.train_days * DAY_S)
        net = plan.lookup(ip)
        n_nets = len(plan) + 1
        asn = np.where(net >= 0, plan.asn[np.maximum(net, 0)], -1)
        user_net = _sorted_unique(user[train] * n_nets + net[train] + 1)
        counts = np.bincount(user_net % n_nets, minlength=n_nets)[1:]  # distinct training users per network
        counts[~np.isin(plan.kind, ("broadband", "mobile"))] = 0
        popular = np.argsort(-counts, kind="stable")[: min(_POPULAR_TOP, int((counts > 0).sum()))]
        return cls(
            user=user,
            ip=ip,
            rel_s=rel_s,
            train=train,
            used_net=_sorted_unique(user * n_nets + net + 1),
            used_asn=_sorted_unique(user * (1 << 33) + asn + 1),
            used_ip=_sorted_unique(user * (1 << 33) + ip),
            popular=popular,
        )


def shard_labelled(
    plan: AddressPlan,
    spec: SynthSpec,
    users: pa.Table,
    events: pa.Table,
    shard: int,
    splits: tuple[str, ...] = ("validation", "test"),
) -> dict[str, pa.Table]:
    """Attack rows plus as many normal held-out rows of one shard, per split (:data:`LABELLED_SCHEMA`, by time).

    Attack kinds are dealt round-robin over the global attack number, so every kind appears as
    soon as there are as many attacks as kinds. An attack whose constraints cannot be met (e.g. a
    country with a single ISP) is dropped.
    """
    history = _History.of(plan, spec, users, events)
    out = {}
    for split in splits:
        rng = shard_rng(spec.seed, shard, STREAM_ATTACKS[split])
        # Attacks spread over shards in proportion to their users (so an empty shard gets none).
        bounds = spec.attack_count(split) * shard_bounds(spec.users, spec.n_files) // spec.users
        first, n = int(bounds[shard]), int(bounds[shard + 1] - bounds[shard])
        if n == 0 or len(history.train) == 0:
            attacks = LABELLED_SCHEMA.empty_table()
        else:
            attacks = _attacks(plan, spec, rng, users, history, first, n, split)
        lo, hi = spec.split_days(split)
        held_out = np.flatnonzero((history.rel_s >= lo * DAY_S) & (history.rel_s < hi * DAY_S))
        pick = np.sort(rng.choice(held_out, size=min(n, len(held_out)), replace=False))
        normals = _labelled(
            spec,
            users,
            history.user[pick],
            history.ip[pick],
            history.rel_s[pick],
            np.zeros(len(pick), np.int8),
            np.full(len(pick), "normal", dtype=object),
        )
        both = pa.concat_tables([attacks, normals])
        out[split] = both.take(
            pc.sort_indices(both, [("ts", "ascending"), ("kind", "ascending"), ("entity", "ascending")])
        )
    return out


def _attacks(
    plan: AddressPlan,
    spec: SynthSpec,
    rng: np.random.Generator,
    users: pa.Table,
    history: _History,
    first: int,
    n: int,
    split: str,
) -> pa.Table:
    kinds = np.array(spec.attack_kinds, dtype=object)[(first + np.arange(n)) % len(spec.attack_kinds)]
    trained_users = _sorted_unique(history.user[history.train])
    user = trained_users[rng.integers(0, len(trained_users), size=n)]
    lo, hi = spec.split_days(split)
    rel = rng.integers(lo * DAY_S, hi * DAY_S, size=n)
    ip = np.full(n, -1, np.int64)
    n_nets = len(plan) + 1

    rows = np.flatnonzero(kinds == "random_ip")  # SageMaker's "random" negatives: each octet uniform
    ip[rows] = rng.integers(0, 1 << 32, size=len(rows))

    rows = np.flatnonzero(kinds == "popular_isp")
    popular = history.popular
    if len(rows) and len(popular):
        net = _redraw(
            len(rows),
            draw=lambda r: popular[rng.integers(0, len(popular), size=len(r))],
            key=lambda r, v: user[rows[r]] * n_nets + v + 1,
            used=history.used_net,
        )
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = np.flatnonzero(kinds == "same_country_other_isp")
    if len(rows):
        countries = users["country"].to_numpy(zero_copy_only=False)[user[rows]]
        net = _redraw(
            len(rows),
            draw=lambda r: sample_networks(plan, rng, countries[r], KINDS),
            key=lambda r, v: user[rows[r]] * (1 << 33) + plan.asn[np.maximum(v, 0)] + 1,
            used=history.used_asn,
        )
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = np.flatnonzero(kinds == "own_network")
    if len(rows):
        # A training address of the user, then a new host in its /24, kept inside its network.
        base = history.ip[_random_event_of(rng, history.user[history.train], user[rows], history.train)]
        base_net = plan.lookup(base)
        ip[rows] = _redraw(
            len(rows),
            draw=lambda r: _new_host(plan, rng, base[r], base_net[r]),
            key=lambda r, v: user[rows[r]] * (1 << 33) + v,
            used=history.used_ip,
        )

    keep = ip >= 0
    labels = np.array([ATTACK_LABELS[k] for k in spec.attack_kinds], np.int8)
    label = labels[(first + np.arange(n)) % len(spec.attack_kinds)]
    return _labelled(spec, users, user[keep], ip[keep], rel[keep], label[keep], kinds[keep])


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # Sort-based: faster than np.unique's hashing for the few hundred thousand int64 keys of a shard.
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _redraw(
    n: int,
    draw: Callable[[np.ndarray], np.ndarray],
    key: Callable[[np.ndarray, np.ndarray], np.ndarray],
    used: np.ndarray,
) -> np.ndarray:
    """``draw(rows)`` values, redrawing those that are -1 or whose ``key(rows, values)`` is in ``used``.

    Loops over redraw rounds (a few), not rows; values still taken after the last round become -1.
    """
    rows = np.arange(n)
    out = draw(rows)
    for _ in range(_MAX_REDRAWS):
        bad = rows[(out < 0) | _contains(used, key(rows, out))]
        if len(bad) == 0:
            return out
        out[bad] = draw(bad)
    out[(out < 0) | _contains(used, key(rows, out))] = -1
    return out


def _contains(sorted_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_values, keys), len(sorted_values) - 1)
    return sorted_values[pos] == keys


def _random_event_of(rng: np.random.Generator, ev_user: np.ndarray, wanted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each wanted user, a random row (of ``rows``) among that user's events."""
    order = np.argsort(ev_user, kind="stable")
    sorted_users = ev_user[order]
    lo = np.searchsorted(sorted_users, wanted, side="left")
    hi = np.searchsorted(sorted_users, wanted, side="right")
    pick = lo + (rng.random(len(wanted)) * (hi - lo)).astype(np.int64)
    return rows[order[pick]]


def _new_host(plan: AddressPlan, rng: np.random.Generator, base: np.ndarray, net: np.ndarray) -> np.ndarray:
    ip = (base & ~0xFF) | rng.integers(1, 255, size=len(base))
    return np.where(net >= 0, np.clip(ip, plan.start[np.maximum(net, 0)], plan.end[np.maximum(net, 0)]), ip)


def _labelled(
    spec: SynthSpec, users: pa.Table, uid: np.ndarray, ip: np.ndarray, rel: np.ndarray, label: np.ndarray, kind
) -> pa.Table:
    offsets = users["utc_offset_minutes"].to_numpy()[uid]
    return pa.table(
        {
            "entity": users["entity"].take(pa.array(uid, pa.int64())),
            "ip": ipv4_to_str(ip),
            "ip_int": pa.array(ip, pa.int64()),
            "label": pa.array(label, pa.int8()),
            "kind": pa.array(np.asarray(kind, dtype=object).tolist(), pa.string()),
            "ts": pa.array((spec.start_epoch_s + rel.astype(np.int64)) * 1_000_000, pa.timestamp("us", tz="UTC")),
            "utc_offset_minutes": pa.array(offsets, pa.int16()),
        },
        schema=LABELLED_SCHEMA,
    )


def generate_attacks(
    world: World, events: pa.Table, spec: SynthSpec, split: str = "test", include_normal: bool = False
) -> pa.Table:
    """Labelled attack rows for the ``test`` (or ``validation``) days (:data:`LABELLED_SCHEMA`).

    ``events`` are the login events of ``world`` (all shards, as :func:`generate_events` returns
    them). With ``include_normal``, as many normal held-out rows (label 0, kind ``normal``) from the
    same days are added, which is what the labelled CSV files hold.
    """
    bounds = shard_bounds(spec.users, spec.n_files)
    ev_shard = np.searchsorted(bounds, entity_index(events["entity"]), side="right") - 1
    tables = []
    for s in range(spec.n_files):
        shard_ev = events.filter(pa.array(ev_shard == s))
        users = world.shard_users(spec, s)
        tables.append(shard_labelled(world.plan, spec, users, shard_ev, s, (split,))[split])
    out = pa.concat_tables(tables) if tables else LABELLED_SCHEMA.empty_table()
    return out if include_normal else out.filter(pc.not_equal(out["kind"], "normal"))


def with_kind(events: pa.Table, kind: str = "normal") -> pa.Table:
    """``events`` plus a ``kind`` column (the schema of ``truth/events.parquet``)."""
    return events.append_column("kind", pa.array([kind] * events.num_rows, pa.string()))


def attacks_as_events(spec: SynthSpec, attacks: pa.Table) -> pa.Table:
    """Attack rows as login events (:data:`EVENT_SCHEMA` plus ``kind``), for writing them into the logs."""
    rel_s = pc.cast(attacks["ts"], pa.int64()).to_numpy() // 1_000_000 - spec.start_epoch_s
    table = pa.table(
        {
            **{name: attacks[name] for name in ("entity", "ip", "ip_int", "ts", "utc_offset_minutes")},
            "dt": day_strings(spec).take(pa.array(rel_s // DAY_S)),
            "kind": attacks["kind"],
        }
    )
    return table.cast(EVENT_SCHEMA.append(pa.field("kind", pa.string())))
