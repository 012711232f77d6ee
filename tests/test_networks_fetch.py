"""``ipinsights networks fetch`` and ``model.asn_table: auto`` (issue 30, item 2), against a real HTTP server on
loopback serving tables built here: versions kept by checksum and date, corrupt downloads refused with the
cache unchanged, and models that find their own table after newer ones arrive or the cache moves. No Spark."""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import hashlib
import io
import json
import logging
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from ipinsights.core.asn import load_asn_table
from ipinsights.core.config import ModelOptions
from ipinsights.core.model import NetworkTableError
from ipinsights.score.scorer import Scorer
from ipinsights.storage.modelfile import load_model
from ipinsights.storage.network_cache import CACHE_ENV, NetworkCache, resolve_asn_table
from ipinsights.train.trainer import build_model, warm_start_from
from ipinsights_jobs.cli import main as cli

ROWS_V1 = [
    ("0.0.0.0", "0.255.255.255", 0, "None", "Not routed"),
    ("10.0.0.0", "10.0.255.255", 64500, "DE", "ALPHA-NET - Alpha Telecom"),
    ("10.1.0.0", "10.1.255.255", 64501, "DE", "BETA - Beta Mobile"),
    ("20.0.0.0", "20.0.255.255", 64502, "FR", "GAMMA - Gamma Hosting"),
    ("2a00::", "2a00:ff:ffff:ffff:ffff:ffff:ffff:ffff", 64500, "DE", "ALPHA-NET - Alpha Telecom"),
]
# A day later Beta's range moved to Gamma: another table (another fingerprint).
ROWS_V2 = [*ROWS_V1[:2], ("10.1.0.0", "10.1.255.255", 64502, "FR", "GAMMA - Gamma Hosting"), *ROWS_V1[3:]]
URL = "/data/ip2asn-combined.tsv.gz"
MAXMIND = "/app/geoip_download?edition_id={edition}&license_key={license_key}&suffix={suffix}"
KEY = "s3cr3t-key"


def table_gz(rows: list[tuple[str, str, int, str, str]]) -> bytes:
    return gzip.compress("".join(f"{a}\t{b}\t{n}\t{cc}\t{d}\n" for a, b, n, cc, d in rows).encode(), mtime=0)


def http_date(days_ago: float) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days_ago), usegmt=True)


class Loopback:
    """A real HTTP server on 127.0.0.1 in a thread; ``routes[path_and_query] = (body, headers)``. A header
    ``Content-Length`` given there is sent as is (to announce more than the body: a cut download)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if "license_key=" in self.path and f"license_key={KEY}" not in self.path:
                    self.send_error(401)  # MaxMind's answer to a wrong key
                    return
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, headers = routes[self.path]
                self.send_response(200)
                headers = {"Content-Length": str(len(body)), **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Loopback]:
    s = Loopback()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The default networks cache of this test (and a private user cache: nothing outside tmp_path is used)."""
    root = tmp_path / "networks"
    monkeypatch.setenv(CACHE_ENV, str(root))
    monkeypatch.setenv("IPINSIGHTS_CACHE_DIR", str(tmp_path / "user-cache"))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fetch(server: Loopback, *extra: str) -> tuple[int, list[dict]]:
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(["networks", "fetch", "--url", server.url + URL, *extra])
    return status, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def test_fetch_keeps_each_version_once_by_checksum_and_date(server, cache, capsys):
    server.routes[URL] = (table_gz(ROWS_V1), {"Last-Modified": http_date(2)})
    status, [first] = fetch(server)
    assert status == 0 and first["added"] and first["source"] == "ip2asn"
    index = json.loads((cache / "index.json").read_text())
    [v1] = index["versions"]
    body = table_gz(ROWS_V1)
    assert v1["sha256"] == hashlib.sha256(body).hexdigest() and v1["bytes"] == len(body)
    assert v1["id"] == first["id"] and v1["id"].endswith(v1["sha256"][:12]) and v1["ranges"] == 4  # unrouted out
    assert v1["last_modified"] and v1["fetched_at"] > v1["last_modified"]
    assert (cache / v1["id"] / "ip2asn-combined.tsv.gz").read_bytes() == body
    assert v1["fingerprint"] == load_asn_table(first["path"]).fingerprint

    # The same content again: nothing is added or rewritten.
    before = snapshot(cache)
    status, [again] = fetch(server)
    assert status == 0 and not again["added"] and again["id"] == v1["id"]
    assert snapshot(cache) == before

    # A newer table: both kept, the newest is what auto picks.
    server.routes[URL] = (table_gz(ROWS_V2), {"Last-Modified": http_date(1)})
    status, [second] = fetch(server)
    assert status == 0 and second["added"] and second["id"] != v1["id"]
    versions = NetworkCache(cache).versions()
    assert [v.id for v in versions] == [v1["id"], second["id"]]
    assert versions[0].fingerprint != versions[1].fingerprint
    opts, record = resolve_asn_table(ModelOptions(asn_table="auto"))
    assert opts.asn_table == second["path"] and record["asn_table_version"]["id"] == second["id"]

    capsys.readouterr()
    assert cli(["networks", "list"]) == 0
    listing = capsys.readouterr().out
    assert v1["id"] in listing and second["id"] in listing and str(cache) in listing


@pytest.mark.parametrize(
    "kind",
    ["truncated gzip", "bad gzip checksum", "not gzip", "gzip but no table", "cut short", "missing"],
)
def test_a_corrupt_download_is_refused_and_the_cache_is_unchanged(server, cache, capsys, kind):
    server.routes[URL] = (table_gz(ROWS_V1), {})
    assert fetch(server)[0] == 0
    before = snapshot(cache)
    good = table_gz(ROWS_V2)
    bad: dict[str, tuple[bytes, dict[str, str]]] = {
        "truncated gzip": (good[: len(good) - 20], {}),  # served whole: only gzip's own check sees it
        "bad gzip checksum": (good[:-8] + bytes(8), {}),  # the CRC32 and length trailer zeroed
        "not gzip": (b"<html>rate limited</html>", {}),
        "gzip but no table": (gzip.compress(b"<html>rate limited</html>\n"), {}),
        "cut short": (good[:40], {"Content-Length": str(len(good))}),
    }
    if kind == "missing":
        del server.routes[URL]
    else:
        server.routes[URL] = bad[kind]
    capsys.readouterr()
    status, printed = fetch(server)
    err = capsys.readouterr().err
    assert status == 1 and printed == []
    expected = {
        "truncated gzip": "not a readable ip2asn table",
        "bad gzip checksum": "not a readable ip2asn table",
        "not gzip": "not gzip data",
        "gzip but no table": "expected 5 tab-separated fields",
        "cut short": "cut short",
        "missing": "HTTP 404",
    }[kind]
    assert expected in err, err
    assert snapshot(cache) == before


def geolite2_zip(edition: str, date: str) -> bytes:
    """A small GeoLite2 CSV zip as MaxMind lays it out."""
    folder = f"{edition}_{date}"
    if edition == "GeoLite2-ASN-CSV":
        head = "network,autonomous_system_number,autonomous_system_organization\n"
        files = {
            "GeoLite2-ASN-Blocks-IPv4.csv": head + '10.0.0.0/16,64500,"Alpha Telecom"\n',
            "GeoLite2-ASN-Blocks-IPv6.csv": head + '2a00::/24,64500,"Alpha Telecom"\n',
        }
    else:
        head = (
            "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,"
            "is_anonymous_proxy,is_satellite_provider,is_anycast\n"
        )
        files = {
            "GeoLite2-Country-Blocks-IPv4.csv": head + "10.0.0.0/16,2921044,2921044,,0,0,\n",
            "GeoLite2-Country-Blocks-IPv6.csv": head + "2a00::/24,2921044,2921044,,0,0,\n",
            "GeoLite2-Country-Locations-en.csv": "geoname_id,locale_code,continent_code,country_iso_code\n"
            "2921044,en,EU,DE\n",
        }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{folder}/COPYRIGHT.txt", "test data")
        for name, text in files.items():
            z.writestr(f"{folder}/{name}", text)
    return out.getvalue()


def serve_geolite2(server: Loopback, edition: str, body: bytes, published: str | None = None) -> None:
    def path(suffix: str) -> str:
        return MAXMIND.format(edition=edition, license_key=KEY, suffix=suffix)

    name = f"{edition}_20240102.zip"
    server.routes[path("zip")] = (body, {"Last-Modified": http_date(3)})
    server.routes[path("zip.sha256")] = (f"{published or hashlib.sha256(body).hexdigest()}  {name}\n".encode(), {})


def test_geolite2_with_a_license_key_is_checked_against_the_published_sha256(server, cache, capsys, monkeypatch):
    server.routes[URL] = (table_gz(ROWS_V1), {})
    zips = {e: geolite2_zip(e, "20240102") for e in ("GeoLite2-ASN-CSV", "GeoLite2-Country-CSV")}
    for edition, body in zips.items():
        serve_geolite2(server, edition, body)
    monkeypatch.setenv("MAXMIND_LICENSE_KEY", KEY)
    status, printed = fetch(server, "--maxmind-url", server.url + MAXMIND)
    assert status == 0 and [p["source"] for p in printed] == ["ip2asn", *zips] and all(p["added"] for p in printed)
    versions = {v.source: v for v in NetworkCache(cache).versions()}
    for edition, body in zips.items():
        assert Path(NetworkCache(cache).path(versions[edition])).read_bytes() == body
        assert versions[edition].file == f"{edition}_20240102.zip"
    assert KEY not in (cache / "index.json").read_text()  # the key is blanked out of what is kept

    # Unchanged on MaxMind's side: the published checksum is in the cache, nothing is downloaded again.
    before = snapshot(cache)
    status, printed = fetch(server, "--maxmind-url", server.url + MAXMIND)
    assert status == 0 and not any(p["added"] for p in printed) and snapshot(cache) == before

    # A new release whose download does not match its published sha256 is refused, the cache unchanged.
    newer = geolite2_zip("GeoLite2-ASN-CSV", "20240109")
    serve_geolite2(server, "GeoLite2-ASN-CSV", newer, published=hashlib.sha256(newer + b"x").hexdigest())
    capsys.readouterr()
    status, _ = fetch(server, "--maxmind-url", server.url + MAXMIND, "--no-ip2asn")
    err = capsys.readouterr().err
    assert status == 1 and "checksum mismatch" in err and KEY not in err
    assert snapshot(cache) == before
    # So is a zip that matches its checksum but is not a GeoLite2 ASN zip, and a wrong key says so.
    serve_geolite2(server, "GeoLite2-ASN-CSV", zips["GeoLite2-Country-CSV"])
    status, _ = fetch(server, "--maxmind-url", server.url + MAXMIND, "--no-ip2asn")
    assert status == 1 and "Blocks-IPv4.csv starts" in capsys.readouterr().err
    status, _ = fetch(server, "--maxmind-url", server.url + MAXMIND, "--maxmind-license-key", "wrong")
    assert status == 1 and "license key" in capsys.readouterr().err
    assert snapshot(cache) == before


def _train(tmp_path: Path, name: str, *extra: str) -> Path:
    """A tiny model trained by ``ipinsights train`` (the single-machine trainer) with ``model.asn_table=auto``."""
    rng = np.random.default_rng(0)
    csv = tmp_path / "train.csv"
    if not csv.exists():
        lines = [f"u{e},10.{e % 2}.{rng.integers(256)}.{rng.integers(256)}" for e in range(40) for _ in range(10)]
        csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / name
    args = ["--epochs=1", "--vector_dim=8", "--num_entity_vectors=64", "--mini_batch_size=100"]
    small = ["--model.ip_hash_buckets=64", "--model.ipv6_hash_buckets=64", "--model.asn_hash_buckets=64"]
    run = ["--train.num_threads=1", "--train.progress_bar=off", "--model.asn_table=auto"]
    assert cli(["train", "--train", str(csv), "--output", str(out), *args, *small, *run, *extra]) == 0
    return out


def test_auto_trains_with_the_newest_table_and_an_old_model_keeps_its_own(server, cache, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ipinsights")
    # No table yet: trained on prefixes alone, with a warning naming the command.
    bare = _train(tmp_path, "bare")
    assert "ipinsights networks fetch" in caplog.text and "holds no ip2asn table" in caplog.text
    assert load_model(bare).manifest["asn_table_fingerprint"] is None

    server.routes[URL] = (table_gz(ROWS_V1), {"Last-Modified": http_date(2)})
    assert fetch(server)[0] == 0
    caplog.clear()
    old = _train(tmp_path, "old")
    assert "holds no ip2asn table" not in caplog.text and "days old" not in caplog.text
    v1 = NetworkCache(cache).newest()
    assert v1 is not None
    manifest = load_model(old).manifest
    assert manifest["asn_table_fingerprint"] == v1.fingerprint
    assert manifest["model_options"]["asn_table"] == NetworkCache(cache).path(v1)
    assert manifest["training"]["asn_table_version"]["id"] == v1.id

    # A newer table: new models train with it.
    server.routes[URL] = (table_gz(ROWS_V2), {"Last-Modified": http_date(1)})
    assert fetch(server)[0] == 0
    caplog.clear()
    new = _train(tmp_path, "new")
    v2 = NetworkCache(cache).newest()
    assert v2 is not None and v2.id != v1.id
    assert load_model(new).manifest["asn_table_fingerprint"] == v2.fingerprint

    # Yesterday's model warm-starts a run with today's table (the table's location is no part of the hash
    # space), but not one without a table.
    today = load_model(new)
    fresh = build_model(today.hyperparameters, today.options, seed=1)
    warm_start_from(fresh, old)
    assert torch.equal(fresh.ip_table, load_model(old).model.ip_table)
    with pytest.raises(ValueError, match="shape or hash space differs"):
        warm_start_from(build_model(today.hyperparameters, replace(today.options, asn_table=None), seed=1), old)

    # The older model still scores with its own table, here and after the cache moves elsewhere.
    ips = ["10.1.2.3", "10.0.9.9", "2a00::1", "99.1.1.1"]
    expected = Scorer.load(old).anomaly_score(["u1"] * 4, ips)
    assert Scorer.load(old).asn_table.fingerprint == v1.fingerprint
    moved = tmp_path / "moved-networks"
    shutil.move(cache, moved)
    with pytest.raises(NetworkTableError, match="networks cache holds no table with that fingerprint"):
        Scorer.load(old)
    monkeypatch.setenv(CACHE_ENV, str(moved))
    caplog.clear()
    scorer = Scorer.load(old)
    assert scorer.asn_table.fingerprint == v1.fingerprint and "networks cache's table" in caplog.text
    np.testing.assert_array_equal(scorer.anomaly_score(["u1"] * 4, ips), expected)
    assert Scorer.load(new).asn_table.fingerprint == v2.fingerprint
    # asn_table: auto where a model is loaded means "its own table, from the cache".
    assert load_model(old, asn_table="auto").asn_table.fingerprint == v1.fingerprint


def test_auto_warns_when_the_newest_table_is_too_old(server, cache, caplog):
    server.routes[URL] = (table_gz(ROWS_V1), {"Last-Modified": http_date(45)})
    assert fetch(server)[0] == 0
    caplog.set_level(logging.WARNING, logger="ipinsights")
    opts, _ = resolve_asn_table(ModelOptions(asn_table="auto", asn_table_max_age_days=30))
    assert opts.asn_table and "is 45 days old (model.asn_table_max_age_days=30)" in caplog.text
    assert "ipinsights networks fetch" in caplog.text
    caplog.clear()
    resolve_asn_table(ModelOptions(asn_table="auto", asn_table_max_age_days=60))
    resolve_asn_table(ModelOptions(asn_table="auto", asn_table_max_age_days=0))  # 0: never
    assert caplog.text == ""
    # A path is left as it is, and nothing is recorded.
    assert resolve_asn_table(ModelOptions(asn_table="t.tsv")) == (ModelOptions(asn_table="t.tsv"), {})
