"""Bad and hostile inputs (issue 17, items 6, 8 and 11): long entities, control and invisible characters,
odd YAML keys, JSON-lines and CSV bodies, and the training rows dropped for an unusable address."""

from __future__ import annotations

import csv
import json
import logging
import random
import re

import pyarrow as pa
import pytest
from test_ip_hashing import _reference_hash

from ipinsights.core.config import ConfigError, TrainConfig, load_config
from ipinsights.core.hashing import MAX_ENTITY_BYTES, hash_strings
from ipinsights.ingest.logparse import EntityOptions, LineLimits, LineRules, classify_batch
from ipinsights.score.report import CASE_COLUMNS, CaseView, render_report, visible_text, write_flagged_csv
from ipinsights.score.rules import Threshold
from ipinsights.serve import protocol
from ipinsights.serve.protocol import RequestError
from ipinsights.serve.settings import ServeSettings

OK = '1.2.3.4 - bob [10/Oct/2026:23:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


def _random_text(rnd: random.Random, n: int) -> str:
    """``n`` code points from every UTF-8 length (1 to 4 bytes), surrogates excepted."""
    ranges = [(0, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)]
    return "".join(chr(rnd.randrange(*rnd.choice(ranges))) for _ in range(n))


# --------------------------------------------------------------------------- 6: entity hash and length cap


def test_hash_is_unchanged_on_random_unicode_of_every_length():
    """Trained models depend on the hash: the vectorised paths (many rows, a long tail, one huge row, nulls,
    a sliced array) give the documented algorithm's value for every string."""
    rnd = random.Random(17)
    batches = [
        [_random_text(rnd, rnd.randrange(0, 40)) for _ in range(500)],  # many short rows: position loop only
        [_random_text(rnd, rnd.randrange(0, 40)) for _ in range(300)]  # a long tail past a few rows
        + [_random_text(rnd, rnd.randrange(100, 3000)) for _ in range(10)],
        [_random_text(rnd, 20_000)],  # one row: all bytes at once
        [_random_text(rnd, rnd.randrange(200, 400)) for _ in range(5)] + [None, ""],
    ]
    for seed in (0, 5, 2**63 - 1):
        for words in batches:
            expected = [_reference_hash(w or "", seed) for w in words]
            assert hash_strings(words, seed).tolist() == expected
    arr = pa.array(batches[1])[7:]
    assert hash_strings(arr, 3).tolist() == [_reference_hash(w, 3) for w in batches[1][7:]]
    big = ["x" * (1 << 20), "y" * 300_000, "z"]  # more than one _fnv_segments chunk
    assert hash_strings(big, 1).tolist() == [_reference_hash(w, 1) for w in big]


def _query_line(value: str) -> str:
    return OK.replace("/login_success", f"/login_success?u={value}")


QUERY = EntityOptions("query", "u")


def test_ingest_quarantines_entities_over_the_cap():
    at_cap = "%C3%A9" * (MAX_ENTITY_BYTES // 2)  # 'é' is 2 bytes: exactly the cap
    over = "%C3%A9" * (MAX_ENTITY_BYTES // 2) + "x"  # one byte over, in fewer characters than the cap
    rows = classify_batch(pa.array([_query_line(at_cap), _query_line(over)]), LineRules(entity=QUERY)).to_pylist()
    assert [r["outcome"] for r in rows] == ["kept", "entity_too_long"]
    assert rows[1]["entity"] is None and rows[1]["raw"].startswith("1.2.3.4")
    looser = LineRules(entity=QUERY, limits=LineLimits(max_entity_bytes=4096))
    assert classify_batch(pa.array([_query_line(over)]), looser).to_pylist()[0]["outcome"] == "kept"
    # user agents can be long: the same cap, from the ingest config's quality section
    from ipinsights.ingest.job import IngestConfig

    cfg = load_config(IngestConfig, "conf/ingest.yml", {"inputs": "a.log", "output": "ev", "max_entity_bytes": "20"})
    rules = LineRules(entity=EntityOptions("user_agent"), limits=cfg.line_rules().limits)
    agents = [OK, OK.replace("Mozilla/5.0", "Mozilla/5.0 (X11; Linux x86_64)")]
    assert [r["outcome"] for r in classify_batch(pa.array(agents), rules).to_pylist()] == ["kept", "entity_too_long"]
    with pytest.raises(ConfigError, match="max_entity_bytes=0 is out of range"):
        LineLimits(max_entity_bytes=0)


def test_endpoint_refuses_long_entities_naming_the_record():
    ok = "é" * (MAX_ENTITY_BYTES // 2)
    body = f"u1,1.2.3.4\n{ok},1.2.3.4\n{ok}x,1.2.3.4\n".encode()
    with pytest.raises(RequestError) as err:
        protocol.parse_records(body, protocol.CSV, 10)
    assert err.value.status == 400
    assert f"record 3 (line 3): the entity is {MAX_ENTITY_BYTES + 1} bytes" in err.value.reason
    assert "record 2" not in err.value.reason
    assert len(protocol.parse_records(body, protocol.CSV, 10, max_entity_bytes=MAX_ENTITY_BYTES + 1)) == 3
    doc = {"instances": [{"features": ["a" * 5000, "1.2.3.4"]}] * 5}
    with pytest.raises(RequestError, match=r"record 1 \(instances\[0\]\).*record 3 .*\(5 too long in all\)"):
        protocol.parse_records(json.dumps(doc).encode(), protocol.JSON, 10)
    assert ServeSettings().max_entity_bytes == MAX_ENTITY_BYTES
    with pytest.raises(ConfigError, match="max_entity_bytes"):
        ServeSettings(max_entity_bytes=0)


# --------------------------------------------------------------------------- 8: control and invisible characters


def test_control_characters_in_the_entity_are_quarantined():
    values = ["a%0Ab", "a%09b", "a%0Db", "a%C2%85b", "a%7Fb", "a%E2%80%AEb", "J%C3%BCrgen"]
    rows = classify_batch(pa.array([_query_line(v) for v in values]), LineRules(entity=QUERY)).to_pylist()
    assert [r["outcome"] for r in rows] == ["binary"] * 5 + ["kept", "kept"]
    assert rows[5]["entity"] == "a\u202eb"  # not a control character: kept, and shown escaped in reports
    tab_agent = OK.replace("Mozilla/5.0", "Mozilla/5.0\tevil")
    agent = LineRules(entity=EntityOptions("user_agent"))
    assert classify_batch(pa.array([tab_agent]), agent).to_pylist()[0]["outcome"] == "binary"
    assert classify_batch(pa.array([tab_agent])).to_pylist()[0]["outcome"] == "kept"  # the agent is no entity here


def test_report_and_csv_show_invisible_characters_escaped(tmp_path):
    spoof = "admin\u202egnp.exe"  # renders as 'adminexe.png'
    cases = {
        spoof: "admin\\u202egnp.exe",
        "bo\u200bb": "bo\\u200bb",  # zero-width space
        "x\u00a0y\u3164": "x\\u00a0y\\u3164",  # no-break space, Hangul filler
        "a\tb\u2028c": "a\\tb\\u2028c",
        "m\u2066\\u2066": "m\\u2066\\\\u2066",  # backslashes doubled where an escape is written
        "DOMAIN\\user": "DOMAIN\\user",  # nothing to escape: unchanged
        "Jürgen 名前": "Jürgen 名前",
    }
    assert {k: visible_text(k) for k in cases} == cases
    rows = []
    for entity in cases:
        row = dict.fromkeys(CASE_COLUMNS)
        row.update({"entity": entity, "ip": "203.0.113.9", "anomaly_score": 2.0, "rule": "model_score"})
        rows.append(row)
    # The report shows each entity twice: as its case's entity and in the case's events.
    event = {"anomaly_score": 2.0, "ts": None, "ip": "203.0.113.9", "normal_percentile": 99.9, "network_name": None}
    top = [
        {
            "case_id": f"E-20261011-{i:012x}",
            "rank": i + 1,
            "severity": 4.0,
            "kind": "entity",
            "entity": e,
            "source": None,
            "entities": 1,
            "events": 1,
            "summary": "first login",
            "prior_verdict": None,
            "events_detail": [{**event, "entity": e}],
        }
        for i, e in enumerate(cases)
    ]
    view = CaseView(
        top, {"cases": 7, "open": 7, "network_cases": 0, "suppressed_events": 0, "suppressed_entities": 0}, []
    )
    page = render_report("2026-10-11", {"rows": 7, "flagged": 7}, Threshold(1.0, "fixed"), view, None)
    csv_path = write_flagged_csv(tmp_path / "flagged.csv", rows)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        written = [r["entity"] for r in csv.DictReader(fh)]
    assert written == list(cases.values())
    for raw, shown in cases.items():
        assert f"<b>{shown}</b>" in page and f"<td>{shown}</td>" in page
        if raw != shown:
            assert raw not in page and raw not in csv_path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- 11: small ones


def test_yaml_keys_that_are_not_strings_are_config_errors(tmp_path):
    for text, key in [
        ("1: 2\n", "1 (int)"),
        ("hyperparameters:\n  num_entity_vectors: 10\n  vector_dim: 8\n  on: 3\n", "hyperparameters.True (bool)"),
        ("model:\n  null: 1\n", "model.None (NoneType)"),
    ]:
        path = tmp_path / "train.yml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"setting name {re.escape(key)}"):
            load_config(TrainConfig, path)


def test_jsonlines_body_splits_on_newlines_only():
    lines = [
        {"features": ["a\u2028b", "1.2.3.4"]},
        {"features": ["c\u0085d", "1.2.3.5"]},
        {"data": {"features": {"values": ["e\u2029f\x1c\x1d\x1e", "1.2.3.6"]}}},
    ]
    body = "\r\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode() + b"\n\n"
    records = protocol.parse_records(body, protocol.JSONLINES, 10)
    assert records.entities == ["a\u2028b", "c\u0085d", "e\u2029f\x1c\x1d\x1e"]
    assert records.lines == [1, 2, 3]
    with pytest.raises(RequestError, match=r"record 2 \(line 3\)"):
        protocol.parse_records(b'{"features": ["a", "1.2.3.4"]}\n\n{"features": \n', protocol.JSONLINES, 10)


def test_a_byte_order_mark_is_not_part_of_the_first_record():
    for content_type, body in [
        (protocol.CSV, "user_1,1.2.3.4\nuser_2,1.2.3.5\n"),
        (protocol.JSON, '{"instances": [{"features": ["user_1", "1.2.3.4"]}, {"features": ["user_2", "1.2.3.5"]}]}'),
        (protocol.JSONLINES, '{"features": ["user_1", "1.2.3.4"]}\n{"features": ["user_2", "1.2.3.5"]}\n'),
    ]:
        records = protocol.parse_records(("\ufeff" + body).encode(), content_type, 10)
        assert records.entities == ["user_1", "user_2"], content_type
    # only a leading one: elsewhere it is a character of the entity (and invisible, so reports escape it)
    assert protocol.parse_records("a,1.2.3.4\n\ufeffb,1.2.3.4".encode(), protocol.CSV, 10).entities[1] == "\ufeffb"


GOOD_PAIRS = [(f"user_{i % 7}", f"10.0.{i % 5}.{i % 250}") for i in range(300)]
BAD_PAIRS = [("user_1", "300.1.1.1"), ("user_2", "not an ip"), ("user_3", ""), (None, "10.0.0.1")]


@pytest.mark.spark
def test_training_preparation_counts_the_rows_it_drops(spark, tmp_path):
    """Rows with an unusable address are counted in the entity-count aggregation (no pass of their own)."""
    from ipinsights.core.entities import EntityStats
    from ipinsights.train.prepare import encode_pairs_df, valid_pairs, write_entity_stats

    v6 = [("user_4", "2001:db8::1")]
    df = spark.createDataFrame(GOOD_PAIRS + BAD_PAIRS + v6, "entity string, ip string").repartition(3)
    enc = encode_pairs_df(df, 0, ipv6=False, keep_invalid=True)
    n_entities, n_invalid = write_entity_stats(enc, str(tmp_path / "entities.safetensors"))
    stats = EntityStats.open(tmp_path / "entities.safetensors")
    assert n_invalid == len(BAD_PAIRS) + len(v6) and n_entities == len(stats) == 7
    assert int(stats.counts.sum()) == len(GOOD_PAIRS) == valid_pairs(enc).count()
    assert encode_pairs_df(df, 0).count() == len(GOOD_PAIRS) + len(v6)  # the default drops them, as before


@pytest.mark.spark
@pytest.mark.slow
def test_training_job_reports_the_rows_it_drops(spark, tmp_path, caplog):
    from ipinsights.core.config import config_from_dict
    from ipinsights.train.job import TrainInputs, run_train_job

    csv_dir = tmp_path / "train"
    csv_dir.mkdir()
    (csv_dir / "pairs.csv").write_text("".join(f"{e},{ip}\n" for e, ip in GOOD_PAIRS + BAD_PAIRS[:2]))
    hp = {"num_entity_vectors": 20, "vector_dim": 4, "epochs": 1, "mini_batch_size": 100}
    dist = {"backend": "local", "num_workers": 1}
    cfg = config_from_dict(TrainConfig, {"hyperparameters": hp, "train": {"progress_bar": "off"}, "distributed": dist})
    with caplog.at_level(logging.WARNING, logger="ipinsights.train.job"):
        summary = run_train_job(spark, cfg, TrainInputs(train_csv=str(csv_dir)), tmp_path / "run")
    assert summary["invalid_ip_rows"] == 2
    assert "dropped 2 training row(s)" in caplog.text
