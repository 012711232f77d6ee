"""Score events with a trained model: scores and flagged tables partitioned by day, and a daily report.

    python -m ipinsights_jobs.score --date 2024-01-09                          # one UTC day
    python -m ipinsights_jobs.score --start-date 2024-01-09 --end-date 2024-01-10   # backfill, one pass
    python -m ipinsights_jobs.score --input-csv pairs.csv --output out/batch   # batch transform (entity,ip)
    python -m ipinsights_jobs.score --date 2024-01-09 --threshold 1.5 --model=models/m --events=data/events
    python -m ipinsights_jobs.score --date 2024-01-09 --max-cases 30 --verdicts verdicts.csv

Settings come from the project's ``conf/score.yml`` (or ``--config``) with ``--name=value`` overrides;
``--threshold`` and ``--target-fpr`` replace the config's threshold choice, ``--max-cases`` and
``--verdicts`` the case budget and the verdicts file. Prints the threshold in force, then one line per
day: counts, cases and report path. Reruns replace each day's output (idempotent). A batch
transform writes ``scores/``, ``flagged/`` and ``reports/`` under its ``--output``, never the daily tables.
Every path may be a URI (s3://...): the model is read through a local cache, and its calibration and
profile sidecars and the reports are written beside it / under ``reports`` there.

Exit status: 0 ok, 2 a usage error (bad configuration, a missing or foreign model, an unusable calibration
or input: the message says what to change), 4 another run holds or took over one of the days (retry later;
``--on_busy=fail`` exits 4 at once instead of waiting), 1 anything else (a bug: with its traceback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

from ipinsights.core.config import ConfigError, parse_overrides
from ipinsights.score.config import ScoreConfig
from ipinsights.score.spark_job import run_score_job
from ipinsights_jobs._common import Job, JobContext, add_date_args, add_spark_args, date_span, parse_with_overrides

# Every usage error (a setting, a missing or foreign model, an unusable calibration or input) is a
# UsageError, which every job exits 2 with; anything else is a bug (exit 1, with its traceback).
JOB = Job("score", ScoreConfig)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    """The parser, its options and the ``--name=value`` setting overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Other --name=value: any setting.")
    parser.add_argument("--config", default=None, help="YAML settings (default: the project's conf/score.yml)")
    add_date_args(parser, "UTC day to score (with --input-csv: its rows' dt, default today)")
    parser.add_argument("--input-csv", help="score a headerless entity,ip CSV instead of the events table")
    parser.add_argument("--output", help="with --input-csv (required): folder of its scores, flagged and reports")
    parser.add_argument("--model", help="the model to score with (the model setting; --model=PATH also works)")
    parser.add_argument("--threshold", type=float, help="fixed threshold on anomaly_score (instead of target_fpr)")
    parser.add_argument("--target-fpr", type=float, help="calibrate the threshold to this false-positive rate")
    parser.add_argument("--max-cases", type=int, help="cases a day's report leads with (max_cases, default 50)")
    parser.add_argument("--verdicts", help="investigators' verdicts CSV (verdicts): suppress and mark cases")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(parser)
    args, extra = parse_with_overrides(parser, argv)
    return parser, args, extra


def _days(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The days the arguments ask for (a usage error otherwise)."""
    from ipinsights.storage.events import day_range

    span = date_span(parser, args)
    if args.input_csv and args.start_date:
        parser.error("--input-csv is scored as one day: use --date")
    if bool(args.input_csv) != bool(args.output):
        parser.error("--input-csv and --output go together: a batch transform never writes the daily tables")
    if span is None and not args.input_csv:
        parser.error("nothing to score: give --date, --start-date/--end-date or --input-csv")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    return day_range(*(span or (today, today)))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, score the days, print the threshold and each day's counts and report."""
    parser, args, extra = parse_args(argv)
    days = _days(parser, args)
    try:
        overrides: dict[str, object] = dict(parse_overrides(extra))
    except ConfigError as exc:
        parser.error(str(exc))
    if args.threshold is not None or args.target_fpr is not None:
        overrides["threshold"] = args.threshold
        overrides["target_fpr"] = args.target_fpr
    for name in ("model", "max_cases", "verdicts"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)

    def body(ctx: JobContext) -> None:
        run = run_score_job(ctx.spark, ctx.cfg, days, input_csv=args.input_csv, output=args.output)
        print(f"threshold\t{run.threshold.value:.6g}\t{run.threshold.source}")
        for day in run.days:
            print(f"{day}\t{json.dumps(run.counts[day])}\t{json.dumps(run.cases[day])}\t{run.reports[day]}")

    return JOB.run(args, body, args.config, overrides)


if __name__ == "__main__":
    sys.exit(main())
