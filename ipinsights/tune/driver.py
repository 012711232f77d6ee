"""Hyperparameter tuning on Spark: SageMaker's Automatic Model Tuning for IP Insights, with Optuna.

A tuning job maximises a validation metric (``objective``: SageMaker's ``validation:discriminator_auc``, or
``validation:shuffled_auc``, which tells models apart where the first is near 1) over a search space of hyperparameters
(:class:`TuneConfig`, ``conf/tune.yml``) in ``max_jobs`` trials, ``max_parallel_jobs`` at a time.
Each trial is an ordinary single-process training run (:class:`ipinsights.train.trainer.Trainer`) of the
base training config with the sampled values put in.

Parallelism. The driver runs Optuna's ask/tell loop. Each trial is a one-task Spark job
(``sc.parallelize([spec], 1).map(run_trial)``) issued from a driver thread, so up to
``max_parallel_jobs`` trials train at once on executors. :func:`run_trial` is top level and picklable,
gets a plain :class:`TrialSpec` (paths and dicts, never a SparkSession or a
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipinsights.core.config import (
    ConfigError,
    Hyperparameters,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
from ipinsights.storage.files import absolute_uri, join_uri
from ipinsights.train.spec import write_metrics
from ipinsights.tune.config import COMPLETED, FAILED, STOPPED, TuneConfig, TuningError
from ipinsights.tune.results import TrialRecord, best_record, drop_model, record_of, results_frame
from ipinsights.tune.trials import PreparedData, SparkTrialRunner, TrialSpec, median_running_average, trial_result

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _sampler(cfg: TuneConfig, parallel: int):
    import optuna

    if cfg.strategy == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    startup = cfg.startup_trials or max(parallel, min(10, cfg.max_jobs // 3))
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)


def run_trials(
    cfg: TuneConfig,
    base: TrainConfig,
    data: PreparedData,
    trials_dir: str,
    submit: Callable[[TrialSpec], cf.Future],
) -> list[TrialRecord]:
    """Ask, run and tell ``cfg.max_jobs`` trials, ``cfg.max_parallel_jobs`` at a time, in a fixed order.

    See the module docstring for why the order makes the sequence reproducible. Unless
    ``keep_trial_models``, a trial's model is deleted as soon as a better one exists.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is logged here, with its status
    parallel = min(cfg.max_parallel_jobs, cfg.max_jobs)
    study = optuna.create_study(direction="maximize", sampler=_sampler(cfg, parallel))
    dists = {r.name: r.distribution() for r in cfg.ranges}
    base_hp = config_to_dict(base.hyperparameters)
    if cfg.entity_vectors_per_entity and data.n_entities and "num_entity_vectors" not in dists:
        # SageMaker's advice, from the data: the base config's value was written for some other data set.
        base_hp["num_entity_vectors"] = max(1, math.ceil(cfg.entity_vectors_per_entity * data.n_entities))
        log.info(
            "num_entity_vectors=%d for every trial (%s x %d training entities)",
            base_hp["num_entity_vectors"],
            cfg.entity_vectors_per_entity,
            data.n_entities,
        )
    if cfg.baseline_trial:
        outside = [r.name for r in cfg.ranges if not r.contains(base_hp[r.name])]
        if outside:
            log.warning("baseline trial skipped: base values of %s lie outside the space", outside)
        else:
            study.enqueue_trial({r.name: base_hp[r.name] for r in cfg.ranges})
    base_dict = config_to_dict(base)
    trials_dir = absolute_uri(trials_dir)
    es = cfg.early_stopping
    in_flight: dict[int, tuple[Any, dict[str, Any], cf.Future]] = {}
    records: list[TrialRecord] = []
    best: tuple[TrialRecord, float] | None = None  # the trial holding the best model so far, and its objective

    def launch(n: int) -> None:
        trial = study.ask(dists)
        assert trial.number == n, (trial.number, n)  # asks happen strictly in trial-number order
        params = {r.name: trial.params[r.name] for r in cfg.ranges}
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
            hyperparameters=hp,
            model_options=base_dict["model"],
            train_options=train_options,
            model_dir=join_uri(trials_dir, f"trial-{n:03d}", "model"),
            validation_files=list(data.validation_files),
            entity_stats_file=data.entity_stats_file,
            config={**base_dict, "hyperparameters": hp, "tuning": {"trial": n, "params": params}},
            number=n,
            train_files=list(data.train_files),
            stop_below=stop_below,
            min_epochs=es.min_epochs,
            margin=es.margin,
            max_parallel_jobs=parallel,
            metric=cfg.metric,
            labelled_file=data.labelled_file,
        )
        log.info("trial %d launched: %s", n, params)
        in_flight[n] = (trial, params, submit(spec))

    next_ask = 0
    for n in range(cfg.max_jobs):
        while next_ask < cfg.max_jobs and next_ask < n + parallel:
            launch(next_ask)
            next_ask += 1
        trial, params, fut = in_flight.pop(n)
        rec = record_of(fut.result(), params, cfg.metric)
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
            write_metrics(join_uri(trials_dir, f"trial-{n:03d}", "metrics.jsonl"), rec.history)
        auc_text = "n/a" if rec.objective is None else f"{rec.objective:.4f}"
        log.info(
            "trial %d %s: %s=%s epochs=%d %.1f s%s",
            n,
            rec.status,
            cfg.metric,
            auc_text,
            rec.epochs,
            rec.seconds,
            f" ({rec.error})" if rec.error else "",
        )
        if rec.model_dir and rec.objective is not None:
            if best is None or rec.objective > best[1]:
                if best is not None and not cfg.keep_trial_models:
                    drop_model(best[0])
                best = rec, rec.objective
            elif not cfg.keep_trial_models:
                drop_model(rec)
        records.append(rec)
    return records


@dataclass
class TuningResult:
    """What a tuning job produced."""

    records: list[TrialRecord]
    table: pd.DataFrame
    best: TrialRecord
    best_model_dir: str  # paths or URIs, as the output was given (local paths made absolute)
    output: str

    def summary(self) -> dict[str, Any]:
        """The job's one-line result: the best trial, its objective and values, and where things are."""
        best = self.best
        return {
            "best_trial": best.number,
            best.metric: best.objective,
            "tuned": best.params,
            "best_model": self.best_model_dir,
            "results": join_uri(self.output, "results.csv"),
        }


def prepare_data(
    spark: SparkSession, train_df: DataFrame, validation_df: DataFrame, base: TrainConfig, work_dir: str
) -> PreparedData:
    """Encode both sets on the executors and write them under ``work_dir`` for the trials to read.

    Entities are stored as their full 64-bit hash, not as rows, so every trial can use its own
    ``num_entity_vectors``; entity stats go into every trial's model, as the training job does.
    """
    from ipinsights.storage.filesystems import resolve_uri
    from ipinsights.storage.parquet import write_parquet_single
    from ipinsights.train.prepare import encode_pairs_df, write_entity_stats

    work = absolute_uri(work_dir)
    mopts = base.model
    v6 = bool(mopts.ipv6_prefix_lengths)
    enc = encode_pairs_df(train_df, mopts.hash_seed, v6).cache()
    try:
        n_train = enc.count()
        if n_train == 0:
            raise TuningError("no valid training pairs in the input")
        train_files = write_parquet_single(enc, resolve_uri(spark, join_uri(work, "train")))
        stats_file = join_uri(work, "entities.safetensors")
        n_entities = write_entity_stats(enc, stats_file)[0]
    finally:
        enc.unpersist()
    val = encode_pairs_df(validation_df, mopts.hash_seed, v6)
    val_files = write_parquet_single(val.coalesce(1), resolve_uri(spark, join_uri(work, "validation")))
    n_val = val.count()
    if n_val == 0:
        raise TuningError("no valid validation pairs: the objective's validation metric needs them")
    log.info("tuning data: %d training pairs (%d entities), %d validation pairs", n_train, n_entities, n_val)
    return PreparedData(train_files, val_files, stats_file, n_train, n_val, n_entities)


def tune(
    spark: SparkSession,
    train_df: DataFrame,
    validation_df: DataFrame,
    cfg: TuneConfig,
    base: TrainConfig,
    output: str | Path,
    submit: Callable[[TrialSpec], cf.Future] | None = None,
    labelled: str | None = None,
) -> TuningResult:
    """Run a tuning job; writes under ``output``:

    ``labelled``: a headerless ``entity,ip,label,kind`` CSV of labelled validation rows, copied under
    ``output`` for the trials: each epoch then reports per-kind AUC and recall at 1% FPR, and the objective
    may be ``labelled_recall``.

    ``results.csv`` / ``results.parquet`` (one row per trial), ``best_model/`` (a normal model
    directory), ``best.json``, ``tuning_config.json`` (the resolved tuning and base configs),
    ``trials/trial-NNN/`` (per-epoch metrics, and models when kept) and ``work/`` (the encoded data).
    ``output`` may be a path or a URI (``s3://``): trials on executors write their models there.
    Raises :class:`ConfigError` before any work when ``output`` cannot be reached (or the objective needs
    labelled rows that were not given), :class:`TuningError`
    (after writing the table) when every trial failed.
    """
    from ipinsights.storage.files import copy_tree_atomic, delete_uri, write_frame, write_json
    from ipinsights.storage.filesystems import check_reachable
    from ipinsights.storage.modelfile import MANIFEST

    if cfg.metric == "labelled_recall" and not labelled:  # before anything is written or deleted
        raise ConfigError("objective labelled_recall needs labelled validation rows (--validation-labelled)")
    out = absolute_uri(output)
    check_reachable(out, "tuning output")
    write_json(join_uri(out, "tuning_config.json"), {"tuning": config_to_dict(cfg), "base": config_to_dict(base)})
    delete_uri(join_uri(out, "trials"))  # a rerun starts clean: no stale trial of an older job
    data = prepare_data(spark, train_df, validation_df, base, join_uri(out, "work"))
    if labelled:
        from ipinsights.storage.files import read_bytes, write_bytes

        labelled_file = join_uri(out, "work", "labelled.csv")
        write_bytes(labelled_file, read_bytes(labelled))  # small; where every executor reads the output
        data = dataclasses.replace(data, labelled_file=labelled_file)
    runner = None
    if submit is None:
        runner = SparkTrialRunner(spark, min(cfg.max_parallel_jobs, cfg.max_jobs))
        submit = runner.submit
    try:
        records = run_trials(cfg, base, data, join_uri(out, "trials"), submit)
    except BaseException:  # e.g. Ctrl-C: stop the trials still running on the executors
        if runner is not None:
            runner.close(cancel=True)
        raise
    if runner is not None:
        runner.close()
    table = results_frame(records, [r.name for r in cfg.ranges])
    write_frame(table, join_uri(out, "results.csv"))
    write_frame(table, join_uri(out, "results.parquet"))
    best = best_record(records)
    if best is None or not best.model_dir:
        errors = "; ".join(f"trial {r.number}: {r.error}" for r in records)
        raise TuningError(f"all {len(records)} trials failed: {errors}")
    best_dir = join_uri(out, "best_model")
    copy_tree_atomic(best.model_dir, best_dir, last=MANIFEST)
    write_json(
        join_uri(out, "best.json"),
        {
            "trial": best.number,
            "status": best.status,
            "objective": {"name": cfg.objective, "value": best.objective},
            "hyperparameters": {**config_to_dict(base.hyperparameters), **best.params},
            "tuned": best.params,
            "model": best_dir,
            "trials": {s: sum(r.status == s for r in records) for s in (COMPLETED, STOPPED, FAILED)},
        },
    )
    log.info("best: trial %d, %s=%.4f, %s", best.number, best.metric, best.objective, best.params)
    return TuningResult(records=records, table=table, best=best, best_model_dir=best_dir, output=out)


@dataclass(frozen=True)
class TuneInputs:
    """Where the tuning job's pairs come from: events tables (with day windows) or headerless CSV files."""

    train: str
    validation: str
    format: str = "auto"  # auto | events | csv (both inputs)
    start_date: str | None = None
    end_date: str | None = None
    validation_start_date: str | None = None
    validation_end_date: str | None = None
    validation_labelled: str | None = None  # headerless entity,ip,label,kind CSV


def run_tune_job(
    spark: SparkSession, cfg: TuneConfig, base: TrainConfig, inputs: TuneInputs, output: str | Path
) -> TuningResult:
    """Read the inputs and :func:`tune` (a bad format or date range raises :class:`ConfigError`)."""
    from ipinsights.storage.network_cache import resolve_asn_table
    from ipinsights.storage.sagemaker_csv import read_pairs_table

    # asn_table: auto is resolved once here, so every trial trains with the same cached table version.
    base = dataclasses.replace(base, model=resolve_asn_table(base.model)[0])

    log.info(
        "tuning %d trials (%d in parallel, %s, seed %d) over %s",
        cfg.max_jobs,
        cfg.max_parallel_jobs,
        cfg.strategy,
        cfg.seed,
        ", ".join(r.name for r in cfg.ranges),
    )
    train_df = read_pairs_table(spark, inputs.train, inputs.format, inputs.start_date, inputs.end_date)
    val_df = read_pairs_table(
        spark,
        inputs.validation,
        inputs.format,
        inputs.validation_start_date,
        inputs.validation_end_date or inputs.validation_start_date,
    )
    return tune(spark, train_df, val_df, cfg, base, output, labelled=inputs.validation_labelled)
