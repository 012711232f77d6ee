"""The whole pipeline on the embedded default: generate -> ingest -> train -> score -> report -> evaluate.

    python jobs/pipeline.py [--workdir output/demo] [--users 10000] [--epochs 3] [--backend torch]

Runs every job in one local[2] Spark session on local files: a generated tutorial-like data set
(10 days of login logs; 7 training days, 1 validation day, 2 test days with labelled attacks), then
the same jobs a scheduled deployment runs. Ends by printing where the reports are and the AUCs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ipinsights.pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    from ipinsights.storage.events import day_windows
    from ipinsights.storage.sagemaker_csv import export_pairs_csv
    from ipinsights_jobs import cli, generate, ingest, score, train
    from ipinsights_jobs._common import build_spark, setup_logging

    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="output/demo", help="where every output goes (replaced)")
    p.add_argument("--users", type=int, default=10_000, help="simulated users (tutorial: 10,000)")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backend", choices=["torch", "horovod", "local"], default="torch")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--target-fpr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    w = Path(args.workdir).resolve()
    w.mkdir(parents=True, exist_ok=True)
    spark = build_spark("ipinsights-pipeline")

    def step(name: str, rc: int) -> None:
        if rc != 0:
            raise SystemExit(f"pipeline: step {name} failed with exit status {rc}")
        log.info("step %s done", name)

    step("generate", generate.main(["--out", str(w / "synth"), "--overwrite", f"--users={args.users}",
                                     f"--days={args.days}", f"--seed={args.seed}"]))  # fmt: skip
    manifest = json.loads((w / "synth" / "manifest.json").read_text())
    spec = manifest["spec"]
    days = day_windows(spec["start_date"], spec["train_days"], spec["validation_days"],
                       args.days - spec["train_days"] - spec["validation_days"])  # fmt: skip
    (t0, t1), (v0, v1), (s0, s1) = (tuple(map(str, x)) for x in (days.train, days.validation, days.test))
    events = w / "events"
    step("ingest", ingest.main([f"--inputs={w / 'synth' / 'logs'}/*", f"--output={events}"]))
    num_vectors = max(1000, 2 * args.users)  # SageMaker's advice: about twice the unique entities
    step("train", train.main(["--events", str(events), "--start-date", t0, "--end-date", t1,
                              "--validation-start-date", v0, "--validation-end-date", v1, "--output", str(w / "run"),
                              "--backend", args.backend, "--num-workers", str(args.num_workers),
                              f"--epochs={args.epochs}", f"--num_entity_vectors={num_vectors}"]))  # fmt: skip
    model = w / "run" / "model"
    step("score", score.main(["--start-date", s0, "--end-date", s1, "--target-fpr", str(args.target_fpr),
                              f"--model={model}", f"--events={events}", f"--scores={w / 'scores'}",
                              f"--flagged={w / 'flagged'}", f"--reports={w / 'reports'}",
                              f"--calibration_start_date={v0}", f"--calibration_end_date={v1}",
                              f"--train_start_date={t0}", f"--train_end_date={t1}"]))  # fmt: skip
    # The per-entity baselines of the evaluation need the training pairs: export them as CSV (IPv6 included).
    from ipinsights.storage.events import read_events

    export_pairs_csv(read_events(spark, str(events), t0, t1), str(w / "train.csv"), ipv4_only=False)
    step("evaluate", cli.evaluate_main(["--model", str(model), "--test", str(w / "synth/labels/test_labelled.csv"),
                                        "--train", str(w / "train.csv"), "--plot", str(w / "evaluation.png"),
                                        "--output", str(w / "evaluation.json")]))  # fmt: skip
    ev = json.loads((w / "evaluation.json").read_text())
    metrics = [json.loads(x) for x in (w / "run" / "metrics.jsonl").read_text().splitlines()]
    reports = sorted((w / "reports").glob("dt=*/report.html"))
    print()
    print(f"validation discriminator_auc: {metrics[-1]['discriminator_auc']:.4f}")
    print("test AUC per attack kind (model):", json.dumps({k: round(v, 4) for k, v in ev["auc"]["model"].items()}))
    for name in ("seen_exact_ip", "seen_same_24", "seen_same_16"):
        print(f"  baseline {name}: overall {ev['auc'][name]['overall']:.4f}")
    for r in reports:
        print(f"report: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
