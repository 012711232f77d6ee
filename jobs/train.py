"""Distributed training job: (entity, ip) events -> an IP Insights model, on Spark executors.

    spark-submit jobs/train.py --events data/events --start-date 2026-01-01 --end-date 2026-01-07 \\
        [--validation-start-date 2026-01-08 --validation-end-date 2026-01-08] --output runs/model-2026-01-08 \\
        [--config conf/train.yml] [--backend auto|torch|horovod|local] [--num-workers N] [--use-gpu auto] \\
        [--resume] [--warm-start runs/model-2026-01-07/model] [--name=value ...]

or ``--train-csv FILE`` (SageMaker's headerless entity,ip format) instead of ``--events``.
``--include-verdicts VERDICTS --cases CASES`` adds the events of cases investigators confirmed benign
(see ``ipinsights.score.verdicts``) as extra positives, so a confirmed new ISP stops scoring as anomalous.

Writes OUTPUT/model/ (the model file), OUTPUT/metrics.jsonl (one line per epoch: loss, accuracy,
discriminator_auc, pairs/s, communication cost), OUTPUT/config.json (the resolved config),
OUTPUT/checkpoints/ (one per epoch, for --resume) and OUTPUT/work/ (the prepared buckets). OUTPUT and
MODEL may be local paths or URIs (s3://bucket/run): every rank reads and writes there, so a cluster needs
no shared disk; an OUTPUT that cannot be reached is an error before any work.
Where a tracking server is configured (the mlflow settings, MLFLOW_TRACKING_URI, Databricks), the run is
logged to MLflow: params, per-epoch metrics and the model as a pyfunc (README, "MLflow").
Exit status: 0 ok, 1 training diverged (the last good checkpoint is kept) or MLflow refused the run (the
model is written), 2 bad configuration or no valid training pair, 4 another run holds or took over OUTPUT
(retry later).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from ipinsights.core.config import BACKENDS, TrainConfig
from ipinsights.serve.mlflow_run import TrackingError, training_run
from ipinsights.storage.files import absolute_uri
from ipinsights.train.job import TrainInputs, run_train_job
from ipinsights.train.trainer import DivergedError
from ipinsights_jobs._common import EXIT_FAILURE, Job, JobContext, add_spark_args, from_args, parse_with_overrides

log = logging.getLogger("ipinsights.jobs")

# A message, not a traceback: the model of a run that MLflow refused is written all the same.
JOB = Job("train", TrainConfig, errors=[(DivergedError, EXIT_FAILURE), (TrackingError, EXIT_FAILURE)])


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The job's options, and the ``--name=value`` settings (the distributed options included)."""
    p = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", help="the ingest job's Parquet table (partitioned by dt)")
    src.add_argument("--train-csv", help="headerless entity,ip CSV (file, directory or glob)")
    p.add_argument(
        "--date",
        help="run date T (YYYY-MM-DD, with --events): train on schedule.train_days days ending "
        "T-1-schedule.validation_days, validate on the days ending T-1 (default: T-8..T-2, T-1)",
    )
    p.add_argument("--start-date", help="first training day (YYYY-MM-DD, with --events)")
    p.add_argument("--end-date", help="last training day (inclusive)")
    p.add_argument("--validation-start-date", help="first validation day (with --events)")
    p.add_argument("--validation-end-date", help="last validation day (inclusive)")
    p.add_argument("--validation-csv", help="headerless entity,ip CSV for discriminator_auc")
    p.add_argument("--extra-pairs-csv", help="headerless entity,ip CSV of extra positive pairs")
    p.add_argument(
        "--include-verdicts",
        metavar="VERDICTS",
        help="investigators' verdicts CSV: the events of cases confirmed benign are extra positives (needs --cases)",
    )
    p.add_argument("--cases", help="the scoring job's cases table (with --include-verdicts)")
    p.add_argument("--output", required=True, help="run directory or URI: model/, metrics.jsonl, config.json, ...")
    p.add_argument("--config", default=None, help="YAML config (default: the project's conf/train.yml)")
    p.add_argument("--backend", choices=BACKENDS, help="overrides distributed.backend")
    p.add_argument("--num-workers", type=int, help="overrides distributed.num_workers (0: one per executor)")
    p.add_argument("--use-gpu", choices=["auto", "true", "false"], help="overrides distributed.use_gpu")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    p.add_argument("--warm-start", metavar="MODEL", help="start from an earlier model (daily retraining)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(p)
    args, overrides = parse_with_overrides(p, argv)
    if args.date and (args.start_date or args.end_date or args.validation_start_date or args.validation_end_date):
        p.error("give --date (the windows come from the schedule settings) or explicit days, not both")
    if args.date and not args.events:
        p.error("--date needs --events")
    if args.events and not args.date and not (args.start_date and args.end_date):
        p.error("--events needs --date, or --start-date and --end-date")
    if bool(args.include_verdicts) != bool(args.cases):
        p.error("--include-verdicts and --cases go together")
    if args.include_verdicts and args.extra_pairs_csv:
        p.error("give --include-verdicts or --extra-pairs-csv, not both")
    chosen = {"backend": args.backend, "num_workers": args.num_workers, "use_gpu": args.use_gpu}
    return args, [*overrides, *(f"--distributed.{k}={v}" for k, v in chosen.items() if v is not None)]


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    inputs = from_args(TrainInputs, args)

    def body(ctx: JobContext) -> None:
        run_inputs = inputs if not args.date else _scheduled(inputs, ctx.cfg.schedule.windows(args.date))
        if args.include_verdicts:
            pairs = _verdict_pairs_csv(ctx, args, run_inputs.end_date)
            run_inputs = replace(run_inputs, extra_pairs_csv=pairs)
        # The MLflow run (None when logging is off) wraps the training, so a failed training is a failed run.
        # It lives in serve/, not train/: the logged pyfunc wraps the Scorer, which train/ may not import.
        with training_run(ctx.cfg, absolute_uri(args.output)) as tracked:
            summary = run_train_job(ctx.spark, ctx.cfg, run_inputs, args.output, args.resume, args.warm_start)
            if tracked is not None:
                tracked.log_trained(summary["model"], summary)
        print(json.dumps(summary))

    return JOB.run(args, body, args.config, overrides)


def _scheduled(inputs: TrainInputs, windows: dict[str, tuple[str, str] | None]) -> TrainInputs:
    """``inputs`` with the day windows of a run date."""
    train, val = windows["train"], windows["validation"]
    assert train is not None
    log.info("run date windows: training %s..%s, validation %s", *train, "..".join(val) if val else "none")
    return replace(
        inputs,
        start_date=train[0],
        end_date=train[1],
        validation_start_date=val[0] if val else None,
        validation_end_date=val[1] if val else None,
    )


def _verdict_pairs_csv(ctx: JobContext, args: argparse.Namespace, end_date: str | None) -> str:
    """The confirmed benign pairs of ``--include-verdicts`` (verdicts unexpired on the last training day,
    ``end_date``; today without one), written under OUTPUT/work as a CSV."""
    import datetime as dt

    from ipinsights.score.spark_verdicts import verdict_pairs
    from ipinsights.score.verdicts import read_verdicts
    from ipinsights.storage.files import absolute_uri, join_uri
    from ipinsights.storage.filesystems import resolve_uri

    until = end_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    pairs = verdict_pairs(ctx.spark, read_verdicts(args.include_verdicts), args.cases, until)
    path = resolve_uri(ctx.spark, join_uri(absolute_uri(args.output), "work", "verdict_pairs"))
    pairs.coalesce(1).write.mode("overwrite").csv(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
