"""Issue 21's tuning run: the shipped search space and objective on the scattered-network world.

    python bench/tune_eval.py [--users 3000] [--trials 8] [--work DIR] [--space cpu|sagemaker] [--objective NAME]

Generates the world of ``bench/network_eval.py`` in memory, writes its training days, its validation
day and the validation day's labelled rows (2,000 attacks and as many normal rows) as SageMaker CSVs,
runs the tuning job (``jobs/tune.py``, local Spark, ``--validation-labelled``) with ``conf/tune.yml`` as
shipped (objective ``validation:shuffled_auc`` unless ``--objective``; the base config's own values as
trial 0), keeping every trial's model, then scores the labelled test rows with trial 0 (the base
config) and the best trial.

Prints one figure per line: ``trial<N>_<metric>=`` for each trial (``discriminator_auc``,
``shuffled_auc``, ``status``, the sampled values), ``collapsed_trials=`` (discriminator_auc below 0.6),
and ``auc_<base|best>_<kind>=`` / ``recall0.01_<base|best>_<kind>=`` on the test rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from ipinsights.score.evaluate import evaluate_scores
    from ipinsights.score.scorer import Scorer
    from ipinsights.synth import SynthSpec, generate_attacks, generate_events, generate_world

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--space", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default=None, help="overrides conf/tune.yml's objective")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tune-eval-"))
    work.mkdir(parents=True, exist_ok=True)

    spec = SynthSpec(users=args.users, n_files=2, seed=args.seed, attacks=6000, validation_attacks=2000)
    world = generate_world(spec)
    events = generate_events(world, spec)
    test = generate_attacks(world, events, spec, "test", include_normal=True)
    day = (pc.cast(events["ts"], "int64").to_numpy() // 1_000_000 - spec.start_epoch_s) // 86_400
    options = pacsv.WriteOptions(include_header=False)
    for name, rows in (("train", day < spec.train_days), ("validation", day == spec.train_days)):
        pacsv.write_csv(events.filter(pa.array(rows)).select(["entity", "ip"]), work / f"{name}.csv", options)
    labelled = generate_attacks(world, events, spec, "validation", include_normal=True)
    pacsv.write_csv(labelled.select(["entity", "ip", "label", "kind"]), work / "labelled.csv", options)

    cfg = yaml.safe_load((REPO / "conf" / "tune.yml").read_text())
    cfg.update(
        base_config=str(REPO / "conf" / "demo.yml"),
        keep_trial_models=True,
        max_jobs=args.trials,
        max_parallel_jobs=1,
        early_stopping={"type": "off"},
    )
    if args.space != "cpu":
        cfg["space"] = args.space
    if args.objective:
        cfg["objective"] = args.objective
    (work / "tune.yml").write_text(yaml.safe_dump(cfg))
    out = work / "out"
    inputs = [
        "--train",
        str(work / "train.csv"),
        "--validation",
        str(work / "validation.csv"),
        "--format",
        "csv",
        "--validation-labelled",
        str(work / "labelled.csv"),
    ]
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "tune.py"),
        *inputs,
        "--config",
        str(work / "tune.yml"),
        "--output",
        str(out),
    ]
    with open(work / "tune.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)

    table = pd.read_csv(out / "results.csv")
    names = [c for c in table.columns if c in cfg["space"]] if isinstance(cfg["space"], dict) else []
    for _, row in table.iterrows():
        n = int(row["TrialNumber"])
        for col in ("TrainingJobStatus", "discriminator_auc", "shuffled_auc", "labelled_recall", *names):
            print(f"trial{n}_{col}={row[col]}")
    print(f"collapsed_trials={int((table['discriminator_auc'] < 0.6).sum())}")
    best = int(table.loc[table["FinalObjectiveValue"].idxmax(), "TrialNumber"])
    print(f"best_trial={best}")
    labels = test["label"].to_numpy()
    kinds = test["kind"].to_numpy(zero_copy_only=False)
    for name, trial in (("base", 0), ("best", best)):
        scorer = Scorer.load(out / "trials" / f"trial-{trial:03d}" / "model")
        scores = scorer.anomaly_score(test["entity"], test["ip"])
        ev = evaluate_scores(np.where(np.isfinite(scores), scores, -np.inf), labels, kinds)
        for kind, auc in ev.auc["model"].items():
            print(f"auc_{name}_{kind}={auc:.4f}")
        for kind, r in ev.recall["model"]["0.01"].items():
            print(f"recall0.01_{name}_{kind}={r:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
