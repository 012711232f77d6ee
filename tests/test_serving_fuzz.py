"""Fuzzing the live endpoint: 10,000+ random bodies and headers, never a 5xx, never a dead worker.

Two generators against one server process:

- a seeded mutation fuzzer (10,000 requests): valid SageMaker requests with random byte flips,
  truncations, duplications and inserted tokens (quotes, brackets, lone surrogates, invalid UTF-8,
  huge numbers...), random headers; cheap to generate, so the time goes into the server, over two
  connections in parallel (a failure prints the exact request and the seed);
- hypothesis (a few hundred structured examples): JSON documents and CSV rows built from the grammar,
  shrunk to a minimal failing request if one fails.
"""

from __future__ import annotations

import json
import random
import string
import threading

import pytest
from servers import Client, ServerProcess, train_toy_model

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MUTATION_REQUESTS = 10_000
HYPOTHESIS_EXAMPLES = 400
ALLOWED = {200, 400, 405, 406, 413, 415}
MAX_RECORDS, MAX_BODY = 20, 2000

CONTENT_TYPES = [
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-jsonlines",
    "TEXT/CSV; charset=UTF-8",
    "application/json; charset=latin-1",
    "text/plain",
    "",
    ";",
    "text/csv;;=",
    'application/json; charset="utf-8"',
    "*/*",
]
ACCEPTS = [
    None,
    None,
    "application/json",
    "application/jsonlines",
    "application/json; verbose=True",
    "*/*",
    "application/jsonlines;verbose=true;q=0.5, application/json;q=0.9",
    "text/html",
    "application/*",
    "application/json;q=0",
    "application/json; verbose=maybe",
    "application/json;q=nan",
    ",,,",
    "",
]
PATHS = ["/invocations"] * 4 + [
    "/invocations?anomaly=true",
    "/invocations?verbose=1&anomaly=0",
    "/invocations?anomaly=perhaps",
    "/invocations?%ff=%00",
    "/ping",
]
ATTRIBUTES = [None, None, "anomaly=true", "verbose=true;anomaly=no", "anomaly=x", "a=b,,=,anomaly"]
TOKENS = [
    b'"',
    b",",
    b"\n",
    b"\r",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\ud800",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"NaN",
    b"1e999",
    b"9" * 5000,
    b"-",
    b".",
    b"256",
    b"01",
    b" ",
    b'"features"',
    b'"data"',
    b'"values"',
    b"null",
    b"\xe2\x80\xae",
    b"[" * 3000,
]
PRINTABLE = string.printable.strip("\r\n\t\x0b\x0c")


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.97:  # most rows valid, so that whole requests often are
        return ".".join(str(rng.randrange(256)) for _ in range(4))
    return rng.choice(["1.2.3", "1.2.3.4.5", "300.1.1.1", "01.2.3.4", "::1", "", " 1.2.3.4", "a.b.c.d", "1..2.3"])


def _valid_body(rng: random.Random, kind: str) -> bytes:
    rows = [
        (rng.choice(["user_1", "user_2", "nobody", 'quote"d', "x,y", ""]), _ip(rng))
        for _ in range(rng.randrange(1, 25))
    ]
    if kind == "csv":
        return "".join(f'"{e.replace(chr(34), 2 * chr(34))}",{ip}\n' for e, ip in rows).encode()
    forms = [lambda e, ip: {"features": [e, ip]}, lambda e, ip: {"data": {"features": {"values": [e, ip]}}}]
    instances = [rng.choice(forms)(e, ip) for e, ip in rows]
    if kind == "json":
        return json.dumps({"instances": instances}).encode()
    return "".join(json.dumps(i) + "\n" for i in instances).encode()


def _mutate(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3, 8])):
        pos = rng.randrange(len(b) + 1)
        op = rng.randrange(5)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            del b[pos : pos + rng.randrange(1, 40)]
        elif op == 2:
            b[pos:pos] = rng.choice(TOKENS)
        elif op == 3:
            b[pos:pos] = b[pos : pos + rng.randrange(1, 200)]
        else:
            b = b[:pos]
    return bytes(b)


def random_request(rng: random.Random) -> tuple[str, dict[str, str], bytes]:
    """One fuzzed request: ``(path, headers, body)``."""
    kind = rng.choice(["csv", "json", "jsonl"])
    body = _mutate(rng, _valid_body(rng, kind)) if rng.random() < 0.9 else rng.randbytes(rng.randrange(300))
    matching = {"csv": "text/csv", "json": "application/json", "jsonl": "application/jsonlines"}[kind]
    r = rng.random()
    ctype = matching if r < 0.6 else rng.choice(CONTENT_TYPES) if r < 0.9 else "".join(rng.choices(PRINTABLE, k=20))
    headers = {"Content-Type": ctype}
    r = rng.random()
    accept = (
        rng.choice(ACCEPTS[:7])
        if r < 0.7
        else rng.choice(ACCEPTS)
        if r < 0.95
        else "".join(rng.choices(PRINTABLE, k=30))
    )
    if accept is not None:
        headers["Accept"] = accept
    if (attrs := rng.choice(ATTRIBUTES)) is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attrs
    return rng.choice(PATHS), headers, body


def check_response(status: int, rh: dict[str, str], data: bytes) -> None:
    """What every answer must be: an allowed status; 200 -> parseable predictions; 4xx -> a JSON reason."""
    assert status in ALLOWED, (status, data[:300])
    if status == 200:
        text = data.decode()
        if "jsonlines" in rh["content-type"]:
            assert all("dot_product" in json.loads(line) for line in text.splitlines())
        else:
            assert all("dot_product" in p for p in json.loads(text)["predictions"])
    elif status != 405:
        assert json.loads(data)["error"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = train_toy_model(tmp_path_factory.mktemp("fuzz") / "model")
    extra = (f"--max_records={MAX_RECORDS}", f"--max_body_bytes={MAX_BODY}")
    with ServerProcess(model, workers=2, extra_args=extra) as srv:
        yield srv


def _assert_healthy(server, pids: set[int]) -> None:
    assert server.ping()
    assert server.worker_pids() == pids, "a worker died and was replaced"
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mutation_fuzz_never_5xx(server):
    pids = server.worker_pids()
    assert len(pids) == 2
    seen: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def run(seed: int, n: int) -> None:
        rng, client = random.Random(seed), Client(server.port)
        try:
            for _ in range(n):
                path, headers, body = random_request(rng)
                status, rh, data = client.request("POST", path, body, headers)
                with lock:
                    seen[status] = seen.get(status, 0) + 1
                try:
                    check_response(status, rh, data)
                except (AssertionError, ValueError, KeyError, TypeError) as exc:
                    with lock:
                        failures.append(
                            f"seed {seed}: POST {path} {headers} {body[:200]!r} -> {status} {data[:200]!r}: {exc!r}"
                        )
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(seed, MUTATION_REQUESTS // 2)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(280)
    assert not failures, "\n".join(failures[:5])
    assert sum(seen.values()) == MUTATION_REQUESTS
    # The fuzzer must reach scoring and every kind of refusal, or it tests little.
    assert seen.get(200, 0) > 500 and {400, 406, 413, 415} <= set(seen), seen
    _assert_healthy(server, pids)


header_text = st.text(alphabet=PRINTABLE, max_size=40)
octet = st.integers(0, 300).map(str) | st.sampled_from(["01", "", "-1", "1e2", " 1", "٣"])
ips = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.lists(octet, min_size=1, max_size=6).map(".".join),
    st.text(max_size=20),
)
entities = st.one_of(st.sampled_from(["user_1", "nobody", ""]), st.text(max_size=20), st.integers(-5, 10**30))
values = st.one_of(st.tuples(entities, ips).map(list), st.lists(st.one_of(entities, ips, st.none()), max_size=3))
junk = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
instances = st.one_of(
    values.map(lambda v: {"features": v}),
    values.map(lambda v: {"data": {"features": {"values": v}}}),
    st.dictionaries(st.sampled_from(["features", "data", "values"]), junk, max_size=2),
)
bodies = st.one_of(
    st.lists(st.tuples(entities, ips).map(lambda r: f"{r[0]},{r[1]}"), max_size=25).map(
        lambda r: "\n".join(r).encode()
    ),
    st.lists(instances, max_size=25).map(lambda xs: json.dumps({"instances": xs}).encode()),
    st.lists(instances, max_size=25).map(lambda xs: "\n".join(json.dumps(x) for x in xs).encode()),
    junk.map(lambda x: json.dumps(x).encode()),
    st.binary(max_size=300),
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hypothesis_fuzz_never_5xx(server):
    pids = server.worker_pids()
    client = Client(server.port)

    @settings(
        max_examples=HYPOTHESIS_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        path=st.sampled_from(PATHS),
        content_type=st.sampled_from(CONTENT_TYPES) | header_text,
        accept=st.sampled_from(ACCEPTS) | header_text,
        body=bodies,
    )
    def one(path: str, content_type: str, accept: str | None, body: bytes) -> None:
        headers = {"Content-Type": content_type} | ({"Accept": accept} if accept is not None else {})
        check_response(*client.request("POST", path, body, headers))

    try:
        one()
    finally:
        client.close()
    _assert_healthy(server, pids)
