"""One tuning trial: an ordinary training run of a hyperparameter set, with SageMaker's early stopping,
run on a Spark executor or in this process.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from ipinsights.storage.files import local_copy
from ipinsights.storage.sagemaker_csv import read_labelled_csv
from ipinsights.train.data import encode_labelled
from ipinsights.train.spec import RunSpec, read_pairs
from ipinsights.train.trainer import EpochMetrics, Trainer, train_model
from ipinsights.tune.config import COMPLETED, FAILED, STOPPED

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class PreparedData:
    """The encoded training and validation pairs, written once for every trial to read by path."""

    train_files: list[str]
    validation_files: list[str]
    entity_stats_file: str | None = None
    n_train: int = 0
    n_validation: int = 0
    n_entities: int = 0
    labelled_file: str | None = None  # labelled validation rows (CSV) where every trial can read them


@dataclass(kw_only=True)
class TrialSpec(RunSpec):
    """What one trial needs besides a :class:`RunSpec`: its number, training files and stopping rule."""

    number: int
    train_files: list[str]
    stop_below: list[float | None] = field(default_factory=list)  # per epoch; see median_running_average
    min_epochs: int = 1
    margin: float = 0.0
    max_parallel_jobs: int = 1
    metric: str = "discriminator_auc"  # the validation metric that is the objective (and stops a trial)
    labelled_file: str | None = None  # labelled validation rows: per-kind metrics every epoch


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


class _TrialManifest(TypedDict):
    """What a trial adds to its model's manifest (``status`` may change after an epoch)."""

    tuning_trial: int
    status: str


def _train_trial(spec: TrialSpec, history: list[EpochMetrics]) -> tuple[str, str]:
    """Train, checking for divergence and the stopping rule after every epoch; returns (status, model dir)."""
    hp, mopts, topts = spec.options()
    # Trials share the executor's cores; more threads than cores / trials only makes them spin.
    topts = dataclasses.replace(topts, num_threads=topts.num_threads or max(1, _cpu_count() // spec.max_parallel_jobs))
    train = read_pairs(spec.train_files, hp.num_entity_vectors)
    validation = read_pairs(spec.validation_files, hp.num_entity_vectors)
    labelled = None
    if spec.labelled_file:
        rows = read_labelled_csv(local_copy(spec.labelled_file))
        labelled = encode_labelled(rows, hp.num_entity_vectors, mopts.hash_seed, spec.labelled_file)
    manifest: _TrialManifest = {"tuning_trial": spec.number, "status": COMPLETED}

    def check(trainer: Trainer, history: list[EpochMetrics]) -> bool:
        m = history[-1]  # train_model has already refused a non-finite loss or weights
        auc = m.as_dict().get(spec.metric)
        if auc is None or not math.isfinite(auc):
            raise FloatingPointError(f"epoch {m.epoch} has no {spec.metric} ({auc}): empty validation data?")
        if _should_stop(m.epoch, auc, spec, hp.epochs):
            manifest["status"] = STOPPED  # the manifest is read when the model is saved, after this epoch
            return True
        return False

    train_model(
        hp,
        mopts,
        topts,
        train,
        validation,
        on_epoch_end=check,
        history=history,
        model_dir=spec.model_dir,
        entity_stats=spec.entity_stats_file,
        config=spec.config,
        manifest=manifest,
        labelled=labelled,
    )
    return manifest["status"], spec.model_dir


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Run one trial (on an executor); never raises: a failure comes back as status ``Failed``.

    Catching here, not in Spark, keeps Spark from retrying a trial that fails deterministically.
    """
    t0 = time.perf_counter()
    start = time.time()
    history: list[EpochMetrics] = []
    try:
        status, model_dir = _train_trial(spec, history)
        error = None
    except Exception as exc:
        status, model_dir, error = FAILED, None, f"{type(exc).__name__}: {exc}"[:1000]
    records = [m.as_dict() for m in history]
    return trial_result(spec.number, status, records, error, time.perf_counter() - t0, start, model_dir)


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
