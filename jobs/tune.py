"""Hyperparameter tuning job: SageMaker's Automatic Model Tuning for IP Insights, trials on Spark executors.

    python jobs/tune.py --train data/events --start-date 2026-01-01 --end-date 2026-01-07 \\
        --validation data/events --validation-start-date 2026-01-08 --validation-end-date 2026-01-08 \\
        --out runs/tune-2026-01-08 [--config conf/tune.yml] [--max-jobs 20] [--max-parallel-jobs 2] \\
        [--strategy bayesian|random] [--seed 0] [--name=value ...]

``--train``/``--validation``: the ingest job's events table (with optional day windows) or SageMaker's
headerless ``entity,ip`` CSV (``--format`` tells which when the path does not). ``--name=value``
overrides the base training config (``base_config`` of the tuning config, default conf/train.yml);
a tuned hyperparameter given that way is fixed and taken out of the search space.

Writes OUT/results.csv and OUT/results.parquet (one row per trial, like SageMaker's tuner analytics),
OUT/best_model/ (a normal model directory), OUT/best.json, OUT/tuning_config.json and OUT/trials/.
Exit status: 0 done, 1 every trial failed, 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ipinsights.tune")

DEFAULT_CONFIG = Path("conf/tune.yml")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    from ipinsights_jobs._common import add_spark_args, parse_with_overrides

    # No abbreviations: --name=value settings must never be taken for a prefix of a job option.
    p = argparse.ArgumentParser(prog="tune", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--train", required=True, help="events table (Parquet, by dt) or headerless entity,ip CSV")
    p.add_argument("--validation", required=True, help="the same for validation (gives discriminator_auc)")
    p.add_argument("--format", choices=["auto", "events", "csv"], default="auto", help="input format (both inputs)")
    p.add_argument("--start-date", help="first training day (events table)")
    p.add_argument("--end-date", help="last training day, inclusive")
    p.add_argument("--validation-start-date", help="first validation day (events table)")
    p.add_argument("--validation-end-date", help="last validation day, inclusive")
    p.add_argument("--out", required=True, help="output directory: results.csv/.parquet, best_model/, trials/")
    p.add_argument("--config", default=None, help=f"tuning YAML (default {DEFAULT_CONFIG} when present)")
    p.add_argument("--train-config", help="base training YAML (overrides base_config of the tuning config)")
    p.add_argument("--max-jobs", type=int, help="overrides max_jobs")
    p.add_argument("--max-parallel-jobs", type=int, help="overrides max_parallel_jobs")
    p.add_argument("--strategy", choices=["bayesian", "random"], help="overrides strategy")
    p.add_argument("--seed", type=int, help="overrides seed")
    p.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(p)
    return parse_with_overrides(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    from ipinsights.core.config import ConfigError, TrainConfig, load_config, parse_overrides
    from ipinsights.tune.config import TuningError, load_tune_config, without_parameters
    from ipinsights.tune.driver import tune
    from ipinsights.tune.results import format_table
    from ipinsights_jobs._common import build_spark, setup_logging

    setup_logging(args.verbose)
    config_path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    chosen = {"max_jobs": args.max_jobs, "max_parallel_jobs": args.max_parallel_jobs, "strategy": args.strategy,
              "seed": args.seed}  # fmt: skip
    try:
        cfg = load_tune_config(config_path, {k: v for k, v in chosen.items() if v is not None})
        if args.train_config:  # relative to the working directory, unlike base_config in the YAML
            cfg = dataclasses.replace(cfg, base_config=args.train_config)
        fixed = [k.rsplit(".", 1)[-1] for k in parse_overrides(overrides)]
        fixed = [name for name in fixed if name in {r.name for r in cfg.space}]
        if fixed:
            log.warning("fixed on the command line, so not tuned: %s", ", ".join(sorted(fixed)))
            cfg = without_parameters(cfg, fixed)
        base = load_config(TrainConfig, cfg.base_config, overrides)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    log.info("tuning %d trials (%d in parallel, %s, seed %d) over %s", cfg.max_jobs, cfg.max_parallel_jobs,
             cfg.strategy, cfg.seed, ", ".join(r.name for r in cfg.space))  # fmt: skip

    from pyspark.sql import SparkSession

    from ipinsights.storage.sagemaker_csv import read_pairs_table

    owns_session = SparkSession.getActiveSession() is None  # stop only a session this job created
    spark = build_spark("ipinsights-tune", args.master, args.spark_conf)
    try:
        try:
            train_df = read_pairs_table(spark, args.train, args.format, args.start_date, args.end_date)
            val_df = read_pairs_table(spark, args.validation, args.format, args.validation_start_date,
                                      args.validation_end_date or args.validation_start_date)  # fmt: skip
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        try:
            result = tune(spark, train_df, val_df, cfg, base, args.out)
        except TuningError as exc:
            log.error("%s", exc)
            return 1
    finally:
        if owns_session:
            spark.stop()
    print(format_table(result.table))
    best = result.best
    summary = {"best_trial": best.number, "discriminator_auc": best.objective, "tuned": best.params,
               "best_model": str(result.best_model_dir), "results": str(result.output / "results.csv")}  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
