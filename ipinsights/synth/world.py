"""The simulated population: who the users are, where they live and which networks they use.

Each user has a country and UTC offset, a home network and a work network next to it in address order
(as in the SageMaker tutorial, where both come from nearby rows of a sorted ASN list; on a
``scattered`` plan, where neighbouring rows belong to anyone, a business network of the same country),
a fixed address in each, optionally a mobile carrier with a regional address pool, and optionally one
trip (1-3 days) to a network in the same or another country. A share ``renumber_rate`` of homes are
renumbered once: from a day of the period on, their address is in another range of the same ISP (DHCP
renumbering across the ISP's prefixes). Users are generated shard by shard (see
:func:`~ipinsights.synth.spec.shard_rng`), all with vectorized numpy.

IPv6 (dual stack, on top of the IPv4 paths): a share ``ipv6_rate`` of users have it at home, where the
ISP delegates them a /56 of its prefix (DHCPv6 prefix delegation); ``ipv6_work_rate`` at work, in a
/64 of one of the few /48 sites of the work network (coworkers share sites); and a share
``ipv6_mobile_rate`` of mobile users on the carrier, in a regional /40 of its prefix. Prefixes are
stored as their first 64 bits (``int64``; see :mod:`ipinsights.synth.ipv6`), -1 where a user has none.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.synth.devices import DEVICE_SLOTS, draw_devices
from ipinsights.synth.ipv6 import hash64
from ipinsights.synth.plan import COUNTRY_USER_SHARES, COUNTRY_UTC_OFFSETS, AddressPlan
from ipinsights.synth.spec import STREAM_DEVICES, STREAM_USERS, SynthSpec, shard_bounds, shard_rng

__all__ = [
    "World",
    "generate_users",
    "generate_world",
    "home_countries",
    "home_subnets",
    "mobile_prefix",
    "load_plan",
    "random_prefix_in",
    "sample_networks",
    "user_devices",
]

MOBILE_POOL_BITS = 14  # a mobile user's addresses come from a regional /18 pool of the carrier
HOME_V6_LEN = 56  # IPv6 prefix delegated to a home
WORK_SITE_LEN = 48  # IPv6 prefix of a business site
WORK_SITES = 4  # sites per work network that its users are spread over
MOBILE_POOL_V6_LEN = 40  # a mobile user's IPv6 addresses come from a regional /40 of the carrier
#: How often a home's devices use each /64 of the delegated /56 (subnet ids 0..3: mostly the first).
HOME_SUBNET_WEIGHTS = np.array([0.7, 0.15, 0.1, 0.05])


@dataclass(frozen=True, eq=False)
class World:
    """The address plan plus one row per user (columns: see :func:`generate_users`), users in shard order."""

    plan: AddressPlan
    users: pa.Table

    def shard_users(self, spec: SynthSpec, shard: int) -> pa.Table:
        """The users of one shard (a contiguous slice)."""
        bounds = shard_bounds(spec.users, spec.n_files)
        return self.users.slice(int(bounds[shard]), int(bounds[shard + 1] - bounds[shard]))


def load_plan(spec: SynthSpec) -> AddressPlan:
    """The spec's address plan: the ip2asn file it names, else a synthetic plan from its seed.

    Either way the IPv6 prefixes come from the spec's seed (see :func:`~ipinsights.synth.plan.ipv6_allocations`).
    """
    if spec.address_plan:
        return AddressPlan.from_ip2asn_tsv(spec.address_plan, seed=spec.seed)
    return AddressPlan.synthetic(spec.seed, spec.networks, spec.plan_shape)


def generate_world(spec: SynthSpec, plan: AddressPlan | None = None) -> World:
    """All users of ``spec`` (every shard, in order) over ``plan`` (default: :func:`load_plan`)."""
    plan = plan if plan is not None else load_plan(spec)
    tables = [generate_users(plan, spec, s) for s in range(spec.n_files)]
    return World(plan=plan, users=pa.concat_tables(tables))


def entity_names(user_index: np.ndarray) -> pa.StringArray:
    """``user_N`` names, as in the tutorial; :func:`entity_index` inverts it."""
    return pc.binary_join_element_wise("user_", pc.cast(pa.array(user_index, pa.int64()), pa.string()), "")


def entity_index(entities: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Global user numbers of ``user_N`` entity names (int64)."""
    if len(entities) and not pc.all(pc.starts_with(entities, "user_")).as_py():
        raise ValueError("entity names must look like user_N (as generate_world names them)")
    return pc.cast(pc.utf8_slice_codeunits(entities, 5), pa.int64()).to_numpy(zero_copy_only=False)


def sample_networks(
    plan: AddressPlan,
    rng: np.random.Generator,
    countries: np.ndarray,
    kinds: tuple[str, ...],
    power: float = 0.5,
) -> np.ndarray:
    """One network per requested country (array of codes), of one of ``kinds``.

    Bigger ranges are likelier (weight ``size ** power``), which stands in for ISP popularity and
    works for real plans too. Returns -1 where the country has no network of those kinds.
    """
    out = np.full(len(countries), -1, np.int64)
    eligible = np.flatnonzero(np.isin(plan.kind, kinds))
    weights = plan.size[eligible].astype(np.float64) ** power
    # Loop over distinct countries (tens to a few hundred), vectorized within each; sorted for determinism.
    for country in sorted(set(countries.tolist())):
        in_country = plan.country[eligible] == country
        if not in_country.any():
            continue
        rows = np.flatnonzero(countries == country)
        out[rows] = _weighted_pick(rng, eligible[in_country], weights[in_country], len(rows))
    return out


def _weighted_pick(rng: np.random.Generator, items: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    cdf = np.cumsum(weights)
    return items[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(items) - 1)]


def random_address_in(plan: AddressPlan, rng: np.random.Generator, networks: np.ndarray) -> np.ndarray:
    """A uniformly random address inside each given network (int64)."""
    networks = np.asarray(networks, np.int64)
    return plan.start[networks] + (rng.random(len(networks)) * plan.size[networks]).astype(np.int64)


def random_prefix_in(plan: AddressPlan, rng: np.random.Generator, networks: np.ndarray, length: int) -> np.ndarray:
    """A uniformly random IPv6 /``length`` (first 64 bits, ``int64``) inside each network's IPv6 prefix.

    Where the network's prefix is longer than ``length``, the whole prefix.
    """
    networks = np.asarray(networks, np.int64)
    plen = plan.v6_len[networks].astype(np.int64)
    count = np.left_shift(1, np.maximum(length - plen, 0))
    return plan.v6_start[networks] + (rng.integers(0, count) << (64 - np.maximum(plen, length)))


def mobile_prefix(
    plan: AddressPlan, spec: SynthSpec, carrier: np.ndarray, user_index: np.ndarray, choice: np.ndarray
) -> np.ndarray:
    """Range ``choice`` (of ``spec.mobile_prefixes``) of each user's carrier: one of the carrier AS's ranges,
    fixed per (user, choice) by a hash, so a user keeps drawing from the same few pools."""
    order, _, first, count = plan.asn_groups
    h = hash64(spec.seed, user_index * 64 + choice, np.asarray(carrier, np.int64))
    return order[first[carrier] + (h % count[carrier].astype(np.uint64)).astype(np.int64)]


def home_subnets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Subnet ids (0..3, :data:`HOME_SUBNET_WEIGHTS`) of ``n`` logins from a delegated /56."""
    cdf = np.cumsum(HOME_SUBNET_WEIGHTS) / HOME_SUBNET_WEIGHTS.sum()
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def generate_users(plan: AddressPlan, spec: SynthSpec, shard: int) -> pa.Table:
    """The users of one shard, as a table.

    Columns: ``entity``, ``user_index``, ``shard``, ``country``, ``utc_offset_minutes``, ``n_events``,
    ``home_net``/``home_ip``, ``renumber_day``/``renumber_net``/``renumber_ip`` (from that day on the home
    address is in another range of the same ISP; -1: never), ``work_net``/``work_ip``,
    ``mobile_net``/``mobile_pool`` (-1: none),
    ``trip_net``/``trip_ip``/``trip_start_day``/``trip_days`` (-1 / 0: no trip), ``ua`` (user-agent id),
    and IPv6: ``home_v6`` (the delegated /56), ``work_v6`` (the user's /64 at work), ``mobile_v6_pool``
    (the carrier's regional /40), each -1 where the user has no IPv6 there. Networks are row numbers
    of the plan; IPv4 addresses are int64, IPv6 prefixes their first 64 bits as int64. With ``devices:
    realistic`` also the user's devices (:func:`user_devices`): ``device_template``, ``device_release``,
    ``device_update_day`` and ``device_detail``, lists of :data:`~ipinsights.synth.devices.DEVICE_SLOTS`.
    """
    bounds = shard_bounds(spec.users, spec.n_files)
    lo, hi = int(bounds[shard]), int(bounds[shard + 1])
    n = hi - lo
    rng = shard_rng(spec.seed, shard, STREAM_USERS)

    # Home: a broadband network in a country drawn by population share (only countries that have one).
    home_country_pool = home_countries(plan)
    codes, shares = home_country_pool
    country = codes[
        np.minimum(np.searchsorted(np.cumsum(shares), rng.random(n) * shares.sum(), side="right"), len(codes) - 1)
    ]
    home_net = sample_networks(plan, rng, country, ("broadband",), power=0.7)
    home_net = np.where(
        home_net < 0, sample_networks(plan, rng, country, ("broadband", "business", "mobile")), home_net
    )
    home_ip = random_address_in(plan, rng, home_net)
    # Work: a nearby row of the sorted plan (as in the tutorial), which is usually the same country block.
    step = rng.integers(1, 4, size=n) * rng.choice(np.array([-1, 1]), size=n)
    work_net = np.clip(home_net + step, 0, len(plan) - 1)
    if spec.plan_shape == "scattered":  # neighbouring rows are anyone's: a business network of the country
        business = sample_networks(plan, rng, country, ("business",))
        work_net = np.where(business >= 0, business, work_net)
    work_ip = random_address_in(plan, rng, work_net)
    # Mobile carrier: a per-user regional pool inside the carrier's range.
    has_mobile = rng.random(n) < spec.mobile_rate
    mobile_net = sample_networks(plan, rng, country, ("mobile",), power=0.7)
    mobile_net = np.where(has_mobile, mobile_net, -1)
    pool = random_address_in(plan, rng, np.maximum(mobile_net, 0)) >> MOBILE_POOL_BITS << MOBILE_POOL_BITS
    mobile_pool = np.where(mobile_net >= 0, np.maximum(pool, plan.start[np.maximum(mobile_net, 0)]), -1)
    # One trip: another network (same country or abroad) for 1-3 consecutive days.
    trip = rng.random(n) < spec.travel_rate
    abroad = rng.random(n) < spec.abroad_share
    trip_country = np.where(abroad, _other_country(rng, country, codes), country)
    trip_net = sample_networks(plan, rng, trip_country, ("broadband", "business", "hosting"))
    trip = trip & (trip_net >= 0)
    trip_ip = np.where(trip, random_address_in(plan, rng, np.maximum(trip_net, 0)), -1)
    trip_days = np.where(trip, rng.integers(1, 4, size=n), 0)
    trip_start = np.where(trip, rng.integers(0, spec.days, size=n), -1)
    # Heavy-tailed activity: events_min plus a lognormal tail with the requested mean.
    tail_mean = spec.events_mean - spec.events_min
    if tail_mean > 0:
        mu = np.log(tail_mean) - spec.events_sigma**2 / 2
        tail = np.floor(rng.lognormal(mu, spec.events_sigma, size=n)).astype(np.int64)
    else:
        tail = np.zeros(n, np.int64)
    n_events = np.minimum(spec.events_min + tail, spec.events_max)
    offsets = _utc_offsets(rng, country)
    ua = rng.integers(0, 1 << 15, size=n)  # folded onto the UA list when formatting
    # IPv6 (drawn last, so the IPv4 columns are those of a world without it).
    home_v6 = np.where(rng.random(n) < spec.ipv6_rate, random_prefix_in(plan, rng, home_net, HOME_V6_LEN), -1)
    site = hash64(spec.seed, work_net, rng.integers(0, WORK_SITES, size=n))  # coworkers share a few sites
    site_count = np.left_shift(1, np.maximum(WORK_SITE_LEN - plan.v6_len[work_net].astype(np.int64), 0))
    site48 = plan.v6_start[work_net] + ((site % site_count.astype(np.uint64)).astype(np.int64) << 16)
    vlan = rng.integers(0, 16, size=n)  # the user's /64 of the site
    work_v6 = np.where(rng.random(n) < spec.ipv6_work_rate, site48 | vlan, -1)
    mobile_v6 = (mobile_net >= 0) & (rng.random(n) < spec.ipv6_mobile_rate)
    pool_v6 = random_prefix_in(plan, rng, np.maximum(mobile_net, 0), MOBILE_POOL_V6_LEN)
    mobile_v6_pool = np.where(mobile_v6, pool_v6, -1)

    # Renumbering (drawn after everything else, so a world without it is the world before it): from a day
    # of the period on, the ISP hands the home another of its prefixes.
    renumber = np.zeros(n, bool)
    renumber_net, renumber_ip, renumber_day = home_net, home_ip, np.full(n, -1)
    if spec.renumber_rate:
        asked = rng.random(n) < spec.renumber_rate
        renumber_net = np.where(asked, plan.sibling_networks(rng, home_net), home_net)
        renumber = asked & (renumber_net != home_net)  # an ISP with one range cannot move a home
        renumber_ip = random_address_in(plan, rng, renumber_net)
        renumber_day = np.where(renumber, rng.integers(1, spec.days, size=n), -1)

    index = np.arange(lo, hi, dtype=np.int64)
    table = pa.table(
        {
            "entity": entity_names(index),
            "user_index": pa.array(index, pa.int64()),
            "shard": pa.array(np.full(n, shard), pa.int32()),
            "country": pa.array(country.tolist(), pa.string()),
            "utc_offset_minutes": pa.array(offsets, pa.int16()),
            "n_events": pa.array(n_events, pa.int32()),
            "home_net": pa.array(home_net, pa.int32()),
            "home_ip": pa.array(home_ip, pa.int64()),
            "renumber_day": pa.array(renumber_day, pa.int16()),
            "renumber_net": pa.array(np.where(renumber, renumber_net, -1), pa.int32()),
            "renumber_ip": pa.array(np.where(renumber, renumber_ip, -1), pa.int64()),
            "work_net": pa.array(work_net, pa.int32()),
            "work_ip": pa.array(work_ip, pa.int64()),
            "mobile_net": pa.array(mobile_net, pa.int32()),
            "mobile_pool": pa.array(mobile_pool, pa.int64()),
            "trip_net": pa.array(np.where(trip, trip_net, -1), pa.int32()),
            "trip_ip": pa.array(trip_ip, pa.int64()),
            "trip_start_day": pa.array(trip_start, pa.int16()),
            "trip_days": pa.array(trip_days, pa.int16()),
            "ua": pa.array(ua, pa.int16()),
            "home_v6": pa.array(home_v6, pa.int64()),
            "work_v6": pa.array(work_v6, pa.int64()),
            "mobile_v6_pool": pa.array(mobile_v6_pool, pa.int64()),
        }
    )
    if spec.devices == "legacy":
        return table
    # From a stream of their own: the users' other columns are those of the legacy world.
    start = _dt.date.fromisoformat(spec.start_date)
    devices = draw_devices(shard_rng(spec.seed, shard, STREAM_DEVICES), n, mobile_net >= 0, start, spec.days)
    for name, values in devices.items():
        flat = pa.array(values.reshape(-1), pa.int32() if name != "update_day" else pa.int16())
        table = table.append_column(f"device_{name}", pa.FixedSizeListArray.from_arrays(flat, DEVICE_SLOTS))
    return table


def user_devices(users: pa.Table) -> dict[str, np.ndarray]:
    """The ``device_*`` columns of a users table (``devices: realistic``) as ``(users, DEVICE_SLOTS)`` arrays."""
    return {
        name: users[f"device_{name}"].combine_chunks().flatten().to_numpy().astype(np.int64).reshape(-1, DEVICE_SLOTS)
        for name in ("template", "release", "update_day", "detail")
    }


def home_countries(plan: AddressPlan) -> tuple[np.ndarray, np.ndarray]:
    """Countries users can live in (those with broadband networks) and their population shares."""
    shares = COUNTRY_USER_SHARES
    present = sorted(set(plan.country[plan.kind == "broadband"].tolist()) or set(plan.country.tolist()))
    # Countries of a real plan that the synthetic table does not know get a share by address space.
    space = {c: float(plan.size[plan.country == c].sum()) for c in present if c not in shares}
    total_space = sum(space.values()) or 1.0
    weights = np.array([shares.get(c, 0.02 * space.get(c, 0.0) / total_space) for c in present])
    return np.array(present, dtype=object), weights


def _other_country(rng: np.random.Generator, country: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A different country for each row (uniform among the others)."""
    if len(codes) < 2:
        return country
    pos = np.searchsorted(codes.astype(str), country.astype(str))
    shift = rng.integers(1, len(codes), size=len(country))
    return codes[(pos + shift) % len(codes)]


def _utc_offsets(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    """A UTC offset (minutes) per user from the zones of their country (UTC where unknown)."""
    out = np.zeros(len(country), np.int16)
    for code in sorted(set(country.tolist())):
        rows = np.flatnonzero(country == code)
        zones = np.array(COUNTRY_UTC_OFFSETS.get(code, (0,)), np.int16)
        out[rows] = zones[rng.integers(0, len(zones), size=len(rows))]
    return out
