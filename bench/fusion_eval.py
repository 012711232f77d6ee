"""Issue 30's evaluation: the fused risk score against the model alone and the "AS seen" lookup, per attack kind.

    python bench/fusion_eval.py [--users 3000] [--seeds 0,1,2] [--epochs 5] [--shapes scattered,blocks]
                                [--variants table,plain] [--sample-rows 100000] [--config conf/demo.yml]

For each shape and seed it generates a world in memory (``scattered``: the generator's default, ISPs
announcing many scattered prefixes; ``blocks``: the earlier world of a few large ranges per ISP), writes its
events as the ingest job's table, and per variant (``table``: the model trained with the world's ip2asn
tables; ``plain``: without, and scored without any table) trains the model with the demo's settings
(``--config``, default conf/demo.yml, as bench/network_eval.py; ``num_entity_vectors`` twice the users),
then runs the scoring job's own sidecar steps on local Spark: the entity profiles from the training days
and the fusion fitted on the validation day
(:func:`ipinsights.score.spark_sidecars.resolve_profile`, :func:`~.resolve_fusion`). The labelled test rows
(with their timestamps) are then evaluated in-process as ``ipinsights evaluate`` does
(:func:`ipinsights.score.evaluate.evaluate_model`).

Prints one figure per line, the mean over the seeds: ``auc_<shape>_<variant>_<method>_<kind>=`` and
``recall0.01_<shape>_<variant>_<method>_<kind>=`` for ``fused``, ``model`` and ``seen_asn`` (the lookup:
with the world's table in both variants), and ``fit_ratio_<shape>_<variant>=`` (the fusion's numpy fit
over one training epoch's time), ``build_ratio_<shape>_<variant>=`` (the whole sidecar build on Spark:
sample, join, features, fit, over one epoch). ``--devices realistic`` (issue 31): users' own devices and
the attackers' four levels of sophistication, user agents in the events and the test rows; it adds
``trip_<shape>_<variant>_auc=``: the normal test logins from an AS the entity never used, on their own
device against the same logins on a device the entity never used (the AUC of the latter over the former).

``--oracle`` (issue 30's bound): where the lookup ties, how well could any score of these features do? The
lookup flags every login from an AS the entity never used, so past it the fused score gains only by
ranking each attack kind above those normal logins (trips, one-off logins elsewhere). It adds
``unseen_<shape>_<variant>_<method>_<kind>=``: the AUC of the kind's attacks against the normal test
logins from an AS the entity never used in training, for ``fused`` and for two scores fitted **with the
test rows' own labels** (5-fold cross-validated, every kind against the normal rows at once, as one
``risk_score`` must rank them all): ``oracle_linear`` (the fusion's own form, a logistic regression per
leaf, ``fit_fusion``) and, where scikit-learn is installed (it is no dependency of the project),
``oracle_trees`` (gradient-boosted trees on the same features). ``unseen_<shape>_<variant>_rows=`` is how many normal
test logins that is; ``oracle_linear`` and ``oracle_trees`` also get ``auc_`` figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("fused", "model", "seen_asn")


def _spark():
    import os

    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master("local[2]")
        .appName("fusion-eval")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )


def _world(args: argparse.Namespace, shape: str, seed: int, work: Path) -> dict:
    """The world's events table on disk, its training rows, its labelled test rows and its tables."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ipinsights.synth import SynthSpec, generate_attacks, generate_events, generate_world
    from ipinsights.synth.spec import ATTACK_KINDS, BLOCKS_ATTACK_KINDS, DEVICE_ATTACK_KINDS

    before = {"plan_shape": "blocks", "renumber_rate": 0.0, "mobile_prefixes": 1, "attack_kinds": BLOCKS_ATTACK_KINDS}
    extra: dict = {} if shape == "scattered" else before
    if args.devices == "realistic":  # users' own devices; attackers of the four levels besides the address kinds
        kinds = extra.get("attack_kinds", ATTACK_KINDS)
        extra = {**extra, "devices": "realistic", "attack_kinds": (*DEVICE_ATTACK_KINDS, *kinds)}
    spec = SynthSpec(users=args.users, n_files=2, seed=seed, attacks=args.attacks, validation_attacks=0, **extra)
    world = generate_world(spec)
    events = generate_events(world, spec)
    test = generate_attacks(world, events, spec, "test", include_normal=True)
    cols = [
        "entity",
        "ip",
        "ip_int",
        "ip_version",
        "ts",
        *(["user_agent"] if args.devices == "realistic" else []),
        "dt",
    ]
    pq.write_to_dataset(events.select(cols), work / "events", partition_cols=["dt"])
    train_days, valid_days = spec.split_dates("train"), spec.split_dates("validation")
    train = events.filter(
        pc.and_(pc.greater_equal(events["dt"], train_days[0]), pc.less_equal(events["dt"], train_days[1]))
    )
    tables = (
        f"{world.plan.to_ip2asn_tsv(work / 'networks.tsv')},{world.plan.to_ip2asn_v6_tsv(work / 'networks-v6.tsv')}"
    )
    return {"train": train, "test": test, "tables": tables, "days": (train_days, valid_days), "events": work / "events"}


def _train(args: argparse.Namespace, w: dict, variant: str, seed: int, path: Path) -> float:
    """Train and save the model (with its entity stats, as ``ipinsights train`` does); seconds per epoch."""
    from ipinsights.core.config import ModelOptions, TrainConfig, TrainOptions, load_config
    from ipinsights.core.entities import EntityStats
    from ipinsights.train.data import encode_pairs
    from ipinsights.train.trainer import train_model

    settings = [f"--num_entity_vectors={2 * args.users}", f"--epochs={args.epochs}"]
    hp = load_config(TrainConfig, args.config, settings).hyperparameters
    opts = ModelOptions(asn_table=w["tables"] if variant == "table" else None)
    train = w["train"]
    enc = encode_pairs(train["entity"], train["ip"], hp.num_entity_vectors, opts.hash_seed)
    stats = EntityStats.from_entities(train["entity"], opts.hash_seed)
    t0 = time.perf_counter()
    train_model(hp, opts, TrainOptions(seed=seed, progress_bar="off"), enc, model_dir=path, entity_stats=stats)
    return (time.perf_counter() - t0) / args.epochs


def _evaluate(spark, args: argparse.Namespace, w: dict, variant: str, model: Path, out: dict) -> tuple[float, float]:
    """The sidecars (profiles, fusion) on Spark, then the evaluation; the fit's and the build's seconds."""
    from ipinsights.score.config import FusionSettings, ScoreConfig
    from ipinsights.score.evaluate import asn_baseline_scores, evaluate_model, evaluate_scores
    from ipinsights.score.scorer import Scorer
    from ipinsights.score.spark_sidecars import resolve_fusion, resolve_profile
    from ipinsights.storage.modelfile import network_table

    (t0, t1), (v0, v1) = w["days"]
    table = w["tables"] if variant == "table" else None  # "plain": no table anywhere, features included
    cfg = ScoreConfig(
        model=str(model),
        scores=str(model.parent / "scores"),
        flagged=str(model.parent / "flagged"),
        reports=str(model.parent / "reports"),
        events=str(w["events"]),
        target_fpr=0.01,
        train_start_date=t0,
        train_end_date=t1,
        calibration_start_date=v0,
        calibration_end_date=v1,
        asn_table=table,
        fusion=FusionSettings(sample_rows=args.sample_rows),
    )
    header = resolve_profile(spark, cfg)
    start = time.perf_counter()
    fusion = resolve_fusion(spark, cfg, header)
    build = time.perf_counter() - start
    assert fusion is not None
    scorer = Scorer.load(model, profile=True, asn_table=table, fusion=True)
    test = w["test"]
    ev, fused = evaluate_model(scorer, test)
    lookup = asn_baseline_scores(
        network_table(w["tables"]), w["train"]["entity"], w["train"]["ip"], test["entity"], test["ip"]
    )
    base = evaluate_scores(lookup["seen_asn"], test["label"].to_numpy(), test["kind"].to_numpy(zero_copy_only=False))
    if "user_agent" in test.column_names:
        trips = _trips(scorer, w, test, lookup["seen_asn"])
        for name, value in trips.items():
            out[name].append(value)
    if args.oracle:
        _oracle(scorer, test, fused, lookup["seen_asn"], out)
    for method, auc, recall in (
        ("fused", ev.auc["fused"], ev.recall["fused"]["0.01"]),
        ("model", ev.auc["model"], ev.recall["model"]["0.01"]),
        ("seen_asn", base.auc["model"], base.recall["model"]["0.01"]),
    ):
        for kind, value in auc.items():
            out[f"auc_{method}_{kind}"].append(value)
        for kind, value in recall.items():
            out[f"recall0.01_{method}_{kind}"].append(value)
    return fusion.fit_seconds, build


def _test_features(scorer, test) -> dict[str, np.ndarray]:
    """The fusion's features of the test rows, as the scorer computes them (its explanations' path)."""
    from ipinsights.score.clients import event_devices
    from ipinsights.score.features import event_days
    from ipinsights.score.fusion import fused_scores

    prof = scorer.profiles
    rows = prof.index_of(scorer.entity_hashes(test["entity"]))
    parsed = scorer.parse(test["ip"])
    dp = scorer.dot_product(test["entity"], parsed)
    days = event_days(test["ts"], test.num_rows)
    return fused_scores(scorer.fusion, parsed, dp, prof, rows, scorer.asn_table, days, event_devices(test))[1]


def _oracle(scorer, test, fused: np.ndarray, unseen_as: np.ndarray, out: dict, folds: int = 5) -> None:
    """``--oracle``: the fused score and two scores fitted on the test rows' own labels (cross-validated),
    per kind against the normal logins from an AS the entity never used (see the module docstring)."""
    from ipinsights.core.metrics import roc_auc
    from ipinsights.score.fusion import FusionSpec
    from ipinsights.score.fusion_fit import fit_fusion

    feats = _test_features(scorer, test)
    fusion = scorer.fusion
    leaf = {leaf.when: leaf.features for leaf in fusion.leaves}
    spec = FusionSpec(fusion.gate, leaf[0], leaf[1])
    label = test["label"].to_numpy().astype(np.int64)
    kind = test["kind"].to_numpy(zero_copy_only=False)
    # Balanced like the fusion's own fit: attacks and normal rows of equal total weight.
    weight = np.where(label == 1, 0.5 / max(label.sum(), 1), 0.5 / max((label == 0).sum(), 1)) * label.size
    fold = np.random.default_rng(0).permutation(label.size) % folds
    scores = {"fused": np.asarray(fused, np.float64), "oracle_linear": np.zeros(label.size)}
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        trees = None
    else:
        trees = np.zeros(label.size)
        # The trees see every feature that varies and is known on every row (no split needs the gate).
        x = np.column_stack([feats[n] for n in fusion.names if np.isfinite(feats[n]).all() and np.ptp(feats[n]) > 0])
    for f in range(folds):
        fit, held = fold != f, fold == f
        model = fit_fusion(
            spec,
            {n: v[fit] for n, v in feats.items()},
            label[fit],
            weight[fit],
            model_fingerprint=fusion.model_fingerprint,
            asn_table_fingerprint=fusion.asn_table_fingerprint,
            profile=fusion.profile,
        )
        scores["oracle_linear"][held] = model.risk({n: v[held] for n, v in feats.items()})
        if trees is not None:
            gbt = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
            gbt.fit(x[fit], label[fit], sample_weight=weight[fit])
            trees[held] = gbt.predict_proba(x[held])[:, 1]
    if trees is not None:
        scores["oracle_trees"] = trees
    # The normal rows as `evaluate` counts them: the controls (own network, own ISP) are no one's negatives.
    normal = kind == "normal"
    normal_unseen = normal & (unseen_as == 1.0)
    out["unseen_rows"].append(float(normal_unseen.sum()))
    for method, score in scores.items():
        for k in sorted(set(kind[label == 1])):
            attack = kind == k
            out[f"unseen_{method}_{k}"].append(roc_auc(score[attack | normal_unseen], label[attack | normal_unseen]))
            if method != "fused":
                out[f"auc_{method}_{k}"].append(roc_auc(score[attack | normal], label[attack | normal]))


def _trips(scorer, w: dict, test, unseen_as: np.ndarray) -> dict[str, float]:
    """Issue 31's trips: the normal test logins from an AS the entity never used in training (its trips and
    one-off logins, made on its own devices, as the generator's travellers and roamers keep them), scored as
    they are and again with a device the entity never used (another training login's user agent, of a
    device that is not the entity's). ``trip_auc`` is the AUC of the new-device copies against the
    known-device ones (1.0: every trip on a new device ranks above every trip on a known one)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ipinsights.core.metrics import roc_auc
    from ipinsights.score.clients import event_devices
    from ipinsights.score.features import event_days

    trip = (test["label"].to_numpy() == 0) & (unseen_as == 1.0) & pc.is_valid(test["user_agent"]).to_numpy()
    rows = test.filter(pa.array(trip))
    train = w["train"].filter(pc.is_valid(w["train"]["user_agent"]))
    device = event_devices(train).device.tolist()  # the fusion's own device ids (family, OS, type)
    owned = set(zip(train["entity"].to_pylist(), device, strict=True))
    pool = sorted(set(zip(train["user_agent"].to_pylist(), device, strict=True)))
    rng = np.random.default_rng(0)
    other = []
    for entity in rows["entity"].to_pylist():
        for pick in rng.integers(0, len(pool), 64):  # a device the entity never used (64 tries)
            agent, dev = pool[int(pick)]
            if (entity, dev) not in owned:
                break
        other.append(agent)
    days = event_days(rows["ts"], rows.num_rows)
    known = scorer.assess(rows["entity"], rows["ip"], 10, days=days, devices=event_devices(rows)).risk_score
    swapped = rows.set_column(rows.schema.get_field_index("user_agent"), "user_agent", pa.array(other, pa.string()))
    new = scorer.assess(rows["entity"], rows["ip"], 10, days=days, devices=event_devices(swapped)).risk_score
    assert known is not None and new is not None
    labels = np.r_[np.zeros(known.size), np.ones(new.size)]
    return {"trip_auc": roc_auc(np.r_[known, new], labels), "trip_rows": float(rows.num_rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--shapes", default="scattered,blocks")
    p.add_argument("--variants", default="table,plain")
    p.add_argument("--attacks", type=int, default=10000)
    p.add_argument("--sample-rows", type=int, default=100_000)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--config", type=Path, default=REPO / "conf" / "demo.yml", help="training settings (YAML)")
    p.add_argument("--oracle", action="store_true", help="issue 30's bound: scores fitted on the test labels")
    p.add_argument(
        "--devices",
        choices=("legacy", "realistic"),
        default="legacy",
        help="realistic: users' devices and the four attacker levels (naive, vpn, targeted, very_targeted); the "
        "events and the test rows carry their user agents (the fusion's device features)",
    )
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fusion-eval-"))
    spark = _spark()
    spark.sparkContext.setLogLevel("ERROR")
    seeds = [int(s) for s in args.seeds.split(",")]
    for shape in args.shapes.split(","):
        figures: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        ratios: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for seed in seeds:
            root = work / f"{shape}-{seed}"
            w = _world(args, shape, seed, root)
            for variant in args.variants.split(","):
                model = root / variant / "model"
                epoch = _train(args, w, variant, seed, model)
                fit, build = _evaluate(spark, args, w, variant, model, figures[variant])
                ratios[variant]["fit"].append(fit / epoch)
                ratios[variant]["build"].append(build / epoch)
                print(
                    f"# {shape} seed {seed} {variant}: epoch {epoch:.1f} s, fit {fit:.2f} s, build {build:.1f} s",
                    flush=True,
                )
        for variant, found in figures.items():
            for name, values in found.items():
                print(f"{name.split('_', 1)[0]}_{shape}_{variant}_{name.split('_', 1)[1]}={np.mean(values):.4f}")
            for what in ("fit", "build"):
                print(f"{what}_ratio_{shape}_{variant}={np.mean(ratios[variant][what]):.4f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
