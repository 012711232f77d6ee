"""The device in the fused score (issue 31): a world with users' own devices and attackers of four levels of
sophistication, scored by the job end to end (profiles with devices, the fusion fitted on the validation day,
the flagged events' device in words), then the endpoint with and without the optional user-agent column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
TRAIN, VALID, TEST = DAYS[:2], DAYS[2], DAYS[3]
CURL = "curl/8.1.2"


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory) -> dict[str, Any]:
    """Events with user agents (the ingest's columns: the string and its parsed family, OS and device type),
    a small model trained on the training days, and the first test day scored by the job."""
    from test_golden_score import _train

    from ipinsights.core.useragent import parse_user_agents
    from ipinsights.synth import SynthSpec, generate_dataset
    from ipinsights.synth.spec import DEVICE_ATTACK_KINDS
    from ipinsights_jobs import score as score_job

    root = tmp_path_factory.mktemp("devices")
    spec = SynthSpec(
        users=150,
        start_date=DAYS[0],
        days=len(DAYS),
        train_days=2,
        validation_days=1,
        attacks=80,
        validation_attacks=0,
        n_files=1,
        networks=200,
        seed=5,
        events_min=30,
        events_mean=100.0,
        inject_attacks=True,
        devices="realistic",
        attack_kinds=DEVICE_ATTACK_KINDS,
    )
    paths = generate_dataset(root / "synth", spec)
    assert paths.events is not None
    truth = pq.read_table(paths.events)
    family, os_family, device = parse_user_agents(truth["user_agent"].combine_chunks())
    events = truth.select(["entity", "ip", "ip_int", "ip_version", "ts", "user_agent", "dt"])
    for name, column in (("ua_family", family), ("ua_os", os_family), ("ua_device", device)):
        events = events.append_column(name, column.cast(pa.string()))
    pq.write_to_dataset(events, root / "events", partition_cols=["dt"])
    tables = f"{paths.networks},{paths.networks_v6}"
    model = root / "model"
    _train(truth.filter(pc.is_in(truth["dt"], pa.array(TRAIN))), tables, model)
    out = root / "out"
    args = [
        f"--model={model}",
        f"--events={root / 'events'}",
        f"--scores={out / 'scores'}",
        f"--flagged={out / 'flagged'}",
        f"--reports={out / 'reports'}",
        f"--train_start_date={TRAIN[0]}",
        f"--train_end_date={TRAIN[-1]}",
        f"--asn_table={tables}",
        f"--calibration_start_date={VALID}",
        f"--calibration_end_date={VALID}",
        "--target-fpr",
        "0.02",
        "--arrow_batch_size=700",
    ]
    assert score_job.main(["--date", TEST, *args]) == 0
    return {"model": str(model), "tables": tables, "out": out, "truth": truth, "labelled": str(paths.test_labelled)}


@pytest.mark.spark
@pytest.mark.slow
def test_the_fusion_weighs_a_new_device_and_the_flagged_events_name_it(world):
    fusion = json.loads(Path(world["model"] + ".fusion.json").read_text())
    for leaf in fusion["leaves"]:  # a new device raises the risk, in both leaves (new AS and known AS)
        coef = dict(zip(leaf["features"], leaf["coef"], strict=True))
        assert coef["device_new"] > 0, leaf
    scores = pq.read_table(world["out"] / "scores")
    assert scores["user_agent"].null_count < scores.num_rows
    # The attacks with a device the victim does not have rank above the victim's own logins.
    truth = world["truth"].filter(pc.equal(world["truth"]["dt"], TEST)).select(["entity", "ip", "ts", "kind"])
    # The truth's times are UTC-aware, the scores' as Spark wrote them: matched as UTC epoch seconds.
    s, t = scores.to_pandas(), truth.to_pandas()
    for frame in (s, t):
        ts = frame.pop("ts")
        frame["second"] = (ts.dt.tz_convert("UTC") if ts.dt.tz is not None else ts).dt.strftime("%Y-%m-%d %H:%M:%S")
    joined = s.merge(t, on=["entity", "ip", "second"])
    normal = joined[joined.kind == "normal"].risk_score.dropna().to_numpy()
    for kind in ("naive", "targeted"):
        attacks = joined[joined.kind == kind].risk_score.dropna().to_numpy()
        assert attacks.size and np.median(attacks) > np.quantile(normal, 0.9), kind
    flagged = pq.read_table(world["out"] / "flagged").to_pylist()
    words = [r["device"] for r in flagged if r["device"]]
    assert words and any(w.startswith("new device: ") for w in words)
    assert all(w.startswith(("new device: ", "known device (", "device ")) for w in words)


@pytest.mark.spark
@pytest.mark.slow
def test_evaluate_and_the_fit_read_the_labelled_rows_user_agents(spark, world):
    """The generator's labelled CSV carries each row's user agent (a fifth, quoted field): evaluate scores the
    device with it (an attacker on another device ranks higher than without the column), and the fusion's
    labelled rows keep it."""
    from ipinsights.score.evaluate import evaluate_model
    from ipinsights.score.scorer import Scorer
    from ipinsights.score.spark_fusion import _labelled
    from ipinsights.storage.sagemaker_csv import read_labelled_csv

    labelled = read_labelled_csv(world["labelled"])
    assert labelled["user_agent"].null_count == 0
    scorer = Scorer.load(world["model"], profile=True, asn_table=world["tables"], fusion=True)
    seen, _ = evaluate_model(scorer, labelled)
    blind, _ = evaluate_model(scorer, labelled.drop_columns(["user_agent"]))
    for kind in ("naive", "targeted"):
        assert seen.auc["fused"][kind] > blind.auc["fused"][kind], kind
    rows = _labelled(spark, world["labelled"])
    assert rows.columns == ["entity", "ip", "ts", "label", "user_agent"]
    got = sorted((r.entity, r.ip, r.label, r.user_agent) for r in rows.collect())
    want = zip(*(labelled[c].to_pylist() for c in ("entity", "ip", "label", "user_agent")), strict=True)
    assert got == sorted((e, ip, float(y), a) for e, ip, y, a in want)


@pytest.mark.spark
@pytest.mark.slow
def test_the_endpoint_takes_an_optional_user_agent(world):
    """The third column goes into the fused score: a user's own device scores lower than a script's string
    at the same address; without the column the answer is as before."""
    from ipinsights.score.scorer import Scorer
    from ipinsights.serve import protocol
    from ipinsights.serve.app import score_records

    scorer = Scorer.load(world["model"], profile=True, asn_table=world["tables"], fusion=True)
    truth = world["truth"]
    normal = truth.filter(pc.and_(pc.equal(truth["dt"], TRAIN[0]), pc.equal(truth["kind"], "normal")))
    rows = normal.slice(0, 50).to_pylist()
    ents, ips, own = [r["entity"] for r in rows], [r["ip"] for r in rows], [r["user_agent"] for r in rows]
    plain = score_records(scorer, protocol.Records(ents, ips), protocol.Options(risk=True))
    same = score_records(scorer, protocol.Records(ents, ips, agents=[None] * len(rows)), protocol.Options(risk=True))
    assert [p["risk_score"] for p in plain] == [p["risk_score"] for p in same]
    mine = score_records(scorer, protocol.Records(ents, ips, agents=own), protocol.Options(risk=True, verbose=True))
    curl = score_records(scorer, protocol.Records(ents, ips, agents=[CURL] * len(rows)), protocol.Options(risk=True))
    assert all(m["risk_score"] < c["risk_score"] for m, c in zip(mine, curl, strict=True))
    # Without a user agent the client is unknown, weighed as the average login's: between the two.
    medians = [np.median([p["risk_score"] for p in answers]) for answers in (mine, plain, curl)]
    assert medians == sorted(medians) and len(set(medians)) == 3
    assert all(m["explanation"]["device"].startswith("known device (") for m in mine)
