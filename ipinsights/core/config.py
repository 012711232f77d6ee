"""Typed, frozen configuration: SageMaker's hyperparameters plus this project's own settings.

Every setting is validated when its dataclass is built, so a bad value is refused before any data is
read or any Spark job is started, with a message naming the parameter, the value and the allowed
range. Configs load from YAML (``conf/*.yml``) with ``--name=value`` overrides and serialise back to
plain dicts so that the resolved config can be logged and saved next to the model.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from ipinsights.core.errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from _typeshed import DataclassInstance

__all__ = [
    "check_model_size",
    "estimated_model_bytes",
    "ip_level_sizes",
    "ConfigError",
    "Hyperparameters",
    "ModelOptions",
    "TrainOptions",
    "TrainConfig",
    "DistributedOptions",
    "MlflowOptions",
    "LeaseOptions",
    "BACKENDS",
    "MAX_MODEL_BYTES",
    "IPV4_KEYS",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
]

#: SageMaker documents 8 GB as the largest IP Insights model; we refuse larger ones the same way.
MAX_MODEL_BYTES = 8 * 1024**3
#: Address keys (``ipinsights.core.ip.parse_ip``) below this are IPv4 values, the rest IPv6 top halves;
#: defined here, torch- and Arrow-free, because both the model and the parser need it.
IPV4_KEYS = 1 << 32

#: The distributed training backends (``distributed.backend``); ``auto`` picks one from the Spark master.
BACKENDS = ("auto", "torch", "horovod", "local")

C = TypeVar("C", bound="DataclassInstance")  # a config is a (frozen) dataclass


class ConfigError(UsageError):
    """A configuration value is missing, of the wrong type or out of its valid range."""


def check_int(name: str, value: Any, lo: int | None, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer{_range_text(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={value} is out of range: allowed{_range_text(lo, hi)}")


def check_float(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number{_range_text(lo, hi)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range: allowed{_range_text(lo, hi)}")


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


@dataclass(frozen=True)
class Hyperparameters:
    """SageMaker IP Insights hyperparameters: same names, defaults and valid ranges.

    ``num_entity_vectors`` and ``vector_dim`` are required, as in SageMaker (recommended:
    ``num_entity_vectors`` about twice the number of unique entities, ``vector_dim`` 128).
    """

    num_entity_vectors: int
    vector_dim: int
    epochs: int = 10
    learning_rate: float = 0.001
    mini_batch_size: int = 10_000
    num_ip_encoder_layers: int = 1
    random_negative_sampling_rate: int = 1
    shuffled_negative_sampling_rate: int = 1
    weight_decay: float = 0.00001
    batch_metrics_publish_interval: int = 1000

    def __post_init__(self) -> None:
        check_int("num_entity_vectors", self.num_entity_vectors, 1, 250_000_000)
        check_int("vector_dim", self.vector_dim, 4, 4096)
        check_int("epochs", self.epochs, 1, None)
        check_float("learning_rate", self.learning_rate, 1e-6, 10.0)
        check_int("mini_batch_size", self.mini_batch_size, 1, 500_000)
        check_int("num_ip_encoder_layers", self.num_ip_encoder_layers, 0, 100)
        check_int("random_negative_sampling_rate", self.random_negative_sampling_rate, 0, 500)
        check_int("shuffled_negative_sampling_rate", self.shuffled_negative_sampling_rate, 0, 500)
        total = self.random_negative_sampling_rate + self.shuffled_negative_sampling_rate
        if not 1 <= total <= 500:
            raise ConfigError(
                "random_negative_sampling_rate + shuffled_negative_sampling_rate = "
                f"{self.random_negative_sampling_rate} + {self.shuffled_negative_sampling_rate} = {total} "
                "is out of range: allowed in [1, 500]"
            )
        check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        check_int("batch_metrics_publish_interval", self.batch_metrics_publish_interval, 1, None)


@dataclass(frozen=True)
class ModelOptions:
    """Settings of the model's shape that SageMaker does not expose; saved in the model file.

    ``ip_prefix_lengths``: the IPv4 prefixes whose embeddings are summed to encode an address (each
    level shares statistical strength among all addresses of that network, which is how an unseen
    address inside a known network gets a meaningful vector). Prefixes of 16 bits or fewer get an
    exact table; longer ones are hashed into ``ip_hash_buckets`` rows.

    ``ipv6_prefix_lengths``: the same for IPv6 (at most /64: interface identifiers churn and carry no
    network meaning). The default levels: /12 (regional registry block, exact), /32 (an ISP's
    allocation), /40, /48 (a site), /56 (a customer's delegated prefix), /64 (a subnet); hashed levels
    get ``ipv6_hash_buckets`` rows each. ``()`` turns IPv6 off (its events then score as invalid).

    ``asn_table``: ip2asn TSVs (iptoasn.com's ``ip2asn-v4``/``-v6``/``-combined`` format; several
    comma-separated; paths or URIs). When given, every address also gets the row of its AS (hashed
    into ``asn_hash_buckets``) and of its country (exact), learned with the prefix rows: an ISP's
    prefixes scattered over the address space then share a row. Addresses outside the table share an
    "unknown network" row. The table's fingerprint is saved in the model, and the model refuses to
    score without the same table. ``auto``: the newest table of the networks cache (``ipinsights
    networks fetch``), resolved where training starts; with none, training goes on without a table and
    warns, as it does when the newest is older than ``asn_table_max_age_days`` (0: never).
    """

    hash_seed: int = 0
    ip_prefix_lengths: tuple[int, ...] = (8, 12, 16, 20, 24)
    ip_hash_buckets: int = 131_072
    ipv6_prefix_lengths: tuple[int, ...] = (12, 32, 40, 48, 56, 64)
    ipv6_hash_buckets: int = 32_768
    asn_table: str | None = None
    #: Not part of the model's shape (nor of warm-start's comparison): only when ``auto`` warns.
    asn_table_max_age_days: int = field(default=30, compare=False)
    asn_hash_buckets: int = 65_536

    def __post_init__(self) -> None:
        check_int("hash_seed", self.hash_seed, 0, 2**63 - 1)
        check_int("asn_hash_buckets", self.asn_hash_buckets, 1, 2**31 - 1)
        check_int("asn_table_max_age_days", self.asn_table_max_age_days, 0, 36_500)
        if self.asn_table is not None and (not isinstance(self.asn_table, str) or not self.asn_table.strip()):
            raise ConfigError(f"asn_table={self.asn_table!r} must be the path or URI of ip2asn TSV file(s), or null")
        check_int("ip_hash_buckets", self.ip_hash_buckets, 1, 2**31 - 1)
        check_int("ipv6_hash_buckets", self.ipv6_hash_buckets, 1, 2**31 - 1)
        for name, top, required in (("ip_prefix_lengths", 32, True), ("ipv6_prefix_lengths", 64, False)):
            lengths = tuple(getattr(self, name))
            if required and not lengths:
                raise ConfigError(f"{name}=() must name at least one prefix length in [1, {top}]")
            for n in lengths:
                check_int(f"{name}[]", n, 1, top)
            if list(lengths) != sorted(set(lengths)):
                raise ConfigError(f"{name}={lengths} must be strictly increasing")
            object.__setattr__(self, name, lengths)


@dataclass(frozen=True)
class TrainOptions:
    """How a training run executes (not what it learns)."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # 0: torch's default
    progress_bar: str = "auto"  # auto (only on a terminal) | on | off
    #: Draw one random address per positive and pair it with R entities of the batch (R distinct
    #: rolls) instead of R addresses with one entity each: the same number of random-negative pairs
    #: with the same distribution (uniform address x entity of the data), for 1/R of the encoder work.
    share_random_ips: bool = True
    #: A distributed rank streams its shard through a shuffle buffer of this many rows (16 bytes each):
    #: its memory is bounded by this, not by the shard's size.
    shuffle_buffer_rows: int = 1_000_000
    #: With an ip2asn table (``model.asn_table``): the share of random negatives drawn from the table's
    #: announced ranges of the positive address's country instead of the whole address space, so the model
    #: learns "not this entity's ISP", not "not routed" or "another country".
    table_negatives: float = 0.5

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_float("table_negatives", self.table_negatives, 0.0, 1.0)
        check_int("num_threads", self.num_threads, 0, 1024)
        check_int("shuffle_buffer_rows", self.shuffle_buffer_rows, 1, 2**40)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} must be one of auto, cpu, cuda, cuda:N")
        if self.progress_bar not in ("auto", "on", "off"):
            raise ConfigError(f"progress_bar={self.progress_bar!r} must be one of auto, on, off")


@dataclass(frozen=True)
class DistributedOptions:
    """How the Spark training job spreads training over executors."""

    #: auto: ``local`` (one process, all the driver's cores) on a ``local[N]`` master, ``torch`` on a
    #: cluster; torch (Spark's TorchDistributor) | horovod (horovod.spark.run) | local
    backend: str = "auto"
    #: Ranks; each takes mini_batch_size / num_workers of every global batch. 0: one per executor (per
    #: GPU where executors have GPUs), or one per core of a ``local[N]`` master.
    num_workers: int = 0
    use_gpu: str = "auto"  # auto | true | false
    #: The training data is written as this many random buckets; every epoch each rank is dealt a
    #: different set of them (then shuffles rows locally), so data is shuffled across all ranks.
    buckets_per_worker: int = 8
    checkpoint_keep: int = 2
    #: A rank waits this long for the others in a collective, then the job fails naming the missing rank.
    timeout_seconds: int = 300

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        check_int("num_workers", self.num_workers, 0, 4096)
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError(f"use_gpu={self.use_gpu!r} must be one of auto, true, false")
        check_int("buckets_per_worker", self.buckets_per_worker, 1, 1024)
        check_int("checkpoint_keep", self.checkpoint_keep, 1, 1000)
        check_int("timeout_seconds", self.timeout_seconds, 1, 86400)


@dataclass(frozen=True)
class ScheduleOptions:
    """The day windows of a run driven by one date (``--date T``, as a scheduler gives it): validate on the
    ``validation_days`` days ending T-1 and train on the ``train_days`` days before them (T itself is still
    being logged). With the defaults: train on T-8..T-2, validate on T-1."""

    train_days: int = 7
    validation_days: int = 1

    def __post_init__(self) -> None:
        check_int("train_days", self.train_days, 1, 3650)
        check_int("validation_days", self.validation_days, 0, 365)

    def windows(self, run_date: str) -> dict[str, tuple[str, str] | None]:
        """``{"train": (first, last), "validation": (first, last) or None}`` for the run date ``run_date``."""
        try:
            t = date.fromisoformat(run_date)
        except ValueError:
            raise ConfigError(f"--date {run_date!r} must look like 2024-01-31") from None
        v_last = t - timedelta(days=1)
        t_last = v_last - timedelta(days=self.validation_days)
        t_first = t_last - timedelta(days=self.train_days - 1)
        validation = (
            (v_last - timedelta(days=self.validation_days - 1)).isoformat(),
            v_last.isoformat(),
        )
        return {
            "train": (t_first.isoformat(), t_last.isoformat()),
            "validation": validation if self.validation_days else None,
        }


#: What a run does when another run holds a lease on something it writes (``lease.on_busy``).
ON_BUSY = ("wait", "fail")


@dataclass(frozen=True)
class LeaseOptions:
    """Overlapping runs (``ipinsights.storage.lease``; README, "Overlapping runs and retries"): what a run
    does when another run holds a lease on something it writes, and how long a silent lease lives."""

    #: wait: up to ``wait_minutes`` (a log line every 30 s names the holder), then exit 4;
    #: fail: exit 4 at once (a scheduler retries later).
    on_busy: str = "wait"
    wait_minutes: float = 60.0
    #: A lease its run has not renewed for this long, on the store's clock, is taken over by the next run
    #: (the holder renews it every quarter of this). Longer than the longest pause a live run may take.
    ttl_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.on_busy not in ON_BUSY:
            raise ConfigError(f"on_busy={self.on_busy!r} must be one of {', '.join(ON_BUSY)}")
        check_float("wait_minutes", self.wait_minutes, 0.0, 7 * 24 * 60.0)
        check_float("ttl_seconds", self.ttl_seconds, 0.1, 86400.0)


@dataclass(frozen=True)
class MlflowOptions:
    """Logging the training job to MLflow: params, per-epoch metrics and a ``pyfunc`` model (README, "MLflow").

    ``enabled``: None (the default) logs where a tracking server is configured: ``tracking_uri`` here, the
    ``MLFLOW_TRACKING_URI`` variable, or a Databricks runtime (its tracking server needs no variable);
    true logs to ``tracking_uri`` or MLflow's own default; false never logs.
    """

    enabled: bool | None = None
    tracking_uri: str | None = None  # e.g. http://mlflow:5000, sqlite:///mlflow.db, databricks
    #: Experiment name (on Databricks a workspace path, e.g. /Shared/ipinsights); None: MLflow's default.
    experiment: str | None = None
    #: Register the logged model under this name where the store has a model registry (Databricks' Unity
    #: Catalog wants catalog.schema.model); None: log it without registering.
    registered_model_name: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, as loaded from ``conf/train.yml``."""

    hyperparameters: Hyperparameters
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    distributed: DistributedOptions = field(default_factory=DistributedOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    mlflow: MlflowOptions = field(default_factory=MlflowOptions)
    lease: LeaseOptions = field(default_factory=LeaseOptions)

    def __post_init__(self) -> None:
        check_model_size(self.hyperparameters, self.model)  # when the config loads, before any Spark work


#: Rows of the country level: two-letter codes (``26 * 26``, see ``ipinsights.core.asn.country_index``).
COUNTRY_ROWS = 26 * 26


def ip_level_sizes(opts: ModelOptions) -> list[int]:
    """Rows of ``ip_table`` per level: IPv4 prefix levels, IPv6 ones (exact when small, else hashed), then
    with an ``asn_table`` the AS level and the country level (each with one more row: unknown)."""
    v4 = [min(2**p, opts.ip_hash_buckets) for p in opts.ip_prefix_lengths]
    networks = [opts.asn_hash_buckets + 1, COUNTRY_ROWS + 1] if opts.asn_table else []
    return v4 + [min(2**p, opts.ipv6_hash_buckets) for p in opts.ipv6_prefix_lengths] + networks


def estimated_model_bytes(hp: Hyperparameters, opts: ModelOptions) -> int:
    """Size of the float32 weights (what a model file holds)."""
    rows = hp.num_entity_vectors + sum(ip_level_sizes(opts))
    dense = hp.num_ip_encoder_layers * (hp.vector_dim * hp.vector_dim + hp.vector_dim)
    return 4 * (rows * hp.vector_dim + dense)


def check_model_size(hp: Hyperparameters, opts: ModelOptions) -> None:
    """Refuse a model over ``MAX_MODEL_BYTES`` (SageMaker's documented 8 GB limit)."""
    size = estimated_model_bytes(hp, opts)
    if size > MAX_MODEL_BYTES:
        raise ConfigError(
            f"model of {size / 1024**3:.1f} GiB exceeds the {MAX_MODEL_BYTES / 1024**3:.0f} GiB limit: "
            f"lower num_entity_vectors={hp.num_entity_vectors}, vector_dim={hp.vector_dim} or ip_hash_buckets"
        )


# ---------------------------------------------------------------------------------------------
# Generic loading: YAML + overrides -> nested frozen dataclasses, with type checks.
# ---------------------------------------------------------------------------------------------


def parse_overrides(args: Iterable[str]) -> dict[str, str]:
    """``["--epochs=5", "--train.seed=3"]`` -> ``{"epochs": "5", "train.seed": "3"}``."""
    out: dict[str, str] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"override {arg!r} must look like --name=value")
        key, value = arg[2:].split("=", 1)
        if not key:
            raise ConfigError(f"override {arg!r} has no name")
        out[key.replace("-", "_")] = value
    return out


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, refusing what does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, args[0], value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return config_from_dict(tp, value, _prefix=f"{name}.")
    if origin is tuple or tp is tuple:
        (elem, *_rest) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{name}={value!r} must be a list")
        return tuple(_coerce(f"{name}[]", elem, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{name}={value!r} must be an integer") from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value  # range/type checks happen in __post_init__
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} must be a number") from None
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], _prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys are refused, not ignored."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str):  # YAML reads unquoted 1, true, on, null as numbers, booleans, None
            raise ConfigError(
                f"setting name {_prefix}{key!r} ({type(key).__name__}) is not a string (quote it); "
                f"known: {sorted(names)}"
            )
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(_prefix + u for u in unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(_prefix + k, hints[k], v) for k, v in data.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"required setting(s) missing: {', '.join(_prefix + m for m in missing)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a nested section given as a scalar
        raise ConfigError(f"{_prefix or cls.__name__}: {exc}") from None


def config_to_dict(cfg: DataclassInstance) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable dict of a (nested) config dataclass (tuples become lists)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(x) for x in value]
    return value


def _apply_override(cls: type[DataclassInstance], data: dict[str, Any], key: str, value: str) -> None:
    """Set ``key`` (dotted, or a bare field name unique among the sections) in nested ``data``."""
    path = key.split(".")
    if len(path) == 1:
        top = {f.name: f for f in dataclasses.fields(cls)}
        if key not in top:
            hints = typing.get_type_hints(cls)
            owners = [
                name
                for name, f in top.items()
                if dataclasses.is_dataclass(hints[name]) and key in {g.name for g in dataclasses.fields(hints[name])}
            ]
            if len(owners) != 1:
                where = f"ambiguous between sections {owners}" if owners else "not a known setting"
                raise ConfigError(f"override --{key}: {where}")
            path = [owners[0], key]
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override --{key}: {part} is not a section")
    node[path[-1]] = value


def load_config(
    cls: type[C], path: str | Path | Traversable | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> C:
    """Load ``cls`` from a YAML file (optional; a path, or a packaged resource) and apply ``--name=value``
    overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path) if isinstance(path, str) else path
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = dict(loaded or {})
    items = overrides.items() if isinstance(overrides, Mapping) else parse_overrides(overrides).items()
    for key, value in items:
        _apply_override(cls, data, key, value)
    return config_from_dict(cls, data)
