"""The endpoint: SageMaker's inference contract over real HTTP against a real server process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

import numpy as np
import pytest
from servers import Client, ServerProcess

from ipinsights.score.scorer import Scorer
from ipinsights.serve import protocol
from ipinsights.serve.app import Batcher, resolve_model_dir
from ipinsights.serve.protocol import RequestError

MAX_RECORDS = 50
MAX_BODY = 4096

ENTITIES = [f"user_{i}" for i in range(12)] + ["never_seen_1", "never_seen_2"]
IPS = [f"{10 + i}.{(7 * i) % 256}.{(13 * i) % 256}.{i + 1}" for i in range(len(ENTITIES))]


@pytest.fixture(scope="module")
def model_dir(toy_model):
    return toy_model


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer.load(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    extra = (f"--max_records={MAX_RECORDS}", f"--max_body_bytes={MAX_BODY}")
    with ServerProcess(model_dir, workers=2, extra_args=extra, start_timeout=90) as srv:
        yield srv


@pytest.fixture()
def client(server):
    c = Client(server.port)
    yield c
    c.close()


def _body(content_type: str) -> bytes:
    pairs = list(zip(ENTITIES, IPS, strict=True))
    if content_type == protocol.CSV:
        return "".join(f"{e},{ip}\n" for e, ip in pairs).encode()
    # SageMaker's two instance forms, mixed
    instances = [
        {"data": {"features": {"values": [e, ip]}}} if i % 2 else {"features": [e, ip]}
        for i, (e, ip) in enumerate(pairs)
    ]
    if content_type == protocol.JSON:
        return json.dumps({"instances": instances}).encode()
    return "".join(json.dumps(inst) + "\n" for inst in instances).encode()


def _strict_json(text: str | bytes) -> Any:
    """``json.loads`` as a strict parser: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON body: strict JSON parsers reject it")

    return json.loads(text, parse_constant=refuse)


def _predictions(headers: dict[str, str], body: bytes) -> list[dict]:
    if headers["content-type"].startswith(protocol.JSONLINES):
        return [_strict_json(line) for line in body.decode().splitlines()]
    assert headers["content-type"].startswith(protocol.JSON)
    return _strict_json(body)["predictions"]


def test_ping(client):
    status, _, _ = client.request("GET", "/ping")
    assert status == 200


@pytest.mark.parametrize("content_type", protocol.INPUT_TYPES)
@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, protocol.JSON),
        ("application/json", protocol.JSON),
        ("application/jsonlines", protocol.JSONLINES),
        ("*/*", protocol.JSON),
        ("text/html, application/jsonlines;q=0.9, application/json;q=0.5", protocol.JSONLINES),
    ],
)
def test_scores_equal_scorer(client, scorer, content_type, accept, answer):
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    status, rh, body = client.request("POST", "/invocations", _body(content_type), headers)
    assert status == 200, body
    assert rh["content-type"].startswith(answer)
    preds = _predictions(rh, body)
    assert [set(p) for p in preds] == [{"dot_product"}] * len(ENTITIES)
    np.testing.assert_allclose([p["dot_product"] for p in preds], scorer.dot_product(ENTITIES, IPS), atol=1e-5)


@pytest.mark.parametrize("accept", ["application/json; verbose=True", "application/jsonlines;verbose=true"])
def test_verbose(client, scorer, accept):
    status, rh, body = client.request(
        "POST", "/invocations", _body(protocol.CSV), {"Content-Type": "text/csv", "Accept": accept}
    )
    assert status == 200, body
    preds = _predictions(rh, body)
    np.testing.assert_allclose([p["entity_embedding"] for p in preds], scorer.entity_embedding(ENTITIES), atol=1e-5)
    np.testing.assert_allclose([p["ip_embedding"] for p in preds], scorer.ip_embedding(IPS), atol=1e-5)
    want = scorer.assess(ENTITIES, IPS, learning_period_events=10)
    got = [p["anomaly_score"] for p in preds]
    defined = np.isfinite(want.anomaly_score)
    assert [g is None for g in got] == (~defined).tolist()  # undefined scores travel as null, never NaN
    np.testing.assert_allclose([g for g in got if g is not None], want.anomaly_score[defined], atol=1e-5)
    assert [p["rule"] for p in preds] == want.rule.tolist()
    assert [p["unseen_entity"] for p in preds] == (scorer.training_counts(ENTITIES) == 0).tolist()
    assert all(set(p["explanation"]) >= {"subnet", "network", "nearest_networks", "typical_low"} for p in preds)
    assert preds[0]["explanation"]["subnet"] == IPS[0].rsplit(".", 1)[0] + ".0/24"


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/invocations?anomaly=true", {}),
        ("/invocations", {"X-Amzn-SageMaker-Custom-Attributes": "trace=1,anomaly=true"}),
    ],
)
def test_anomaly_flag(client, scorer, path, extra):
    status, rh, body = client.request("POST", path, _body(protocol.JSON), {"Content-Type": protocol.JSON, **extra})
    assert status == 200, body
    preds = _predictions(rh, body)
    assert set(preds[0]) == {"dot_product", "anomaly_score", "unseen_entity", "rule"}
    dp = scorer.dot_product(ENTITIES, IPS)
    np.testing.assert_allclose([p["anomaly_score"] for p in preds][:-2], -dp[:-2], atol=1e-5)
    unseen = [p["unseen_entity"] for p in preds]
    assert unseen == (scorer.training_counts(ENTITIES) == 0).tolist()
    assert unseen[-2:] == [True, True] and not any(unseen[:-2])
    # Never-seen entities: the population prior's score, marked as such; never their random vectors'.
    assert [p["rule"] for p in preds][-2:] == ["learning_period"] * 2
    prior = scorer.assess(ENTITIES, IPS).prior_score
    if np.isfinite(prior[-2:]).all():
        np.testing.assert_allclose([p["anomaly_score"] for p in preds][-2:], prior[-2:], atol=1e-5)
    else:  # no profile beside the model: no prior, so no score at all, as JSON null (never NaN)
        assert [p["anomaly_score"] for p in preds][-2:] == [None, None]


CSV_H = {"Content-Type": "text/csv"}
JSON_H = {"Content-Type": "application/json"}
INV = "/invocations"
ONE = b"u,1.2.3.4"
BAD_REQUESTS = [
    # (name, path, headers, body, status, reason pattern)
    ("content type", INV, {"Content-Type": "text/plain"}, ONE, 415, "unsupported Content-Type"),
    ("no content type", INV, {}, ONE, 415, "missing Content-Type"),
    ("charset", INV, {"Content-Type": "text/csv; charset=latin-1"}, ONE, 415, "charset"),
    ("accept", INV, {**CSV_H, "Accept": "text/html"}, ONE, 406, "cannot answer Accept"),
    ("empty body", INV, CSV_H, b"", 400, "empty request body"),
    ("blank body", INV, CSV_H, b"\n\n", 400, "no records"),
    ("csv quote", INV, CSV_H, b'u1,1.2.3.4\nu2,"1.2"3.4"\n', 400, "malformed CSV at line 2"),
    ("columns", INV, CSV_H, b"u1,1.2.3.4\nu2,1.2.3.4,x,y\n", 400, r"record 2 \(line 2\): expected 2 or 3 columns"),
    ("one column", INV, CSV_H, b"u1\n", 400, r"record 1 \(line 1\): expected 2 or 3 columns.*got 1"),
    ("bad ip", INV, CSV_H, b"u1,1.2.3.4\n\nu2,300.1.1.1\n", 400, r"record 2 \(line 3\): invalid IP address '300\.1"),
    ("utf8", INV, CSV_H, b"u\xff,1.2.3.4", 400, "not valid UTF-8"),
    ("json syntax", INV, JSON_H, b'{"instances": [', 400, "malformed JSON"),
    ("json shape", INV, JSON_H, b'{"rows": []}', 400, "instances"),
    (
        "json values",
        INV,
        JSON_H,
        b'{"instances": [{"features": ["u", "1.2.3.4"]}, {"features": ["u"]}]}',
        400,
        r"record 2 \(instances\[1\]\): expected 2 or 3 values",
    ),
    ("json agent type", INV, JSON_H, b'{"instances": [{"features": ["u", "1.2.3.4", 7]}]}', 400, "user agent must be"),
    ("json ip type", INV, JSON_H, b'{"instances": [{"features": ["u", 16909060]}]}', 400, "IP address must be"),
    (
        "json bad ip",
        INV,
        JSON_H,
        b'{"instances": [{"features": ["u", "1.2.3.4"]}, {"data": {"features": {"values": ["v", "1.2.3"]}}}]}',
        400,
        r"record 2 \(instances\[1\]\): invalid IP address '1.2.3'",
    ),
    ("surrogate", INV, JSON_H, b'{"instances": [{"features": ["\\ud800", "1.2.3.4"]}]}', 400, "lone surrogate"),
    (
        "jsonlines",
        INV,
        {"Content-Type": "application/jsonlines"},
        b'{"features": ["u", "1.2.3.4"]}\n{"features": ["u", "1.2.3.4"\n',
        400,
        r"record 2 \(line 2\)",
    ),
    (
        "long entity",
        INV,
        CSV_H,
        b"u,1.2.3.4\n" + b"x" * 1025 + b",1.2.3.4\n",
        400,
        r"record 2 \(line 2\): the entity is 1025 bytes; entities are at most 1024 bytes",
    ),
    ("too big", INV, CSV_H, b"u,1.2.3.4\n" * 500, 413, f"exceeds the limit of {MAX_BODY} bytes"),
    ("too many", INV, CSV_H, b"u,1.2.3.4\n" * (MAX_RECORDS + 1), 413, f"more than {MAX_RECORDS} records"),
    ("flag", INV + "?anomaly=maybe", CSV_H, ONE, 400, "anomaly='maybe' must be true or false"),
    ("verbose", INV, {**CSV_H, "Accept": "application/json; verbose=lots"}, ONE, 400, "verbose"),
]


@pytest.mark.parametrize(
    ("name", "path", "headers", "body", "status", "reason"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_answer_4xx_with_reason(client, name, path, headers, body, status, reason):
    got, rh, data = client.request("POST", path, body, headers)
    assert got == status, data
    assert rh["content-type"] == "application/json"
    assert re.search(reason, json.loads(data)["error"]), data
    assert client.request("GET", "/ping")[0] == 200  # still healthy


def test_chunked_body_over_the_limit(client):
    status, _, data = client.request("POST", "/invocations", b"u,1.2.3.4\n" * 500, CSV_H, chunked=True)
    assert status == 413 and b"exceeds the limit" in data
    ok, _, _ = client.request("POST", "/invocations", b"u,1.2.3.4\n", CSV_H, chunked=True)
    assert ok == 200


def test_other_methods_and_paths(client):
    assert client.request("GET", "/invocations")[0] == 405
    assert client.request("GET", "/nope")[0] == 404
    status, _, body = client.request("GET", "/execution-parameters")
    assert status == 200 and json.loads(body)["BatchStrategy"] == "MULTI_RECORD"


def test_good_requests_flow_between_bad_ones(server, client, scorer):
    pids = server.worker_pids()
    assert len(pids) == 2
    good = scorer.dot_product(["user_1"], ["10.7.13.2"])[0]
    for i in range(40):
        bad = BAD_REQUESTS[i % len(BAD_REQUESTS)]
        assert 400 <= client.request("POST", bad[1], bad[3], bad[2])[0] < 500
        status, _, body = client.request("POST", "/invocations", b"user_1,10.7.13.2", CSV_H)
        assert status == 200
        assert json.loads(body)["predictions"][0]["dot_product"] == pytest.approx(good, abs=1e-5)
    assert server.worker_pids() == pids  # no worker died and was replaced


# ---------------------------------------------------------------------------------------------
# In-process pieces
# ---------------------------------------------------------------------------------------------


def test_negotiate_output():
    assert protocol.negotiate_output(None) == (protocol.JSON, False)
    assert protocol.negotiate_output("application/json; verbose=True") == (protocol.JSON, True)
    assert protocol.negotiate_output("application/x-jsonlines") == (protocol.JSONLINES, False)
    assert protocol.negotiate_output("application/json;q=0.2, application/jsonlines") == (protocol.JSONLINES, False)
    assert protocol.negotiate_output("application/jsonlines;q=0, */*") == (protocol.JSON, False)
    assert protocol.negotiate_output("application/jsonlines;q=abc, application/json") == (protocol.JSON, False)
    with pytest.raises(RequestError) as exc:
        protocol.negotiate_output("application/jsonlines;q=0")
    assert exc.value.status == 406


def test_parse_flags_and_media_type():
    assert protocol.parse_media_type('Text/CSV ; Charset="UTF-8"') == ("text/csv", {"charset": "UTF-8"})
    assert protocol.parse_flags({"verbose": "1"}, "anomaly=yes;other=x") == {"verbose": True, "anomaly": True}
    assert protocol.parse_flags({}, None) == {}


def test_an_optional_third_column_is_the_user_agent():
    """CSV and JSON records may carry a user agent (the fused score's device features); without any, the
    records are as before (``agents`` None) and a record without one is None among the others."""
    chrome = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    )
    r = protocol.parse_records(f'u1,1.2.3.4,"{chrome}"\nu2,5.6.7.8\nu3,9.9.9.9,\n'.encode(), protocol.CSV, 10)
    assert r.entities == ["u1", "u2", "u3"] and r.agents == [chrome, None, None]
    assert protocol.parse_records(b"u1,1.2.3.4\n", protocol.CSV, 10).agents is None
    body = {"instances": [{"features": ["u1", "1.2.3.4", chrome]}, {"data": {"features": {"values": ["u2", "::1"]}}}]}
    r = protocol.parse_records(json.dumps(body).encode(), protocol.JSON, 10)
    assert r.agents == [chrome, None] and r.ips == ["1.2.3.4", "::1"]
    lines = b'{"features": ["u1", "1.2.3.4", null]}\n{"features": ["u2", "1.2.3.4", "curl/8.1.2"]}\n'
    assert protocol.parse_records(lines, protocol.JSONLINES, 10).agents == [None, "curl/8.1.2"]


def test_json_numeric_entity_means_its_digits():
    recs = protocol.parse_records(b'{"instances": [{"features": [42, "1.2.3.4"]}]}', protocol.JSON, 10)
    assert recs.entities == ["42"]
    with pytest.raises(RequestError, match="entity must be a string"):
        protocol.parse_records(b'{"instances": [{"features": [true, "1.2.3.4"]}]}', protocol.JSON, 10)


def test_batcher_scores_concurrent_requests_like_single_ones(scorer):
    async def run():
        b = Batcher(scorer)
        opts = protocol.Options(anomaly=True)
        reqs = [
            protocol.Records(ENTITIES[:5], IPS[:5]),
            protocol.Records(["user_1"], ["1.2.3.999"]),  # its error must stay its own
            protocol.Records(ENTITIES[5:], IPS[5:]),
        ]
        return await asyncio.gather(*(b.score(r, opts) for r in reqs), return_exceptions=True)

    first, bad, last = asyncio.run(run())
    assert isinstance(bad, RequestError) and "1.2.3.999" in bad.reason
    dp = scorer.dot_product(ENTITIES, IPS)
    np.testing.assert_allclose([p["dot_product"] for p in first + last], dp, atol=1e-6)
    assert [p["unseen_entity"] for p in first + last] == (scorer.training_counts(ENTITIES) == 0).tolist()


def test_resolve_model_dir_finds_a_nested_model(model_dir, tmp_path):
    (tmp_path / "model").symlink_to(model_dir)
    assert resolve_model_dir(tmp_path) == tmp_path / "model"
    assert resolve_model_dir(model_dir) == model_dir


def test_serve_cli(monkeypatch, caplog, capsys, model_dir, tmp_path):
    """Settings precedence, SageMaker's environment, the warning for a public bind, a bad model path."""
    import uvicorn

    from ipinsights.serve.settings import SETTINGS_ENV, ServeSettings
    from ipinsights_jobs import serve

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    for var in (SETTINGS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # serve() sets these for its workers:
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # restored after the test
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9090")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    cfg = tmp_path / "serve.yml"
    cfg.write_text("max_records: 7\nport: 1234\n")
    with caplog.at_level(logging.WARNING):
        assert (
            serve.main(["--model", str(model_dir), "--host", "0.0.0.0", "--config", str(cfg), "--max-body-bytes=99"])
            == 0
        )
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9090 and calls[-1]["workers"] == 3
    assert "no authentication" in caplog.text
    settings = ServeSettings.from_env()
    assert (settings.max_records, settings.max_body_bytes) == (7, 99)
    assert serve.main(["--model", str(tmp_path / "missing")]) == 2
    assert serve.main(["--model", str(model_dir), "--workers=-1"]) == 2  # a bad setting: a usage error
    assert "error: workers=-1 must be an integer" in capsys.readouterr().err
