"""What to simulate: the frozen :class:`SynthSpec`, plus the sharding and seeding rules every module shares.

Users are split into ``n_files`` contiguous shards, one log file each. Everything random about a shard
comes from a generator seeded by ``(seed, shard, stream)`` through :class:`numpy.random.SeedSequence`,
so a shard's output depends only on the spec and its own number: generating shards one after the
other on one machine or in parallel Spark tasks gives the same bytes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from ipinsights.core.config import ConfigError, check_float, check_int

__all__ = [
    "ATTACK_KINDS",
    "ATTACK_LABELS",
    "BLOCKS_ATTACK_KINDS",
    "DEVICE_ATTACK_KINDS",
    "DEVICE_MODES",
    "IPV6_ATTACK_KINDS",
    "PLAN_SHAPES",
    "SPLITS",
    "SPRAYING",
    "SynthSpec",
    "shard_bounds",
    "shard_rng",
]

#: Attack kinds, in the order they are dealt out; ``own_network``, ``own_isp_other_prefix``,
#: ``own_prefix_ipv6`` and ``own_isp_other_prefix_ipv6`` are the negative controls (label 0). The IPv6
#: kinds (:data:`IPV6_ATTACK_KINDS`) only go to users with IPv6 at home; the others pair a user with an
#: IPv4 address, against the user's IPv4 history.
ATTACK_KINDS: tuple[str, ...] = (
    "random_ip",
    "popular_isp",
    "same_country_other_isp",
    "hosting_provider",
    "own_network",
    "own_isp_other_prefix",
    "random_ipv6",
    "other_isp_ipv6",
    "own_prefix_ipv6",
    "own_isp_other_prefix_ipv6",
)
IPV6_ATTACK_KINDS: tuple[str, ...] = ("random_ipv6", "other_isp_ipv6", "own_prefix_ipv6", "own_isp_other_prefix_ipv6")
#: Attackers by sophistication, after Wiefling et al. (2022), for ``devices: realistic`` (their user agents are
#: :mod:`ipinsights.synth.devices`'): ``naive`` (a device by market share, from an ISP of a country drawn by
#: population), ``vpn`` (the same from a hosting range, in the victim's country where it has one),
#: ``targeted`` (the victim's browser family on a device the victim does not have, from another ISP of the
#: victim's country), ``very_targeted`` (the victim's exact user agent, from another consumer ISP, home or
#: mobile, of the victim's country). Not among the defaults: ``attack_kinds`` names them.
DEVICE_ATTACK_KINDS: tuple[str, ...] = ("naive", "vpn", "targeted", "very_targeted")
#: Users' devices: ``legacy`` (one of a few browser user agents per user, the data of before issue 31) or
#: ``realistic`` (1-3 devices each, :mod:`ipinsights.synth.devices`).
DEVICE_MODES: tuple[str, ...] = ("legacy", "realistic")
#: Label of each attack kind (1 = anomalous).
ATTACK_LABELS: dict[str, int] = {
    "random_ip": 1,
    "popular_isp": 1,
    "same_country_other_isp": 1,
    "hosting_provider": 1,
    "own_network": 0,
    "own_isp_other_prefix": 0,
    "random_ipv6": 1,
    "other_isp_ipv6": 1,
    "own_prefix_ipv6": 0,
    "own_isp_other_prefix_ipv6": 0,
    **dict.fromkeys(DEVICE_ATTACK_KINDS, 1),
}
#: The attack kinds of the generator before issue 19 (``plan_shape: blocks`` reproduces its data with these).
BLOCKS_ATTACK_KINDS: tuple[str, ...] = (
    "random_ip",
    "popular_isp",
    "same_country_other_isp",
    "own_network",
    "random_ipv6",
    "other_isp_ipv6",
    "own_prefix_ipv6",
)
#: Shapes of the synthetic address plan (see :meth:`ipinsights.synth.plan.AddressPlan.synthetic`).
PLAN_SHAPES: tuple[str, ...] = ("scattered", "blocks")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Independent random streams of one shard (never reuse a number: that would correlate two streams).
STREAM_USERS, STREAM_EVENTS, STREAM_LOGS = 1, 2, 3
STREAM_ATTACKS = {"validation": 4, "test": 5}
STREAM_SPRAYING = 6
STREAM_DEVICES = 7  # the users' devices (devices: realistic)
STREAM_EVENT_DEVICES = 8  # which device each login uses
STREAM_ATTACK_DEVICES = {"validation": 9, "test": 10}  # the attackers' user agents
SPRAYING = "spraying"  # the kind of the spraying source's labelled rows (label 1)
_PLAN_SHARD = 2**31 - 1  # "shard" number of the address plan's stream: no real shard gets it


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic data set; the same spec and seed give the same bytes.

    Event counts per user are ``events_min`` plus a lognormal tail whose mean makes the average
    ``events_mean`` (``events_sigma`` sets how heavy the tail is), capped at ``events_max``.
    ``noise_rate`` is the share of well-formed lines that are not login events (static files, failed
    logins, ...); ``junk_rate`` the share of malformed lines. ``attacks`` / ``validation_attacks``
    labelled attack rows are dealt out over ``attack_kinds`` round-robin, and as many normal held-out
    rows are drawn from the same days, so that both labelled files hold both classes.

    IPv6 is dual stack: ``ipv6_rate`` of users have it at home, ``ipv6_work_rate`` at work and
    ``ipv6_mobile_rate`` of mobile users on their carrier; where a user has it, ``ipv6_share`` of the
    logins over that path use it (Happy Eyeballs prefers IPv6), the rest IPv4. Trips and one-off
    logins elsewhere stay IPv4 (hotel and café networks), but a phone abroad keeps its home
    carrier's addresses (home routing), IPv6 included.
    """

    users: int = 10_000
    days: int = 10
    start_date: str = "2024-01-01"
    seed: int = 0
    # Events per user (heavy-tailed, at least events_min).
    events_min: int = 50
    events_mean: float = 250.0
    events_sigma: float = 1.0
    events_max: int = 20_000
    # Where users log in from.
    networks: int = 3000  # size of the synthetic address plan (ranges), ignored with address_plan
    address_plan: str | None = None  # path of an ip2asn-v4 TSV to use instead of a synthetic plan
    #: scattered: ISPs announce many prefixes of mixed sizes spread over the address space (the real
    #: routing table's shape); blocks: a few large ranges per ISP inside its country's blocks (before issue 19).
    plan_shape: str = "scattered"
    renumber_rate: float = 0.3  # share of users whose ISP moves their home address to another of its prefixes once
    mobile_prefixes: int = 3  # carrier prefixes a mobile user's addresses come from (1: one regional pool)
    mobile_rate: float = 0.5  # share of users who also log in through a mobile carrier
    mobile_share: float = 0.25  # share of such a user's events that come through the carrier
    travel_rate: float = 0.15  # share of users who take one trip (1-3 days) during the period
    roam_rate: float = 0.01  # per-event chance of a one-off login from a random network elsewhere
    abroad_share: float = 0.4  # share of trips / one-off logins that are in another country
    # IPv6 (dual stack).
    ipv6_rate: float = 0.3  # share of users with IPv6 at home (a delegated /56)
    ipv6_work_rate: float = 0.2  # share of users with IPv6 at work (a /64 of a /48 site)
    ipv6_mobile_rate: float = 0.5  # share of mobile users whose carrier gives them IPv6
    ipv6_share: float = 0.6  # share of logins over an IPv6-capable path that use IPv6
    # Output.
    n_files: int = 8
    gzip: bool = False
    gzip_level: int = 1
    noise_rate: float = 0.15
    junk_rate: float = 0.001
    write_truth: bool = True
    # Evaluation.
    train_days: int = 7
    validation_days: int = 1
    attacks: int = 10_000
    validation_attacks: int = 2_000
    attack_kinds: tuple[str, ...] = ATTACK_KINDS
    #: Accounts one password-spraying source (one address of a hosting network) logs into on the first test
    #: day, within 45 minutes: labelled rows of kind ``spraying`` (label 1) in the test split.
    spraying_accounts: int = 0
    inject_attacks: bool = False  # write the test days' labelled attacks (spraying included) into the logs
    #: legacy: a few browser user agents per user (the data of before issue 31); realistic: each user's 1-3
    #: devices (:mod:`ipinsights.synth.devices`), in the logs and the truth's ``user_agent`` column.
    devices: str = "legacy"

    def __post_init__(self) -> None:
        check_int("users", self.users, 1, 100_000_000)
        check_int("days", self.days, 1, 3660)
        try:
            _dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ConfigError(f"start_date={self.start_date!r} must be an ISO date like 2024-01-01") from None
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("events_min", self.events_min, 1, 1_000_000)
        check_float("events_mean", self.events_mean, float(self.events_min), 1e6)
        check_float("events_sigma", self.events_sigma, 0.0, 4.0)
        check_int("events_max", self.events_max, self.events_min, 10_000_000)
        check_int("networks", self.networks, 50, 200_000)
        if self.plan_shape not in PLAN_SHAPES:
            raise ConfigError(f"plan_shape={self.plan_shape!r} must be one of {', '.join(PLAN_SHAPES)}")
        check_float("renumber_rate", self.renumber_rate, 0.0, 1.0)
        check_int("mobile_prefixes", self.mobile_prefixes, 1, 64)
        if self.address_plan is not None and not isinstance(self.address_plan, str):
            raise ConfigError(f"address_plan={self.address_plan!r} must be a path or null")
        for name in (
            "mobile_rate",
            "mobile_share",
            "travel_rate",
            "roam_rate",
            "abroad_share",
            "ipv6_rate",
            "ipv6_work_rate",
            "ipv6_mobile_rate",
            "ipv6_share",
        ):
            check_float(name, getattr(self, name), 0.0, 1.0)
        check_int("n_files", self.n_files, 1, 100_000)
        check_int("gzip_level", self.gzip_level, 1, 9)
        check_float("noise_rate", self.noise_rate, 0.0, 0.95)
        check_float("junk_rate", self.junk_rate, 0.0, 0.5)
        check_int("train_days", self.train_days, 1, self.days)
        check_int("validation_days", self.validation_days, 0, self.days)
        if self.train_days + self.validation_days >= self.days:
            raise ConfigError(
                f"train_days + validation_days = {self.train_days} + {self.validation_days} must be < days={self.days}"
                " so that at least one test day is left"
            )
        check_int("attacks", self.attacks, 0, 100_000_000)
        check_int("validation_attacks", self.validation_attacks, 0, 100_000_000)
        check_int("spraying_accounts", self.spraying_accounts, 0, self.users)
        if self.devices not in DEVICE_MODES:
            raise ConfigError(f"devices={self.devices!r} must be one of {', '.join(DEVICE_MODES)}")
        kinds = tuple(self.attack_kinds)
        unknown = [k for k in kinds if k not in ATTACK_KINDS + DEVICE_ATTACK_KINDS]
        if unknown or len(set(kinds)) != len(kinds) or not kinds:
            raise ConfigError(f"attack_kinds={kinds} must be distinct names among {ATTACK_KINDS + DEVICE_ATTACK_KINDS}")
        if self.devices == "legacy" and set(kinds) & set(DEVICE_ATTACK_KINDS):
            raise ConfigError(f"attack_kinds {sorted(set(kinds) & set(DEVICE_ATTACK_KINDS))} need devices=realistic")
        object.__setattr__(self, "attack_kinds", kinds)

    # Derived values -------------------------------------------------------------------------

    @property
    def start_epoch_s(self) -> int:
        """UTC midnight of ``start_date`` as Unix seconds."""
        d = _dt.date.fromisoformat(self.start_date)
        return int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp())

    @property
    def test_days(self) -> int:
        return self.days - self.train_days - self.validation_days

    def split_days(self, split: str) -> tuple[int, int]:
        """``[first, last)`` day numbers (0 = ``start_date``, UTC days) of ``train|validation|test``."""
        bounds = {
            "train": (0, self.train_days),
            "validation": (self.train_days, self.train_days + self.validation_days),
            "test": (self.train_days + self.validation_days, self.days),
        }
        if split not in bounds:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        return bounds[split]

    def split_dates(self, split: str) -> tuple[str, str]:
        """First and last ``YYYY-MM-DD`` UTC day (inclusive) of ``train|validation|test``: the ``dt``
        days that an ingest of the generated logs holds them under."""
        first, end = self.split_days(split)
        if end <= first:
            raise ValueError(
                f"the {split} split has no days (train_days={self.train_days}, "
                f"validation_days={self.validation_days}, days={self.days})"
            )
        start = _dt.date.fromisoformat(self.start_date)
        return (start + _dt.timedelta(days=first)).isoformat(), (start + _dt.timedelta(days=end - 1)).isoformat()

    def attack_count(self, split: str) -> int:
        return {"validation": self.validation_attacks, "test": self.attacks}.get(split, 0)


def shard_bounds(n_items: int, n_shards: int) -> np.ndarray:
    """Boundaries (``n_shards + 1`` values) splitting ``n_items`` into contiguous, near-equal shards."""
    return (np.arange(n_shards + 1, dtype=np.int64) * n_items) // n_shards


def shard_rng(seed: int, shard: int, stream: int) -> np.random.Generator:
    """The generator of one shard's stream: independent of how many shards run, or where."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(shard, stream)))


def plan_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """A generator of the address plan (shared by all shards): stream 0 lays out IPv4, 1 IPv6."""
    return shard_rng(seed, _PLAN_SHARD, stream)
