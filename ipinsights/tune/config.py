"""The tuning configuration: search space (SageMaker's parameter ranges), strategy, early stopping."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipinsights.core.config import (
    ConfigError,
    Hyperparameters,
    TrainConfig,
    check_float,
    check_int,
    config_from_dict,
    load_config,
    parse_overrides,
)

log = logging.getLogger(__name__)


#: SageMaker's training job statuses, as its tuner analytics table shows them.
COMPLETED, FAILED, STOPPED = "Completed", "Failed", "Stopped"
#: Validation metrics a trial reports every epoch (maximised): SageMaker's ``discriminator_auc`` (real pairs vs
#: random addresses) and ``shuffled_auc`` (real pairs vs the same addresses with other entities: harder).
#: ``labelled_recall``: with labelled validation rows (``--validation-labelled``), the mean over attack kinds
#: of the recall at 1% FPR (:func:`ipinsights.train.validation.labelled_metrics`).
METRICS = ("discriminator_auc", "shuffled_auc", "labelled_recall")
#: The ``objective`` names: a metric, with or without SageMaker's ``validation:`` prefix.
OBJECTIVES = tuple(f"validation:{m}" for m in METRICS) + METRICS


_KINDS = ("integer", "continuous", "categorical")


_SCALINGS = ("auto", "linear", "logarithmic")


_RATES = ("random_negative_sampling_rate", "shuffled_negative_sampling_rate")


_HP_TYPES = typing.get_type_hints(Hyperparameters)


class TuningError(RuntimeError):
    """The tuning job could not produce a model (e.g. every trial failed)."""


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

    def _cast(self, tp: builtins.type, value: Any, what: str) -> Any:  # `type` is the field here
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


#: SageMaker's recommended ranges for IP Insights (``space: sagemaker``). On CPUs most of its trials are
#: wasted: weight_decay linear in 0-1 puts most of them above 0.02, where the row-wise decay of the embedding
#: tables collapses the model to a coin flip, and 100 epochs of 256-dim vectors take days.
SAGEMAKER_SPACE: tuple[ParameterRange, ...] = (
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
#: The default space (``space: cpu``), that a CPU user can run as shipped: weight_decay on a log scale that
#: can still be zero, epochs and vector_dim bounded, and ``num_entity_vectors`` left out (each trial gets
#: ``entity_vectors_per_entity`` x the training entities, unless the space or the command line names it).
CPU_SPACE: tuple[ParameterRange, ...] = (
    _r("epochs", "integer", 1, 8, "linear"),
    _r("learning_rate", "continuous", 1e-3, 0.05, "logarithmic"),
    _r("mini_batch_size", "integer", 256, 4096, "logarithmic"),
    _r("num_ip_encoder_layers", "integer", 1, 2, "linear"),
    _r("random_negative_sampling_rate", "integer", 1, 8, "linear"),
    _r("shuffled_negative_sampling_rate", "integer", 0, 4, "linear"),
    _r("vector_dim", "integer", 16, 128, "logarithmic"),
    ParameterRange("weight_decay", "categorical", values=(0.0, 1e-7, 1e-6, 1e-5, 1e-4)),
)
#: Named spaces (``space: <name>`` in conf/tune.yml).
NAMED_SPACES = {"cpu": CPU_SPACE, "sagemaker": SAGEMAKER_SPACE}
DEFAULT_SPACE = CPU_SPACE


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
        check_int("early_stopping.min_trials", self.min_trials, 1, None)
        check_int("early_stopping.min_epochs", self.min_epochs, 1, None)
        check_float("early_stopping.margin", self.margin, 0.0, 1.0)


@dataclass(frozen=True)
class TuneConfig:
    """A tuning job, as loaded from ``conf/tune.yml``.

    ``space`` is given in YAML as a mapping ``name: {type, min, max, scaling}`` (or a list of ranges
    with a ``name``) and held as a tuple of :class:`ParameterRange` (typed as such: :attr:`ranges`).
    ``baseline_trial`` makes trial 0 train the base config's own values (when they lie in the space),
    so the table shows what tuning gained.
    """

    space: Mapping[str, Any] | tuple[ParameterRange, ...] | str = DEFAULT_SPACE
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
    #: num_entity_vectors of every trial when the space leaves it out: this many per training entity
    #: (SageMaker's advice: about 2); 0 keeps the base config's value.
    entity_vectors_per_entity: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", _parse_space(self.space))
        check_int("max_jobs", self.max_jobs, 1, 100_000)
        check_int("max_parallel_jobs", self.max_parallel_jobs, 1, 10_000)
        check_int("seed", self.seed, 0, 2**32 - 1)
        check_int("startup_trials", self.startup_trials, 0, None)
        check_int("threads_per_trial", self.threads_per_trial, 0, 1024)
        check_float("entity_vectors_per_entity", self.entity_vectors_per_entity, 0.0, 1000.0)
        strategy = str(self.strategy).lower()
        if strategy not in ("bayesian", "random"):
            raise ConfigError(f"strategy={self.strategy!r} must be bayesian or random (grid, hyperband: not offered)")
        object.__setattr__(self, "strategy", strategy)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r} must be one of {', '.join(OBJECTIVES)} (maximised)")

    @property
    def metric(self) -> str:
        """The validation metric the objective names, as trials report it (``shuffled_auc``)."""
        return self.objective.removeprefix("validation:")

    @property
    def ranges(self) -> tuple[ParameterRange, ...]:
        """The search space: ``space`` as :meth:`__post_init__` parsed it (the field also takes the YAML form)."""
        assert isinstance(self.space, tuple)  # __post_init__ always replaces space with the parsed tuple
        return self.space


def _parse_space(space: Any) -> tuple[ParameterRange, ...]:
    if isinstance(space, str):
        if space not in NAMED_SPACES:
            raise ConfigError(f"space={space!r} must be one of {', '.join(NAMED_SPACES)} or a mapping of ranges")
        return NAMED_SPACES[space]
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
    return base_relative_to(load_config(TuneConfig, path, overrides), path)


def base_relative_to(cfg: TuneConfig, path: str | Path | None) -> TuneConfig:
    """``cfg`` with a relative ``base_config`` taken relative to ``path``'s folder (the tuning config file)."""
    if cfg.base_config and path is not None and not Path(cfg.base_config).is_absolute():
        cfg = dataclasses.replace(cfg, base_config=str(Path(path).parent / cfg.base_config))
    return cfg


def resolve_tuning(
    cfg: TuneConfig, path: str | Path | None, train_config: str | None = None, overrides: Sequence[str] = ()
) -> tuple[TuneConfig, TrainConfig]:
    """The tuning job's two configs from the tuning config ``cfg`` loaded from ``path``.

    The base training config is ``train_config`` (relative to the working directory) or else
    ``cfg.base_config`` (relative to ``path``), with the ``--name=value`` ``overrides`` applied; a tuned
    hyperparameter given that way is fixed, so it is taken out of the search space.
    """
    cfg = base_relative_to(cfg, path)
    if train_config:
        cfg = dataclasses.replace(cfg, base_config=train_config)
    fixed = [k.rsplit(".", 1)[-1] for k in parse_overrides(overrides)]
    if "num_entity_vectors" in fixed:  # given: not derived from the number of entities either
        cfg = dataclasses.replace(cfg, entity_vectors_per_entity=0.0)
    fixed = [name for name in fixed if name in {r.name for r in cfg.ranges}]
    if fixed:
        log.warning("fixed on the command line, so not tuned: %s", ", ".join(sorted(fixed)))
        cfg = without_parameters(cfg, fixed)
    return cfg, load_config(TrainConfig, cfg.base_config, overrides)


def without_parameters(cfg: TuneConfig, names: Iterable[str]) -> TuneConfig:
    """``cfg`` with these hyperparameters taken out of the space (fixed by the caller instead)."""
    names = set(names)
    kept = tuple(r for r in cfg.ranges if r.name not in names)
    if not kept:
        raise ConfigError(f"every tuned hyperparameter ({sorted(names)}) was fixed: nothing left to tune")
    return dataclasses.replace(cfg, space=kept)
