"""The training jobs' work: the distributed Spark job (:func:`run_train_job`) and the single-machine
CSV training of ``ipinsights train`` (:func:`train_from_csv`). Both end in
:func:`ipinsights.train.trainer.train_model`, the one place a model is trained and saved.

MLflow logging is not here: the logged model wraps the Scorer, which train/ may not import, so the job
layer (``jobs/train.py``) opens the run around :func:`run_train_job` (:mod:`ipinsights.serve.mlflow_run`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ipinsights.core.config import ConfigError, DistributedOptions, TrainConfig, config_to_dict
from ipinsights.core.entities import EntityStats
from ipinsights.core.errors import DataFormatError
from ipinsights.storage.events import read_events
from ipinsights.storage.files import absolute_uri, join_uri, write_json
from ipinsights.storage.filesystems import arrow_readable, check_reachable, resolve_uri
from ipinsights.storage.lease import Leases
from ipinsights.storage.modelfile import ModelFileError, read_manifest
from ipinsights.storage.network_cache import resolve_asn_table
from ipinsights.storage.parquet import list_buckets, write_buckets, write_parquet_single
from ipinsights.storage.sagemaker_csv import read_labelled_csv, read_pairs_csv, read_pairs_spark
from ipinsights.train.data import encode_labelled, encode_pairs
from ipinsights.train.distributed import WorkerSpec, resolve_distributed, run_training
from ipinsights.train.prepare import add_buckets, encode_pairs_df, valid_pairs, write_entity_stats
from ipinsights.train.spec import write_metrics
from ipinsights.train.trainer import train_model

__all__ = ["TrainInputs", "run_train_job", "train_from_csv"]

log = logging.getLogger(__name__)

#: The final epoch's figures a training run prints as its one-line summary.
SUMMARY_KEYS = ("loss", "accuracy", "discriminator_auc", "pairs_per_second")


@dataclass(frozen=True)
class TrainInputs:
    """Where the training job's pairs come from: the events table (with day windows) or CSV files."""

    events: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    train_csv: str | None = None
    validation_start_date: str | None = None
    validation_end_date: str | None = None
    validation_csv: str | None = None
    #: Headerless entity,ip CSV of extra positive pairs (``--include-verdicts`` writes the confirmed benign ones).
    extra_pairs_csv: str | None = None


def run_train_job(
    spark,
    cfg: TrainConfig,
    inputs: TrainInputs,
    output: str | Path,
    resume: bool = False,
    warm_start: str | None = None,
) -> dict[str, Any]:
    """Prepare the data on Spark, train on ``cfg.distributed``'s ranks and write the run directory.

    ``output`` (and ``warm_start``) may be any path or URI the Python side reaches (local, ``file:``,
    ``s3://``): every rank reads and writes the run's files there, so a cluster needs no shared disk.
    Writes OUTPUT/config.json, OUTPUT/work/ (the encoded buckets, validation pairs and entity stats),
    OUTPUT/checkpoints/, OUTPUT/model/ and OUTPUT/metrics.jsonl; returns the run's one-line summary.
    Raises :class:`ConfigError` before any work when ``output`` cannot be reached or ``warm_start`` is
    not a model, :class:`DataFormatError` when no input row is a valid pair.

    The run holds the lease of ``output`` throughout (:mod:`ipinsights.storage.lease`): a second run
    into the same output waits or fails (``lease.on_busy``); rank 0 renews it before each checkpoint and
    before the model is saved, and the driver before the metrics (a run whose lease was taken over
    writes nothing more).
    """
    out = absolute_uri(output)
    check_reachable(out, "--output")  # before the lease, which is written beside it
    run_id = uuid.uuid4().hex[:12]
    with Leases(run_id, cfg.lease, spark) as leases:
        leases.acquire([out])
        return _run_train_job(spark, cfg, inputs, out, resume, warm_start, leases, run_id)


def _run_train_job(
    spark,
    cfg: TrainConfig,
    inputs: TrainInputs,
    output: str | Path,
    resume: bool,
    warm_start: str | None,
    leases: Leases,
    run_id: str,
) -> dict[str, Any]:
    """:func:`run_train_job` under the lease of ``output``."""
    dist = resolve_distributed(spark, cfg.distributed)  # concrete backend and ranks
    mopts, networks = resolve_asn_table(cfg.model)  # asn_table: auto -> the cache's newest, here on the driver
    cfg = replace(cfg, model=mopts)
    cfg_dict = config_to_dict(cfg)
    out = absolute_uri(output)
    if warm_start is not None:
        warm_start = absolute_uri(warm_start)
        try:
            read_manifest(warm_start)
        except ModelFileError as exc:
            raise ConfigError(f"--warm-start: {exc}") from None
    write_json(join_uri(out, "config.json"), cfg_dict)
    train_df, val_df = _read_inputs(spark, inputs)
    work = _prepare_work(spark, cfg, dist, train_df, val_df, join_uri(out, "work"))
    spec = WorkerSpec(
        hyperparameters=cfg_dict["hyperparameters"],
        model_options=cfg_dict["model"],
        train_options=cfg_dict["train"],
        model_dir=join_uri(out, "model"),
        validation_files=work.validation_files,
        entity_stats_file=work.entity_stats_file,
        config=cfg_dict,
        buckets=work.buckets,
        checkpoint_dir=join_uri(out, "checkpoints"),
        resume=resume,
        warm_start=warm_start,
        checkpoint_keep=dist.checkpoint_keep,
        timeout_seconds=dist.timeout_seconds,
        record={**networks, **({"windows": _windows(inputs)} if inputs.events else {})},
        run_id=run_id,
        fence=leases.ref(out) if arrow_readable(out) else None,  # (rank 0 renews it through pyarrow's stores)
    )
    history = run_training(spark, spec, dist.backend, dist.num_workers, dist.use_gpu)["history"]
    leases.renew()
    write_metrics(join_uri(out, "metrics.jsonl"), history)
    for h in history:
        auc = h.get("discriminator_auc")
        auc_text = "n/a" if auc is None else f"{auc:.4f}"
        line = "epoch %d: loss=%.4f accuracy=%.4f discriminator_auc=%s pairs/s=%.0f"
        log.info(line, h["epoch"], h["loss"], h["accuracy"], auc_text, h["pairs_per_second"])
    summary = {k: history[-1].get(k) for k in SUMMARY_KEYS}
    return {"model": join_uri(out, "model"), "epochs": len(history), "invalid_ip_rows": work.invalid_rows, **summary}


def _windows(inputs: TrainInputs) -> dict[str, list[str] | None]:
    """The day windows of the events table the model is trained and validated on (saved with the model:
    the scoring job calibrates on its validation days and builds profiles from its training days)."""
    val = None
    if inputs.validation_start_date:
        val = [inputs.validation_start_date, inputs.validation_end_date or inputs.validation_start_date]
    return {"train": [inputs.start_date or "", inputs.end_date or ""], "validation": val}


def _read_inputs(spark, inputs: TrainInputs) -> tuple[Any, Any]:
    """The training pairs (with the extra pairs) and the validation pairs (None without) as DataFrames."""
    if inputs.events:
        train_df = read_events(spark, inputs.events, inputs.start_date, inputs.end_date)
    elif inputs.train_csv:
        train_df = read_pairs_spark(spark, inputs.train_csv)
    else:
        raise ConfigError("the training job needs events or train_csv")
    if inputs.extra_pairs_csv:
        extra = read_pairs_spark(spark, inputs.extra_pairs_csv)
        log.info("training on %d extra pair(s) from %s", extra.count(), inputs.extra_pairs_csv)
        train_df = train_df.select("entity", "ip").unionByName(extra.select("entity", "ip"))
    if inputs.validation_csv:
        val_df = read_pairs_spark(spark, inputs.validation_csv)
    elif inputs.validation_start_date:
        if not inputs.events:
            raise ConfigError("validation days (validation_start_date) come from the events table: give events")
        last = inputs.validation_end_date or inputs.validation_start_date
        val_df = read_events(spark, inputs.events, inputs.validation_start_date, last)
    else:
        val_df = None
    return train_df, val_df


@dataclass(frozen=True)
class _Work:
    """What :func:`_prepare_work` wrote for the ranks."""

    buckets: list[list[str]]
    entity_stats_file: str
    validation_files: list[str]
    invalid_rows: int


def _prepare_work(spark, cfg: TrainConfig, dist: DistributedOptions, train_df, val_df, work: str) -> _Work:
    """Encode the pairs on Spark and write the ranks' inputs under ``work``: the training pairs in random
    buckets, the entity stats and the validation pairs. Raises :class:`DataFormatError` when no training
    row is a valid pair."""
    mopts = cfg.model
    v6 = bool(mopts.ipv6_prefix_lengths)
    encoded = encode_pairs_df(train_df, mopts.hash_seed, v6, keep_invalid=True).cache()
    n_buckets = dist.num_workers * dist.buckets_per_worker
    train_dir = resolve_uri(spark, join_uri(work, "train"))  # s3:// is s3a:// to plain Hadoop
    write_buckets(add_buckets(valid_pairs(encoded), n_buckets, cfg.train.seed), train_dir)
    buckets = list_buckets(spark, train_dir, n_buckets)
    stats_file = join_uri(work, "entities.safetensors")
    # The unusable rows are counted in the same aggregation.
    n_entities, n_invalid = write_entity_stats(encoded, stats_file)
    encoded.unpersist()
    if n_invalid:
        log.warning("dropped %d training row(s) whose IP address is invalid (or IPv6, with IPv6 levels off)", n_invalid)
    if not n_entities:
        raise DataFormatError(f"no valid training pairs in the input ({n_invalid} row(s) with an unusable IP address)")
    val_files = []
    if val_df is not None:
        val_enc = encode_pairs_df(val_df, mopts.hash_seed, v6)
        val_files = write_parquet_single(val_enc.coalesce(1), resolve_uri(spark, join_uri(work, "validation")))
    workers = f"backend={dist.backend} workers={dist.num_workers}"
    log.info("training set: %d entities, %d buckets; %s", n_entities, n_buckets, workers)
    return _Work(buckets, stats_file, val_files, n_invalid)


def train_from_csv(
    cfg: TrainConfig,
    train_csv: str | Path,
    model_dir: str | Path,
    validation_csv: str | Path | None = None,
    metrics_file: str | Path | None = None,
    labelled_csv: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train in this process on headerless ``entity,ip`` CSV files and save the model; returns the epochs.

    ``labelled_csv`` (headerless ``entity,ip,label,kind``) adds per-kind AUC and recall at 1% FPR to every
    epoch's metrics (:func:`ipinsights.train.validation.labelled_metrics`).

    Rows with an invalid address are dropped and reported (:func:`ipinsights.train.data.encode_pairs`).
    """
    mopts, networks = resolve_asn_table(cfg.model)  # asn_table: auto -> the cache's newest table
    cfg = replace(cfg, model=mopts)
    hp = cfg.hyperparameters
    table = read_pairs_csv(train_csv)
    val = read_pairs_csv(validation_csv) if validation_csv else None
    v6 = bool(mopts.ipv6_prefix_lengths)
    train = encode_pairs(table["entity"], table["ip"], hp.num_entity_vectors, mopts.hash_seed, str(train_csv), v6)
    validation = (
        encode_pairs(val["entity"], val["ip"], hp.num_entity_vectors, mopts.hash_seed, str(validation_csv), v6)
        if val is not None
        else None
    )
    validating = f", validating on {len(validation)}" if validation is not None else ""
    log.info("training on %d pairs (%d dropped)%s", len(train), train.n_invalid, validating)
    labelled = (
        encode_labelled(read_labelled_csv(labelled_csv), hp.num_entity_vectors, mopts.hash_seed, str(labelled_csv))
        if labelled_csv
        else None
    )
    stats = EntityStats.from_entities(table["entity"], mopts.hash_seed)
    result = train_model(
        hp,
        mopts,
        cfg.train,
        train,
        validation,
        model_dir=model_dir,
        entity_stats=stats,
        config=config_to_dict(cfg),
        labelled=labelled,
        manifest={"entities": len(stats), **networks},
    )
    history = [m.as_dict() for m in result.history]
    if metrics_file:
        write_metrics(metrics_file, history)
    return history
