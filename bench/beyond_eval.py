"""Issue 9's evaluation: per-kind AUC before (SageMaker-like) and after IPv6, cold start and the prior.

    python bench/beyond_eval.py [--users 3000] [--epochs 3] [--cold-share 0.1] [--work DIR]

On one generated data set (dual stack: about 30 % of users have IPv6 at home), a share of the users
are made "cold": left out of training entirely, or kept with only a few training events (learning
period). Then three scorings of the same labelled test rows:

* ``before``: an IPv4-only model scored raw (SageMaker's behaviour: IPv6 rows cannot be scored and are
  ranked least suspicious; cold entities get whatever their hashed vector says);
* ``ipv6``: the model with IPv6 prefix levels, scored raw (cold entities still raw);
* ``after``: the same model with the scoring job's rules: entities with fewer than 10 training events
  are judged by the population prior of the entity profiles, and rows of both rules are ranked on one
  scale, their ``normal_percentile`` (calibrated here, as the job does on Spark, on the validation
  day's normal rows).

Prints one AUC per line, ``auc_<variant>_<kind>=`` (kind ``overall``, every attack kind, and
``cold_overall``: cold users' rows only), and ``rows_<rule>=`` counts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
    from ipinsights.core.entities import ENTITY_FILE, EntityStats
    from ipinsights.score.evaluate import evaluate_scores
    from ipinsights.score.rules import CAL_LEVELS, RULE_SCORE, Thresholds
    from ipinsights.score.scorer import Scorer
    from ipinsights.score.spark_profiles import build_profiles
    from ipinsights.storage.modelfile import profile_path, save_model
    from ipinsights.storage.sagemaker_csv import read_labelled_csv
    from ipinsights.synth import SynthSpec, generate_dataset
    from ipinsights.train.data import encode_pairs
    from ipinsights.train.trainer import train_model
    from ipinsights_jobs._common import build_spark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cold-share", type=float, default=0.1, help="share of users made cold")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="beyond-"))
    shutil.rmtree(work, ignore_errors=True)
    spec = SynthSpec(users=args.users, days=10, seed=args.seed, attacks=6000, validation_attacks=500, n_files=2)
    paths = generate_dataset(work / "synth", spec)
    events = pq.read_table(paths.events, columns=["entity", "ip", "dt"])
    last_train = str(np.datetime64(spec.start_date) + np.timedelta64(spec.train_days - 1, "D"))
    train = events.filter(pc.less_equal(events["dt"], last_train))

    # Cold users: half never seen in training, half with only their first 1-5 training events.
    rng = np.random.default_rng(args.seed)
    users = np.unique(train["entity"].to_numpy(zero_copy_only=False))
    cold = rng.choice(users, int(args.cold_share * users.size), replace=False)
    unseen, learning = cold[: cold.size // 2], cold[cold.size // 2 :]
    ent = train["entity"].to_numpy(zero_copy_only=False)
    order = np.argsort(ent, kind="stable")
    rank = np.empty(ent.size, np.int64)
    starts = np.r_[0, np.flatnonzero(ent[order][1:] != ent[order][:-1]) + 1]
    rank[order] = np.arange(ent.size) - np.repeat(starts, np.diff(np.r_[starts, ent.size]))
    keep_n = dict(zip(learning.tolist(), rng.integers(1, 6, learning.size).tolist(), strict=True))
    limit = np.array([keep_n.get(e, 1 << 40) for e in ent])
    keep = ~np.isin(ent, unseen) & (rank < limit)
    train = train.filter(pa.array(keep))
    print(f"train_rows={train.num_rows}")
    print(f"cold_users={cold.size}")

    hp = Hyperparameters(num_entity_vectors=2 * args.users, vector_dim=128, epochs=args.epochs)
    topts = TrainOptions(seed=args.seed, progress_bar="off")
    models = {}
    for name, opts in (("before", ModelOptions(ipv6_prefix_lengths=())), ("ipv6", ModelOptions())):
        enc = encode_pairs(
            train["entity"], train["ip"], hp.num_entity_vectors, opts.hash_seed, ipv6=bool(opts.ipv6_prefix_lengths)
        )
        result = train_model(hp, opts, topts, enc)
        stats = EntityStats.from_entities(train["entity"], opts.hash_seed)
        models[name] = save_model(result.model, work / name, extra_files={ENTITY_FILE: stats.to_bytes()})

    spark = build_spark("beyond-eval", "local[2]", {"spark.ui.enabled": "false"})
    history = spark.createDataFrame(train.select(["entity", "ip"]).to_pandas())
    build_profiles(history, str(models["ipv6"]), str(profile_path(models["ipv6"])))
    spark.stop()

    test = read_labelled_csv(paths.test_labelled)
    labels = test["label"].to_numpy()
    kinds = test["kind"].to_numpy(zero_copy_only=False)
    is_cold = np.isin(test["entity"].to_numpy(zero_copy_only=False), cold)
    variants = {}
    s_before = Scorer.load(models["before"])
    variants["before"] = s_before.anomaly_score(test["entity"], test["ip"])
    s6 = Scorer.load(models["ipv6"], profile=profile_path(models["ipv6"]))
    variants["ipv6"] = s6.anomaly_score(test["entity"], test["ip"])  # the model's own score: no profile used
    val = read_labelled_csv(paths.validation_labelled)
    val = val.filter(pc.equal(val["label"], 0))
    cal = s6.assess(val["entity"], val["ip"], learning_period_events=10)

    def table(x: np.ndarray) -> tuple[float, ...]:
        return tuple(np.quantile(x[np.isfinite(x)], CAL_LEVELS).tolist())

    own = cal.anomaly_score[cal.rule == RULE_SCORE]
    th = Thresholds(float(np.quantile(own, 0.99)), score_table=table(own), prior_table=table(cal.prior_score))
    verdict = s6.assess(test["entity"], test["ip"], learning_period_events=10, thresholds=th)
    # Rank by normal percentile; beyond the calibration's range (ties at 100) by the rule's own score.
    tiebreak = np.zeros(len(labels))
    for rule in np.unique(verdict.rule.astype(str)):
        mine = (verdict.rule == rule) & np.isfinite(verdict.anomaly_score)
        tiebreak[mine] = np.argsort(np.argsort(verdict.anomaly_score[mine])) / max(mine.sum(), 1)
    variants["after"] = verdict.normal_percentile + 1e-3 * tiebreak
    for rule, n in zip(*np.unique(verdict.rule.astype(str), return_counts=True), strict=True):
        print(f"rows_{rule}={n}")
    for name, scores in variants.items():
        # NaN (unscorable) ranks least suspicious, as a SageMaker user dropping such rows would see it.
        filled = np.where(np.isfinite(scores), scores, -np.inf)
        ev = evaluate_scores(filled, labels, kinds)
        for kind, auc in ev.auc["model"].items():
            print(f"auc_{name}_{kind}={auc:.4f}")
        cold_ev = evaluate_scores(filled[is_cold], labels[is_cold], kinds[is_cold])
        print(f"auc_{name}_cold_overall={cold_ev.auc['model']['overall']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
