"""Distributed training job: (entity, ip) events -> an IP Insights model, on Spark executors.

    spark-submit jobs/train.py --events data/events --start-date 2026-01-01 --end-date 2026-01-07 \\
        [--validation-start-date 2026-01-08 --validation-end-date 2026-01-08] --output runs/model-2026-01-08 \\
        [--config conf/train.yml] [--backend torch|horovod|local] [--num-workers 2] [--use-gpu auto] \\
        [--resume] [--warm-start runs/model-2026-01-07/model] [--name=value ...]

or ``--train-csv FILE`` (SageMaker's headerless entity,ip format) instead of ``--events``.

Writes OUTPUT/model/ (the model file), OUTPUT/metrics.jsonl (one line per epoch: loss, accuracy,
discriminator_auc, pairs/s, communication cost), OUTPUT/config.json (the resolved config),
OUTPUT/checkpoints/ (one per epoch, for --resume) and OUTPUT/work/ (the prepared buckets).
Exit status: 0 ok, 1 training diverged (the last good checkpoint is kept), 2 bad configuration or no valid
training pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ipinsights.core.config import TrainConfig
from ipinsights.train.job import TrainInputs, run_train_job
from ipinsights.train.trainer import DivergedError
from ipinsights_jobs._common import Job, JobContext, add_spark_args, from_args, parse_with_overrides

JOB = Job("train", TrainConfig, errors=[(DivergedError, 1)])  # a message, not a traceback


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The job's options, and the ``--name=value`` settings (the distributed options included)."""
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
    p.add_argument("--config", default=None, help="YAML config (default: the project's conf/train.yml)")
    p.add_argument("--backend", choices=["torch", "horovod", "local"], help="overrides distributed.backend")
    p.add_argument("--num-workers", type=int, help="overrides distributed.num_workers")
    p.add_argument("--use-gpu", choices=["auto", "true", "false"], help="overrides distributed.use_gpu")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    p.add_argument("--warm-start", metavar="MODEL", help="start from an earlier model (daily retraining)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(p)
    args, overrides = parse_with_overrides(p, argv)
    if args.events and not (args.start_date and args.end_date):
        p.error("--events needs --start-date and --end-date")
    chosen = {"backend": args.backend, "num_workers": args.num_workers, "use_gpu": args.use_gpu}
    return args, [*overrides, *(f"--distributed.{k}={v}" for k, v in chosen.items() if v)]


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    inputs = from_args(TrainInputs, args)

    def body(ctx: JobContext) -> None:
        summary = run_train_job(ctx.spark, ctx.cfg, inputs, args.output, args.resume, args.warm_start)
        print(json.dumps(summary))

    return JOB.run(args, body, args.config, overrides)


if __name__ == "__main__":
    sys.exit(main())
