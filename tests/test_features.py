"""The fused risk score's features (issue 30): each one against a brute-force computation (Python loops over a
handful of events) on profiles built by the Spark job, loaded whole and joined per batch."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ipinsights.core.asn import load_asn_table
from ipinsights.core.useragent import parse_user_agent
from ipinsights.score.clients import event_devices
from ipinsights.score.features import FEATURES, RESERVED_V4, RESERVED_V6, event_days, event_features
from ipinsights.score.hosting import hosting_rows
from ipinsights.score.scorer import Scorer

DAY0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
TABLE = [  # start, end, AS, country, name
    ("11.0.0.0", "11.0.255.255", 64500, "DE", "ALPHA - Alpha Broadband"),
    ("12.0.0.0", "12.0.255.255", 64500, "DE", "ALPHA - Alpha Broadband"),
    ("50.0.0.0", "50.0.255.255", 64501, "DE", "BETA - Beta Mobile"),
    ("60.0.0.0", "60.0.255.255", 64502, "FR", "GAMMA - Gamma Cloud Servers"),
    ("70.0.0.0", "70.0.255.255", 16509, "US", "AMAZON-02"),  # hosting by its number only
    ("2a00::", "2a00:ff:ffff:ffff:ffff:ffff:ffff:ffff", 64503, "DE", "DELTA - Delta Broadband"),
]
MAX_NETWORKS = 3
_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
AGENTS = {
    "chrome120": _WIN.format(v=120),
    "chrome121": _WIN.format(v=121),  # a version update: the same device, another string
    "safari": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
    "curl": "curl/8.1.2",
}
#: Each entity's clients in training, drawn in turn (None: a login without a user agent; di has none at all).
CLIENTS = {"ana": ["chrome120", "chrome120", "iphone"], "bo": ["safari"], "cy": ["chrome120", None], "di": [None]}


def _history() -> list[tuple[str, str, int, str | None]]:
    """(entity, ip, day, user agent) training events: distinct counts per network (no ties for the profile's
    cut-off)."""
    rng = np.random.default_rng(3)
    out = []
    plans = {
        "ana": [("11.0.1.", 9), ("11.0.2.", 5), ("12.0.7.", 3), ("50.0.3.", 2), ("2a00:0:0:1::", 4)],
        "bo": [("50.0.3.", 6), ("60.0.9.", 1)],
        "cy": [("11.0.1.", 2), ("70.0.0.", 3), ("50.0.4.", 1)],
        "di": [("12.0.7.", 7)],
    }
    for entity, nets in plans.items():
        for prefix, n in nets:
            for _ in range(n):
                host = int(rng.integers(1, 250 if "." in prefix else 999))
                client = CLIENTS[entity][len(out) % len(CLIENTS[entity])]
                out.append((entity, f"{prefix}{host}", int(rng.integers(0, 5)), client and AGENTS[client]))
    return out


def _queries() -> list[tuple[str, str, int | None, str | None]]:
    """Scored events: known and new networks, other families, entities without a profile, no timestamp;
    known, updated, new and missing clients."""
    return [
        ("ana", "11.0.1.77", 7, AGENTS["chrome120"]),
        ("ana", "11.0.9.1", 7, AGENTS["chrome121"]),  # a new /24 of its own AS and /16; its browser updated
        ("ana", "12.0.7.200", 6, AGENTS["iphone"]),
        ("ana", "50.0.3.1", None, AGENTS["chrome120"]),  # seen /24, no timestamp: no recency
        ("ana", "50.0.99.1", 7, AGENTS["curl"]),  # its 4th /24 by count: past the profile's max_networks
        ("ana", "60.0.9.9", 7, None),  # another country, a hosting name
        ("ana", "2a00:0:0:1::5", 7, "-"),
        ("ana", "10.1.2.3", 7, AGENTS["safari"]),  # reserved and outside the table
        ("bo", "11.0.1.5", 9, AGENTS["safari"]),
        ("bo", "70.0.0.9", 9, AGENTS["iphone"]),  # hosting by AS number
        ("cy", "11.0.1.9", 8, AGENTS["chrome121"]),
        ("cy", "99.1.2.3", 8, AGENTS["curl"]),  # routed but outside the table
        ("di", "2001:db8::1", 8, AGENTS["curl"]),  # reserved IPv6; an entity without clients in training
        ("zed", "11.0.1.1", 8, AGENTS["chrome120"]),  # no profile
    ]


def _brute(history, queries, table, dot) -> dict[str, list[float]]:
    """Every feature by loops over the events (``table``: the ip2asn rows; ``dot``: the model's scores)."""

    def asn_of(ip):
        a = ipaddress.ip_address(ip)
        for lo, hi, asn, cc, name in TABLE:
            first, last = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
            if first.version == a.version and first <= a <= last:
                return asn, cc, name
        return None

    def net(ip, v4, v6):
        a = ipaddress.ip_address(ip)
        return ipaddress.ip_network(f"{ip}/{v4 if a.version == 4 else v6}", strict=False)

    def top(entity, v4, v6):
        counts = {}
        for e, ip, _, _ in history:
            if e == entity:
                counts[net(ip, v4, v6)] = counts.get(net(ip, v4, v6), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_NETWORKS])

    entities = sorted({e for e, _, _, _ in history})

    def device(ua):
        return tuple(parse_user_agent(ua)) if ua not in (None, "", "-") else None

    reserved_nets = [ipaddress.ip_network(c) for c in (*RESERVED_V4, *RESERVED_V6)]
    out: dict[str, list[float]] = {name: [] for name in FEATURES}
    for i, (entity, ip, day, ua) in enumerate(queries):
        mine = [(q, d) for e, q, d, _ in history if e == entity]
        clients = [(device(a), a, d) for e, _, d, a in history if e == entity and device(a)]
        dev = device(ua)
        same_dev = [d for c, _, d in clients if dev and c == dev]
        unknown = np.nan if dev is None else 1.0  # no user agent: the client is unknown, not new
        out["device_seen"].append(float(bool(same_dev)) * unknown)
        out["device_new"].append(float(bool(dev and clients and not same_dev)) * unknown)
        out["device_logins"].append(np.log1p(len(same_dev)) * unknown)
        out["device_days"].append((np.log1p(day - max(same_dev)) if same_dev and day is not None else 0.0) * unknown)
        out["agent_seen"].append(float(bool(dev and any(a == ua for _, a, _ in clients))) * unknown)
        out["device_missing"].append(float(dev is None))
        for name, key, value in (("device_share", device, dev), ("agent_share", lambda a: a, ua)):
            users = {e for e, _, _, a in history if dev and device(a) and key(a) == value}
            out[name].append(np.log((len(users) + 1) / (len(entities) + 1)) * unknown)
        found = asn_of(ip)
        known = bool(mine)
        out["dot_product"].append(float(dot[i]) if known else 0.0)
        same_as = [d for q, d in mine if found and asn_of(q) and asn_of(q)[0] == found[0]]
        out["as_seen"].append(float(bool(same_as)))
        out["as_logins"].append(np.log1p(len(same_as)))
        out["as_days"].append(np.log1p(day - max(same_as)) if same_as and day is not None else 0.0)
        sub = net(ip, 24, 48)
        subs = top(entity, 24, 48)
        same_sub = [d for q, d in mine if net(q, 24, 48) == sub] if sub in subs else []
        out["subnet_seen"].append(float(bool(same_sub)))
        out["subnet_logins"].append(np.log1p(len(same_sub)))
        out["subnet_days"].append(np.log1p(day - max(same_sub)) if same_sub and day is not None else 0.0)
        out["network_logins"].append(np.log1p(top(entity, 16, 32).get(net(ip, 16, 32), 0)))
        same_cc = [q for q, _ in mine if found and asn_of(q) and asn_of(q)[1] == found[1]]
        out["country_logins"].append(np.log1p(len(same_cc)))
        out["entity_logins"].append(np.log1p(len(mine)))
        out["entity_networks"].append(np.log1p(len({net(q, 24, 48) for q, _ in mine})))

        def share(key, value):
            users = {e for e, q, _, _ in history if value is not None and key(q) == value}
            return np.log((len(users) + 1) / (len(entities) + 1))

        def as_number(q):
            return (asn_of(q) or (None,))[0]

        out["as_share"].append(share(as_number, found[0] if found else None))
        out["subnet_share"].append(share(lambda q: net(q, 24, 48), sub))
        out["network_share"].append(share(lambda q: net(q, 16, 32), net(ip, 16, 32)))
        words = ("hosting", "cloud", "server", "datacenter", "data center", "vps", "colo")
        hosting = bool(found and (found[0] == 16509 or any(w in found[2].lower() for w in words)))
        out["hosting"].append(float(hosting))
        out["outside_table"].append(float(found is None))
        out["reserved"].append(float(any(ipaddress.ip_address(ip) in n for n in reserved_nets)))
    return out


@pytest.fixture(scope="module")
def built(spark, toy_model, tmp_path_factory):
    """Profiles of :func:`_history` built by the Spark job with an ip2asn table (max_networks 3)."""
    from ipinsights.score.spark_profiles import build_profiles

    root = tmp_path_factory.mktemp("features")
    tsv = root / "table.tsv"
    tsv.write_text("".join(f"{a}\t{b}\t{asn}\t{cc}\t{name}\n" for a, b, asn, cc, name in TABLE))
    history = _history()
    # The ingest's columns: the string and its parsed family, OS and device type.
    rows = [(e, ip, DAY0 + dt.timedelta(days=d, hours=3), a, *_parsed(a)) for e, ip, d, a in history]
    schema = (
        "entity string, ip string, ts timestamp, user_agent string, ua_family string, ua_os string, ua_device string"
    )
    df = spark.createDataFrame(rows, schema)
    header = build_profiles(df, str(toy_model), str(root / "p.profile.safetensors"), str(tsv), MAX_NETWORKS)
    return {"header": header, "table": str(tsv), "history": history, "model": str(toy_model)}


def _parsed(agent: str | None) -> tuple[str | None, str | None, str | None]:
    return (None, None, None) if agent is None else tuple(parse_user_agent(agent))


def _query_table() -> pa.Table:
    """The queries with their user agents only (the features parse them: a CSV, the endpoint)."""
    q = _queries()
    ts = [None if d is None else DAY0 + dt.timedelta(days=d, hours=20) for _, _, d, _ in q]
    return pa.table(
        {
            "entity": [e for e, _, _, _ in q],
            "ip": [ip for _, ip, _, _ in q],
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "user_agent": pa.array([a for _, _, _, a in q], pa.string()),
        }
    )


def _check(got: dict[str, np.ndarray], want: dict[str, list[float]]) -> None:
    for name in FEATURES:
        np.testing.assert_allclose(got[name], want[name], atol=1e-9, err_msg=name)


@pytest.mark.spark
def test_features_equal_a_brute_force_computation(built):
    from ipinsights.score.profile_rows import load_profiles

    header = built["header"]
    assert header.population.entities == 4 and header.population.asn_entities.size > 0
    scorer = Scorer.load(built["model"], profile=header.path, asn_table=built["table"])
    profiles = load_profiles(header.path, built["model"])
    q = _query_table()
    parsed = scorer.parse(q["ip"])
    assert parsed.valid.all()
    dot = scorer.dot_product(q["entity"], q["ip"])
    rows = profiles.index_of(scorer.entity_hashes(q["entity"]))
    days = event_days(q["ts"], q.num_rows)
    assert np.isnan(days[3]) and days[0] == (DAY0.date() - dt.date(1970, 1, 1)).days + 7
    devices = event_devices(q)
    got = event_features(FEATURES, parsed.value, rows, profiles, dot, scorer.asn_table, days, (16509,), devices)
    want = _brute(built["history"], _queries(), TABLE, dot)
    # Days in the brute force count from DAY0, the features from 1970: only differences matter.
    _check(got, want)
    # Each feature distinguishes something here (a test that cannot fail is a defect): none is constant.
    spread = {n: np.nanmax(got[n]) - np.nanmin(got[n]) for n in FEATURES}
    assert all(v > 0 for v in spread.values()), [n for n, v in spread.items() if not v > 0]
    # Products are interactions of two features.
    both = event_features(["as_seen*dot_product"], parsed.value, rows, profiles, dot, scorer.asn_table, days)
    np.testing.assert_allclose(both["as_seen*dot_product"], got["as_seen"] * got["dot_product"])
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        event_features(["nope"], parsed.value, rows, profiles, dot)


@pytest.mark.spark
def test_joined_profile_rows_give_the_same_features(spark, built):
    """A Spark batch brings its entities' profile rows (streamed with the events): the features equal the
    whole profile's."""
    from pyspark.sql import functions as F

    from ipinsights.score.batches import split_joined
    from ipinsights.score.profile_stream import PROFILE
    from ipinsights.score.spark_profiles import to_arrow, with_profile_rows

    header = built["header"]
    scorer = Scorer.load(built["model"], profile=header.path, asn_table=built["table"], profile_rows=False)
    q = _query_table()
    df = spark.createDataFrame(q.to_pandas()).repartition(2)
    both = with_profile_rows(df, header.files).orderBy("entity", F.col(PROFILE).isNull(), "ip")
    batch = to_arrow(both).combine_chunks().to_batches()[0]
    batch, joined = split_joined(scorer, batch)
    assert joined is not None
    profiles, rows = joined
    parsed = scorer.parse(batch.column("ip"))
    dot = scorer.dot_product(batch.column("entity"), batch.column("ip"))
    days = event_days(batch.column("ts"), batch.num_rows)
    devices = event_devices(batch)
    got = event_features(FEATURES, parsed.value, rows, profiles, dot, scorer.asn_table, days, (16509,), devices)
    order = {(e, ip): i for i, (e, ip, _, _) in enumerate(_queries())}
    want_all = _brute(built["history"], _queries(), TABLE, np.zeros(len(order)))
    entities = batch.column("entity").to_pylist()
    pick = [order[pair] for pair in zip(entities, batch.column("ip").to_pylist(), strict=True)]
    want = {k: [v[i] for i in pick] for k, v in want_all.items()}
    want["dot_product"] = [float(d) if e != "zed" else 0.0 for d, e in zip(dot, entities, strict=True)]
    _check(got, want)


def test_hosting_rows_by_name_and_number(tmp_path: Path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("".join(f"{a}\t{b}\t{asn}\t{cc}\t{name}\n" for a, b, asn, cc, name in TABLE))
    table = load_asn_table(str(tsv))
    assert hosting_rows(table).tolist() == [False, False, False, True, False, False]
    assert hosting_rows(table, (16509,)).tolist() == [False, False, False, True, True, False]
