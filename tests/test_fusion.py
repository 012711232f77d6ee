"""The fused risk score (issue 30): the fit, its file, the attacks drawn for it, and the scoring job's sidecar
giving identical scores in Spark, in-process (the batch transform's scorer), at the endpoint and in evaluate."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ipinsights.core.asn import load_asn_table
from ipinsights.score.fusion import FusionError, FusionModel, FusionSpec, load_fusion, save_fusion
from ipinsights.score.fusion_data import ATTACKS, NORMAL, draw_attacks, fixed_chunks
from ipinsights.score.fusion_fit import default_spec, fit_fusion
from ipinsights.score.spark_fusion import row_weights


def _toy_rows(n: int = 4000, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of logins (label 0) and attacks (label 1): attacks mostly from new ASes nobody uses."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    seen = np.where(y == 1, rng.random(n) < 0.05, rng.random(n) < 0.9).astype(float)
    feats = {
        "as_seen": seen,
        "dot_product": rng.normal(1.0 - 2.0 * y, 1.0),
        "as_share": np.where(y == 1, rng.normal(-6, 1, n), rng.normal(-2, 1, n)),
        "hosting": (rng.random(n) < np.where(y == 1, 0.3, 0.01)).astype(float),
        "as_logins": np.where(seen > 0, rng.exponential(2.0, n), 0.0),
        "entity_logins": rng.normal(3.0, 1.0, n),
    }
    return feats, y


SPEC = FusionSpec("as_seen", ("dot_product", "as_share", "hosting"), ("dot_product", "as_logins", "entity_logins"))


def _fit(**about) -> FusionModel:
    feats, y = _toy_rows()
    about = {"model_fingerprint": "m", "asn_table_fingerprint": "t", "profile": "p", **about}
    return fit_fusion(SPEC, feats, y, np.ones(y.size), **about)


def test_the_fit_separates_and_explains_itself():
    from ipinsights.core.metrics import roc_auc

    model = _fit()
    feats, y = _toy_rows(seed=1)
    risk = model.risk(feats)
    assert roc_auc(risk, y) > 0.95
    # Contributions are the exact parts of the logit: they add up to it, less the leaf's bias.
    parts = model.contributions(feats)
    bias = np.array([model.leaves[i].bias for i in model.leaf_of(feats)])
    np.testing.assert_allclose(sum(parts.values()) + bias, risk, rtol=1e-9, atol=1e-9)
    new = model.leaves[0]
    assert new.when == 0 and new.features == SPEC.new
    coef = dict(zip(new.features, new.coef, strict=True))
    assert coef["hosting"] > 0 and coef["as_share"] < 0 and coef["dot_product"] < 0  # risk up, up, down
    assert model.fit_seconds < 5


def test_a_fusion_file_round_trips_and_is_refused_for_another_model(tmp_path):
    model = _fit(hosting_asns=(16509,))
    path = tmp_path / "m.fusion.json"
    save_fusion(model, path)
    again = load_fusion(path, "m", "t", "p")
    assert again == model and again.fingerprint == model.fingerprint
    feats, _ = _toy_rows(seed=2)
    assert np.array_equal(again.risk(feats), model.risk(feats))  # plain numbers: identical scores
    for args, why in (
        (("x", "t", "p"), "another model"),
        (("m", None, "p"), "another ip2asn table"),
        (("m", "t", "q"), "another profile build"),
    ):
        with pytest.raises(FusionError, match=why):
            load_fusion(path, *args)
    data = json.loads(path.read_text())
    data["leaves"][0]["coef"] = data["leaves"][0]["coef"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(FusionError, match=r"malformed fusion.*3 features but"):
        load_fusion(path)
    data = json.loads(model.to_json())
    data["leaves"][0]["features"][0] = "__import__('os')"
    path.write_text(json.dumps(data))
    with pytest.raises(FusionError, match="unknown fusion feature"):
        load_fusion(path)
    path.write_text('{"format": "ipinsights-fusion", "version": 99}')
    with pytest.raises(FusionError, match="version 99"):
        load_fusion(path)


def test_default_specs_gate_finer_novelty_on_the_coarsest_network():
    table, plain = default_spec(True), default_spec(False)
    assert table.gate == "as_seen" and plain.gate == "subnet_seen"
    # With a table, /24-level novelty only counts where the AS is new to the entity.
    assert not {"subnet_logins", "subnet_share", "subnet_days"} & set(table.seen)
    assert "hosting" in table.new and "device_new" in table.seen
    # In an AS the entity already uses, only the client tells an attacker apart: the drawn attacks that land
    # there are its own ISP's addresses, and fitted against them the rest raised the own-ISP control.
    assert not {"dot_product", "as_share", "as_logins", "as_days"} & set(table.seen)


def _table(tmp_path: Path):
    rows = [
        ("11.0.0.0", "11.0.255.255", 64500, "DE", "ALPHA - Alpha Broadband"),
        ("50.0.0.0", "50.3.255.255", 64501, "DE", "BETA - Beta Mobile"),
        ("60.0.0.0", "60.0.255.255", 64502, "DE", "GAMMA - Gamma Hosting"),
        ("70.0.0.0", "70.0.0.255", 64503, "FR", "DELTA - Delta Telecom"),
        ("2a00::", "2a00:ff:ffff:ffff:ffff:ffff:ffff:ffff", 64504, "DE", "EPS - Eps Broadband"),
        ("2a01::", "2a01:ff:ffff:ffff:ffff:ffff:ffff:ffff", 64505, "DE", "ZETA - Zeta Cloud"),
    ]
    path = tmp_path / "t.tsv"
    path.write_text("".join(f"{a}\t{b}\t{asn}\t{cc}\t{name}\n" for a, b, asn, cc, name in rows))
    return load_asn_table(str(path))


def test_attacks_are_drawn_as_the_kinds_say(tmp_path):
    table = _table(tmp_path)
    rng = np.random.default_rng(0)
    n = 2000
    v6 = rng.random(n) < 0.3
    keys = np.where(v6, (0x2A00 << 48) + rng.integers(0, 1 << 40, n), (11 << 24) + rng.integers(0, 1 << 16, n))
    hashes = rng.integers(0, 50, n).astype(np.uint64)  # 50 entities: some draws land on the same one
    drawn = draw_attacks(keys, hashes, table, rng)
    assert set(drawn) == set(ATTACKS)
    row_of = {k: table.find(v[0]) for k, v in drawn.items()}
    for kind, (got, ok) in drawn.items():
        assert ok.mean() > 0.9, kind
        six = (got < 0) | (got >= 1 << 32)
        assert np.array_equal(six[ok], v6[ok]), kind  # always the login's family
    r = row_of["same_country"][drawn["same_country"][1]]
    assert (table.country[r] == table.country[0]).all()
    assert not np.isin(table.asn[r], [64500, 64504]).any()  # another AS than the login's
    hosts = table.asn[row_of["hosting"][drawn["hosting"][1]]]
    assert set(hosts.tolist()) == {64502, 64505}  # by name: Hosting, Cloud
    routed = table.asn[row_of["routed"]]
    # IPv4 ranges by their size: 64501's four /16s of the six and a bit
    assert (row_of["routed"] >= 0).all() and 0.55 < np.mean(routed[~v6] == 64501) < 0.78
    other, fine = drawn["other_entity"]
    assert not fine.all() and set(other.tolist()) <= set(keys.tolist())
    from ipinsights.score.features import reserved

    # uniform: anywhere in the family's space, so mostly outside this small table, reserved space included
    uniform = drawn["uniform"][0]
    assert (row_of["uniform"][~v6] < 0).mean() > 0.9 and 0.05 < reserved(uniform[~v6]).mean() < 0.3
    assert ((uniform[v6] >> 61) == 1).all()  # 2000::/3
    plain = draw_attacks(keys, hashes, None, rng)
    assert set(plain) == {"routed", "other_entity", "uniform"}
    assert not reserved(plain["routed"][0][~v6]).any() and reserved(plain["uniform"][0][~v6]).any()


def test_fixed_chunks_do_not_depend_on_how_the_rows_came_cut():
    """The attacks are drawn per chunk: the same sorted rows give the same chunks however Spark cut them into
    batches, each group's rows in runs of the chunk size, never two groups in one chunk, the key dropped."""
    rng = np.random.default_rng(3)
    group = np.sort(rng.integers(0, 5, 2000))
    table = pa.table({"g": group, "row": np.arange(group.size)})

    def chunks(cuts: list[int]) -> list[list[int]]:
        edges = [0, *cuts, table.num_rows]
        batches = [table.slice(a, b - a).to_batches()[0] for a, b in itertools.pairwise(edges) if b > a]
        out = list(fixed_chunks("g", iter(batches), size=128))
        assert all(b.schema.names == ["row"] for b in out)
        return [b.column("row").to_pylist() for b in out]

    want = chunks([])
    assert [r for rows in want for r in rows] == list(range(group.size))
    for rows in want:
        assert len(set(group[rows])) == 1 and len(rows) <= 128
    for _ in range(5):
        assert chunks(sorted(rng.choice(np.arange(1, table.num_rows), 30, replace=False).tolist())) == want
    assert chunks(list(range(1, table.num_rows))) == want  # a row per batch
    assert list(fixed_chunks("g", iter([]))) == []


def test_row_weights_balance_logins_and_each_attack_kind():
    kind = np.array([NORMAL] * 100 + ["routed"] * 100 + ["hosting"] * 50 + ["labelled"] * 10, object)
    w = row_weights(kind, labelled_weight=0.5)
    assert w[kind == NORMAL].sum() == pytest.approx(100)
    assert w[kind == "routed"].sum() == pytest.approx(50) and w[kind == "hosting"].sum() == pytest.approx(50)
    assert w[kind == "labelled"].sum() == pytest.approx(0.5 * 200)


# ---------------------------------------------------------------------------------------------------------------
# The scoring job's sidecar, end to end (the golden test's world and committed model, with its ip2asn tables)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    """The golden world's first test day scored with a fusion fitted on its validation day."""
    from test_golden_score import TEST, TRAIN, VALID, _world

    from ipinsights_jobs import score as score_job

    root = tmp_path_factory.mktemp("fusion")
    world = _world(root)
    out = root / "out"
    args = [
        f"--model={world['model']}",
        f"--events={world['events']}",
        f"--scores={out / 'scores'}",
        f"--flagged={out / 'flagged'}",
        f"--reports={out / 'reports'}",
        f"--train_start_date={TRAIN[0]}",
        f"--train_end_date={TRAIN[-1]}",
        f"--asn_table={world['tables']}",
        f"--calibration_start_date={VALID}",
        f"--calibration_end_date={VALID}",
        "--target-fpr",
        "0.02",
        "--arrow_batch_size=700",
        "--fusion.sample_rows=3000",
    ]
    assert score_job.main(["--date", TEST[0], *args]) == 0
    return {"world": world, "out": out, "args": args, "day": TEST[0], "root": root}


@pytest.mark.spark
@pytest.mark.slow
def test_the_job_fits_a_fusion_and_scores_with_it(spark, scored):
    from ipinsights.score.calibration import load_calibration

    model = scored["world"]["model"]
    fusion = load_fusion(model + ".fusion.json")
    assert fusion.gate == "as_seen" and fusion.asn_table_fingerprint is not None
    assert fusion.rows["normal"] > 1000 and set(ATTACKS) <= set(fusion.rows)
    cal = load_calibration(model + ".calibration.json")
    assert cal.score == "risk_score" and cal.fusion_fingerprint == fusion.fingerprint and cal.prior_threshold is None
    floor = json.loads(Path(model + ".cases.json").read_text())
    assert floor["fusion_fingerprint"] == fusion.fingerprint
    scores = pq.read_table(scored["out"] / "scores")
    valid = pc.is_valid(scores["dot_product"]).to_numpy(zero_copy_only=False)
    risk = scores["risk_score"].to_numpy(zero_copy_only=False).astype(float)
    assert np.isfinite(risk[valid]).all() and np.isnan(risk[~valid]).all()
    flagged = np.asarray(scores["flagged"].to_pylist(), bool)
    assert (risk[flagged] > cal.threshold).all() and not (risk[valid & ~flagged] > cal.threshold).any()
    rows = pq.read_table(scored["out"] / "flagged").to_pylist()
    assert rows and all(r["risk_factors"] for r in rows)
    assert any("new AS for this entity" in r["risk_factors"] for r in rows)
    report = (scored["out"] / "reports" / f"dt={scored['day']}" / "report.html").read_text()
    assert "Threshold in force: <b>risk_score &gt;" in report


@pytest.mark.spark
@pytest.mark.slow
def test_spark_the_endpoint_and_evaluate_give_identical_risk_scores(spark, scored):
    from ipinsights.score.evaluate import evaluate_model
    from ipinsights.score.features import event_days
    from ipinsights.score.scorer import Scorer
    from ipinsights.serve import protocol
    from ipinsights.serve.app import score_records

    world = scored["world"]
    scorer = Scorer.load(world["model"], profile=True, asn_table=world["tables"], fusion=True)
    assert scorer.fusion is not None
    scores = pq.read_table(scored["out"] / "scores").slice(0, 3000)
    days = event_days(scores["ts"], scores.num_rows)
    a = scorer.assess(scores["entity"], scores["ip"], 10, days=days)
    assert a.risk_score is not None
    got = scores["risk_score"].to_numpy(zero_copy_only=False).astype(float)
    np.testing.assert_allclose(got, a.risk_score.astype(np.float32), rtol=1e-6, equal_nan=True)
    # The endpoint: the risk score is opt-in, without timestamps (no recency), as assess without days.
    ok = np.isfinite(a.dot_product)
    ents, ips = np.asarray(scores["entity"])[ok][:200].tolist(), np.asarray(scores["ip"])[ok][:200].tolist()
    records = protocol.Records(ents, ips)
    plain = score_records(scorer, records, protocol.Options())
    assert set(plain[0]) == {"dot_product"}  # SageMaker's answer stays the default
    answers = score_records(scorer, records, protocol.Options(risk=True))
    want = scorer.assess(ents, ips, 10).risk_score
    assert want is not None
    np.testing.assert_allclose([p["risk_score"] for p in answers], want, rtol=1e-12)
    # evaluate: the fused score first, the same numbers as the scorer's (with the rows' timestamps).
    labels = np.zeros(scores.num_rows, np.int8)
    labels[: scores.num_rows // 10] = 1  # any labels: the scores are what is compared
    labelled = scores.select(["entity", "ip", "ts"]).append_column("label", pa.array(labels))
    labelled = labelled.append_column("kind", pa.array(["normal"] * scores.num_rows))
    ev, fused = evaluate_model(scorer, labelled)
    assert list(ev.auc)[:2] == ["fused", "model"]
    np.testing.assert_allclose(fused, a.risk_score, rtol=1e-12, equal_nan=True)


@pytest.mark.spark
@pytest.mark.slow
def test_the_fusion_does_not_depend_on_how_spark_lays_out_the_rows(spark, scored, tmp_path):
    """The same events, model and profiles give the same fusion whatever the session's shuffle partitions,
    adaptive execution and Arrow batch size: its attacks are drawn per fixed chunk of a hash bucket of
    entities, its sample kept by a hash of the row, not by Spark's per-partition sampler."""
    from test_golden_score import TRAIN, VALID

    from ipinsights.score.config import FusionSettings, ScoreConfig
    from ipinsights.score.spark_sidecars import resolve_fusion, resolve_profile

    world = scored["world"]
    cfg = ScoreConfig(
        model=world["model"],
        events=str(world["events"]),
        scores=str(tmp_path / "s"),
        flagged=str(tmp_path / "f"),
        reports=str(tmp_path / "r"),
        target_fpr=0.02,
        train_start_date=TRAIN[0],
        train_end_date=TRAIN[-1],
        calibration_start_date=VALID,
        calibration_end_date=VALID,
        asn_table=world["tables"],
        fusion=FusionSettings(sample_rows=3000, path=str(tmp_path / "again.fusion.json")),
    )
    header = resolve_profile(spark, cfg)  # the job's, as stored
    # The job ran with 4 shuffle partitions and batches of 700 rows; conftest restores these afterwards.
    spark.conf.set("spark.sql.shuffle.partitions", "37")
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "333")
    again = resolve_fusion(spark, cfg, header)
    first = load_fusion(f"{world['model']}.fusion.json")
    assert again is not None and again.rows == first.rows
    assert again.fingerprint == first.fingerprint


def test_a_model_without_fusion_scores_as_before(toy_model):
    """No fusion file, no profiles: risk_score is None and nothing else changes."""
    from ipinsights.score.scorer import Scorer

    scorer = Scorer.load(toy_model, fusion=True)
    assert scorer.fusion is None
    a = scorer.assess(["user_1", "nobody"], ["10.1.2.3", "8.8.8.8"], 10)
    assert a.risk_score is None
    np.testing.assert_allclose(a.dot_product, scorer.dot_product(["user_1", "nobody"], ["10.1.2.3", "8.8.8.8"]))
    with pytest.raises(FusionError, match="needs the entity profiles"):
        Scorer.load(toy_model, fusion=str(toy_model) + ".fusion.json")


def test_the_endpoint_takes_risk_as_an_opt_in_flag():
    from ipinsights.serve import protocol

    assert protocol.parse_flags({"risk": "true"}, None) == {"risk": True}
    assert protocol.parse_flags({}, "anomaly=true,risk=1") == {"anomaly": True, "risk": True}
    preds = protocol.build_predictions(np.array([1.0, np.nan]), risk_score=np.array([2.5, np.nan]))
    assert preds == [{"dot_product": 1.0, "risk_score": 2.5}, {"dot_product": None, "risk_score": None}]
