"""Issue 19's evaluation: per-kind AUC and recall at 1%/2% FPR, with and without an ip2asn table.

    python bench/network_eval.py [--users 3000] [--epochs 5] [--shape scattered|blocks] [--variants plain,table]
                                 [--config conf/demo.yml]

Generates a world in memory (``--shape scattered``: ISPs announce many prefixes of mixed sizes scattered
over the address space, homes are renumbered across them, carriers hand out addresses from several;
``--shape blocks``: the generator before issue 19, with its attack kinds), trains the model with the
demo's settings (``--config``, default conf/demo.yml: its hyperparameters, ``num_entity_vectors`` twice
the users) on the training days, once per variant (``plain``: prefix levels only; ``table``: with the generator's ip2asn
tables as ``model.asn_table``), and scores the labelled test rows with the raw model score.

Prints one figure per line: ``auc_<method>_<kind>=`` and ``recall<fpr>_<method>_<kind>=`` for the
model variants and the baselines (``seen_same_24``, ``seen_same_16``, ``seen_asn``), and
``seconds_per_epoch_<variant>=`` plus ``epoch_time_ratio_table_vs_plain=`` (same machine, same run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from ipinsights.core.config import ModelOptions, TrainConfig, TrainOptions, load_config
    from ipinsights.score.evaluate import asn_baseline_scores, baseline_scores, evaluate_scores
    from ipinsights.score.scorer import Scorer
    from ipinsights.storage.modelfile import network_table, save_model
    from ipinsights.synth import SynthSpec, generate_attacks, generate_events, generate_world
    from ipinsights.synth.spec import BLOCKS_ATTACK_KINDS
    from ipinsights.train.data import encode_pairs
    from ipinsights.train.trainer import train_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--shape", choices=("scattered", "blocks"), default="scattered")
    p.add_argument("--variants", default="plain,table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", type=int, default=10000)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--config", type=Path, default=REPO / "conf" / "demo.yml", help="training settings (YAML)")
    p.add_argument("--table-negatives", type=float, default=None, help="TrainOptions.table_negatives")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="network-eval-"))
    work.mkdir(parents=True, exist_ok=True)

    before = {"plan_shape": "blocks", "renumber_rate": 0.0, "mobile_prefixes": 1, "attack_kinds": BLOCKS_ATTACK_KINDS}
    shape = {} if args.shape == "scattered" else before
    spec = SynthSpec(users=args.users, n_files=2, seed=args.seed, attacks=args.attacks, validation_attacks=0, **shape)
    world = generate_world(spec)
    events = generate_events(world, spec)
    test = generate_attacks(world, events, spec, "test", include_normal=True)
    rel_days = (pc.cast(events["ts"], "int64").to_numpy() // 1_000_000 - spec.start_epoch_s) // 86_400
    train = events.filter(rel_days < spec.train_days)
    tables = (
        f"{world.plan.to_ip2asn_tsv(work / 'networks.tsv')},{world.plan.to_ip2asn_v6_tsv(work / 'networks-v6.tsv')}"
    )
    print(f"train_rows={train.num_rows}")

    settings = [f"--num_entity_vectors={2 * args.users}", f"--epochs={args.epochs}"]
    hp = load_config(TrainConfig, args.config, settings).hyperparameters
    labels = test["label"].to_numpy()
    kinds = test["kind"].to_numpy(zero_copy_only=False)
    methods: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for variant in args.variants.split(","):
        opts = ModelOptions(asn_table=tables if variant == "table" else None)
        enc = encode_pairs(train["entity"], train["ip"], hp.num_entity_vectors, opts.hash_seed)
        t0 = time.perf_counter()
        extra = {} if args.table_negatives is None else {"table_negatives": args.table_negatives}
        result = train_model(hp, opts, TrainOptions(seed=args.seed, progress_bar="off", **extra), enc)
        seconds[variant] = (time.perf_counter() - t0) / args.epochs
        path = save_model(result.model, work / variant)
        methods[variant] = Scorer.load(path).anomaly_score(test["entity"], test["ip"])
    methods.update(baseline_scores(train["entity"], train["ip"], test["entity"], test["ip"]))
    methods.update(asn_baseline_scores(network_table(tables), train["entity"], train["ip"], test["entity"], test["ip"]))
    for name in ("seen_exact_ip",):
        methods.pop(name, None)
    for name, scores in methods.items():
        ev = evaluate_scores(np.where(np.isfinite(scores), scores, -np.inf), labels, kinds)
        for kind, auc in ev.auc["model"].items():
            print(f"auc_{name}_{kind}={auc:.4f}")
        for fpr, row in ev.recall["model"].items():
            for kind, r in row.items():
                print(f"recall{fpr}_{name}_{kind}={r:.3f}")
    for variant, s in seconds.items():
        print(f"seconds_per_epoch_{variant}={s:.1f}")
    if "plain" in seconds and "table" in seconds:
        print(f"epoch_time_ratio_table_vs_plain={seconds['table'] / seconds['plain']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
