"""Issue 20's evaluation: the cases of the demo's test days, with its attacks in the logs and without.

    python jobs/pipeline.py --workdir output/demo           # first: the demo (attacks injected)
    python bench/cases_eval.py [--workdir output/demo] [--max-cases 50]

Reads the demo's evaluation (``evaluation.json``: precision of the top 10 and 50 open cases of each test
day, attacked entities found within the budget, network cases), then scores the same test days again with
every injected login taken out (the truth table's non-normal rows, matched on entity, address and second):
a normal day of the same users, scored with the same model, threshold and case floor. Its open cases are
what a quiet day costs an investigator.

Prints one figure per line: ``precision_at_10_<day>=``, ``precision_at_50_<day>=``,
``found_in_budget_<day>=``, ``spraying_network_case_rank_<day>=`` (0: not among the top cases), then
``normal_day_open_cases_<day>=``, ``normal_day_cases_<day>=`` (all cases, open or not) and
``normal_day_open_vs_budget_<day>=`` (a ratio: at most 1 is within the budget). Last, rare attacks: the
normal days plus about ``--sparse`` (50) of the injected attack logins a day, sampled, and the whole
spraying source: ``sparse_precision_at_10_<day>=``, ``sparse_precision_at_50_<day>=``,
``sparse_found_in_budget_<day>=`` and ``sparse_spraying_network_case_rank_<day>=``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from ipinsights.score.config import ScoreConfig
    from ipinsights.score.spark_case_metrics import case_metrics
    from ipinsights.score.spark_job import run_score_job
    from ipinsights.storage.events import day_range, read_events
    from ipinsights.storage.publish import write_partitions
    from ipinsights.synth import read_spec
    from ipinsights.synth.spec import ATTACK_LABELS, SPRAYING
    from ipinsights_jobs._common import Job, JobContext

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="output/demo")
    p.add_argument("--max-cases", type=int, default=50)
    p.add_argument("--keep", help="write the tables here (kept for inspection) instead of a temporary folder")
    p.add_argument("--sparse", type=int, default=50, help="attack logins per day kept for the rare-attack run")
    args = p.parse_args(argv)
    w = Path(args.workdir).resolve()
    ev = json.loads((w / "evaluation.json").read_text())
    for day, m in ev.get("cases", {}).items():
        for k in (10, 50):
            print(f"precision_at_{k}_{day}={m[f'precision_at_{k}']}")
        print(f"found_in_budget_{day}={m['found_in_budget']}/{m['attacked_entities']}")
        spray = [c["rank"] for c in m["network_cases"] if "spraying" in c["attack_kinds"]]
        print(f"spraying_network_case_rank_{day}={spray[0] if spray else 0}")
    (t0, t1), (v0, v1), (s0, s1) = (read_spec(w / "synth").split_dates(s) for s in ("train", "validation", "test"))
    days = day_range(s0, s1)

    def body(ctx: JobContext) -> None:
        spark = ctx.spark
        with tempfile.TemporaryDirectory(prefix="cases-eval-") as tmp:
            out = Path(args.keep or tmp)
            truth = spark.read.parquet(str(w / "synth" / "truth" / "events.parquet"))
            injected = truth.where(F.col("kind") != "normal").select("entity", "ip", F.col("ts").alias("_ts"))
            events = read_events(spark, str(w / "events"), s0, s1)
            normal = events.join(
                injected,
                (events.entity == injected.entity) & (events.ip == injected.ip) & (events.ts == injected._ts),
                "left_anti",
            )
            # The calibration days too, as they are: a stored fusion or case floor that is stale (a newer
            # format) is refitted on them, as the pipeline's scoring would.
            calibration = read_events(spark, str(w / "events"), v0, v1)
            write_partitions(normal.unionByName(calibration), str(out / "events"))
            n_removed = events.count() - read_events(spark, str(out / "events"), s0, s1).count()
            print(f"injected_logins_removed={n_removed}")
            # The demo's validation day stays the calibration: the stored threshold and case floor are reused.
            cfg = ScoreConfig(
                model=str(w / "run" / "model"),
                events=str(out / "events"),
                scores=str(out / "scores"),
                flagged=str(out / "flagged"),
                reports=str(out / "reports"),
                cases=str(out / "cases"),
                target_fpr=0.01,
                calibration_start_date=v0,
                calibration_end_date=v1,
                train_start_date=t0,
                train_end_date=t1,
                max_cases=args.max_cases,
            )
            run = run_score_job(spark, cfg, days)
            for day in days:
                c = run.cases[day]
                print(f"normal_day_open_cases_{day}={c['open']}")
                print(f"normal_day_cases_{day}={c['cases']}")
                print(f"normal_day_open_vs_budget_{day}={c['open'] / args.max_cases:.3f}")

            # Rare attacks: the normal days plus a sample of the injected attacks (about --sparse per day)
            # and the whole spraying source. The demo's own attack days hit a quarter of the accounts.
            attack_kinds = [k for k, label in ATTACK_LABELS.items() if label == 1] + [SPRAYING]
            hits = truth.where(F.col("kind").isin(attack_kinds) & F.col("dt").isin(days))
            single = hits.where(F.col("kind") != SPRAYING)
            fraction = min(1.0, args.sparse * len(days) / max(single.count(), 1))
            chosen = single.sample(fraction=fraction, seed=0).unionByName(hits.where(F.col("kind") == SPRAYING))
            chosen = chosen.select("entity", "ip", "ts", "dt", "kind").cache()
            picked = chosen.select(F.col("entity").alias("_e"), F.col("ip").alias("_ip"), F.col("ts").alias("_ts"))
            sparse = (
                events.join(
                    picked,
                    (events.entity == picked._e) & (events.ip == picked._ip) & (events.ts == picked._ts),
                    "left_semi",
                )
                .unionByName(normal)
                .unionByName(calibration)
            )
            write_partitions(sparse, str(out / "sparse_events"))
            labelled = str(out / "sparse_labelled")
            chosen.select("entity", "ip", F.lit(1).alias("label"), "kind").coalesce(1).write.csv(labelled)
            cfg = replace(
                cfg,
                events=str(out / "sparse_events"),
                scores=str(out / "s_scores"),
                flagged=str(out / "s_flagged"),
                reports=str(out / "s_reports"),
                cases=str(out / "s_cases"),
            )
            run_score_job(spark, cfg, days)
            metrics = case_metrics(spark, cfg.cases_table, cfg.scores, labelled, days, budget=args.max_cases)
            for day, m in metrics.items():
                for k in (10, 50):
                    print(f"sparse_precision_at_{k}_{day}={m[f'precision_at_{k}']}")
                print(f"sparse_found_in_budget_{day}={m['found_in_budget']}/{m['attacked_entities']}")
                spray = [c["rank"] for c in m["network_cases"] if SPRAYING in c["attack_kinds"]]
                print(f"sparse_spraying_network_case_rank_{day}={spray[0] if spray else 0}")

    return Job("cases_eval").run(argparse.Namespace(verbose=False, master=None, spark_conf=[]), body)


if __name__ == "__main__":
    sys.exit(main())
