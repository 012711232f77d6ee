"""Distributed training job: (entity, ip) events -> an IP Insights model, on Spark executors.

    spark-submit jobs/train.py --events data/events --start-date 2026-01-01 --end-date 2026-01-07 \\
        [--validation-start-date 2026-01-08 --validation-end-date 2026-01-08] --output runs/model-2026-01-08 \\
        [--config conf/train.yml] [--backend torch|horovod|local] [--num-workers 2] [--use-gpu auto] \\
        [--resume] [--warm-start runs/model-2026-01-07/model] [--name=value ...]

or ``--train-csv FILE`` (SageMaker's headerless entity,ip format) instead of ``--events``.

Writes OUTPUT/model/ (the model file), OUTPUT/metrics.jsonl (one line per epoch: loss, accuracy,
discriminator_auc, pairs/s, communication cost), OUTPUT/config.json (the resolved config),
OUTPUT/checkpoints/ (one per epoch, for --resume) and OUTPUT/work/ (the prepared buckets).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ipinsights.train")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    from ipinsights_jobs._common import add_spark_args, parse_with_overrides

    p = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", help="the ingest job's Parquet table (partitioned by dt)")
    src.add_argument("--train-csv", help="headerless entity,ip CSV (file, directory or glob)")
    p.add_argument("--start-date", help="first training day (YYYY-MM-DD, with --events)")
    p.add_argument("--end-date", help="last training day (inclusive)")
    p.add_argument("--validation-start-date", help="first validation day (with --events)")
    p.add_argument("--validation-end-date", help="last validation day (inclusive)")
    p.add_argument("--validation-csv", help="headerless entity,ip CSV for discriminator_auc")
    p.add_argument("--output", required=True, help="run directory: model/, metrics.jsonl, config.json, ...")
    p.add_argument("--config", default=None, help="YAML config (default conf/train.yml when present)")
    p.add_argument("--backend", choices=["torch", "horovod", "local"], help="overrides distributed.backend")
    p.add_argument("--num-workers", type=int, help="overrides distributed.num_workers")
    p.add_argument("--use-gpu", choices=["auto", "true", "false"], help="overrides distributed.use_gpu")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    p.add_argument("--warm-start", metavar="MODEL", help="start from an earlier model (daily retraining)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(p)
    args, rest = parse_with_overrides(p, argv)
    if args.events and not (args.start_date and args.end_date):
        p.error("--events needs --start-date and --end-date")
    return args, rest


def _log_mlflow(cfg_dict: dict, history: list[dict], model_dir: Path) -> None:
    """Log to MLflow when it is installed and a tracking URI is set (as Databricks users expect)."""
    import os

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


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    from ipinsights.core.config import ConfigError, TrainConfig, config_to_dict, load_config
    from ipinsights.storage.events import read_events
    from ipinsights.storage.files import atomic_write
    from ipinsights.storage.parquet import list_buckets, write_buckets, write_parquet_single
    from ipinsights.storage.sagemaker_csv import read_pairs_spark
    from ipinsights.train.distributed import WorkerSpec, run_training
    from ipinsights.train.prepare import add_buckets, encode_pairs_df, entity_stats
    from ipinsights_jobs._common import build_spark, setup_logging

    setup_logging(args.verbose)
    config_path = args.config or ("conf/train.yml" if Path("conf/train.yml").exists() else None)
    chosen = {"backend": args.backend, "num_workers": args.num_workers, "use_gpu": args.use_gpu}
    extra = [f"--distributed.{k}={v}" for k, v in chosen.items() if v]
    try:
        cfg = load_config(TrainConfig, config_path, [*overrides, *extra])
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    cfg_dict = config_to_dict(cfg)
    log.info("resolved config: %s", json.dumps(cfg_dict, sort_keys=True))
    hp, mopts, dist = cfg.hyperparameters, cfg.model, cfg.distributed
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.json") as fh:
        json.dump(cfg_dict, fh, indent=2)

    spark = build_spark("ipinsights-train", args.master, args.spark_conf)
    if args.events:
        train_df = read_events(spark, args.events, args.start_date, args.end_date)
    else:
        train_df = read_pairs_spark(spark, args.train_csv)
    if args.validation_csv:
        val_df = read_pairs_spark(spark, args.validation_csv)
    elif args.validation_start_date:
        last = args.validation_end_date or args.validation_start_date
        val_df = read_events(spark, args.events, args.validation_start_date, last)
    else:
        val_df = None

    work = out / "work"
    v6 = bool(mopts.ipv6_prefix_lengths)
    encoded = encode_pairs_df(train_df, hp.num_entity_vectors, mopts.hash_seed, v6).cache()
    n_buckets = dist.num_workers * dist.buckets_per_worker
    write_buckets(add_buckets(encoded.select("entity_row", "ip"), n_buckets, cfg.train.seed), str(work / "train"))
    buckets = list_buckets(spark, str(work / "train"), n_buckets)
    stats = entity_stats(encoded)
    encoded.unpersist()
    if not len(stats):
        log.error("no valid training pairs in the input")
        return 2
    stats_file = work / "entities.safetensors"
    with atomic_write(stats_file, "wb") as fh:
        fh.write(stats.to_bytes())
    val_files = []
    if val_df is not None:
        val_enc = encode_pairs_df(val_df, hp.num_entity_vectors, mopts.hash_seed, v6).select("entity_row", "ip")
        val_files = write_parquet_single(val_enc.coalesce(1), str(work / "validation"))
    log.info("training set: %d entities, %d buckets; backend=%s workers=%d", len(stats), n_buckets, dist.backend,
             dist.num_workers)  # fmt: skip

    spec = WorkerSpec(
        hyperparameters=cfg_dict["hyperparameters"],
        model_options=cfg_dict["model"],
        train_options=cfg_dict["train"],
        buckets=buckets,
        model_dir=str((out / "model").resolve()),
        checkpoint_dir=str((out / "checkpoints").resolve()),
        validation_files=val_files,
        entity_stats_file=str(stats_file.resolve()),
        resume=args.resume,
        warm_start=args.warm_start,
        checkpoint_keep=dist.checkpoint_keep,
        config=cfg_dict,
    )
    result = run_training(spark, spec, dist.backend, dist.num_workers, dist.use_gpu)
    history = result["history"]
    with atomic_write(out / "metrics.jsonl") as fh:
        fh.writelines(json.dumps(h) + "\n" for h in history)
    for h in history:
        auc = h.get("discriminator_auc")
        log.info("epoch %d: loss=%.4f accuracy=%.4f discriminator_auc=%s pairs/s=%.0f", h["epoch"], h["loss"],
                 h["accuracy"], "n/a" if auc is None else f"{auc:.4f}", h["pairs_per_second"])  # fmt: skip
    _log_mlflow(cfg_dict, history, out / "model")
    print(json.dumps({"model": str(out / "model"), "epochs": len(history), **{
        k: history[-1].get(k) for k in ("loss", "accuracy", "discriminator_auc", "pairs_per_second")}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
