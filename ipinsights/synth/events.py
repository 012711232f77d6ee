"""Login events and labelled attack traffic, one shard at a time, fully vectorized.

An event is a successful login ``(entity, ip, ts)``. Where it comes from depends on the user and the
moment: the home network most of the time, the work network in local working hours, the mobile
carrier for a share of mobile users' events, the trip network on trip days, and now and then a
one-off network elsewhere. Inside a network, addresses are sticky (same address), then churn inside
the /24, rarely move to a nearby /24; mobile addresses spread over the carrier's regional pool.

IPv6: where the user has IPv6 on the path (home, work or mobile; see :mod:`ipinsights.synth.world`),
a share ``ipv6_share`` of those logins use it instead. At home the address is in one of the first /64
subnets of the delegated /56 (mostly subnet 0) with a privacy-extension interface id that changes
every day (:func:`~ipinsights.synth.ipv6.temporary_iid`); at work in the user's /64 of the site,
with the same daily ids; on the carrier a random /64 of the user's regional /40 per session, with a
random id. Tables hold RFC 5952 text in ``ip``, a null ``ip_int`` and ``ip_version`` 6 for those rows,
as the ingest job writes them.

Attack kinds (:data:`~ipinsights.synth.spec.ATTACK_KINDS`): the IPv4 ones pair a user with an IPv4
address against the user's IPv4 history (``own_network`` a new host in a /24 the user used);
``random_ipv6`` is an address in a random network's IPv6 prefix that the user never used,
``other_isp_ipv6`` a home-like address (a /56's subnet) of one of the shard's most popular ISPs that is
not one of the user's, and ``own_prefix_ipv6`` (label 0) a new address in the user's own /56: a fresh
interface id, maybe in another of its /64s. On the network level: ``hosting_provider`` is an address of
a hosting AS (a VPN exit, a rented server) the user never used; the controls ``own_isp_other_prefix`` and
``own_isp_other_prefix_ipv6`` (label 0) are a new address (IPv6: a home /56) in a range of the user's home
ISP that the user never used, as renumbering or a new pool would give them. IPv6 kinds only go to users
with IPv6 at home who logged in over IPv6 on a training day; a shard without any drops its IPv6 attacks
(``run_shard`` counts them as ``<split>_dropped_<kind>``).

With ``devices: realistic`` (:mod:`ipinsights.synth.devices`) every login carries the user agent of one of
its user's devices, and so does every attack of the address-only kinds (the victim's own device, as the
injected attacks always did); the attackers by sophistication (:data:`~ipinsights.synth.spec.DEVICE_ATTACK_KINDS`)
come from: ``naive`` an ISP (home or mobile) of a country drawn by population, ``vpn`` a hosting network of
the victim's country (any country's where it has none), ``targeted`` another ISP of the victim's country,
``very_targeted`` another consumer ISP of it; always one whose AS the victim never used. The spraying
source sends one outdated browser's string. Its random draws come from streams of their own, so that the
rest of a realistic data set is the legacy one's.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.synth.devices import (
    current_release,
    device_agents,
    event_slots,
    market_devices,
    render_agents,
    targeted_devices,
)
from ipinsights.synth.ipv6 import address_columns, ipv6_to_str, random_iid, temporary_iid
from ipinsights.synth.plan import KINDS, AddressPlan
from ipinsights.synth.spec import (
    ATTACK_LABELS,
    IPV6_ATTACK_KINDS,
    SPRAYING,
    STREAM_ATTACK_DEVICES,
    STREAM_ATTACKS,
    STREAM_EVENT_DEVICES,
    STREAM_EVENTS,
    STREAM_SPRAYING,
    SynthSpec,
    plan_rng,
    shard_bounds,
    shard_rng,
)
from ipinsights.synth.world import (
    HOME_V6_LEN,
    MOBILE_POOL_BITS,
    MOBILE_POOL_V6_LEN,
    World,
    entity_index,
    home_countries,
    home_subnets,
    mobile_prefix,
    random_address_in,
    random_prefix_in,
    sample_networks,
    user_devices,
)

__all__ = [
    "EVENT_SCHEMA",
    "LABELLED_SCHEMA",
    "SPRAYING_AGENT_LAG",
    "event_schema",
    "labelled_schema",
    "attack_slots",
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
        ("ip_version", pa.int8()),
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
        ("ip_version", pa.int8()),
        ("label", pa.int8()),
        ("kind", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("utc_offset_minutes", pa.int16()),
    ]
)
DAY_S = 86_400
#: Releases behind the current one of the spraying source's (browser-like) user agent: older than any user's.
SPRAYING_AGENT_LAG = 8


def event_schema(spec: SynthSpec) -> pa.Schema:
    """:data:`EVENT_SCHEMA`, plus ``user_agent`` with ``devices: realistic``."""
    return EVENT_SCHEMA if spec.devices == "legacy" else EVENT_SCHEMA.append(pa.field("user_agent", pa.string()))


def labelled_schema(spec: SynthSpec) -> pa.Schema:
    """:data:`LABELLED_SCHEMA`, plus ``user_agent`` with ``devices: realistic``."""
    return LABELLED_SCHEMA if spec.devices == "legacy" else LABELLED_SCHEMA.append(pa.field("user_agent", pa.string()))


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
    ip = _addresses(plan, rng, spec, users, uid, category, local_day)
    is6, hi, lo = _ipv6_addresses(plan, rng, spec, users, uid, category, local_day)

    order = np.argsort(rel_s, kind="stable")
    agent = None
    if spec.devices == "realistic":  # each login's device, from a stream of its own (the rest is as in legacy)
        devices = user_devices(users)
        slot = event_slots(
            shard_rng(spec.seed, shard, STREAM_EVENT_DEVICES), devices["template"], uid, category == _MOBILE
        )
        agent = device_agents(devices, uid[order], slot[order], local_day[order])
    uid, rel_s = uid[order], rel_s[order]
    address = address_columns(ip[order], hi[order], lo[order], is6[order])
    return events_table(spec, users["entity"].take(pa.array(uid)), address, rel_s, offset_min[uid], agent)


def events_table(
    spec: SynthSpec,
    entity: pa.Array,
    address: tuple[pa.Array, ...],
    rel_s: np.ndarray,
    offset_min: np.ndarray,
    agent: pa.Array | None = None,
) -> pa.Table:
    """Assemble :func:`event_schema` rows from ``(ip, ip_int, ip_version)`` columns (see
    :func:`~ipinsights.synth.ipv6.address_columns`), seconds since the start of the period and (with
    ``devices: realistic``) the user agents."""
    ts_us = (spec.start_epoch_s + rel_s.astype(np.int64)) * 1_000_000
    text, ip_int, version = address
    columns = {
        "entity": entity,
        "ip": text,
        "ip_int": ip_int,
        "ip_version": version,
        "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
        "utc_offset_minutes": pa.array(offset_min, pa.int16()),
        "dt": day_strings(spec).take(pa.array(rel_s // DAY_S)),
    }
    if agent is not None:
        columns["user_agent"] = agent
    return pa.table(columns, schema=event_schema(spec))


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
    plan: AddressPlan,
    rng: np.random.Generator,
    spec: SynthSpec,
    users: pa.Table,
    uid: np.ndarray,
    category: np.ndarray,
    local_day: np.ndarray,
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
        nets, base = nets[uid[rows]], base[uid[rows]]
        if cat == _HOME:  # a renumbered home: its new address from the renumbering day on
            day, new_net, new_ip = _columns(users, "renumber_day", "renumber_net", "renumber_ip")
            moved = (day[uid[rows]] >= 0) & (local_day[rows] >= day[uid[rows]])
            nets, base = np.where(moved, new_net[uid[rows]], nets), np.where(moved, new_ip[uid[rows]], base)
        ip[rows] = _jitter(plan, rng, nets, base, sticky)
    rows = np.flatnonzero(category == _MOBILE)
    mobile_net, pool, user_index = _columns(users, "mobile_net", "mobile_pool", "user_index")
    net = mobile_net[uid[rows]]
    if spec.mobile_prefixes > 1:
        # The carrier hands out addresses from pools in several of its prefixes: each session one of the
        # user's mobile_prefixes ranges of the carrier (fixed per user by a hash), anywhere in it.
        choice = rng.integers(0, spec.mobile_prefixes, size=len(rows))
        net = mobile_prefix(plan, spec, net, user_index[uid[rows]], choice)
        ip[rows] = random_address_in(plan, rng, net)
    else:
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


def _ipv6_addresses(
    plan: AddressPlan,
    rng: np.random.Generator,
    spec: SynthSpec,
    users: pa.Table,
    uid: np.ndarray,
    category: np.ndarray,
    local_day: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which events go over IPv6 and their addresses: ``(is6, hi, lo)`` (see the module docstring)."""
    home6, work6, pool6, mobile_net, user_index = _columns(
        users, "home_v6", "work_v6", "mobile_v6_pool", "mobile_net", "user_index"
    )
    total = len(uid)
    prefix = np.full(total, -1, np.int64)  # the user's IPv6 prefix on the event's path, -1: none
    for cat, column in ((_HOME, home6), (_WORK, work6), (_MOBILE, pool6)):
        rows = np.flatnonzero(category == cat)
        prefix[rows] = column[uid[rows]]
    is6 = (prefix >= 0) & (rng.random(total) < spec.ipv6_share)
    hi = np.zeros(total, np.int64)
    lo = np.zeros(total, np.uint64)
    rows = np.flatnonzero(is6 & (category == _HOME))
    subnet = home_subnets(rng, len(rows))
    hi[rows] = prefix[rows] + subnet
    lo[rows] = temporary_iid(spec.seed, user_index[uid[rows]], local_day[rows], subnet, _HOME)
    rows = np.flatnonzero(is6 & (category == _WORK))
    hi[rows] = prefix[rows]
    lo[rows] = temporary_iid(spec.seed, user_index[uid[rows]], local_day[rows], 0, _WORK)
    rows = np.flatnonzero(is6 & (category == _MOBILE))
    pool_len = np.maximum(plan.v6_len[mobile_net[uid[rows]]].astype(np.int64), MOBILE_POOL_V6_LEN)
    hi[rows] = prefix[rows] + rng.integers(0, np.left_shift(1, 64 - pool_len))  # a /64 per session
    lo[rows] = random_iid(rng, len(rows))
    return is6, hi, lo


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
    return pa.concat_tables(tables) if tables else event_schema(spec).empty_table()


# ---------------------------------------------------------------------------------------------
# Labelled evaluation rows.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _History:
    """What the users of a shard did, as the attack generator needs it (computed once per shard).

    The ``used_*`` arrays are sorted, distinct int64 keys of (user, network), (user, AS) and
    (user, IPv4 address) pairs over all days; membership is a binary search (:func:`_contains`).
    Networks and ASes count in either family: IPv4 ones from the events, IPv6 ones from the world
    (the networks of the user's IPv6 prefixes, which are the only IPv6 networks a user logs in from).
    ``used_v6`` holds ``"entity address"`` of every IPv6 login, for exact "never used" checks.
    """

    user: np.ndarray  # row of the user in the shard's users table, per event
    ip: np.ndarray  # IPv4 address (0 on IPv6 rows)
    address: tuple[pa.Array, ...]  # the events' (ip, ip_int, ip_version) columns
    rel_s: np.ndarray  # seconds since the start of the period
    train4: np.ndarray  # rows of training-day IPv4 events
    users4: np.ndarray  # users (rows) with an IPv4 login on a training day
    users6: np.ndarray  # users with IPv6 at home and an IPv6 login on a training day
    used_net: np.ndarray
    used_asn: np.ndarray
    used_ip: np.ndarray
    used_v6: pa.Array
    popular: np.ndarray  # the networks most training users log in from (broadband/mobile only)
    agent: pa.Array | None  # the events' user agents (devices: realistic)

    @classmethod
    def of(cls, plan: AddressPlan, spec: SynthSpec, users: pa.Table, events: pa.Table) -> _History:
        first_user = int(users["user_index"][0].as_py()) if users.num_rows else 0
        user = entity_index(events["entity"]) - first_user
        is6 = events["ip_version"].to_numpy() == 6
        ip = pc.fill_null(events["ip_int"], 0).to_numpy()
        rel_s = pc.cast(events["ts"], pa.int64()).to_numpy() // 1_000_000 - spec.start_epoch_s
        train = rel_s < spec.train_days * DAY_S
        train4 = np.flatnonzero(train & ~is6)
        v4 = np.flatnonzero(~is6)
        net = np.full(len(ip), -1, np.int64)
        net[v4] = plan.lookup(ip[v4])
        n_nets = len(plan) + 1
        user_net = _sorted_unique(user[train4] * n_nets + net[train4] + 1)
        counts = np.bincount(user_net % n_nets, minlength=n_nets)[1:]  # distinct training users per network
        counts[~np.isin(plan.kind, ("broadband", "mobile"))] = 0
        popular = np.argsort(-counts, kind="stable")[: min(_POPULAR_TOP, int((counts > 0).sum()))]
        # (user, network) pairs: those of the IPv4 logins, then the networks of the users' IPv6 prefixes.
        pair_user, pair_net = [user[v4]], [net[v4]]
        for prefix, net_column in (("home_v6", "home_net"), ("work_v6", "work_net"), ("mobile_v6_pool", "mobile_net")):
            rows = np.flatnonzero(users[prefix].to_numpy() >= 0)
            pair_user.append(rows)
            pair_net.append(users[net_column].to_numpy()[rows].astype(np.int64))
        any_user, any_net = np.concatenate(pair_user), np.concatenate(pair_net)
        asn = np.where(any_net >= 0, plan.asn[np.maximum(any_net, 0)], -1)
        users6 = _present(user[np.flatnonzero(train & is6)], users.num_rows)
        home6 = users["home_v6"].to_numpy()
        v6 = pa.array(np.flatnonzero(is6))
        return cls(
            user=user,
            ip=ip,
            address=(events["ip"], events["ip_int"], events["ip_version"]),
            rel_s=rel_s,
            train4=train4,
            users4=_present(user[train4], users.num_rows),
            users6=users6[home6[users6] >= 0],
            used_net=_sorted_unique(any_user * n_nets + any_net + 1),
            used_asn=_sorted_unique(any_user * (1 << 33) + asn + 1),
            used_ip=_sorted_unique(user[v4] * (1 << 33) + ip[v4]),
            used_v6=_user_address(events["entity"].take(v6), events["ip"].take(v6)),
            popular=popular,
            agent=events["user_agent"] if "user_agent" in events.column_names else None,
        )


def attack_slots(spec: SynthSpec, split: str, shard: int) -> np.ndarray:
    """The attacks of one shard, as indices into ``spec.attack_kinds`` (round-robin over the global number).

    Attacks spread over shards in proportion to their users (so an empty shard gets none), and every
    kind appears as soon as there are as many attacks as kinds.
    """
    bounds = spec.attack_count(split) * shard_bounds(spec.users, spec.n_files) // spec.users
    first, n = int(bounds[shard]), int(bounds[shard + 1] - bounds[shard])
    return (first + np.arange(n)) % len(spec.attack_kinds)


def shard_labelled(
    plan: AddressPlan,
    spec: SynthSpec,
    users: pa.Table,
    events: pa.Table,
    shard: int,
    splits: tuple[str, ...] = ("validation", "test"),
) -> dict[str, pa.Table]:
    """Attack rows plus as many normal held-out rows of one shard, per split (:data:`LABELLED_SCHEMA`, by time).

    Attack kinds are dealt by :func:`attack_slots`. An attack whose constraints cannot be met (e.g. a
    country with a single ISP, or an IPv6 kind in a shard without IPv6 users) is dropped.
    """
    history = _History.of(plan, spec, users, events)
    out = {}
    for split in splits:
        rng = shard_rng(spec.seed, shard, STREAM_ATTACKS[split])
        slots = attack_slots(spec, split, shard)
        if len(slots) == 0 or len(history.users4) + len(history.users6) == 0:
            attacks = labelled_schema(spec).empty_table()
        else:
            agent_rng = shard_rng(spec.seed, shard, STREAM_ATTACK_DEVICES[split])
            attacks = _attacks(plan, spec, rng, users, history, slots, split, agent_rng)
        if split == "test" and spec.spraying_accounts:
            attacks = pa.concat_tables([attacks, _spraying(plan, spec, users, history, shard)])
        lo, hi = spec.split_days(split)
        held_out = np.flatnonzero((history.rel_s >= lo * DAY_S) & (history.rel_s < hi * DAY_S))
        pick = np.sort(rng.choice(held_out, size=min(len(slots), len(held_out)), replace=False))
        normals = _labelled(
            spec,
            users,
            history.user[pick],
            tuple(column.take(pa.array(pick)) for column in history.address),
            history.rel_s[pick],
            np.zeros(len(pick), np.int8),
            np.full(len(pick), "normal", dtype=object),
            history.agent.take(pa.array(pick)) if history.agent is not None else None,
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
    slots: np.ndarray,
    split: str,
    agent_rng: np.random.Generator,
) -> pa.Table:
    n = len(slots)
    kinds = np.array(spec.attack_kinds, dtype=object)[slots]
    is6 = np.isin(kinds, IPV6_ATTACK_KINDS)
    # IPv4 kinds go to users with IPv4 training logins, IPv6 kinds to users with IPv6 ones (-1: none).
    user = np.full(n, -1, np.int64)
    pick = rng.random(n)
    for rows, candidates in ((~is6, history.users4), (is6, history.users6)):
        if len(candidates):
            user[rows] = candidates[(pick[rows] * len(candidates)).astype(np.int64)]
    lo, hi = spec.split_days(split)
    rel = rng.integers(lo * DAY_S, hi * DAY_S, size=n)
    ip = np.full(n, -1, np.int64)  # IPv4 address, -1: none found
    hi6 = np.full(n, -1, np.int64)  # IPv6 first 64 bits, -1: none found
    lo6 = np.zeros(n, np.uint64)
    n_nets = len(plan) + 1

    def rows_of(kind: str) -> np.ndarray:
        return np.flatnonzero((kinds == kind) & (user >= 0))

    def new_net(rows: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """A network from ``draw`` that the user never used, -1 where none was found."""
        net, ok = _redraw(
            len(rows), draw, lambda r, v: (v < 0) | _contains(history.used_net, user[rows[r]] * n_nets + v + 1)
        )
        return np.where(ok, net, -1)

    def new_isp(rows: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """A network from ``draw`` whose AS the user never used, -1 where none was found."""

        def taken(r: np.ndarray, v: np.ndarray) -> np.ndarray:
            return (v < 0) | _contains(history.used_asn, user[rows[r]] * (1 << 33) + plan.asn[np.maximum(v, 0)] + 1)

        net, ok = _redraw(len(rows), draw, taken)
        return np.where(ok, net, -1)

    popular = history.popular

    def draw_popular(r: np.ndarray) -> np.ndarray:
        return popular[rng.integers(0, len(popular), size=len(r))]

    rows = rows_of("random_ip")  # SageMaker's "random" negatives: each octet uniform
    ip[rows] = rng.integers(0, 1 << 32, size=len(rows))

    rows = rows_of("popular_isp")
    if len(rows) and len(popular):
        # Another popular ISP: on a scattered plan a popular range may be one of the user's own ISP's many
        # ranges, so the AS must be new too (a blocks plan keeps its "network never used" rule, and its data).
        net = (new_isp if spec.plan_shape == "scattered" else new_net)(rows, draw_popular)
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = rows_of("same_country_other_isp")
    if len(rows):
        countries = users["country"].to_numpy(zero_copy_only=False)[user[rows]]
        net = new_isp(rows, lambda r: sample_networks(plan, rng, countries[r], KINDS))
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = rows_of("hosting_provider")  # a VPN exit or a rented server: a hosting AS the user never used
    if len(rows):
        codes = np.array(sorted(set(plan.country[plan.kind == "hosting"].tolist())), dtype=object)
        if len(codes):
            net = new_isp(
                rows, lambda r: sample_networks(plan, rng, codes[rng.integers(0, len(codes), len(r))], ("hosting",))
            )
            ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    home_net = users["home_net"].to_numpy().astype(np.int64)
    rows = rows_of("own_isp_other_prefix")  # label 0: a range of the user's home ISP the user never used
    if len(rows):
        net = new_net(rows, lambda r: plan.sibling_networks(rng, home_net[user[rows[r]]]))
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = rows_of("own_network")
    if len(rows):
        # A training address of the user, then a new host in its /24, kept inside its network.
        base = history.ip[_random_event_of(rng, history.user[history.train4], user[rows], history.train4)]
        base_net = plan.lookup(base)
        new_ip, ok = _redraw(
            len(rows),
            lambda r: _new_host(plan, rng, base[r], base_net[r]),
            lambda r, v: _contains(history.used_ip, user[rows[r]] * (1 << 33) + v),
        )
        ip[rows] = np.where(ok, new_ip, -1)

    rows = rows_of("random_ipv6")  # a random /64 (and interface id) of a network the user never used
    if len(rows):
        net = new_net(rows, lambda r: rng.integers(0, len(plan), size=len(r)))
        hi6[rows] = np.where(net >= 0, random_prefix_in(plan, rng, np.maximum(net, 0), 64), -1)
        lo6[rows] = random_iid(rng, len(rows))

    rows = rows_of("other_isp_ipv6")  # a customer of a popular ISP that is not one of the user's
    if len(rows) and len(popular):
        net = new_isp(rows, draw_popular)
        home = random_prefix_in(plan, rng, np.maximum(net, 0), HOME_V6_LEN) + home_subnets(rng, len(rows))
        hi6[rows] = np.where(net >= 0, home, -1)
        lo6[rows] = random_iid(rng, len(rows))

    rows = rows_of("own_prefix_ipv6")  # a new address of the user's own /56
    if len(rows):
        hi6[rows] = users["home_v6"].to_numpy()[user[rows]] + home_subnets(rng, len(rows))
        entity = users["entity"].take(pa.array(user[rows]))
        iid, ok = _redraw(
            len(rows),
            lambda r: random_iid(rng, len(r)),
            lambda r, v: _is_in(_user_address(entity.take(pa.array(r)), ipv6_to_str(hi6[rows[r]], v)), history.used_v6),
        )
        lo6[rows] = iid
        hi6[rows[~ok]] = -1

    rows = rows_of("own_isp_other_prefix_ipv6")  # label 0: a home /56 in another prefix of the user's ISP
    if len(rows):
        net = new_net(rows, lambda r: plan.sibling_networks(rng, home_net[user[rows[r]]]))
        home = random_prefix_in(plan, rng, np.maximum(net, 0), HOME_V6_LEN) + home_subnets(rng, len(rows))
        hi6[rows] = np.where(net >= 0, home, -1)
        lo6[rows] = random_iid(rng, len(rows))

    # The attackers by sophistication (devices: realistic): the networks here, the user agents below.
    countries = users["country"].to_numpy(zero_copy_only=False)
    rows = rows_of("naive")  # the attacker's own connection: an ISP of a country drawn by population
    if len(rows):
        codes, shares = home_countries(plan)
        cdf = np.cumsum(shares) / shares.sum()
        where = codes[np.minimum(np.searchsorted(cdf, rng.random(len(rows)), side="right"), len(codes) - 1)]
        net = new_isp(rows, lambda r: sample_networks(plan, rng, where[r], ("broadband", "mobile")))
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    rows = rows_of("vpn")  # a VPN exit or rented server in the victim's country, else in any country
    hosting = np.array(sorted(set(plan.country[plan.kind == "hosting"].tolist())), dtype=object)
    if len(rows) and len(hosting):

        def draw_vpn(r: np.ndarray) -> np.ndarray:
            local = sample_networks(plan, rng, countries[user[rows[r]]], ("hosting",))
            anywhere = sample_networks(plan, rng, hosting[rng.integers(0, len(hosting), len(r))], ("hosting",))
            return np.where(local >= 0, local, anywhere)

        net = new_isp(rows, draw_vpn)
        ip[rows] = np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    def in_victims_country(rows: np.ndarray, nets: tuple[str, ...]) -> np.ndarray:
        """An address of another ISP (of the ``nets`` kinds) of each victim's country, -1 where none was found."""
        near = countries[user[rows]]
        net = new_isp(rows, lambda r: sample_networks(plan, rng, near[r], nets))
        return np.where(net >= 0, random_address_in(plan, rng, np.maximum(net, 0)), -1)

    for kind, nets in (("targeted", ("broadband", "mobile", "business")), ("very_targeted", ("broadband", "mobile"))):
        rows = rows_of(kind)  # very targeted: a consumer (home or mobile) ISP, as residential proxies offer
        if len(rows):
            ip[rows] = in_victims_country(rows, nets)

    ok = (user >= 0) & np.where(is6, hi6 >= 0, ip >= 0)
    agent = None
    if spec.devices == "realistic":
        agent, found = _attack_agents(spec, agent_rng, users, np.maximum(user, 0), rel, kinds)
        ok &= found
    keep = np.flatnonzero(ok)
    labels = np.array([ATTACK_LABELS[k] for k in spec.attack_kinds], np.int8)
    address = address_columns(ip[keep], hi6[keep], lo6[keep], is6[keep])
    agents = agent.take(pa.array(keep)) if agent is not None else None
    return _labelled(spec, users, user[keep], address, rel[keep], labels[slots[keep]], kinds[keep], agents)


def _attack_agents(
    spec: SynthSpec, rng: np.random.Generator, users: pa.Table, user: np.ndarray, rel: np.ndarray, kinds: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    """The user agent of each attack (and whether one was found): a device by market share for ``naive`` and
    ``vpn``, the victim's browser family on a device the victim lacks for ``targeted``, the victim's own
    device's string that day for ``very_targeted`` and the address-only kinds (see :mod:`~ipinsights.synth.devices`)."""
    devices = user_devices(users)
    start = _dt.date.fromisoformat(spec.start_date)
    offset = users["utc_offset_minutes"].to_numpy().astype(np.int64)[user]
    day = (rel.astype(np.int64) + offset * 60) // DAY_S  # the victim's local day, as its devices update by
    slot = event_slots(rng, devices["template"], user, np.zeros(len(user), bool))
    template = devices["template"][user, slot]
    release = devices["release"][user, slot] + (devices["update_day"][user, slot] >= 0) * (
        day >= devices["update_day"][user, slot]
    )
    detail = devices["detail"][user, slot]
    market = np.isin(kinds, ("naive", "vpn"))
    template[market], release[market], detail[market] = market_devices(rng, start, day[market])
    targeted = kinds == "targeted"
    t, r, d = targeted_devices(rng, devices["template"][user[targeted]], start, day[targeted])
    template[targeted], release[targeted], detail[targeted] = t, r, d
    found = template >= 0
    return render_agents(np.maximum(template, 0), release, detail), found


def spraying_source(plan: AddressPlan, spec: SynthSpec) -> tuple[int, int]:
    """The spraying source's IPv4 address (in a hosting network; the same for every shard) and the
    second (since the period's start) its 45-minute window opens, on the first test day."""
    rng = plan_rng(spec.seed, STREAM_SPRAYING)
    hosting = np.flatnonzero(plan.kind == "hosting")
    net = hosting[rng.integers(0, len(hosting))] if len(hosting) else rng.integers(0, len(plan))
    address = int(random_address_in(plan, rng, np.array([net]))[0])
    first_test_day = spec.split_days("test")[0]
    return address, first_test_day * DAY_S + int(rng.integers(0, DAY_S - 2700))


def _spraying(plan: AddressPlan, spec: SynthSpec, users: pa.Table, history: _History, shard: int) -> pa.Table:
    """This shard's share of the spraying source's logins: accounts with IPv4 training logins, one each."""
    bounds = spec.spraying_accounts * shard_bounds(spec.users, spec.n_files) // spec.users
    n = min(int(bounds[shard + 1] - bounds[shard]), len(history.users4))
    if n == 0:
        return labelled_schema(spec).empty_table()
    rng = shard_rng(spec.seed, shard, STREAM_SPRAYING)
    uid = np.sort(rng.choice(history.users4, size=n, replace=False))
    address, start = spraying_source(plan, spec)
    rel = start + rng.integers(0, 2700, size=n)
    ip = np.full(n, address, np.int64)
    columns = address_columns(ip, np.full(n, -1, np.int64), np.zeros(n, np.uint64), np.zeros(n, bool))
    agent = None
    if spec.devices == "realistic":  # one client string for every account: a browser older than any user's
        release = current_release("chromium", _dt.date.fromisoformat(spec.start_date)) - SPRAYING_AGENT_LAG
        agent = render_agents(np.zeros(n, np.int64), np.full(n, release), np.zeros(n, np.int64))
    return _labelled(spec, users, uid, columns, rel, np.ones(n, np.int8), np.full(n, SPRAYING, dtype=object), agent)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # Sort-based: faster than np.unique's hashing for the few hundred thousand int64 keys of a shard.
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _present(user: np.ndarray, n_users: int) -> np.ndarray:
    """The distinct users (rows) among ``user``, sorted (a count per user: cheaper than sorting events)."""
    return np.flatnonzero(np.bincount(user, minlength=n_users))


def _redraw(
    n: int, draw: Callable[[np.ndarray], np.ndarray], taken: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``draw(rows)`` values, redrawing those for which ``taken(rows, values)`` holds; returns ``(values, ok)``.

    Loops over redraw rounds (a few), not rows; ``ok`` is False where a value was still taken after
    the last round.
    """
    rows = np.arange(n)
    out = draw(rows)
    bad = rows[taken(rows, out)]
    for _ in range(_MAX_REDRAWS):
        if len(bad) == 0:
            break
        out[bad] = draw(bad)
        bad = bad[taken(bad, out[bad])]
    ok = np.ones(n, bool)
    ok[bad] = False
    return out, ok


def _contains(sorted_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0:
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_values, keys), len(sorted_values) - 1)
    return sorted_values[pos] == keys


def _user_address(entity: pa.Array, ip: pa.Array) -> pa.Array:
    """``"entity ip"`` strings: exact (user, address) keys for either family."""
    keys = pc.binary_join_element_wise(entity, ip, " ")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def _is_in(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    return pc.is_in(values, value_set=value_set).to_numpy(zero_copy_only=False)


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
    spec: SynthSpec,
    users: pa.Table,
    uid: np.ndarray,
    address: tuple[pa.Array, ...],
    rel: np.ndarray,
    label: np.ndarray,
    kind,
    agent: pa.Array | None = None,
) -> pa.Table:
    offsets = users["utc_offset_minutes"].to_numpy()[uid]
    text, ip_int, version = address
    columns = {
        "entity": users["entity"].take(pa.array(uid, pa.int64())),
        "ip": text,
        "ip_int": ip_int,
        "ip_version": version,
        "label": pa.array(label, pa.int8()),
        "kind": pa.array(np.asarray(kind, dtype=object).tolist(), pa.string()),
        "ts": pa.array((spec.start_epoch_s + rel.astype(np.int64)) * 1_000_000, pa.timestamp("us", tz="UTC")),
        "utc_offset_minutes": pa.array(offsets, pa.int16()),
    }
    if agent is not None:
        columns["user_agent"] = agent
    return pa.table(columns, schema=labelled_schema(spec))


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
    out = pa.concat_tables(tables) if tables else labelled_schema(spec).empty_table()
    return out if include_normal else out.filter(pc.not_equal(out["kind"], "normal"))


def with_kind(events: pa.Table, kind: str = "normal") -> pa.Table:
    """``events`` plus a ``kind`` column (the schema of ``truth/events.parquet``)."""
    return events.append_column("kind", pa.array([kind] * events.num_rows, pa.string()))


def attacks_as_events(spec: SynthSpec, attacks: pa.Table) -> pa.Table:
    """Attack rows as login events (:func:`event_schema` plus ``kind``), for writing them into the logs."""
    rel_s = pc.cast(attacks["ts"], pa.int64()).to_numpy() // 1_000_000 - spec.start_epoch_s
    schema = event_schema(spec)
    columns = {name: attacks[name] for name in ("entity", "ip", "ip_int", "ip_version", "ts", "utc_offset_minutes")}
    columns["dt"] = day_strings(spec).take(pa.array(rel_s // DAY_S))
    columns.update({name: attacks[name] for name in schema.names if name not in columns})
    table = pa.table({**columns, "kind": attacks["kind"]})
    return table.cast(schema.append(pa.field("kind", pa.string())))
