"""The whole pipeline on the embedded default: generate -> ingest -> train -> score -> report -> evaluate.

    python jobs/pipeline.py [--workdir output/demo] [--users 10000] [--epochs 3] [--backend auto]

Runs every job in one local[2] Spark session on local files (training in one process with both cores:
``--backend auto`` on a local master; the demo's settings, conf/demo.yml): a generated tutorial-like data set
(10 days of login logs; 7 training days, 1 validation day, 2 test days with labelled attacks written
into their logs, one source spraying 2% of the accounts among them), then the same jobs a scheduled
deployment runs. Ends by printing the AUCs, the precision of each test day's top cases and where the
reports are.
Exit status: 0 ok, 1 a step failed (its own exit status is logged).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ipinsights.core.config import BACKENDS
from ipinsights.storage.events import read_events
from ipinsights.storage.sagemaker_csv import export_pairs_csv
from ipinsights.synth import read_spec
from ipinsights.synth.spec import DEVICE_MODES
from ipinsights_jobs import cli, generate, ingest, score, train
from ipinsights_jobs._common import EXIT_FAILURE, Job, JobContext, default_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("ipinsights.pipeline")


class StepError(RuntimeError):
    """A job of the pipeline exited with a non-zero status."""


# One Spark session for all steps: the pipeline creates (and at the end stops) it; each job finds it
# active and leaves it running.
JOB = Job("pipeline", errors=[(StepError, EXIT_FAILURE)])


def step(name: str, rc: int) -> None:
    """Log a finished step; a failed one ends the pipeline."""
    if rc != 0:
        raise StepError(f"step {name} failed with exit status {rc}")
    log.info("step %s done", name)


def run(w: Path, args: argparse.Namespace, spark: SparkSession) -> None:
    """Every step, with its outputs under ``w``."""
    # The test days' labelled attacks, and one source spraying many accounts, go into the logs: the
    # report then has real cases to find among the normal traffic's.
    inject = ["--inject-attacks", f"--spraying_accounts={args.spraying_accounts}"] if args.inject else []
    step(
        "generate",
        generate.main(
            [
                "--output",
                str(w / "synth"),
                "--overwrite",
                f"--users={args.users}",
                f"--days={args.days}",
                f"--seed={args.seed}",
                f"--devices={args.devices}",
                *([f"--attack_kinds={args.attack_kinds}"] if args.attack_kinds else []),
                *inject,
            ]
        ),
    )
    (t0, t1), (v0, v1), (s0, s1) = (read_spec(w / "synth").split_dates(s) for s in ("train", "validation", "test"))
    events = w / "events"
    step("ingest", ingest.main([f"--inputs={w / 'synth' / 'logs'}/*", f"--output={events}"]))
    num_vectors = max(1000, 2 * args.users)  # SageMaker's advice: about twice the unique entities
    # The demo's own training settings (SageMaker's tutorial's), not the shipped SageMaker defaults of
    # conf/train.yml: see conf/demo.yml for why they differ.
    demo = default_config("demo")
    if demo is None:
        raise FileNotFoundError("conf/demo.yml (the demo's training settings) is missing from this installation")
    # The generator writes its address plan as ip2asn tables: the model learns ASes and countries from them.
    world = w / "synth" / "world"
    table = [f"--model.asn_table={world / 'networks.tsv'},{world / 'networks-v6.tsv'}"] if args.asn_table else []
    step(
        "train",
        train.main(
            [
                "--config",
                str(demo),
                "--events",
                str(events),
                "--start-date",
                t0,
                "--end-date",
                t1,
                "--validation-start-date",
                v0,
                "--validation-end-date",
                v1,
                "--output",
                str(w / "run"),
                "--backend",
                args.backend,
                "--num-workers",
                str(args.num_workers),
                f"--epochs={args.epochs}",
                f"--num_entity_vectors={num_vectors}",
                *table,
            ]
        ),
    )
    model = w / "run" / "model"
    step(
        "score",
        score.main(
            [
                "--start-date",
                s0,
                "--end-date",
                s1,
                "--target-fpr",
                str(args.target_fpr),
                f"--model={model}",
                f"--events={events}",
                f"--scores={w / 'scores'}",
                f"--flagged={w / 'flagged'}",
                f"--reports={w / 'reports'}",
                f"--calibration_start_date={v0}",
                f"--calibration_end_date={v1}",
                f"--train_start_date={t0}",
                f"--train_end_date={t1}",
                f"--cases={w / 'cases'}",
                f"--max_cases={args.max_cases}",
            ]
        ),
    )

    # The per-entity baselines of the evaluation need the training pairs: export them as CSV (IPv6 included).
    export_pairs_csv(read_events(spark, str(events), t0, t1), str(w / "train.csv"), ipv4_only=False)
    # With the attacks in the logs, the evaluation also measures the cases an investigator gets each test day.
    cases = (
        [
            f"--cases={w / 'cases'}",
            f"--scores={w / 'scores'}",
            f"--start-date={s0}",
            f"--end-date={s1}",
            f"--max-cases={args.max_cases}",
        ]
        if args.inject
        else []
    )
    step(
        "evaluate",
        cli.evaluate_main(
            [
                "--model",
                str(model),
                "--test",
                str(w / "synth/labels/test_labelled.csv"),
                "--train",
                str(w / "train.csv"),
                "--plot",
                str(w / "evaluation.png"),
                "--output",
                str(w / "evaluation.json"),
                *cases,
            ]
        ),
    )


def print_results(w: Path) -> None:
    """The validation AUC of the last epoch, the test AUCs (model and baselines), the cases' precision
    and the report paths."""
    ev = json.loads((w / "evaluation.json").read_text())
    metrics = [json.loads(x) for x in (w / "run" / "metrics.jsonl").read_text().splitlines()]
    print()
    print(f"validation discriminator_auc: {metrics[-1]['discriminator_auc']:.4f}")
    for method in ("fused", "model"):  # the fused risk score (with a fusion), then the model alone
        if method not in ev["auc"]:
            continue
        print(
            f"test AUC per attack kind ({method}):", json.dumps({k: round(v, 4) for k, v in ev["auc"][method].items()})
        )
        for fpr, row in ev["recall"][method].items():
            recall = json.dumps({k: round(v, 3) for k, v in row.items()})
            print(f"recall at {float(fpr):.0%} FPR ({method}):", recall)
    for name in ("seen_exact_ip", "seen_same_24", "seen_same_16", "seen_asn"):
        if name in ev["auc"]:
            print(f"  baseline {name}: overall {ev['auc'][name]['overall']:.4f}")
    for day, m in ev.get("cases", {}).items():
        print(f"cases {day}: precision {cli.case_line(m)}")
    for r in sorted((w / "reports").glob("dt=*/report.html")):
        print(f"report: {r}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="output/demo", help="where every output goes (replaced)")
    p.add_argument("--users", type=int, default=10_000, help="simulated users (tutorial: 10,000)")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--num-workers", type=int, default=0, help="training ranks (0: chosen by the backend)")
    p.add_argument("--target-fpr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-asn-table",
        dest="asn_table",
        action="store_false",
        help="train on prefixes alone, without the generated ip2asn tables (model.asn_table)",
    )
    p.add_argument(
        "--no-inject",
        dest="inject",
        action="store_false",
        help="leave the test days' attacks out of the logs (the report then has normal traffic only)",
    )
    p.add_argument(
        "--spraying-accounts",
        type=int,
        default=None,
        help="accounts the spraying source hits on the first test day (default: 2%% of the users)",
    )
    p.add_argument("--max-cases", type=int, default=50, help="cases a day's report leads with")
    p.add_argument(
        "--devices",
        choices=DEVICE_MODES,
        default="legacy",
        help="users' devices: realistic (1-3 each, user agents by market share) or legacy (the data of before)",
    )
    p.add_argument(
        "--attack-kinds",
        default=None,
        help="comma-separated attack kinds of the test days (default: the generator's); with --devices realistic "
        "also naive, vpn, targeted, very_targeted",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.spraying_accounts is None:
        args.spraying_accounts = max(5, args.users // 50)

    def body(ctx: JobContext) -> None:
        w = Path(args.workdir).resolve()
        w.mkdir(parents=True, exist_ok=True)
        run(w, args, ctx.spark)
        print_results(w)

    return JOB.run(args, body)


if __name__ == "__main__":
    sys.exit(main())
