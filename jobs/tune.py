"""Hyperparameter tuning job: SageMaker's Automatic Model Tuning for IP Insights, trials on Spark executors.

    python jobs/tune.py --train data/events --start-date 2026-01-01 --end-date 2026-01-07 \\
        --validation data/events --validation-start-date 2026-01-08 --validation-end-date 2026-01-08 \\
        --output runs/tune-2026-01-08 [--config conf/tune.yml] [--max-jobs 20] [--max-parallel-jobs 2] \\
        [--strategy bayesian|random] [--seed 0] [--name=value ...]

``--train``/``--validation``: the ingest job's events table (with optional day windows) or SageMaker's
headerless ``entity,ip`` CSV (``--format`` tells which when the path does not). ``--name=value``
overrides the base training config (``base_config`` of the tuning config, default conf/demo.yml);
a tuned hyperparameter given that way is fixed and taken out of the search space.

Writes OUT/results.csv and OUT/results.parquet (one row per trial, like SageMaker's tuner analytics),
OUT/best_model/ (a normal model directory), OUT/best.json, OUT/tuning_config.json and OUT/trials/;
OUT may be a local path or a URI (s3://bucket/tune), checked before any work.
Exit status: 0 done, 1 every trial failed, 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ipinsights.tune.config import TuneConfig, TuningError, resolve_tuning
from ipinsights.tune.driver import TuneInputs, run_tune_job
from ipinsights.tune.results import format_table
from ipinsights_jobs._common import (
    EXIT_FAILURE,
    Job,
    JobContext,
    add_output_arg,
    add_spark_args,
    default_config,
    from_args,
    parse_with_overrides,
    require,
)

JOB = Job("tune", TuneConfig, errors=[(TuningError, EXIT_FAILURE)])


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The job's options, and the ``--name=value`` overrides of the base training config."""
    # No abbreviations: --name=value settings must never be taken for a prefix of a job option.
    p = argparse.ArgumentParser(prog="tune", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--train", required=True, help="events table (Parquet, by dt) or headerless entity,ip CSV")
    p.add_argument("--validation", required=True, help="the same for validation (gives discriminator_auc)")
    p.add_argument(
        "--validation-labelled",
        help="headerless entity,ip,label,kind CSV: per-kind AUC and recall at "
        "1%% FPR for every trial, and the objective validation:labelled_recall",
    )
    p.add_argument("--format", choices=["auto", "events", "csv"], default="auto", help="input format (both inputs)")
    p.add_argument("--start-date", help="first training day (events table)")
    p.add_argument("--end-date", help="last training day, inclusive")
    p.add_argument("--validation-start-date", help="first validation day (events table)")
    p.add_argument("--validation-end-date", help="last validation day, inclusive")
    add_output_arg(p, "output directory or URI: results.csv/.parquet, best_model/, trials/", old="--out")
    p.add_argument("--config", default=None, help="tuning YAML (default: the project's conf/tune.yml)")
    p.add_argument("--train-config", help="base training YAML (overrides base_config of the tuning config)")
    p.add_argument("--max-jobs", type=int, help="overrides max_jobs")
    p.add_argument("--max-parallel-jobs", type=int, help="overrides max_parallel_jobs")
    p.add_argument("--strategy", choices=["bayesian", "random"], help="overrides strategy")
    p.add_argument("--seed", type=int, help="overrides seed")
    p.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(p)
    args, overrides = parse_with_overrides(p, argv)
    require(p, args, "output")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    chosen = {
        "max_jobs": args.max_jobs,
        "max_parallel_jobs": args.max_parallel_jobs,
        "strategy": args.strategy,
        "seed": args.seed,
    }
    # The skeleton loads the tuning config; the base training config is named inside it (relative to it).
    config_path = args.config if args.config is not None else default_config("tune")
    inputs = from_args(TuneInputs, args)

    def body(ctx: JobContext) -> None:
        cfg, base = resolve_tuning(ctx.cfg, config_path, args.train_config, overrides)
        result = run_tune_job(ctx.spark, cfg, base, inputs, args.output)
        print(format_table(result.table))
        print(json.dumps(result.summary()))

    return JOB.run(args, body, config_path, {k: v for k, v in chosen.items() if v is not None})


if __name__ == "__main__":
    sys.exit(main())
