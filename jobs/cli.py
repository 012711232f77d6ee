"""The ``ipinsights`` command: every job of the project, from an installed wheel or a checkout.

    ipinsights pipeline [--workdir output/demo] [--users 10000] [--epochs 3]      # the whole demo, local[2]
    ipinsights generate --output data/synth [--users=1000]                          # synthetic login logs
    ipinsights ingest --inputs 'logs/*.gz' --output data/events                  # logs -> events table
    ipinsights train --events data/events --start-date D --end-date D --output runs/r   # Spark job
    ipinsights train --train train.csv [--validation val.csv] --output model/       # one machine, CSV
    ipinsights score --date 2024-01-09 --model=runs/r/model --events=data/events      # a day's scores
    ipinsights evaluate --model model/ --test labelled.csv [--train train.csv] [--plot hist.png]
    ipinsights serve --model model/ [--host 127.0.0.1] [--port 8080] [--workers N]
    ipinsights export-embeddings --model model/ --output ips.parquet [--ip-range 10.0.0.0/24] [--entities FILE]
    ipinsights tune --train train.csv --validation val.csv --output tuning/ [--config conf/tune.yml] [--max-jobs N]

``ipinsights train`` is two trainers under one name: with ``--events`` the Spark job (an events table,
data-parallel on the executors: ``ipinsights train --events X --help``), with ``--train`` the
single-machine trainer on a SageMaker CSV (``ipinsights train --train X --help``). Each command's
``--help`` lists its flags. Settings come from the shipped defaults (the package's ``conf/NAME.yml``, the
checkout's ``conf/`` when run from one) or ``--config``, with ``--name=value`` overrides (``--epochs=5``,
``--train.seed=3``), validated before any data is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("ipinsights")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ipinsights train``: fit a model on a headerless ``entity,ip`` CSV and save it."""
    from ipinsights.core.config import ConfigError, TrainConfig
    from ipinsights.train.job import SUMMARY_KEYS, train_from_csv
    from ipinsights_jobs._common import EXIT_USAGE, Job, JobContext, add_output_arg, parse_with_overrides, require

    parser = argparse.ArgumentParser(prog="ipinsights train", description=train_main.__doc__)
    parser.add_argument("--train", required=True, help="headerless CSV: entity,ip")
    parser.add_argument(
        "--validation", help="headerless CSV: entity,ip (gives discriminator_auc and shuffled_auc per epoch)"
    )
    parser.add_argument(
        "--validation-labelled",
        help="headerless CSV: entity,ip,label,kind (gives per-kind "
        "auc_<kind>, recall1_<kind> at 1%% FPR and labelled_recall per epoch)",
    )
    add_output_arg(parser, "directory to write the model to (replaced)", old="--model-dir")
    parser.add_argument("--config", help="YAML config (default: the project's conf/train.yml)")
    parser.add_argument("--metrics", help="write per-epoch metrics here as JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true")
    args, overrides = parse_with_overrides(parser, argv)
    require(parser, args, "output")

    def body(ctx: JobContext) -> None:
        history = train_from_csv(
            ctx.cfg, args.train, args.output, args.validation, args.metrics, args.validation_labelled
        )
        print(f"model written to {args.output}")
        print(json.dumps({k: history[-1][k] for k in ("epoch", *SUMMARY_KEYS)}))

    # A bad setting is a usage error, reported as argparse reports one (usage line, exit status 2).
    job = Job(
        "train",
        TrainConfig,
        spark=False,
        errors=[(ConfigError, EXIT_USAGE)],
        on_error=lambda exc: parser.error(str(exc)),
    )
    return job.run(args, body, args.config, overrides)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``ipinsights evaluate``: AUCs (overall, per kind, vs baselines) and the threshold table."""
    from ipinsights.score.evaluate import evaluate_model, histogram_plot
    from ipinsights.score.scorer import Scorer
    from ipinsights.storage.files import atomic_write
    from ipinsights.storage.modelfile import ModelFileError
    from ipinsights.storage.sagemaker_csv import read_labelled_csv, read_pairs_csv
    from ipinsights_jobs._common import EXIT_USAGE, Job, JobContext

    parser = argparse.ArgumentParser(prog="ipinsights evaluate", description=evaluate_main.__doc__)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--test", required=True, help="headerless CSV: entity,ip,label[,kind] (label 1 = attack)")
    parser.add_argument("--train", help="the training CSV, for the seen-IP//24//16 (and seen_asn) baselines")
    parser.add_argument("--thresholds", help="comma-separated anomaly-score thresholds (default: normal quantiles)")
    parser.add_argument("--plot", help="save the score histogram (normal vs attack) as PNG here")
    parser.add_argument("--output", help="write the evaluation as JSON here")
    parser.add_argument("--profile", help="entity profiles (default: <model>.profile.safetensors when present)")
    parser.add_argument(
        "--fusion", help="the fused risk score (default: <model>.fusion.json when present and made for the profile)"
    )
    parser.add_argument(
        "--asn-table",
        help="ip2asn TSV(s), comma-separated: the seen_asn baseline and AS names "
        "(default: the table the model was trained with, if any)",
    )
    parser.add_argument(
        "--learning-period-events",
        type=int,
        default=10,
        help="entities with fewer training events are scored by the population prior (as the "
        "scoring job does); 0 with no profile = raw model scores (SageMaker)",
    )
    parser.add_argument("--cases", help="the scoring job's cases table: precision of each labelled day's top cases")
    parser.add_argument("--scores", help="the scoring job's scores table (with --cases: which attacks each day had)")
    parser.add_argument("--start-date", help="first labelled day of --cases (YYYY-MM-DD)")
    parser.add_argument("--end-date", help="last labelled day of --cases (inclusive)")
    parser.add_argument("--max-cases", type=int, default=50, help="the daily case budget (default 50)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.cases and not (args.scores and args.start_date and args.end_date):
        parser.error("--cases needs --scores, --start-date and --end-date")

    def body(ctx: JobContext) -> None:
        cases = _case_metrics(ctx, args) if args.cases else None
        scorer = Scorer.load(
            args.model, profile=args.profile or True, asn_table=args.asn_table, fusion=args.fusion or True
        )
        test = read_labelled_csv(args.test)
        train = read_pairs_csv(args.train) if args.train else None
        thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
        ev, scores = evaluate_model(scorer, test, train, thresholds, args.learning_period_events)
        fused = " (fused: the risk score; model: the model alone)" if scorer.fusion is not None else ""
        print(f"ROC AUC (anomaly score; per kind: that kind vs normal rows){fused}")
        print(ev.auc_table())
        print()
        print("Recall at a fixed false-positive rate (on normal rows), per kind")
        print(ev.recall_table())
        print()
        print(ev.threshold_text())
        if args.plot:
            histogram_plot(scores, test["label"].to_numpy(), args.plot)
            print(f"\nhistogram written to {args.plot}")
        if args.output:
            with atomic_write(args.output) as fh:
                json.dump({**ev.as_dict(), **({"cases": cases} if cases is not None else {})}, fh, indent=2)

    # Spark only for the cases: the tables are read where they are, joined with the labelled rows there.
    return Job("evaluate", spark=bool(args.cases), errors=[(ModelFileError, EXIT_USAGE)]).run(args, body)


def _case_metrics(ctx, args: argparse.Namespace) -> dict:
    """Print and return the precision of each labelled day's top cases (``score.spark_case_metrics.case_metrics``)."""
    from ipinsights.score.spark_case_metrics import case_metrics
    from ipinsights.storage.events import day_range

    metrics = case_metrics(
        ctx.spark, args.cases, args.scores, args.test, day_range(args.start_date, args.end_date), budget=args.max_cases
    )
    print(
        "Cases per labelled day: precision of the top 10 and 50 open cases, attacked entities found within "
        f"the budget ({args.max_cases})"
    )
    for day, m in metrics.items():
        print(f"  {day}: {case_line(m)}")
    print()
    return metrics


def case_line(m: dict) -> str:
    """One day's case metrics in words."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"top 10 {f(m['precision_at_10'])} ({m['cases_at_10']} cases), top 50 {f(m['precision_at_50'])} "
        f"({m['cases_at_50']}); found {m['found_in_budget']} of {m['attacked_entities']} attacked entities; "
        f"network cases {json.dumps(m['network_cases'])}"
    )


def _job(module: str) -> Callable[[Sequence[str]], int]:
    """The ``main`` of ``ipinsights_jobs.<module>``, imported when its command runs (Spark only if it needs it)."""

    def run(argv: Sequence[str]) -> int:
        import importlib

        main: Callable[[list[str]], int] = importlib.import_module(f"ipinsights_jobs.{module}").main
        return main(list(argv))

    return run


def train_dispatch(argv: Sequence[str]) -> int:
    """``ipinsights train``: the Spark job on an events table (``--events``), or the single-machine trainer on
    a SageMaker CSV (``--train``); ``--help`` alone says which is which."""
    args = list(argv)
    spark_job = any(a == "--events" or a.startswith("--events=") for a in args)
    csv = any(a == "--train" or a.startswith("--train=") for a in args)
    if spark_job and csv:
        print("ipinsights train: give --events (the Spark job) or --train (a SageMaker CSV), not both", file=sys.stderr)
        return 2
    if spark_job:
        return _job("train")(args)
    if csv:
        return train_main(args)
    print(TRAIN_HELP.strip(), file=sys.stdout if args in (["-h"], ["--help"]) else sys.stderr)
    return 0 if args in (["-h"], ["--help"]) else 2


TRAIN_HELP = """
usage: ipinsights train --events TABLE ... | --train CSV ...

Two trainers, one model format:
  --events TABLE   the Spark job: the events table's training days, data-parallel on the executors
                   (TorchDistributor or Horovod), checkpoints, entity stats; `ipinsights train --events X --help`
  --train CSV      the single-machine trainer on a headerless entity,ip CSV (SageMaker's training channel);
                   `ipinsights train --train X --help`
"""


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "pipeline": _job("pipeline"),
    "generate": _job("generate"),
    "ingest": _job("ingest"),
    "train": train_dispatch,
    "score": _job("score"),
    "evaluate": evaluate_main,
    "serve": _job("serve"),
    "export-embeddings": _job("export_embeddings"),
    "tune": _job("tune"),
    "networks": _job("networks"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``ipinsights <command> ...``.

    Called with no ``argv`` (the console script, or a Databricks ``python_wheel_task``, whose runner calls the
    entry point and ignores what it returns), a failure raises ``SystemExit`` with its status, so that the
    task fails too; with ``argv`` (tests, other Python code) the status is returned.
    """
    status = _dispatch(list(sys.argv[1:] if argv is None else argv))
    if argv is None and status != 0:
        raise SystemExit(status)
    return status


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(COMMANDS)}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
