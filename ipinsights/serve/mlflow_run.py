"""A training job's MLflow run: whether to log, and when on, the run's params (the resolved training
config), its per-epoch metrics and the trained model as a ``pyfunc`` (:mod:`ipinsights.serve.mlflow_pyfunc`),
registered under ``mlflow.registered_model_name``.

Why in serve/: the logged model wraps the :class:`~ipinsights.score.scorer.Scorer`, which train/ may not
import (tests/test_layout.py); serve/ is the highest library layer that may (score's Spark-free parts), and a
``pyfunc`` is one more way of serving the model. The training job (``jobs/train.py``) opens the run around
its training, so a run that fails is marked failed, with its params.

This module imports mlflow only when logging is on: with it off, mlflow is never imported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipinsights._version import __version__
from ipinsights.core.config import ConfigError, TrainConfig, config_to_dict
from ipinsights.storage.files import uri_name
from ipinsights.storage.modelfile import read_manifest

__all__ = ["Tracking", "TrackingError", "TrainingRun", "training_run", "tracking_of"]

log = logging.getLogger(__name__)

INSTALL = "pip install 'ipinsights[mlflow]'"
MIN_MLFLOW_MAJOR = 3

#: The config sections logged as params (``section.name``); the mlflow section says only where to log.
PARAM_SECTIONS = ("hyperparameters", "model", "train", "distributed", "schedule")


class TrackingError(RuntimeError):
    """Logging to MLflow failed (the run's own output, the model included, is written all the same)."""


@dataclass(frozen=True)
class Tracking:
    """Logging is on: why, whether the settings asked for it (else the environment implied it), and the
    tracking URI to set (None: MLflow's own, from ``MLFLOW_TRACKING_URI`` or its default)."""

    reason: str
    explicit: bool
    tracking_uri: str | None


def tracking_of(cfg: TrainConfig, environ: Mapping[str, str] = os.environ) -> Tracking | None:
    """Whether a training run logs to MLflow (None: it does not). A tracking server configured turns it on:
    ``mlflow.tracking_uri``, the ``MLFLOW_TRACKING_URI`` variable, or a Databricks runtime (where the tracking
    server is the workspace's and needs no variable); ``mlflow.enabled`` true or false decides outright."""
    opts = cfg.mlflow
    if opts.enabled is False:
        return None
    if opts.tracking_uri:
        return Tracking(f"mlflow.tracking_uri={opts.tracking_uri}", True, opts.tracking_uri)
    if environ.get("MLFLOW_TRACKING_URI"):
        return Tracking("MLFLOW_TRACKING_URI is set", bool(opts.enabled), None)
    if environ.get("DATABRICKS_RUNTIME_VERSION"):
        return Tracking("running on Databricks", bool(opts.enabled), "databricks")
    if opts.enabled:
        return Tracking("mlflow.enabled=true", True, None)
    return None


class TrainingRun:
    """The active MLflow run of a training job."""

    def __init__(self, run_id: str, cfg: TrainConfig) -> None:
        self.run_id = run_id
        self.cfg = cfg

    def log_trained(self, model_uri: str, summary: Mapping[str, Any] | None = None) -> Any:
        """Log the trained model's per-epoch metrics (from its manifest: resumed epochs included) and the model
        as a ``pyfunc`` named ``model``, registered under ``mlflow.registered_model_name`` when set; returns
        MLflow's ``ModelInfo``. Raises :class:`TrackingError` when MLflow refuses any of it."""
        import mlflow

        from ipinsights.serve.mlflow_pyfunc import log_scorer_model

        epochs = read_manifest(model_uri).get("training", {}).get("epochs", [])
        name = self.cfg.mlflow.registered_model_name
        with _refused(f"MLflow run {self.run_id}: logging the model at {model_uri}"):
            for record in epochs:
                mlflow.log_metrics(epoch_metrics(record), step=int(record["epoch"]))
            if summary and isinstance(summary.get("invalid_ip_rows"), int):
                mlflow.log_metric("invalid_ip_rows", summary["invalid_ip_rows"])
            info = log_scorer_model(model_uri, registered_model_name=name)
        registered = f"; registered as {name!r} version {info.registered_model_version}" if name else ""
        log.info(
            "MLflow run %s: logged %d epoch(s) and the model runs:/%s/model%s",
            self.run_id,
            len(epochs),
            self.run_id,
            registered,
        )
        return info


@contextmanager
def _refused(what: str) -> Iterator[None]:
    """MLflow's refusals (a server that cannot be reached, a registry that rejects the name) as a
    :class:`TrackingError` saying what was being done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"{what} failed: {exc}") from exc


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's figures as MLflow metrics: every number the trainer reported (loss, accuracy,
    discriminator_auc, pairs/s, per-kind figures...), not the epoch number (the step) nor a missing one."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
    }


def run_params(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved training config as MLflow params, ``section.name`` (e.g. ``hyperparameters.epochs``)."""
    data = config_to_dict(cfg)
    return {f"{s}.{k}": v for s in PARAM_SECTIONS for k, v in data[s].items()}


def _unusable_mlflow() -> str | None:
    """Why the installed mlflow cannot log the run (None: it can)."""
    try:
        import mlflow
    except ImportError:
        return "mlflow is not installed"
    major = mlflow.__version__.split(".")[0]
    if not major.isdigit() or int(major) < MIN_MLFLOW_MAJOR:  # log_model(name=...), models from code
        return f"mlflow {mlflow.__version__} is older than {MIN_MLFLOW_MAJOR}.0"
    return None


@contextmanager
def training_run(
    cfg: TrainConfig, output: str, environ: Mapping[str, str] = os.environ
) -> Iterator[TrainingRun | None]:
    """An MLflow run around a training job writing ``output`` (None when logging is off), with its params
    logged; an exception inside marks the run failed. Raises :class:`ConfigError` before any work when the
    settings ask for logging and mlflow is not installed (implied by the environment only: a warning, no run),
    :class:`TrackingError` when the tracking server refuses the run."""
    tracking = tracking_of(cfg, environ)
    if tracking is None:
        if cfg.mlflow.enabled is None and (cfg.mlflow.registered_model_name or cfg.mlflow.experiment):
            log.warning("mlflow settings given but no tracking server configured (mlflow.tracking_uri): not logging")
        yield None
        return
    unusable = _unusable_mlflow()
    if unusable:
        message = f"MLflow logging is on ({tracking.reason}) but {unusable} ({INSTALL})"
        if tracking.explicit:
            raise ConfigError(message)
        log.warning("%s: not logging", message)
        yield None
        return
    import mlflow

    with _refused(f"MLflow ({tracking.reason}): starting a run"):
        if tracking.tracking_uri:
            mlflow.set_tracking_uri(tracking.tracking_uri)
        if cfg.mlflow.experiment:
            mlflow.set_experiment(cfg.mlflow.experiment)
        active = mlflow.start_run(run_name=f"ipinsights-train-{uri_name(output.rstrip('/'))}")
    with active as run:
        log.info("MLflow run %s at %s (%s)", run.info.run_id, mlflow.get_tracking_uri(), tracking.reason)
        with _refused(f"MLflow run {run.info.run_id}: logging the params"):
            mlflow.log_params(run_params(cfg))
            mlflow.set_tags({"ipinsights.version": __version__, "ipinsights.output": output})
        yield TrainingRun(run.info.run_id, cfg)
