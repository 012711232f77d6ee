"""Hyperparameter tuning on Spark: SageMaker's Automatic Model Tuning for IP Insights, with Optuna.

A tuning job maximises ``validation:discriminator_auc`` over a search space of hyperparameters
(:class:`TuneConfig`, ``conf/tune.yml``) in ``max_jobs`` trials, ``max_parallel_jobs`` at a time.
Each trial is an ordinary single-process training run (:class:`ipinsights.trainer.Trainer`) of the
base training config with the sampled values put in.

Parallelism. The driver runs Optuna's ask/tell loop. Each trial is a one-task Spark job
(``sc.parallelize([spec], 1).map(run_trial)``) issued from a driver thread, so up to
``max_parallel_jobs`` trials train at once on executors. :func:`run_trial` is top level and picklable,
imports torch inside and gets a plain :class:`TrialSpec` (paths and dicts, never a SparkSession or a
DataFrame). The training pairs reach the executors by path: the driver writes them once as Parquet
(64-bit entity hash, address key) under ``OUT/work``; each trial reads them and hashes the entities
into its own ``num_entity_vectors`` rows, so that hyperparameter can be tuned too.

Determinism. Trial ``n`` is asked only once trials ``0 .. n - P`` have been told (``P`` =
``max_parallel_jobs``), and results are told in trial-number order, whichever trial finishes first.
What each ask sees (the told trials, and the running ones that TPE's constant liar counts as pending)
therefore depends on ``n`` alone, never on timing: the same seed and inputs give the same trial
sequence. The price: a free slot may wait for an earlier, longer trial (an ordered sliding window).

Early stopping. Optuna's pruners need intermediate values live, which a trial running inside a Spark
task cannot report. So when the driver launches a trial it computes SageMaker's rule from the trials
told so far: for each epoch ``k``, the median over completed trials of their running average of
discriminator_auc up to ``k`` (:func:`median_running_average`). The trial gets these thresholds and,
after any epoch ``k >= min_epochs``, stops itself (status ``Stopped``) when its AUC is below the
threshold minus ``margin``. A stopped trial keeps its model and its last AUC as objective, as in
SageMaker; Optuna is told PRUNED with the per-epoch values, which TPE uses.

Failures. A trial that raises, or whose loss or AUC becomes NaN (a diverging learning rate), or whose
sampled values are invalid together (``R + S = 0``), is recorded as ``Failed`` with its error, told
to Optuna as FAIL, and the job goes on; only when every trial failed does :func:`tune` raise.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import shutil
import socket
import statistics
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ipinsights.config import (
    ConfigError,
    Hyperparameters,
    TrainConfig,
    _check_float,
    _check_int,
    config_from_dict,
    config_to_dict,
    load_config,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "COMPLETED",
    "FAILED",
    "STOPPED",
    "DEFAULT_SPACE",
    "ParameterRange",
    "EarlyStopping",
    "TuneConfig",
    "TrialSpec",
    "TrialRecord",
    "PreparedData",
    "TuningResult",
    "TuningError",
    "load_tune_config",
    "without_parameters",
    "median_running_average",
    "prepare_data",
    "trial_result",
    "run_trial",
    "run_trials",
    "best_record",
    "SparkTrialRunner",
    "LocalTrialRunner",
    "results_frame",
    "format_table",
    "tune",
]

log = logging.getLogger(__name__)

#: SageMaker's training job statuses, as its tuner analytics table shows them.
COMPLETED, FAILED, STOPPED = "Completed", "Failed", "Stopped"
OBJECTIVES = ("validation:discriminator_auc", "discriminator_auc")
_KINDS = ("integer", "continuous", "categorical")
_SCALINGS = ("auto", "linear", "logarithmic")
_RATES = ("random_negative_sampling_rate", "shuffled_negative_sampling_rate")
_HP_TYPES = typing.get_type_hints(Hyperparameters)


class TuningError(RuntimeError):
    """The tuning job could not produce a model (e.g. every trial failed)."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _check_hyperparameter(name: str, value: Any, what: str) -> None:
    """Refuse a value outside the Hyperparameters' valid range (their own checks, not a copy of them)."""
    ref: dict[str, Any] = {"num_entity_vectors": 1, "vector_dim": 4}  # the required ones, at valid values
    if name in _RATES:
        # 1 <= R + S is a joint constraint: judge this rate alone, with the other one at 0 (or 1 when this is 0).
        other = _RATES[1 - _RATES.index(name)]
        ref[other] = 0 if isinstance(value, (int, float)) and value >= 1 else 1
    try:
        Hyperparameters(**{**ref, name: value})
    except ConfigError as exc:
        raise ConfigError(f"space.{name}: {what} {value!r} is not a valid value: {exc}") from None


@dataclass(frozen=True)
class ParameterRange:
    """One tuned hyperparameter: SageMaker's IntegerParameter, ContinuousParameter or CategoricalParameter.

    ``scaling``: ``linear``, ``logarithmic`` (needs ``min > 0``) or ``auto`` (logarithmic when the
    range spans two orders of magnitude or more, else linear). SageMaker's spellings (``Integer``,
    ``Logarithmic``, ...) are accepted; ``ReverseLogarithmic`` is not supported.
    """

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    scaling: str = "auto"
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        name = self.name
        if name not in _HP_TYPES:
            raise ConfigError(f"space.{name}: not a hyperparameter; known: {sorted(_HP_TYPES)}")
        kind = str(self.type).lower().removesuffix("parameter")
        if kind not in _KINDS:
            raise ConfigError(f"space.{name}.type={self.type!r} must be one of {', '.join(_KINDS)}")
        scaling = str(self.scaling).lower()
        if scaling not in _SCALINGS:
            raise ConfigError(f"space.{name}.scaling={self.scaling!r} must be one of {', '.join(_SCALINGS)}")
        tp = _HP_TYPES[name]
        object.__setattr__(self, "type", kind)
        if kind == "categorical":
            if not self.values or self.min is not None or self.max is not None:
                raise ConfigError(f"space.{name}: a categorical range takes values: [...] (and no min/max)")
            values = tuple(self._cast(tp, v, "value") for v in self.values)
            for v in values:
                _check_hyperparameter(name, v, "value")
            object.__setattr__(self, "values", values)
            object.__setattr__(self, "scaling", "linear")
            return
        if self.values:
            raise ConfigError(f"space.{name}: values: are for categorical ranges; give min and max")
        if self.min is None or self.max is None:
            raise ConfigError(f"space.{name}: an {kind} range needs min and max")
        if kind == "integer" and tp is not int:
            raise ConfigError(f"space.{name} is a real-valued hyperparameter: use type continuous")
        if kind == "continuous" and tp is not float:
            raise ConfigError(f"space.{name} is an integer hyperparameter: use type integer")
        lo, hi = self._cast(tp, self.min, "min"), self._cast(tp, self.max, "max")
        if lo > hi:
            raise ConfigError(f"space.{name}: min {lo} is greater than max {hi}")
        _check_hyperparameter(name, lo, "min")
        _check_hyperparameter(name, hi, "max")
        if scaling == "auto":
            scaling = "logarithmic" if lo > 0 and hi >= 100 * lo else "linear"
        if scaling == "logarithmic" and lo <= 0:
            raise ConfigError(f"space.{name}: logarithmic scaling needs min > 0, got {lo}")
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)
        object.__setattr__(self, "scaling", scaling)

    def _cast(self, tp: type, value: Any, what: str) -> Any:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"space.{self.name}: {what} {value!r} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"space.{self.name}: {what} {value!r} must be a number")
        if tp is int:
            if not float(value).is_integer():
                raise ConfigError(f"space.{self.name}: {what} {value!r} must be an integer")
            return int(value)
        return float(value)

    def distribution(self):
        """The Optuna distribution of this range."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        log_scale = self.scaling == "logarithmic"
        if self.type == "categorical":
            return CategoricalDistribution(list(self.values))
        if self.type == "integer":
            return IntDistribution(int(self.min), int(self.max), log=log_scale)
        return FloatDistribution(float(self.min), float(self.max), log=log_scale)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.values
        return self.min <= value <= self.max


def _r(name: str, kind: str, lo: float, hi: float, scaling: str) -> ParameterRange:
    return ParameterRange(name=name, type=kind, min=lo, max=hi, scaling=scaling)


#: SageMaker's recommended tuning ranges for IP Insights (the default search space).
DEFAULT_SPACE: tuple[ParameterRange, ...] = (
    _r("epochs", "integer", 1, 100, "linear"),
    _r("learning_rate", "continuous", 1e-4, 0.1, "logarithmic"),
    _r("mini_batch_size", "integer", 100, 50_000, "logarithmic"),
    _r("num_entity_vectors", "integer", 10_000, 1_000_000, "logarithmic"),
    _r("num_ip_encoder_layers", "integer", 1, 10, "linear"),
    _r("random_negative_sampling_rate", "integer", 0, 10, "linear"),
    _r("shuffled_negative_sampling_rate", "integer", 0, 10, "linear"),
    _r("vector_dim", "integer", 8, 256, "logarithmic"),
    _r("weight_decay", "continuous", 0.0, 1.0, "linear"),
)


@dataclass(frozen=True)
class EarlyStopping:
    """SageMaker's early stopping (``type: auto``): stop a trial whose AUC after epoch k is below the
    median of the earlier completed trials' running averages up to k (minus ``margin``)."""

    type: str = "auto"  # auto | off
    min_trials: int = 3  # completed trials needed before any trial is stopped
    min_epochs: int = 1  # a trial runs at least this many epochs
    margin: float = 0.0

    def __post_init__(self) -> None:
        kind = str(self.type).lower()
        if kind not in ("auto", "off"):
            raise ConfigError(f"early_stopping.type={self.type!r} must be auto or off")
        object.__setattr__(self, "type", kind)
        _check_int("early_stopping.min_trials", self.min_trials, 1, None)
        _check_int("early_stopping.min_epochs", self.min_epochs, 1, None)
        _check_float("early_stopping.margin", self.margin, 0.0, 1.0)


@dataclass(frozen=True)
class TuneConfig:
    """A tuning job, as loaded from ``conf/tune.yml``.

    ``space`` is given in YAML as a mapping ``name: {type, min, max, scaling}`` (or a list of ranges
    with a ``name``) and held as a tuple of :class:`ParameterRange`. ``baseline_trial`` makes trial 0
    train the base config's own values (when they lie in the space), so the table shows what tuning
    gained. ``fail_trials`` is a test hook: those trial numbers start from NaN weights, so they
    diverge and take the real failure path.
    """

    space: Mapping[str, Any] | tuple[ParameterRange, ...] = DEFAULT_SPACE
    max_jobs: int = 20
    max_parallel_jobs: int = 2
    strategy: str = "bayesian"  # bayesian (TPE) | random
    seed: int = 0
    objective: str = "validation:discriminator_auc"
    startup_trials: int = 0  # bayesian: random trials before TPE (0 = auto)
    baseline_trial: bool = False
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    threads_per_trial: int = 0  # 0 = the executor's cores / max_parallel_jobs
    keep_trial_models: bool = False
    base_config: str | None = None  # the training config every trial starts from
    fail_trials: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", _parse_space(self.space))
        _check_int("max_jobs", self.max_jobs, 1, 100_000)
        _check_int("max_parallel_jobs", self.max_parallel_jobs, 1, 10_000)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_int("startup_trials", self.startup_trials, 0, None)
        _check_int("threads_per_trial", self.threads_per_trial, 0, 1024)
        strategy = str(self.strategy).lower()
        if strategy not in ("bayesian", "random"):
            raise ConfigError(f"strategy={self.strategy!r} must be bayesian or random (grid, hyperband: not offered)")
        object.__setattr__(self, "strategy", strategy)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: only {OBJECTIVES[0]} (maximised) is reported by trials")
        for n in self.fail_trials:
            _check_int("fail_trials[]", n, 0, None)


def _parse_space(space: Any) -> tuple[ParameterRange, ...]:
    if isinstance(space, Mapping):
        items = list(space.items())
    elif isinstance(space, (list, tuple)):
        items = [(r.name if isinstance(r, ParameterRange) else dict(r).get("name"), r) for r in space]
    else:
        raise ConfigError(f"space must be a mapping of hyperparameter name -> range, got {space!r}")
    out = []
    for name, entry in items:
        if isinstance(entry, ParameterRange):
            out.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"space.{name} must be a mapping like {{type: integer, min: 1, max: 10}}, got {entry!r}")
        out.append(config_from_dict(ParameterRange, {**entry, "name": name}, _prefix=f"space.{name}."))
    names = [r.name for r in out]
    if not out:
        raise ConfigError("space is empty: nothing to tune")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"space names {dupes} more than once")
    return tuple(out)


def load_tune_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> TuneConfig:
    """Load ``conf/tune.yml`` (unknown keys refused); a relative ``base_config`` is relative to that file."""
    cfg = load_config(TuneConfig, path, overrides)
    if cfg.base_config and path is not None and not Path(cfg.base_config).is_absolute():
        cfg = dataclasses.replace(cfg, base_config=str(Path(path).parent / cfg.base_config))
    return cfg


def without_parameters(cfg: TuneConfig, names: Iterable[str]) -> TuneConfig:
    """``cfg`` with these hyperparameters taken out of the space (fixed by the caller instead)."""
    names = set(names)
    kept = tuple(r for r in cfg.space if r.name not in names)
    if not kept:
        raise ConfigError(f"every tuned hyperparameter ({sorted(names)}) was fixed: nothing left to tune")
    return dataclasses.replace(cfg, space=kept)


# ---------------------------------------------------------------------------------------------
# Early stopping rule
# ---------------------------------------------------------------------------------------------


def median_running_average(curves: Sequence[Sequence[float]], min_trials: int) -> list[float | None]:
    """Per epoch k (index k-1): the median over ``curves`` of their mean AUC over epochs 1..k.

    ``None`` where fewer than ``min_trials`` curves reach epoch k (no basis to stop anyone there).
    """
    out: list[float | None] = []
    for k in range(1, max((len(c) for c in curves), default=0) + 1):
        avgs = [sum(c[:k]) / k for c in curves if len(c) >= k]
        out.append(statistics.median(avgs) if len(avgs) >= min_trials else None)
    return out


def _should_stop(epoch: int, auc: float, spec: TrialSpec, epochs: int) -> bool:
    if epoch < spec.min_epochs or epoch >= epochs or epoch > len(spec.stop_below):
        return False
    threshold = spec.stop_below[epoch - 1]
    return threshold is not None and auc < threshold - spec.margin


# ---------------------------------------------------------------------------------------------
# Data and the per-trial function (runs on executors)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """The encoded training and validation pairs, written once for every trial to read by path."""

    train_files: list[str]
    validation_files: list[str]
    entity_stats_file: str | None = None
    n_train: int = 0
    n_validation: int = 0


@dataclass
class TrialSpec:
    """Everything one trial needs, as plain picklable values."""

    number: int
    hyperparameters: dict[str, Any]
    model_options: dict[str, Any]
    train_options: dict[str, Any]
    train_files: list[str]
    validation_files: list[str]
    trial_dir: str
    entity_stats_file: str | None = None
    stop_below: list[float | None] = field(default_factory=list)  # per epoch; see median_running_average
    min_epochs: int = 1
    margin: float = 0.0
    threads: int = 0
    max_parallel_jobs: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    poison: bool = False  # test hook: start from NaN weights


def trial_result(
    number: int,
    status: str,
    history: list[dict[str, Any]] | None = None,
    error: str | None = None,
    seconds: float = 0.0,
    start: float | None = None,
    model_dir: str | None = None,
) -> dict[str, Any]:
    """What a trial sends back to the driver (a plain dict: it crosses the Spark boundary)."""
    now = time.time()
    return {
        "number": number,
        "status": status,
        "history": list(history or []),
        "error": error,
        "seconds": seconds,
        "start": now - seconds if start is None else start,
        "end": now,
        "model_dir": model_dir,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _load_pairs(files: Sequence[str], num_entity_vectors: int):
    """Encoded pairs for this trial's ``num_entity_vectors`` (entity row = 64-bit hash mod rows)."""
    from ipinsights.io import read_parquet_files
    from ipinsights.trainer import EncodedPairs

    t = read_parquet_files(files, ["entity_hash", "ip"])
    h = np.asarray(t["entity_hash"].to_numpy()).view(np.uint64)
    rows = (h % np.uint64(num_entity_vectors)).astype(np.int64)
    return EncodedPairs(rows, np.array(t["ip"].to_numpy(), dtype=np.int64))  # a copy: Arrow's view is read-only


def _train_trial(spec: TrialSpec, history: list[dict[str, Any]]) -> tuple[str, str]:
    """Train epoch by epoch, checking for divergence and the stopping rule; returns (status, model dir)."""
    import torch

    from ipinsights.config import ModelOptions, TrainOptions
    from ipinsights.entities import ENTITY_FILE
    from ipinsights.modelfile import save_model
    from ipinsights.trainer import Trainer, build_model, resolve_device

    hp = config_from_dict(Hyperparameters, spec.hyperparameters)
    mopts = config_from_dict(ModelOptions, spec.model_options)
    topts = config_from_dict(TrainOptions, spec.train_options)
    # Trials share the executor's cores; more threads than cores / trials only makes them spin.
    torch.set_num_threads(spec.threads or max(1, _cpu_count() // spec.max_parallel_jobs))
    torch.manual_seed(topts.seed)
    train = _load_pairs(spec.train_files, hp.num_entity_vectors)
    validation = _load_pairs(spec.validation_files, hp.num_entity_vectors)
    model = build_model(hp, mopts, topts.seed, resolve_device(topts.device))
    if spec.poison:
        with torch.no_grad():
            model.entity_table.fill_(float("nan"))
    trainer = Trainer(model, hp, topts)
    status = COMPLETED
    # Epoch by epoch (fit continues where it stopped, same shuffles as one call) so a trial can stop itself.
    while trainer.epoch < hp.epochs:
        (m,) = trainer.fit(train, validation, epochs=1)
        history.append(m.as_dict())
        auc = m.discriminator_auc
        if not math.isfinite(m.loss) or auc is None or not math.isfinite(auc):
            raise FloatingPointError(f"diverged at epoch {m.epoch}: loss={m.loss}, discriminator_auc={auc}")
        if _should_stop(m.epoch, auc, spec, hp.epochs):
            status = STOPPED
            break
    extra = {}
    if spec.entity_stats_file:
        extra[ENTITY_FILE] = Path(spec.entity_stats_file).read_bytes()
    model_dir = str(Path(spec.trial_dir) / "model")
    save_model(
        model,
        model_dir,
        training={"epochs": history, "pairs": len(train), "tuning_trial": spec.number, "status": status},
        config=spec.config,
        extra_files=extra,
    )
    return status, model_dir


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Run one trial (on an executor); never raises: a failure comes back as status ``Failed``.

    Catching here, not in Spark, keeps Spark from retrying a trial that fails deterministically.
    """
    t0 = time.perf_counter()
    start = time.time()
    history: list[dict[str, Any]] = []
    try:
        status, model_dir = _train_trial(spec, history)
        error = None
    except Exception as exc:
        status, model_dir, error = FAILED, None, f"{type(exc).__name__}: {exc}"[:1000]
    return trial_result(spec.number, status, history, error, time.perf_counter() - t0, start, model_dir)


# ---------------------------------------------------------------------------------------------
# Running trials: on Spark executors, or in this process
# ---------------------------------------------------------------------------------------------


class SparkTrialRunner:
    """Runs each trial as a one-task Spark job, from a pool of ``max_parallel`` driver threads.

    Concurrent jobs from driver threads share the executors (Spark schedules them side by side when
    cores are free), so ``max_parallel`` trials train at once.
    """

    def __init__(self, spark: SparkSession, max_parallel: int) -> None:
        self.sc = spark.sparkContext
        self.pool = cf.ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="tune-trial")
        self.group = f"ipinsights-tune-{os.getpid()}-{time.time_ns()}"

    def submit(self, spec: TrialSpec) -> cf.Future:
        return self.pool.submit(self._run, spec)

    def _run(self, spec: TrialSpec) -> dict[str, Any]:
        # One job group for all trials, so that an interrupted driver can cancel the ones still running.
        self.sc.setJobGroup(self.group, f"ipinsights tuning: trial {spec.number}", interruptOnCancel=True)
        try:
            return self.sc.parallelize([spec], 1).map(run_trial).collect()[0]
        except Exception as exc:  # the Spark job itself failed: a lost executor, a killed Python worker
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            return trial_result(spec.number, FAILED, error=f"Spark job failed: {first}"[:1000])

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.sc.cancelJobGroup(self.group)
        self.pool.shutdown(wait=True, cancel_futures=cancel)


class LocalTrialRunner:
    """Runs each trial in this process when submitted (no Spark; for debugging and small data)."""

    def submit(self, spec: TrialSpec) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(run_trial(spec))
        return fut

    def close(self, cancel: bool = False) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# The driver: Optuna's ask/tell loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One row of the results table."""

    number: int
    params: dict[str, Any]
    status: str
    objective: float | None
    seconds: float
    epochs: int
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    model_dir: str | None = None
    start: float | None = None
    end: float | None = None
    worker: str | None = None

    @property
    def aucs(self) -> list[float]:
        return [h["discriminator_auc"] for h in self.history if h.get("discriminator_auc") is not None]


def _sampler(cfg: TuneConfig, parallel: int):
    import optuna

    if cfg.strategy == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    startup = cfg.startup_trials or max(parallel, min(10, cfg.max_jobs // 3))
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)


def _record(result: Mapping[str, Any], params: dict[str, Any]) -> TrialRecord:
    history = list(result.get("history") or [])
    status = result["status"]
    aucs = [h.get("discriminator_auc") for h in history]
    objective = aucs[-1] if status != FAILED and aucs and aucs[-1] is not None else None
    return TrialRecord(
        number=int(result["number"]),
        params=params,
        status=status,
        objective=objective,
        seconds=float(result.get("seconds") or 0.0),
        epochs=len(history),
        error=result.get("error"),
        history=history,
        model_dir=result.get("model_dir") if status != FAILED else None,
        start=result.get("start"),
        end=result.get("end"),
        worker=result.get("worker"),
    )


def run_trials(
    cfg: TuneConfig,
    base: TrainConfig,
    data: PreparedData,
    trials_dir: str | Path,
    submit: Callable[[TrialSpec], cf.Future],
) -> list[TrialRecord]:
    """Ask, run and tell ``cfg.max_jobs`` trials, ``cfg.max_parallel_jobs`` at a time, in a fixed order.

    See the module docstring for why the order makes the sequence reproducible. Unless
    ``keep_trial_models``, a trial's model is deleted as soon as a better one exists.
    """
    import optuna
    from optuna.trial import TrialState

    from ipinsights.io import atomic_write

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is logged here, with its status
    parallel = min(cfg.max_parallel_jobs, cfg.max_jobs)
    study = optuna.create_study(direction="maximize", sampler=_sampler(cfg, parallel))
    dists = {r.name: r.distribution() for r in cfg.space}
    base_hp = config_to_dict(base.hyperparameters)
    if cfg.baseline_trial:
        outside = [r.name for r in cfg.space if not r.contains(base_hp[r.name])]
        if outside:
            log.warning("baseline trial skipped: base values of %s lie outside the space", outside)
        else:
            study.enqueue_trial({r.name: base_hp[r.name] for r in cfg.space})
    base_dict = config_to_dict(base)
    trials_dir = Path(trials_dir).resolve()
    es = cfg.early_stopping
    in_flight: dict[int, tuple[Any, dict[str, Any], cf.Future]] = {}
    records: list[TrialRecord] = []
    best: TrialRecord | None = None

    def launch(n: int) -> None:
        trial = study.ask(dists)
        assert trial.number == n, (trial.number, n)  # asks happen strictly in trial-number order
        params = {r.name: trial.params[r.name] for r in cfg.space}
        hp = {**base_hp, **params}
        completed = [r.aucs for r in records if r.status == COMPLETED]
        stop_below = median_running_average(completed, es.min_trials) if es.type == "auto" else []
        try:
            config_from_dict(Hyperparameters, hp)  # e.g. R = S = 0 sampled together: fail before launching
        except ConfigError as exc:
            fut: cf.Future = cf.Future()
            fut.set_result(trial_result(n, FAILED, error=f"invalid hyperparameters: {exc}"))
            in_flight[n] = (trial, params, fut)
            return
        train_options = {**base_dict["train"], "num_threads": cfg.threads_per_trial, "progress_bar": "off"}
        spec = TrialSpec(
            number=n,
            hyperparameters=hp,
            model_options=base_dict["model"],
            train_options=train_options,
            train_files=list(data.train_files),
            validation_files=list(data.validation_files),
            trial_dir=str(trials_dir / f"trial-{n:03d}"),
            entity_stats_file=data.entity_stats_file,
            stop_below=stop_below,
            min_epochs=es.min_epochs,
            margin=es.margin,
            threads=cfg.threads_per_trial,
            max_parallel_jobs=parallel,
            config={**base_dict, "hyperparameters": hp, "tuning": {"trial": n, "params": params}},
            poison=n in cfg.fail_trials,
        )
        log.info("trial %d launched: %s", n, params)
        in_flight[n] = (trial, params, submit(spec))

    next_ask = 0
    for n in range(cfg.max_jobs):
        while next_ask < cfg.max_jobs and next_ask < n + parallel:
            launch(next_ask)
            next_ask += 1
        trial, params, fut = in_flight.pop(n)
        rec = _record(fut.result(), params)
        trial.set_user_attr("status", rec.status)
        if rec.status in (COMPLETED, STOPPED) and rec.objective is not None:
            for k, auc in enumerate(rec.aucs, 1):
                trial.report(auc, k)  # the learning curve: TPE values a stopped trial by its last point
            if rec.status == COMPLETED:
                study.tell(trial, rec.objective)
            else:
                study.tell(trial, state=TrialState.PRUNED)
        else:
            rec.status = FAILED
            rec.objective = None
            trial.set_user_attr("error", rec.error)
            study.tell(trial, state=TrialState.FAIL)
        if rec.history:
            with atomic_write(trials_dir / f"trial-{n:03d}" / "metrics.jsonl") as fh:
                fh.writelines(_json_line(h) for h in rec.history)
        auc = "n/a" if rec.objective is None else f"{rec.objective:.4f}"
        log.info("trial %d %s: discriminator_auc=%s epochs=%d %.1f s%s", n, rec.status, auc, rec.epochs,
                 rec.seconds, f" ({rec.error})" if rec.error else "")  # fmt: skip
        if rec.model_dir and rec.objective is not None:
            if best is None or rec.objective > best.objective:
                if best is not None and not cfg.keep_trial_models:
                    _drop_model(best)
                best = rec
            elif not cfg.keep_trial_models:
                _drop_model(rec)
        records.append(rec)
    return records


def _json_line(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str) + "\n"


def _drop_model(rec: TrialRecord) -> None:
    if rec.model_dir:
        shutil.rmtree(rec.model_dir, ignore_errors=True)
        rec.model_dir = None


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest objective (Completed or Stopped; the earliest on a tie)."""
    ok = [r for r in records if r.status != FAILED and r.objective is not None]
    return max(ok, key=lambda r: (r.objective, -r.number)) if ok else None


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def results_frame(records: Sequence[TrialRecord], param_names: Sequence[str]) -> pd.DataFrame:
    """One row per trial, like SageMaker's ``HyperparameterTuningJobAnalytics(...).dataframe()``."""
    import pandas as pd

    def ts(t: float | None):
        return pd.Timestamp(t, unit="s", tz="UTC") if t else pd.NaT

    rows = []
    for r in records:
        row: dict[str, Any] = {"TrialNumber": r.number, "TrainingJobName": f"trial-{r.number:03d}"}
        row.update({name: r.params.get(name) for name in param_names})
        row.update(
            FinalObjectiveValue=r.objective if r.objective is not None else float("nan"),
            TrainingJobStatus=r.status,
            TrainingElapsedTimeSeconds=round(r.seconds, 3),
            EpochsRun=r.epochs,
            TrainingStartTime=ts(r.start),
            TrainingEndTime=ts(r.end),
            FailureReason=r.error or "",
        )
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The results table as text (times left out: they do not fit a terminal)."""
    import pandas as pd

    shown = table.drop(columns=["TrainingStartTime", "TrainingEndTime", "TrainingJobName"], errors="ignore")
    shown = shown.assign(FailureReason=shown["FailureReason"].str.slice(0, 60))
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        return shown.to_string(index=False, float_format=lambda v: f"{v:.6g}")


@dataclass
class TuningResult:
    """What a tuning job produced."""

    records: list[TrialRecord]
    table: pd.DataFrame
    best: TrialRecord
    best_model_dir: Path
    output: Path


def prepare_data(
    spark: SparkSession, train_df: DataFrame, validation_df: DataFrame, base: TrainConfig, work_dir: str | Path
) -> PreparedData:
    """Encode both sets on the executors and write them under ``work_dir`` for the trials to read.

    Entities are stored as their full 64-bit hash, not as rows, so every trial can use its own
    ``num_entity_vectors``; entity stats go into every trial's model, as the training job does.
    """
    from ipinsights.io import atomic_write, write_parquet_single
    from ipinsights.prepare import encode_pairs_df, entity_stats

    work = Path(work_dir).resolve()
    hp, mopts = base.hyperparameters, base.model
    v6 = bool(mopts.ipv6_prefix_lengths)
    enc = encode_pairs_df(train_df, hp.num_entity_vectors, mopts.hash_seed, v6).select("entity_hash", "ip").cache()
    try:
        n_train = enc.count()
        if n_train == 0:
            raise TuningError("no valid training pairs in the input")
        train_files = write_parquet_single(enc, str(work / "train"))
        stats = entity_stats(enc)
    finally:
        enc.unpersist()
    stats_file = work / "entities.safetensors"
    with atomic_write(stats_file, "wb") as fh:
        fh.write(stats.to_bytes())
    val = encode_pairs_df(validation_df, hp.num_entity_vectors, mopts.hash_seed, v6).select("entity_hash", "ip")
    val_files = write_parquet_single(val.coalesce(1), str(work / "validation"))
    n_val = val.count()
    if n_val == 0:
        raise TuningError("no valid validation pairs: the objective discriminator_auc needs them")
    log.info("tuning data: %d training pairs (%d entities), %d validation pairs", n_train, len(stats), n_val)
    return PreparedData(train_files, val_files, str(stats_file), n_train, n_val)


def tune(
    spark: SparkSession,
    train_df: DataFrame,
    validation_df: DataFrame,
    cfg: TuneConfig,
    base: TrainConfig,
    output: str | Path,
    submit: Callable[[TrialSpec], cf.Future] | None = None,
) -> TuningResult:
    """Run a tuning job; writes under ``output``:

    ``results.csv`` / ``results.parquet`` (one row per trial), ``best_model/`` (a normal model
    directory), ``best.json``, ``tuning_config.json`` (the resolved tuning and base configs),
    ``trials/trial-NNN/`` (per-epoch metrics, and models when kept) and ``work/`` (the encoded data).
    Raises :class:`TuningError` (after writing the table) when every trial failed.
    """
    from ipinsights.io import copy_tree_atomic, write_frame, write_json

    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(str(out / "tuning_config.json"), {"tuning": config_to_dict(cfg), "base": config_to_dict(base)})
    shutil.rmtree(out / "trials", ignore_errors=True)  # a rerun starts clean: no stale trial of an older job
    data = prepare_data(spark, train_df, validation_df, base, out / "work")
    runner = None
    if submit is None:
        runner = SparkTrialRunner(spark, min(cfg.max_parallel_jobs, cfg.max_jobs))
        submit = runner.submit
    try:
        records = run_trials(cfg, base, data, out / "trials", submit)
    except BaseException:  # e.g. Ctrl-C: stop the trials still running on the executors
        if runner is not None:
            runner.close(cancel=True)
        raise
    if runner is not None:
        runner.close()
    table = results_frame(records, [r.name for r in cfg.space])
    write_frame(table, out / "results.csv")
    write_frame(table, out / "results.parquet")
    best = best_record(records)
    if best is None or not best.model_dir:
        errors = "; ".join(f"trial {r.number}: {r.error}" for r in records)
        raise TuningError(f"all {len(records)} trials failed: {errors}")
    best_dir = copy_tree_atomic(best.model_dir, out / "best_model")
    write_json(
        str(out / "best.json"),
        {
            "trial": best.number,
            "status": best.status,
            "objective": {"name": cfg.objective, "value": best.objective},
            "hyperparameters": {**config_to_dict(base.hyperparameters), **best.params},
            "tuned": best.params,
            "model": str(best_dir),
            "trials": {s: sum(r.status == s for r in records) for s in (COMPLETED, STOPPED, FAILED)},
        },
    )
    log.info("best: trial %d, discriminator_auc=%.4f, %s", best.number, best.objective, best.params)
    return TuningResult(records=records, table=table, best=best, best_model_dir=best_dir, output=out)
