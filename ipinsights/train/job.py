"""The training jobs' work: the distributed Spark job (:func:`run_train_job`) and the single-machine
CSV training of ``ipinsights train`` (:func:`train_from_csv`). Both end in
:func:`ipinsights.train.trainer.train_model`, the one place a model is trained and saved.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipinsights.core.config import ConfigError, TrainConfig, config_to_dict
from ipinsights.core.entities import EntityStats
from ipinsights.core.errors import DataFormatError
from ipinsights.storage.events import read_events
from ipinsights.storage.files import atomic_write
from ipinsights.storage.parquet import list_buckets, write_buckets, write_parquet_single
from ipinsights.storage.sagemaker_csv import read_pairs_csv, read_pairs_spark
from ipinsights.train.data import encode_pairs
from ipinsights.train.distributed import WorkerSpec, run_training
from ipinsights.train.prepare import add_buckets, count_entities, encode_pairs_df, valid_pairs
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


def run_train_job(
    spark,
    cfg: TrainConfig,
    inputs: TrainInputs,
    output: str | Path,
    resume: bool = False,
    warm_start: str | None = None,
) -> dict[str, Any]:
    """Prepare the data on Spark, train on ``cfg.distributed``'s ranks and write the run directory.

    Writes OUTPUT/config.json, OUTPUT/work/ (the encoded buckets, validation pairs and entity stats),
    OUTPUT/checkpoints/, OUTPUT/model/ and OUTPUT/metrics.jsonl; returns the run's one-line summary.
    Raises :class:`DataFormatError` when no input row is a valid pair.
    """
    mopts, dist = cfg.model, cfg.distributed
    cfg_dict = config_to_dict(cfg)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.json") as fh:
        json.dump(cfg_dict, fh, indent=2)

    if inputs.events:
        train_df = read_events(spark, inputs.events, inputs.start_date, inputs.end_date)
    elif inputs.train_csv:
        train_df = read_pairs_spark(spark, inputs.train_csv)
    else:
        raise ConfigError("the training job needs events or train_csv")
    if inputs.validation_csv:
        val_df = read_pairs_spark(spark, inputs.validation_csv)
    elif inputs.validation_start_date:
        if not inputs.events:
            raise ConfigError("validation days (validation_start_date) come from the events table: give events")
        last = inputs.validation_end_date or inputs.validation_start_date
        val_df = read_events(spark, inputs.events, inputs.validation_start_date, last)
    else:
        val_df = None

    work = out / "work"
    v6 = bool(mopts.ipv6_prefix_lengths)
    encoded = encode_pairs_df(train_df, mopts.hash_seed, v6, keep_invalid=True).cache()
    n_buckets = dist.num_workers * dist.buckets_per_worker
    write_buckets(add_buckets(valid_pairs(encoded), n_buckets, cfg.train.seed), str(work / "train"))
    buckets = list_buckets(spark, str(work / "train"), n_buckets)
    stats, n_invalid = count_entities(encoded)  # the unusable rows are counted in the same aggregation
    encoded.unpersist()
    if n_invalid:
        log.warning("dropped %d training row(s) whose IP address is invalid (or IPv6, with IPv6 levels off)", n_invalid)
    if not len(stats):
        raise DataFormatError(f"no valid training pairs in the input ({n_invalid} row(s) with an unusable IP address)")
    stats_file = work / "entities.safetensors"
    with atomic_write(stats_file, "wb") as fh:
        fh.write(stats.to_bytes())
    val_files = []
    if val_df is not None:
        val_enc = encode_pairs_df(val_df, mopts.hash_seed, v6)
        val_files = write_parquet_single(val_enc.coalesce(1), str(work / "validation"))
    log.info("training set: %d entities, %d buckets; backend=%s workers=%d", len(stats), n_buckets, dist.backend,
             dist.num_workers)  # fmt: skip

    spec = WorkerSpec(
        hyperparameters=cfg_dict["hyperparameters"],
        model_options=cfg_dict["model"],
        train_options=cfg_dict["train"],
        model_dir=str((out / "model").resolve()),
        validation_files=val_files,
        entity_stats_file=str(stats_file.resolve()),
        config=cfg_dict,
        buckets=buckets,
        checkpoint_dir=str((out / "checkpoints").resolve()),
        resume=resume,
        warm_start=warm_start,
        checkpoint_keep=dist.checkpoint_keep,
        timeout_seconds=dist.timeout_seconds,
    )
    history = run_training(spark, spec, dist.backend, dist.num_workers, dist.use_gpu)["history"]
    write_metrics(out / "metrics.jsonl", history)
    for h in history:
        auc = h.get("discriminator_auc")
        log.info("epoch %d: loss=%.4f accuracy=%.4f discriminator_auc=%s pairs/s=%.0f", h["epoch"], h["loss"],
                 h["accuracy"], "n/a" if auc is None else f"{auc:.4f}", h["pairs_per_second"])  # fmt: skip
    _log_mlflow(cfg_dict, history, out / "model")
    summary = {k: history[-1].get(k) for k in SUMMARY_KEYS}
    return {"model": str(out / "model"), "epochs": len(history), "invalid_ip_rows": n_invalid, **summary}


def _log_mlflow(cfg_dict: dict[str, Any], history: list[dict[str, Any]], model_dir: Path) -> None:
    """Log to MLflow when it is installed and a tracking URI is set (as Databricks users expect)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    try:
        import mlflow
    except ImportError:
        return
    with mlflow.start_run(run_name=f"ipinsights-{model_dir.parent.name}"):
        mlflow.log_params({f"{s}.{k}": v for s, d in cfg_dict.items() for k, v in d.items()})
        for h in history:
            metrics = {k: v for k, v in h.items() if isinstance(v, (int, float)) and v is not None and k != "epoch"}
            mlflow.log_metrics(metrics, step=int(h["epoch"]))
        mlflow.log_artifacts(str(model_dir), artifact_path="model")


def train_from_csv(
    cfg: TrainConfig,
    train_csv: str | Path,
    model_dir: str | Path,
    validation_csv: str | Path | None = None,
    metrics_file: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train in this process on headerless ``entity,ip`` CSV files and save the model; returns the epochs.

    Rows with an invalid address are dropped and reported (:func:`ipinsights.train.data.encode_pairs`).
    """
    hp, mopts = cfg.hyperparameters, cfg.model
    table = read_pairs_csv(train_csv)
    val = read_pairs_csv(validation_csv) if validation_csv else None
    v6 = bool(mopts.ipv6_prefix_lengths)
    train = encode_pairs(table["entity"], table["ip"], hp.num_entity_vectors, mopts.hash_seed, str(train_csv), v6)
    validation = (
        encode_pairs(val["entity"], val["ip"], hp.num_entity_vectors, mopts.hash_seed, str(validation_csv), v6)
        if val is not None
        else None
    )
    log.info("training on %d pairs (%d dropped)%s", len(train), train.n_invalid,
             f", validating on {len(validation)}" if validation is not None else "")  # fmt: skip
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
        manifest={"entities": len(stats)},
    )
    history = [m.as_dict() for m in result.history]
    if metrics_file:
        write_metrics(metrics_file, history)
    return history
