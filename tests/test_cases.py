"""Investigator cases: grouping, network cases, severity, verdicts (suppression, expiry, malicious marks),
stable ids, and the case metrics of labelled days. Flagged rows are built in code (the flagged table's
schema); the scoring job's own runs are in ``tests/test_score.py``."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ipinsights.score.cases import ENTITY, NETWORK, CaseSettings, case_id, day_of_case, severity
from ipinsights.score.schemas import FLAGGED
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_case_metrics import case_metrics
from ipinsights.score.spark_cases import calibrate_floor, group_cases, ranked
from ipinsights.score.spark_verdicts import case_rules, verdict_pairs
from ipinsights.score.verdicts import VerdictSet, network_key, read_verdicts, rules
from ipinsights.storage.publish import write_partitions

DAY, NEXT, LATER = "2024-01-09", "2024-01-10", "2024-01-11"


KALONET = "AS64512 Kalonet Mobile (BR)"


def _row(
    entity: str,
    ip: str,
    hour: int,
    day: str = DAY,
    pct: float = 99.9,
    asn: int | None = 64512,
    as_name: str | None = KALONET,
    training: int = 180,
    usual: int = 170,
) -> dict:
    """One flagged row (the flagged table's columns; the rest null)."""
    row = dict.fromkeys(FLAGGED.names)
    parts = ip.split(".")
    row.update(
        entity=entity,
        ip=ip,
        dt=day,
        ts=dt.datetime.fromisoformat(f"{day}T{hour:02d}:10:00+00:00"),
        anomaly_score=float(pct) / 10,
        normal_percentile=pct,
        rule="model_score",
        level="high",
        flagged=True,
        training_count=training,
        known_networks=2,
        usual_events=usual,
        usual_ases="AS7922 Comcast (US)",
        subnet=f"{'.'.join(parts[:3])}.0/24",
        network=f"{'.'.join(parts[:2])}.0.0/16",
        asn=asn,
        as_name=as_name,
        asn_seen=False,
        subnet_seen=False,
    )
    return row


def _df(spark, rows: list[dict]):
    return spark.createDataFrame([tuple(r[n] for n in FLAGGED.names) for r in rows], struct_type(FLAGGED))


def _cases(spark, rows, settings=None, verdict_rules=()):
    g = group_cases(_df(spark, rows), settings or CaseSettings(), verdict_rules)
    cases = {
        (r["kind"], r["entity"] or r["source"], r["dt"]): r.asDict(recursive=True) for r in ranked(g.cases).collect()
    }
    return cases, {r["dt"]: r.asDict() for r in g.suppressed.collect()}


@pytest.mark.spark
def test_one_entity_with_several_events_and_networks_is_one_case(spark):
    rows = [
        _row("alice", "203.0.113.5", 2),
        _row("alice", "203.0.113.9", 3, pct=99.99),
        _row("alice", "198.51.100.7", 4, asn=64513, as_name="AS64513 Other Net (US)"),
        _row("bob", "192.0.2.1", 5, pct=99.0),
    ]
    cases, _ = _cases(spark, rows)
    assert set(cases) == {(ENTITY, "alice", DAY), (ENTITY, "bob", DAY)}
    a = cases[(ENTITY, "alice", DAY)]
    assert a["events"] == 3 and a["networks"] == 2 and a["entities"] == 1 and a["members"] == ["alice"]
    assert a["top_ip"] == "203.0.113.9" and a["score_percentile"] == pytest.approx(99.99)
    assert a["first_ts"].hour == 2 and a["last_ts"].hour == 4
    assert sorted(a["network_keys"]) == ["AS64512", "AS64513"]
    assert len(a["events_detail"]) == 3 and a["events_detail"][0]["ip"] == "203.0.113.9"  # highest score first
    assert a["summary"].startswith(
        "first login from AS64512 Kalonet Mobile (BR) and 1 other network, 3 events 02:10-04:10"
    )
    assert (
        "usually AS7922 Comcast (US), 2 networks, 180 logins in training; score above 99.99% of normal" in a["summary"]
    )
    assert a["rank"] == 1 and cases[(ENTITY, "bob", DAY)]["rank"] == 2 and a["case_id"] == case_id(DAY, ENTITY, "alice")


@pytest.mark.spark
def test_usual_logins_the_same_day_raise_the_case(spark):
    """alice logged in 10 times that day, 3 of them flagged: 7 from her usual places (two people on one
    account); bob's 2 logins were both flagged (a traveller's day). Same scores, alice's case ranks higher."""
    rows = [_row("alice", "203.0.113.5", h) for h in (2, 3, 4)] + [_row("bob", "198.51.100.7", h) for h in (5, 6)]
    day_events = spark.createDataFrame([(DAY, "alice", 10), (DAY, "bob", 2)], "dt string, entity string, events long")
    g = group_cases(_df(spark, rows), CaseSettings(), day_events=day_events)
    got = {r["entity"]: r for r in ranked(g.cases).collect()}
    assert got["alice"]["usual_today"] == 7 and got["bob"]["usual_today"] == 0
    assert "also 7 logins that day from places not flagged" in got["alice"]["summary"]
    assert "places not flagged" not in got["bob"]["summary"]
    base = severity(
        np.array([ENTITY]), np.array([99.9]), np.array([3]), np.array([1]), np.array([1]), np.array([170 / 180])
    )[0]
    assert got["alice"]["severity"] == pytest.approx(base + 1.0) and got["alice"]["rank"] == 1


@pytest.mark.spark
def test_one_source_into_many_entities_is_one_network_case(spark):
    spray = [
        _row(f"user_{i}", f"45.33.32.{i % 3 + 1}", 2, pct=99.8, asn=63949, as_name="AS63949 Linode (US)")
        for i in range(12)
    ]
    # Four entities from one /24 stay entity cases (the threshold is five); a sprayed account's other event too.
    few = [_row(f"other_{i}", "100.64.0.9", 8) for i in range(4)]
    rows = [*spray, *few, _row("user_0", "198.51.100.7", 9, asn=64513, as_name="AS64513 Other Net (US)")]
    cases, _ = _cases(spark, rows)
    net = cases[(NETWORK, "45.33.32.0/24", DAY)]
    assert net["entities"] == 12 and net["events"] == 12 and net["entity"] is None
    assert net["members"] == sorted(f"user_{i}" for i in range(12))
    assert net["summary"].startswith("12 entities logged in from 45.33.32.0/24 (AS63949 Linode (US))")
    # The sprayed events are in the network case only: user_0's entity case holds its other event alone.
    assert cases[(ENTITY, "user_0", DAY)]["events"] == 1 and (ENTITY, "user_5", DAY) not in cases
    assert sum(k[0] == ENTITY and k[1].startswith("other_") for k in cases) == 4
    assert net["rank"] == 1 and net["severity"] > max(c["severity"] for c in cases.values() if c["kind"] == ENTITY)


@pytest.mark.spark
def test_the_entity_case_names_the_device_and_a_stranger_s_device_raises_it(spark):
    """Two accounts, each one login from a new network: carol's on her own browser (a trip), dave's from a
    device he never used (a takeover). Same scores: dave's case ranks higher, by the documented point,
    and both summaries say which device it was."""
    known = "known device (Chrome on Windows, desktop; 140 logins in training)"
    stranger = "new device: curl on Other, other, user agent curl/8.1.2"
    rows = [
        {**_row("carol", "203.0.113.5", 2), "device": known},
        {**_row("dave", "198.51.100.7", 3), "device": stranger},
        _row("erin", "192.0.2.9", 4),  # scored without user agents: no device, no point
    ]
    cases, _ = _cases(spark, rows)
    carol, dave, erin = (cases[(ENTITY, e, DAY)] for e in ("carol", "dave", "erin"))
    assert (carol["top_device"], carol["top_new_device"]) == (known, False)
    assert (dave["top_device"], dave["top_new_device"]) == (stranger, True)
    assert erin["top_device"] is None and not erin["top_new_device"]
    assert dave["severity"] == pytest.approx(carol["severity"] + 1.0) and erin["severity"] == carol["severity"]
    assert dave["rank"] < carol["rank"]
    assert f"; {stranger}; usually AS7922 Comcast (US)" in dave["summary"]
    assert known in carol["summary"] and "device" not in erin["summary"]


def test_severity_orders_what_an_investigator_would():
    kind = np.array([ENTITY] * 4 + [NETWORK])
    pct, events = np.array([99.0, 99.99, 99.99, 99.99, 99.0]), np.array([1, 1, 1, 5, 20])
    s = severity(
        kind, pct, events, np.array([1, 1, 1, 3, 1]), np.array([1, 1, 1, 1, 20]), np.array([0.5, 0.0, 1.0, 1.0, 0.0])
    )
    assert s[0] == pytest.approx(2.5)  # at the 1% threshold, half-settled
    assert s[1] < s[2] < s[3]  # settled beats a traveller; more events and networks beat one
    assert s[4] == pytest.approx(2 + 3 * np.log10(20))
    assert severity(
        np.array([ENTITY]), np.array([100.0]), np.array([1]), np.array([1]), np.array([1]), np.array([0.0])
    )[0] == pytest.approx(5.0)  # capped


def test_case_ids_are_stable_and_name_their_day():
    a = case_id(DAY, ENTITY, "alice")
    assert a == case_id(DAY, ENTITY, "alice") != case_id(NEXT, ENTITY, "alice") != case_id(DAY, NETWORK, "alice")
    assert a.startswith("E-20240109-") and day_of_case(a) == DAY and day_of_case("E-2024-x") is None


def _verdicts(tmp_path, text: str) -> VerdictSet:
    path = tmp_path / "verdicts.csv"
    path.write_text("case_id,entity,network,verdict,who,when,expires,note\n" + text)
    return read_verdicts(str(path))


def test_verdicts_file_names_bad_rows_and_keeps_the_rest(tmp_path):
    v = _verdicts(
        tmp_path,
        ",alice,AS64512,benign,ana,2024-01-10,,new ISP\n"
        ",bob,10.1.2.0/20,benign,ana,2024-01-10,,\n"
        ",carol,AS1,maybe,ana,2024-01-10,,\n"
        ",dave,AS1,benign,,2024-01-10,,\n"
        ",erin,AS1,benign,ana,2024-01-10,2024-01-09,\n"
        ",mallory,,malicious,ana,2024-01-10T09:12:00Z,,ticket 4711\n",
    )
    assert [x.entity for x in v.verdicts] == ["alice", "mallory"]
    assert len(v.rejected) == 4
    assert v.rejected[0].endswith(
        "verdicts.csv:3: '10.1.2.0/20': a network is a /24 or /16 (as the cases show it), an AS or one address"
    )
    assert "verdicts.csv:4: verdict='maybe'" in v.rejected[1] and "verdicts.csv:5: who is empty" in v.rejected[2]
    assert "expires=2024-01-09 is not after" in v.rejected[3]
    assert network_key("as64512") == "AS64512" and network_key("2001:db8:0:0::/48") == "2001:db8::/48"
    assert network_key("10.1.2.3/32") == "10.1.2.3"
    with pytest.raises(FileNotFoundError):
        read_verdicts(str(tmp_path / "gone.csv"))


@pytest.mark.spark
def test_a_benign_verdict_suppresses_later_days_until_it_expires(spark, tmp_path):
    def day_rows(day):
        return [
            _row("alice", "203.0.113.5", 2, day=day),
            _row("alice", "198.51.100.7", 3, day=day, asn=64513),
            _row("bob", "203.0.113.77", 4, day=day),
        ]

    rows = day_rows(DAY) + day_rows(NEXT) + day_rows(LATER)
    v = _verdicts(tmp_path, f",alice,AS64512,benign,ana,{NEXT},{LATER},new ISP\n,bob,,malicious,ana,{NEXT},,\n")
    cases, suppressed = _cases(spark, rows, verdict_rules=rules(v, {}))
    # The day before the verdict: untouched. From its day: alice's AS64512 event is suppressed (her other
    # network stays a case), until it expires.
    assert cases[(ENTITY, "alice", DAY)]["events"] == 2 and DAY not in suppressed
    assert cases[(ENTITY, "alice", NEXT)]["events"] == 1 and cases[(ENTITY, "alice", NEXT)]["network_keys"] == [
        "AS64513"
    ]
    assert suppressed[NEXT]["suppressed_events"] == 1 and suppressed[NEXT]["suppressed_entities"] == 1
    assert cases[(ENTITY, "alice", LATER)]["events"] == 2 and LATER not in suppressed
    # Malicious: bob's cases from the verdict's day on are marked.
    assert cases[(ENTITY, "bob", DAY)]["prior_verdict"] is None
    assert (
        cases[(ENTITY, "bob", NEXT)]["prior_verdict"] == cases[(ENTITY, "bob", LATER)]["prior_verdict"] == "malicious"
    )


@pytest.mark.spark
def test_a_case_id_verdict_suppresses_its_networks_from_the_next_day(spark, tmp_path):
    spray = [_row(f"user_{i}", "45.33.32.7", 2, day=d) for i in range(6) for d in (DAY, NEXT)]
    alice = [_row("alice", "203.0.113.5", 2, day=d) for d in (DAY, NEXT)]
    first, _ = _cases(spark, [*spray, *alice])
    table = str(tmp_path / "cases")
    write_partitions(ranked(group_cases(_df(spark, [*spray, *alice]), CaseSettings()).cases), table)
    net_id, alice_id = first[(NETWORK, "45.33.32.0/24", DAY)]["case_id"], first[(ENTITY, "alice", DAY)]["case_id"]
    v = _verdicts(tmp_path, f"{net_id},,,benign,ana,{DAY},,VPN egress\n{alice_id},,,benign,ana,{DAY},,\n")
    cases, suppressed = _cases(spark, [*spray, *alice], verdict_rules=case_rules(spark, v, table))
    assert (NETWORK, "45.33.32.0/24", DAY) in cases and (ENTITY, "alice", DAY) in cases  # the cases' own day
    assert (NETWORK, "45.33.32.0/24", NEXT) not in cases and (ENTITY, "alice", NEXT) not in cases
    assert suppressed[NEXT]["suppressed_events"] == 7 and suppressed[NEXT]["suppressed_entities"] == 7


@pytest.mark.spark
def test_case_floor_and_case_metrics_on_a_labelled_day(spark, tmp_path):
    normal = [_row(f"n{i}", f"192.0.{i}.1", 3, pct=99.0 + i / 100) for i in range(30)]
    attacks = [_row(f"a{i}", f"198.51.{i}.9", 4, pct=99.995) for i in range(5)]
    spray = [_row(f"s{i}", "45.33.32.7", 2, pct=99.9) for i in range(8)]
    g = group_cases(_df(spark, normal), CaseSettings())
    floor = calibrate_floor(g.cases, 10)
    assert floor is not None and g.cases.where(f"severity >= {floor}").count() == 10
    assert calibrate_floor(g.cases, 31) is None  # fewer cases than asked: no floor
    table, scores = str(tmp_path / "cases"), str(tmp_path / "scores")
    rows = [*normal, *attacks, *spray]
    write_partitions(ranked(group_cases(_df(spark, rows), CaseSettings(floor=floor)).cases), table)
    write_partitions(_df(spark, rows).select("entity", "ip", "ts", "dt"), scores)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "".join(f"{r['entity']},{r['ip']},1,x\n" for r in attacks)
        + "".join(f"{r['entity']},{r['ip']},1,spraying\n" for r in spray)
        + "".join(f"{r['entity']},{r['ip']},0,normal\n" for r in normal)
    )
    m = case_metrics(spark, table, scores, str(labelled), [DAY], ks=(3, 10), budget=10)[DAY]
    # The spray (one network case) and the five attacks lead; the rest of the top 10 is normal.
    assert m["cases_at_3"] == 3 and m["precision_at_3"] == 1.0
    assert m["cases_at_10"] == 10 and m["precision_at_10"] == pytest.approx(0.6)
    assert m["attacked_entities"] == 13 and m["found_in_budget"] == 13 and m["share_found_in_budget"] == 1.0
    assert m["network_cases"] == [
        {"case_id": case_id(DAY, NETWORK, "45.33.32.0/24"), "rank": 1, "attack_kinds": ["spraying"]}
    ]


@pytest.mark.spark
@pytest.mark.slow
def test_training_with_verdicts_learns_the_confirmed_network(spark, tmp_path):
    """alice moved to a new ISP (203.0.113.0/24); an investigator marked her case benign. Trained with
    ``--include-verdicts``, the model scores her new network as hers; without, it stays anomalous."""
    from ipinsights.score.scorer import Scorer
    from ipinsights_jobs import train

    rng = np.random.default_rng(0)
    entities = [f"user_{i}" for i in range(40)] + ["alice"]
    lines = [
        f"{e},10.{i}.{rng.integers(0, 4)}.{rng.integers(1, 255)}\n" for i, e in enumerate(entities) for _ in range(60)
    ]
    (tmp_path / "train.csv").write_text("".join(lines))
    moved = [_row("alice", f"203.0.113.{i}", 2 + i, asn=None, as_name=None) for i in range(8)]
    other = [_row("user_1", "198.51.100.7", 3, asn=None, as_name=None)]
    table = str(tmp_path / "cases")
    write_partitions(ranked(group_cases(_df(spark, moved + other), CaseSettings()).cases), table)
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text(
        f"case_id,entity,network,verdict,who,when,expires,note\n,alice,203.0.113.0/24,benign,ana,{NEXT},,moved\n"
    )
    pairs = verdict_pairs(spark, read_verdicts(str(verdicts)), table, LATER).collect()
    assert sorted(r["ip"] for r in pairs) == sorted(r["ip"] for r in moved)
    assert {r["entity"] for r in pairs} == {"alice"}
    hp = [
        "--config",
        "conf/demo.yml",
        "--num_entity_vectors=100",
        "--vector_dim=16",
        "--epochs=4",
        "--mini_batch_size=200",
        "--learning_rate=0.05",
        "--train.progress_bar=off",
        "--backend",
        "local",
        "--num-workers",
        "1",
    ]
    base = ["--train-csv", str(tmp_path / "train.csv"), *hp]
    assert train.main([*base, "--output", str(tmp_path / "plain")]) == 0
    assert (
        train.main([*base, "--output", str(tmp_path / "fed"), "--include-verdicts", str(verdicts), "--cases", table])
        == 0
    )
    new = [f"203.0.113.{i}" for i in range(100, 120)]  # new hosts of the confirmed /24
    home = [f"10.40.{i % 4}.{i + 1}" for i in range(20)]
    for name, expect_new_normal in (("plain", False), ("fed", True)):
        s = Scorer.load(tmp_path / name / "model")
        gap = float(np.median(s.dot_product(["alice"] * 20, home)) - np.median(s.dot_product(["alice"] * 20, new)))
        assert (gap < 2.0) == expect_new_normal, (name, gap)


def test_the_cases_table_defaults_beside_the_flagged_table(tmp_path):
    from ipinsights.core.config import ConfigError
    from ipinsights.score.config import ScoreConfig

    def table(flagged: str, **kw) -> str:
        return ScoreConfig(model="m", scores="s", flagged=flagged, reports="r", threshold=1.0, **kw).cases_table

    assert table("data/flagged") == "data/cases" and table("flagged") == "cases"
    assert (
        table("s3://bucket/lake/flagged/") == "s3://bucket/lake/cases" and table("dbfs:/x/flagged") == "dbfs:/x/cases"
    )
    assert table("s3://bucket", cases="s3://bucket/cases") == "s3://bucket/cases"
    with pytest.raises(ConfigError, match="bucket's root"):
        table("s3://bucket")


@pytest.mark.spark
def test_a_rare_user_agent_across_many_networks_is_one_network_case(spark):
    """A tool's client string that no training entity used, from seven entities in seven /24s, is one network
    case; a browser string as common (500 training entities) never forms one; events of a /24 case stay in it."""
    tool, browser = "evil-stuffer/1.0", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36"

    def with_agent(row: dict, agent: str, users: int) -> dict:
        return {**row, "user_agent": agent, "agent_entities": users}

    stuffing = [with_agent(_row(f"victim_{i}", f"198.51.{i}.7", 3), tool, 0) for i in range(7)]
    travel = [with_agent(_row(f"traveller_{i}", f"203.0.{i}.9", 5), browser, 500) for i in range(6)]
    # Five entities from one /24 with the tool: a /24 case, which its events stay in.
    spray = [
        with_agent(_row(f"sprayed_{i}", "45.33.32.1", 2, asn=63949, as_name="AS63949 Linode (US)"), tool, 0)
        for i in range(5)
    ]
    cases, _ = _cases(spark, [*stuffing, *travel, *spray])
    ua = cases[(NETWORK, f"UA {tool}", DAY)]
    assert ua["entities"] == 7 and ua["members"] == sorted(f"victim_{i}" for i in range(7))
    assert ua["summary"].startswith(f"7 entities logged in with the rare user agent {tool!r} from 1 network")
    assert cases[(NETWORK, "45.33.32.0/24", DAY)]["entities"] == 5
    assert sum(k[0] == ENTITY and k[1].startswith("traveller_") for k in cases) == 6
    assert not any(k[1].startswith(("victim_", "sprayed_")) for k in cases if k[0] == ENTITY)
