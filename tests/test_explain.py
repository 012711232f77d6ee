"""Cold start, levels and explanations, in process (the batch job and the endpoint share this code).

The entity profiles are built here with numpy from the toy world's training pairs (an oracle written
independently of the Spark aggregation in ``ipinsights.score.spark_profiles.build_profiles``, which the scoring
job's test covers), saved beside the model, and read back the way the endpoint reads them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toyworld import make_toy_world

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.entities import ENTITY_FILE, EntityStats
from ipinsights.core.hashing import hash_strings
from ipinsights.core.ip import key_prefix, key_prefix_text, parse_ip
from ipinsights.score.calibration import Calibration, save_calibration
from ipinsights.score.profile_rows import save_profiles
from ipinsights.score.profiles import QUANTILES, EntityProfiles, PopulationPrior
from ipinsights.score.rules import RULE_LEARNING, RULE_SCORE, Thresholds
from ipinsights.score.scorer import Scorer
from ipinsights.serve import protocol
from ipinsights.serve.app import load_policy, load_scorer, score_records
from ipinsights.serve.settings import ServeSettings
from ipinsights.storage.modelfile import calibration_path, model_fingerprint, profile_path, save_model
from ipinsights.train.data import encode_pairs
from ipinsights.train.trainer import train_model


@pytest.fixture(scope="module")
def world():
    return make_toy_world(n_entities=200, events_per_entity=40, n_test=800, seed=4, ipv6_share=0.3)


@pytest.fixture(scope="module")
def model_dir(world, tmp_path_factory):
    hp = Hyperparameters(num_entity_vectors=400, vector_dim=32, epochs=3, mini_batch_size=256)
    opts = ModelOptions()
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, opts.hash_seed)
    result = train_model(hp, opts, TrainOptions(seed=1, num_threads=1, progress_bar="off"), train)
    stats = EntityStats.from_entities(world.train["entity"], opts.hash_seed)
    out = tmp_path_factory.mktemp("explain") / "m"
    path = save_model(result.model, out, extra_files={ENTITY_FILE: stats.to_bytes()})
    _write_profiles(Scorer.load(path), world, path)
    return path


def _write_profiles(scorer: Scorer, world, path) -> None:
    ent = np.asarray(world.train["entity"].to_pylist(), dtype=object)
    keys = parse_ip(world.train["ip"]).value
    anomaly = scorer.anomaly_score(world.train["entity"], world.train["ip"])
    h = hash_strings(world.train["entity"], scorer.hash_seed)
    uniq = np.unique(h)
    q, offsets, net_keys, net_counts = [], [0], [], []
    for u in uniq:
        mine = h == u
        q.append(np.quantile(anomaly[mine], QUANTILES))
        nets = key_prefix(keys[mine], 24, 48)
        n_u, counts = np.unique(nets, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:16]
        for i in order:
            net_keys.append(keys[mine][nets == n_u[i]][0])
            net_counts.append(counts[i])
        offsets.append(len(net_keys))
    assert len(set(ent)) == uniq.size
    pop = {}
    for name, (v4, v6) in (("subnets", (24, 48)), ("networks", (16, 32))):
        ids, n = np.unique(key_prefix(keys, v4, v6), return_counts=True)
        pop[name], pop[f"{name[:-1]}_counts"] = ids, n
    names = {int(v): e for v, e in zip(h.tolist(), ent.tolist(), strict=True)}
    profiles = EntityProfiles(
        hashes=uniq,
        score_quantiles=np.asarray(q, np.float32),
        net_offsets=np.asarray(offsets),
        net_keys=np.asarray(net_keys, np.int64),
        net_counts=np.asarray(net_counts),
        asn_offsets=np.zeros(uniq.size + 1, np.int64),
        asns=np.zeros(0, np.int64),
        fingerprint=model_fingerprint(path),
        population=PopulationPrior(**pop),
        entities=np.asarray([names[int(u)] for u in uniq.tolist()], dtype=object),
    )
    save_profiles(profiles, profile_path(path))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=30), st.integers(0, 50))
def test_cold_start_entities_never_get_an_unmarked_model_score(model_dir, counts, period):
    """Whatever the training counts and the learning period, an entity below it is scored by the prior, marked."""
    scorer = Scorer.load(model_dir, profile=profile_path(model_dir))
    names = [f"cold_{i}" for i in range(len(counts))]
    scorer.entity_stats = EntityStats.from_hash_counts(hash_strings(names, scorer.hash_seed), np.asarray(counts))
    ips = [f"10.{i}.1.2" for i in range(len(names))]
    a = scorer.assess(names, ips, learning_period_events=period)
    cold = np.asarray(counts) < max(period, 1)
    assert (a.rule[cold] == RULE_LEARNING).all() and (a.rule[~cold] == RULE_SCORE).all()
    np.testing.assert_allclose(a.anomaly_score[cold], a.prior_score[cold], atol=1e-6)
    np.testing.assert_allclose(a.anomaly_score[~cold], -a.dot_product[~cold], atol=1e-6)


def test_population_prior_prefers_popular_networks(model_dir, world):
    """The prior ranks an address of networks many users log in from above a random one."""
    assert np.isnan(Scorer.load(model_dir).assess(["x"], ["10.1.2.3"]).prior_score).all()  # no profile: no prior
    scorer = Scorer.load(model_dir, profile=True)  # the one beside the model
    common = world.train["ip"].to_pylist()[:300]
    rng = np.random.default_rng(0)
    randoms = [f"{a}.{b}.{c}.{d}" for a, b, c, d in rng.integers(1, 223, (300, 4))]
    p_common = scorer.assess(["x"] * 300, common).prior_score
    p_random = scorer.assess(["x"] * 300, randoms).prior_score
    assert np.median(p_common) < np.median(p_random)  # less anomalous


def test_explanations_list_the_entitys_real_networks(model_dir, world):
    scorer = Scorer.load(model_dir, profile=profile_path(model_dir))
    t = world.test
    attacks = t.filter(t["label"].to_numpy().astype(bool))
    ex = scorer.explain(attacks["entity"], attacks["ip"])
    train_ent = np.asarray(world.train["entity"].to_pylist(), dtype=object)
    train_keys = parse_ip(world.train["ip"]).value
    checked = 0
    for i, e in enumerate(attacks["entity"].to_pylist()):
        real = set(key_prefix_text(train_keys[train_ent == e], 24, 48))
        listed = [n["network"] for n in ex.nearest_networks[i]]
        assert listed and set(listed) <= real, (e, listed)
        assert ex.closest_network[i] in real
        assert ex.typical_low[i] <= ex.typical_high[i]
        if attacks["kind"][i].as_py() == "random_ip":
            assert ex.subnet_seen[i] is False  # a random address: its /24 was never this entity's
        checked += 1
    assert checked == attacks.num_rows > 100


def test_percentiles_and_levels(model_dir, world):
    scorer = Scorer.load(model_dir, profile=profile_path(model_dir))
    t = world.test
    a = scorer.assess(t["entity"], t["ip"], thresholds=Thresholds(high=2.0, medium=0.0, prior_high=5.0))
    normal = t["label"].to_numpy() == 0
    assert np.nanmedian(a.entity_percentile[~normal]) > np.nanmedian(a.entity_percentile[normal])
    assert np.nanmax(a.entity_percentile) <= 100 and np.nanmin(a.entity_percentile) >= 0
    assert set(a.level.tolist()) <= {"low", "medium", "high"}
    hi = a.anomaly_score > 2.0
    assert (a.level[hi] == "high").all() and (a.level[(a.anomaly_score > 0) & ~hi] == "medium").all()


def test_endpoint_answers_with_levels_and_explanations(model_dir, world):
    """What the endpoint sends: the files beside the model (profile, calibration) are picked up."""
    calibration = Calibration(
        1.0,
        0.01,
        100,
        "test",
        model_fingerprint(model_dir),
        medium_threshold=-1.0,
        medium_fpr=0.1,
        prior_threshold=3.0,
        prior_medium_threshold=2.0,
    )
    save_calibration(calibration, calibration_path(model_dir))
    settings = ServeSettings(model=str(model_dir))
    scorer = load_scorer(settings)
    policy = load_policy(settings, model_dir)
    assert policy.thresholds == Thresholds(1.0, -1.0, 3.0, 2.0) and scorer.profiles is not None
    ent = [*world.test["entity"].to_pylist()[:20], "brand_new"]
    ips = [*world.test["ip"].to_pylist()[:20], "2a00:1:2::3"]
    preds = score_records(scorer, protocol.Records(ent, ips), protocol.Options(verbose=True), policy=policy)
    want = scorer.assess(ent, ips, 10, policy.thresholds)
    assert [p["level"] for p in preds] == want.level.tolist()
    assert [p["flagged"] for p in preds] == (want.level == "high").tolist()  # flag_unseen is off by default
    unseen = load_policy(ServeSettings(model=str(model_dir), flag_unseen=True), model_dir)
    also = score_records(scorer, protocol.Records(ent, ips), protocol.Options(anomaly=True), policy=unseen)
    assert also[-1]["unseen_entity"] and also[-1]["flagged"]
    assert preds[-1]["rule"] == RULE_LEARNING and "entity_percentile" not in preds[-1]
    assert all("entity_percentile" in p for p in preds[:-1])
    assert preds[0]["explanation"]["nearest_networks"] and preds[-1]["explanation"]["nearest_networks"] is None
    assert preds[-1]["explanation"]["subnet"] == "2a00:1:2::/48"
    calibration_path(model_dir).unlink()
