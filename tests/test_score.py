"""The scoring job: Spark scores equal in-process scores, verdicts, calibration, idempotent days, reports.

One small synthetic data set (4 days: 2 training, 1 validation, 1 test) and one tiny model, built once
for the module; the events table is laid out as the ingest job writes it (Parquet, ``dt=`` partitions).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from browser import dump_dom, screenshot
from servers import Client, ServerProcess

from ipinsights.core.config import ConfigError, Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.entities import ENTITY_FILE, EntityStats
from ipinsights.score.batches import ScoringSetup
from ipinsights.score.calibration import (
    Calibration,
    CalibrationError,
    load_calibration,
    save_calibration,
)
from ipinsights.score.config import ScoreConfig
from ipinsights.score.rules import RULE_INVALID, RULE_LEARNING, RULE_SCORE, Thresholds
from ipinsights.score.scorer import Scorer
from ipinsights.score.spark_calibration import calibrate_levels
from ipinsights.score.spark_job import run_score_job
from ipinsights.score.spark_profiles import to_arrow
from ipinsights.score.spark_scoring import score_events
from ipinsights.score.spark_sidecars import resolve_threshold
from ipinsights.score.worker import ScorerSource
from ipinsights.storage.modelfile import calibration_path, load_model, model_fingerprint, save_model
from ipinsights.synth import SynthSpec, generate_dataset
from ipinsights.train.data import encode_pairs
from ipinsights.train.trainer import train_model
from ipinsights_jobs import score as score_job

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
TRAIN, VALID, TEST = DAYS[:2], DAYS[2], DAYS[3]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Events table (ingest layout), a tiny trained model with entity stats, and the truth events."""
    root = tmp_path_factory.mktemp("score")
    spec = SynthSpec(
        users=300,
        days=4,
        train_days=2,
        validation_days=1,
        attacks=400,
        validation_attacks=200,
        n_files=1,
        networks=300,
        seed=1,
    )
    paths = generate_dataset(root / "synth", spec)
    truth = pq.read_table(paths.events)
    events = truth.select(["entity", "ip", "ip_int", "ts", "dt"]).append_column(
        "ip_version", pa.array(np.full(truth.num_rows, 4, np.int32))
    )
    pq.write_to_dataset(events, root / "events", partition_cols=["dt"])
    train = truth.filter(pc.is_in(truth["dt"], pa.array(TRAIN)))
    hp = Hyperparameters(
        num_entity_vectors=600,
        vector_dim=16,
        epochs=2,
        mini_batch_size=500,
        random_negative_sampling_rate=2,
        learning_rate=0.02,
    )
    opts = ModelOptions(ip_hash_buckets=4096)
    enc = encode_pairs(train["entity"], train["ip"], hp.num_entity_vectors, opts.hash_seed)
    result = train_model(hp, opts, TrainOptions(num_threads=1, progress_bar="off"), enc)
    model = root / "model"
    stats = EntityStats.from_entities(train["entity"], opts.hash_seed)
    save_model(result.model, model, extra_files={ENTITY_FILE: stats.to_bytes()})
    return {"root": root, "events": str(root / "events"), "model": str(model), "truth": truth}


def _cfg(world, tmp: Path, **kw) -> ScoreConfig:
    base = dict(
        model=world["model"],
        events=world["events"],
        scores=str(tmp / "scores"),
        flagged=str(tmp / "flagged"),
        reports=str(tmp / "reports"),
        train_start_date=TRAIN[0],
        train_end_date=TRAIN[-1],
        arrow_batch_size=1000,
    )
    base.update(kw)
    if "threshold" not in kw and "target_fpr" not in kw:
        base["threshold"] = 0.0
    return ScoreConfig(**base)


@pytest.mark.spark
def test_spark_scores_equal_in_process_scores(spark, world):
    extra = pa.table(
        {
            "entity": ["user_1", "user_2", "never-seen", "user_3"],
            "ip": ["10.1.2.3", "300.1.1.1", "8.8.8.8", "2001:db8::1"],
        }
    )
    rows = pa.concat_tables([world["truth"].slice(0, 3000).select(["entity", "ip"]), extra])
    rows = rows.append_column("rid", pa.array(np.arange(rows.num_rows)))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "700")  # several batches per partition
    df = spark.createDataFrame(rows.to_pandas()).repartition(3)
    got = score_events(df, world["model"]).toPandas().sort_values("rid").reset_index(drop=True)
    scorer = Scorer.load(world["model"])
    want = scorer.score_frame(rows.to_pandas())
    np.testing.assert_allclose(got["dot_product"].to_numpy(float), want["dot_product"], atol=1e-5, equal_nan=True)
    assert got["training_count"].tolist() == scorer.training_counts(rows["entity"]).tolist()
    assert got["unseen_entity"].tolist() == want["unseen_entity"].tolist()
    seen = ~want["unseen_entity"].to_numpy()
    np.testing.assert_allclose(
        got["anomaly_score"].to_numpy(float)[seen], want["anomaly_score"][seen], atol=1e-5, equal_nan=True
    )
    a = scorer.assess(rows["entity"], rows["ip"], learning_period_events=10)
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(float), a.anomaly_score, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(got["prior_score"].to_numpy(float), a.prior_score, atol=1e-5, equal_nan=True)
    assert got["rule"].tolist() == a.rule.tolist()
    last = got.iloc[-4:].set_index("entity")
    # Never seen: no silent random-vector score. Without entity profiles there is no population prior
    # either, so no score at all, and the rule says why (the job test covers the prior with profiles).
    assert last.loc["never-seen", "unseen_entity"] and last.loc["never-seen", "rule"] == RULE_LEARNING
    assert np.isnan(last.loc["never-seen", "anomaly_score"]) and np.isnan(last.loc["never-seen", "prior_score"])
    assert np.isnan(last.loc["user_2", "dot_product"]) and last.loc["user_2", "rule"] == RULE_INVALID
    assert np.isfinite(last.loc["user_3", "dot_product"])  # IPv6 is scored


@pytest.mark.spark
def test_verdict_rules(spark, world):
    df = spark.createDataFrame(
        [("user_1", "10.1.2.3"), ("never-seen", "8.8.8.8"), ("user_1", "::1")], "entity string, ip string"
    )

    def run(th: Thresholds, **kw):
        setup = ScoringSetup(ScorerSource(world["model"]), thresholds=th, **kw)
        return {r["ip"]: r for r in score_events(df, setup).collect()}

    out = run(Thresholds(-1e9), flag_unseen=False)
    assert (out["10.1.2.3"]["rule"], out["10.1.2.3"]["flagged"], out["10.1.2.3"]["level"]) == (RULE_SCORE, True, "high")
    # No profiles here, so no population prior: the unseen entity is marked and left unscored, not flagged.
    never = out["8.8.8.8"]
    assert never["rule"] == RULE_LEARNING and never["unseen_entity"] and not never["flagged"] and never["level"] is None
    assert (out["::1"]["rule"], out["::1"]["flagged"], out["::1"]["level"]) == (RULE_INVALID, False, None)
    out = run(Thresholds(1e9, medium=-1e9, prior_high=1e9, prior_medium=1e9))
    assert not any(r["flagged"] for r in out.values())
    assert out["10.1.2.3"]["level"] == "medium"
    assert run(Thresholds(1e9), flag_unseen=True)["8.8.8.8"]["flagged"]
    # A seen entity below the learning period is judged by the prior too.
    assert run(Thresholds(1e9), learning_period_events=10**6)["10.1.2.3"]["rule"] == RULE_LEARNING


def _assert_brackets(scores: np.ndarray, threshold: float, target: float, tolerance: float) -> None:
    """The share of held-out rows above the threshold, and of those at or above it, bracket the target: a
    group of tied scores at the threshold (one user's many logins from one trip address) cannot be split."""
    above, at_or_above = float((scores > threshold).mean()), float((scores >= threshold).mean())
    assert above < target + tolerance and at_or_above > target - tolerance, (target, above, at_or_above)


@pytest.mark.spark
def test_target_fpr_calibration_holds_on_held_out_normal_traffic(spark, world):
    # Calibrate on a random half of the validation day's (normal) traffic, check on the other half.
    truth = world["truth"]
    day = truth.filter(pc.equal(truth["dt"], VALID)).select(["entity", "ip"])
    half = np.random.default_rng(0).permutation(day.num_rows) < day.num_rows // 2
    cal_rows, held_out = day.filter(pa.array(half)), day.filter(pa.array(~half))
    scored = score_events(spark.createDataFrame(cal_rows.to_pandas()), world["model"])
    s = Scorer.load(world["model"]).score_frame(held_out.to_pandas())
    normal = s.loc[~s["unseen_entity"], "anomaly_score"].to_numpy()
    for target in (0.01, 0.05):
        levels, n = calibrate_levels(scored, target)
        assert n > 5000
        _assert_brackets(normal, levels["threshold"], target, 0.005)
    # The levels: entity scores at the target and at 10x it, population-prior scores likewise.
    levels, n = calibrate_levels(scored, 0.01)
    a = Scorer.load(world["model"]).assess(held_out["entity"], held_out["ip"], learning_period_events=1)
    model_rows = a.rule == RULE_SCORE
    _assert_brackets(a.anomaly_score[model_rows], levels["threshold"], 0.01, 0.005)
    _assert_brackets(a.anomaly_score[model_rows], levels["medium_threshold"], 0.10, 0.02)
    assert levels["prior_threshold"] is None  # no entity profiles, no population prior (the job test has one)


@pytest.mark.spark
def test_calibration_is_stored_reused_and_tied_to_its_model(spark, world, tmp_path):
    cfg = _cfg(world, tmp_path, target_fpr=0.02, calibration_start_date=VALID, calibration_end_date=VALID)
    th = resolve_threshold(spark, cfg)
    path = calibration_path(world["model"])
    cal = load_calibration(path, world["model"])
    assert cal.threshold == th.value and cal.rows > 10_000 and cal.target_fpr == 0.02 and "0.02" in th.source
    stamp = path.stat().st_mtime_ns
    assert resolve_threshold(spark, cfg).value == th.value and path.stat().st_mtime_ns == stamp  # reused
    other = tmp_path / "other"
    save_model(load_model(world["model"]).model, other)  # no entity stats: another fingerprint
    with pytest.raises(CalibrationError, match="another model"):
        load_calibration(path, other)
    path.unlink()


def test_calibration_file_roundtrip(tmp_path, world):
    p = tmp_path / "c.json"
    save_calibration(Calibration(1.5, 0.01, 10, "x", model_fingerprint(world["model"])), p)
    assert load_calibration(p, world["model"]).threshold == 1.5
    p.write_text("{")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(p)


def test_config_refuses_both_thresholds(world, tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        _cfg(world, tmp_path, threshold=1.0, target_fpr=0.01)


def _day_rows(spark, path: str, day: str) -> int:
    return spark.read.parquet(path).where(f"dt = '{day}'").count()


@pytest.mark.spark
def test_scores_by_day_equal_scores_of_all_days(spark, world):
    """The job scores each day apart (its dt added back in the JVM): the same rows as one pass over all days."""
    from ipinsights.score.schemas import SCORES
    from ipinsights.score.spark_scoring import scores_by_day, with_devices
    from ipinsights.storage.events import read_events

    events = read_events(spark, world["events"], VALID, TEST)
    setup = ScoringSetup(ScorerSource(world["model"]), thresholds=Thresholds(0.5))
    by_day = scores_by_day(events, [VALID, TEST], setup)
    whole = score_events(with_devices(events, "entity", "ip", "ts", "dt"), setup).select(*SCORES.names)
    assert by_day is not None and by_day.columns == SCORES.names
    assert by_day.count() == whole.count() > 0
    assert by_day.exceptAll(whole).count() == 0 and whole.exceptAll(by_day).count() == 0
    assert scores_by_day(events, [], setup) is None


def _table_rows(spark, path: str) -> list[tuple]:
    df = spark.read.schema("entity string, ip string, dot_product float, dt string").parquet(path)
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.spark
def test_write_partitions_replaces_days_like_a_sorted_write(spark, tmp_path):
    """Unsorted partitioned writes (concurrent writers, and their sort fallback past the limit of open
    files) give the rows a plain sorted write gives, replace only the days written, and leave the
    session's settings as they were."""
    from ipinsights.storage.publish import PARTITIONED_WRITE_CONF, write_partitions

    n_days = int(PARTITIONED_WRITE_CONF["spark.sql.maxConcurrentOutputFileWriters"]) + 2  # past the limit
    days = [f"2024-03-{d:02d}" for d in range(1, n_days + 1)]
    rows = [(f"user_{i}", f"10.0.{i % 7}.{i % 251}", float(i), days[(i * 5) % n_days]) for i in range(600)]
    schema = "entity string, ip string, dot_product float, dt string"
    df = spark.createDataFrame(rows, schema).coalesce(1)  # one task: every day open at once, interleaved rows
    spark.conf.set("spark.sql.optimizer.plannedWrite.enabled", "true")
    write_partitions(df, str(tmp_path / "new"))
    assert spark.conf.get("spark.sql.optimizer.plannedWrite.enabled") == "true"
    assert spark.conf.get("spark.sql.maxConcurrentOutputFileWriters", None) is None
    df.write.partitionBy("dt").parquet(str(tmp_path / "sorted"))
    assert _table_rows(spark, str(tmp_path / "new")) == _table_rows(spark, str(tmp_path / "sorted"))
    assert len(_table_rows(spark, str(tmp_path / "new"))) == len(rows)

    # Rerun of two days with other rows: those days replaced (not appended), the others untouched.
    again = [(f"again_{i}", "192.0.2.1", -1.0, days[i % 2]) for i in range(10)]
    write_partitions(spark.createDataFrame(again, schema).coalesce(1), str(tmp_path / "new"))
    want = sorted([r for r in rows if r[3] not in days[:2]] + again)
    assert _table_rows(spark, str(tmp_path / "new")) == want


@pytest.mark.spark
@pytest.mark.slow
def test_endpoint_and_batch_job_flag_the_same_rows(spark, world, tmp_path):
    """One alert rule (``verdict.flag_rows``): the endpoint's ``?anomaly=true`` verdict and the job's scores
    table agree on ``level`` and ``flagged`` for every row, ``flag_unseen`` included, at the same threshold."""
    model = shutil.copytree(world["model"], tmp_path / "model")  # no profile beside it: a fixed setup
    day = world["truth"].filter(pc.equal(world["truth"]["dt"], TEST)).slice(0, 400)
    entities = [*day["entity"].to_pylist(), "never-seen-1", "never-seen-2"]
    ips = [*day["ip"].to_pylist(), "192.0.2.7", "2001:db8::7"]
    threshold = float(np.nanmedian(Scorer.load(model).anomaly_score(entities, ips)))
    csv = tmp_path / "pairs.csv"
    csv.write_text("".join(f"{e},{ip}\n" for e, ip in zip(entities, ips, strict=True)))
    out = tmp_path / "out"
    assert (
        score_job.main(
            [
                "--input-csv",
                str(csv),
                "--date",
                TEST,
                "--threshold",
                repr(threshold),
                f"--model={model}",
                f"--output={out}",
                "--events=null",
                "--flag_unseen=true",
            ]
        )
        == 0
    )
    batch = {(r["entity"], r["ip"]): r for r in spark.read.parquet(str(out / "scores")).collect()}
    # The endpoint takes its thresholds from the calibration beside the model: the same threshold.
    save_calibration(Calibration(threshold, 0.01, 1, "test", model_fingerprint(model)), calibration_path(model))
    with ServerProcess(model, workers=1, extra_args=("--flag_unseen=true",)) as server:
        client = Client(server.port)
        status, _, body = client.request(
            "POST", "/invocations?anomaly=true", csv.read_bytes(), {"Content-Type": "text/csv"}
        )
        client.close()
    assert status == 200, body
    answers = json.loads(body)["predictions"]
    want = [(batch[k]["level"], batch[k]["flagged"]) for k in zip(entities, ips, strict=True)]
    assert [(p.get("level"), p["flagged"]) for p in answers] == want
    flagged = [f for _, f in want]
    assert flagged[-2:] == [True, True] and 0 < sum(flagged[:-2]) < len(flagged) - 2  # both sides of the rule


@pytest.fixture(scope="module")
def backfill(spark, world, tmp_path_factory):
    """The job run over the test day plus a day with no input at all (target FPR 0.01): its output folder
    and arguments. Builds (and leaves beside the model) the entity profiles: use after the tests that
    need a model without them. Without the fused risk score (``fusion.enabled=false``): these tests pin the
    levels of the rules' scores, entity and prior (tests/test_fusion.py covers the fused one)."""
    out = tmp_path_factory.mktemp("run")
    args = [
        f"--model={world['model']}",
        f"--events={world['events']}",
        f"--scores={out / 'scores'}",
        f"--flagged={out / 'flagged'}",
        f"--reports={out / 'reports'}",
        f"--train_start_date={TRAIN[0]}",
        f"--train_end_date={TRAIN[-1]}",
        f"--calibration={out / 'cal.json'}",
        f"--calibration_start_date={VALID}",
        f"--calibration_end_date={VALID}",
        "--target-fpr",
        "0.01",
        "--fusion.enabled=false",
    ]
    assert score_job.main(["--start-date", TEST, "--end-date", "2024-01-05", *args]) == 0
    return out, args


@pytest.mark.spark
def test_job_end_to_end_backfill_rerun_and_empty_day(spark, world, backfill):
    out, args = backfill
    scores = spark.read.parquet(str(out / "scores"))
    n_test = int(pc.sum(pc.equal(world["truth"]["dt"], TEST)).as_py())
    assert scores.where(f"dt = '{TEST}'").count() == n_test
    assert scores.where("dt = '2024-01-05'").count() == 0
    flagged = spark.read.parquet(str(out / "flagged")).where(f"dt = '{TEST}'")
    cal = load_calibration(out / "cal.json")
    assert cal.prior_threshold is not None and cal.medium_threshold < cal.threshold
    learning = scores.where(f"dt = '{TEST}' and rule = 'learning_period'").collect()
    assert all(r["anomaly_score"] == r["prior_score"] is not None for r in learning)
    n_flag = flagged.count()
    assert n_flag == scores.where(f"dt = '{TEST}' and flagged").count() > 0
    ctx = flagged.where("rule = 'model_score'").select("seen_same_24", "seen_same_16", "training_count").collect()
    assert all(r["seen_same_16"] is not None and r["training_count"] > 0 for r in ctx)
    assert any(not r["seen_same_16"] for r in ctx)  # anomalous: the entity never used this /16 in training
    # Explanations from the entity profiles (built from the training days, stored beside the model).
    ex = flagged.where("rule = 'model_score'").collect()
    assert all(r["nearest_networks"] and r["closest_network"] and r["subnet_seen"] is not None for r in ex)
    assert all(r["typical_low"] <= r["typical_high"] and 0 <= r["entity_percentile"] <= 100 for r in ex)
    # An entity with few events has all its /24s profiled.
    assert all(
        r["subnet_seen"] == r["seen_same_24"] for r in ex if r["seen_same_24"] is not None and r["training_count"] <= 16
    )
    assert (Path(world["model"] + ".profile.safetensors")).exists()

    # Cases: beside the flagged table, every flagged event in exactly one case.
    def case_rows():
        return sorted(
            (r["case_id"], r["rank"], r["events"], r["severity"])
            for r in spark.read.parquet(str(out / "cases")).where(f"dt = '{TEST}'").collect()
        )

    cases = case_rows()
    assert 0 < len(cases) < n_flag and sum(c[2] for c in cases) == n_flag
    assert sorted(c[1] for c in cases) == list(range(1, len(cases) + 1))

    # Rerun the test day: same rows, not doubled (dynamic partition overwrite); the same cases, same ids.
    assert score_job.main(["--date", TEST, *args]) == 0
    assert _day_rows(spark, str(out / "scores"), TEST) == n_test
    assert _day_rows(spark, str(out / "flagged"), TEST) == n_flag
    assert case_rows() == cases

    # Empty day: empty output and a report that says so.
    empty = (out / "reports" / "dt=2024-01-05" / "report.html").read_text()
    assert 'id="empty"' in empty and "No events for this day" in empty

    # The day's report: self-contained, with the plot and the cases, the first case first.
    text = (out / "reports" / f"dt={TEST}" / "report.html").read_text()
    assert "data:image/png;base64," in text and 'id="cases"' in text
    assert text.index('id="cases"') < text.index('id="counts"') < text.index('id="histogram"')
    assert "calibrated to FPR 0.01" in text
    csv_lines = (out / "reports" / f"dt={TEST}" / "flagged.csv").read_text().splitlines()
    assert len(csv_lines) == n_flag + 1 and csv_lines[0].startswith("entity,ip,ts,anomaly_score,level,rule")


@pytest.mark.spark
def test_job_verdicts_suppress_and_mark_cases(spark, world, backfill, tmp_path):
    """A benign verdict (entity + network) from the test day on removes that entity's events there from
    the cases, and the report counts them; a malicious one marks the entity's case and lists it; a bad
    row is named in the report and the rest still apply."""
    out, args = backfill
    flagged = spark.read.parquet(str(out / "flagged")).where(f"dt = '{TEST}'")
    ent = {r["entity"]: r["n"] for r in flagged.groupBy("entity").count().withColumnRenamed("count", "n").collect()}
    benign, bad = sorted(ent)[:2]
    subnets = [r["subnet"] for r in flagged.where(f"entity = '{benign}'").select("subnet").distinct().collect()]
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text(
        "case_id,entity,network,verdict,who,when,expires,note\n"
        + "".join(f",{benign},{s},benign,ana,{TEST},,\n" for s in subnets)
        + f",{bad},,malicious,ana,{TEST},,\n,{bad},AS1,benign,,{TEST},,\n"
    )
    cases = tmp_path / "cases"
    run_args = [a for a in args if not a.startswith("--reports=")] + [f"--reports={tmp_path / 'reports'}"]
    assert score_job.main(["--date", TEST, *run_args, f"--verdicts={verdicts}", f"--cases={cases}"]) == 0
    got = {r["entity"]: r for r in spark.read.parquet(str(cases)).where("kind = 'entity'").collect()}
    assert benign not in got and got[bad]["prior_verdict"] == "malicious"
    page = (tmp_path / "reports" / f"dt={TEST}" / "report.html").read_text()
    n = ent[benign]
    assert f"Suppressed by benign verdicts: {n:,} event{'s' if n != 1 else ''} of 1 entity" in page
    assert 'id="returning"' in page and "known malicious" in page
    assert f"verdicts.csv:{len(subnets) + 3}: who is empty" in page


@pytest.mark.spark
def test_joined_profiles_score_and_explain_as_the_whole_profile_does(spark, world, backfill):
    """The job joins each batch with its own entities' profile rows (a worker never loads the profiles
    whole): its scores, levels, percentiles and explanations equal the in-process scorer's with the
    whole profile loaded, row for row, on the test day."""
    out, _ = backfill
    scorer = Scorer.load(world["model"], profile=True)  # every row of the rows table, as the endpoint loads it
    assert scorer.profiles is not None and len(scorer.profiles) > 100
    rows = to_arrow(spark.read.parquet(str(out / "scores")).where(f"dt = '{TEST}'"))
    a = scorer.assess(rows["entity"], rows["ip"], 10, load_calibration(out / "cal.json").thresholds())
    np.testing.assert_allclose(rows["anomaly_score"].to_numpy(zero_copy_only=False), a.anomaly_score, rtol=1e-6)
    pct = rows["entity_percentile"].to_numpy(zero_copy_only=False)
    assert np.isfinite(pct).sum() > 100
    np.testing.assert_allclose(pct, a.entity_percentile, rtol=1e-9, atol=1e-9)
    assert rows["rule"].to_pylist() == a.rule.tolist()
    assert rows["level"].to_pylist() == a.level.tolist()
    flagged = to_arrow(spark.read.parquet(str(out / "flagged")).where(f"dt = '{TEST}'"))
    ex = scorer.explain(flagged["entity"], flagged["ip"]).columns()
    assert flagged.num_rows > 10 and sum(v is not None for v in ex["closest_network"]) > 10
    for name in ("subnet_seen", "network_seen", "closest_network", "shared_prefix_bits", "typical_low", "typical_high"):
        assert flagged[name].to_pylist() == ex[name], name
    shown = [None if v is None else [n["network"] for n in v] for v in ex["nearest_networks"]]
    listed = flagged["nearest_networks"].to_pylist()
    assert [None if v is None else re.findall(r"(\S+) \(cos", v) for v in listed] == shown


@pytest.mark.spark
def test_job_report_renders_in_chromium(spark, backfill, tmp_path):
    """Open the day's page in headless Chromium: the DOM has the data: image and the table rows; not blank."""
    out, _ = backfill
    page = out / "reports" / f"dt={TEST}" / "report.html"
    n_flag = len((out / "reports" / f"dt={TEST}" / "flagged.csv").read_text().splitlines()) - 1
    dom = dump_dom(page, tmp_path / "chrome-profile")
    assert re.search(r'<img id="histogram"[^>]*src="data:image/png;base64,', dom)
    cases = spark.read.parquet(str(out / "cases")).where(f"dt = '{TEST}' and open")
    n_cases = cases.count()
    assert 0 < n_cases < n_flag  # events grouped into fewer cases
    assert len(re.findall(r'<tr class="case"', dom)) == min(50, n_cases)
    assert dom.count("<details>") == min(50, n_cases) and '<svg id="trend"' in dom
    import matplotlib.image as mpimg

    # Tall enough for the cases and the plot below them.
    img = mpimg.imread(str(screenshot(page, tmp_path / "chrome-profile", tmp_path / "shot.png", height=8000)))
    assert img.std() > 0.05  # text, table borders and the plot: not a blank page
    # The plot itself rendered: a decoded image shows plenty of the bars' non-grey colour (pixels).
    rgb = img[..., :3]
    coloured = int((np.abs(rgb[..., 0] - rgb[..., 2]) > 0.2).sum())
    assert coloured > 12_000, coloured


@pytest.mark.spark
def test_job_batch_transform_csv_and_stale_day_removed(spark, world, tmp_path):
    out = tmp_path / "csv"
    csv = tmp_path / "pairs.csv"
    csv.write_text("user_1,10.1.2.3\nnobody,8.8.8.8\nuser_2,not-an-ip\n")
    args = [
        "--input-csv",
        str(csv),
        "--date",
        "2024-02-01",
        "--threshold",
        "0.5",
        f"--model={world['model']}",
        f"--output={out}",
        "--events=null",
        "--flag_unseen=true",
    ]
    assert score_job.main(args) == 0
    got = {r["entity"]: r for r in spark.read.parquet(str(out / "scores")).collect()}
    assert got["nobody"]["rule"] == RULE_LEARNING and got["nobody"]["flagged"]
    assert got["user_2"]["rule"] == RULE_INVALID and not got["user_2"]["flagged"]
    # Rerun that day from the events table, which has no such day: the stale partition is removed.
    run = run_score_job(spark, _cfg(world, tmp_path, scores=str(out / "scores")), ["2024-02-01"])
    assert run.counts["2024-02-01"]["rows"] == 0
    assert not (out / "scores" / "dt=2024-02-01").exists()
    assert "No events for this day" in run.reports["2024-02-01"].read_text()


@pytest.mark.spark
def test_cli_errors(spark, world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        score_job.main(["--date", "2024-01-01", "--start-date", "2024-01-01", "--end-date", "2024-01-02"])
    assert score_job.main(["--date", "2024-01-01", "--threshold", "1", "--target-fpr", "0.1"]) == 2
    assert "exactly one" in capsys.readouterr().err
    missing = [f"--model={tmp_path / 'none'}", f"--events={world['events']}", f"--scores={tmp_path / 's'}"]
    assert score_job.main(["--date", TEST, "--threshold", "1", *missing]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_a_worker_holds_one_scorer_at_a_time(toy_model, tmp_path):
    """A long-lived Python worker serves the profile build, the calibration and the scoring in turn: it
    drops each scorer before loading the next, and reuses the one it has for the same source."""
    import gc
    import weakref

    from ipinsights.score import worker

    other = tmp_path / "other-model"
    shutil.copytree(toy_model, other)
    first = worker.worker_scorer(ScorerSource(str(toy_model)))
    assert worker.worker_scorer(ScorerSource(str(toy_model))) is first
    gone = weakref.ref(first)
    del first
    second = worker.worker_scorer(ScorerSource(str(other)))
    gc.collect()
    assert gone() is None and worker.worker_scorer(ScorerSource(str(other))) is second
