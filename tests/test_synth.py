"""The synthetic login-traffic generator: format, determinism, labels, address plans, Spark and CLI paths."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ipinsights.config import ConfigError
from ipinsights.io import DataFormatError, read_labelled_csv
from ipinsights.ip import parse_ipv4
from ipinsights.synth import (
    ATTACK_KINDS,
    ATTACK_LABELS,
    COMBINED_LOG_RE,
    LOGIN_REQUEST,
    MAX_LINE_BYTES,
    AddressPlan,
    SynthSpec,
    generate_attacks,
    generate_dataset,
    generate_dataset_spark,
    generate_events,
    generate_world,
)

TINY = SynthSpec(users=60, days=10, n_files=2, networks=300, attacks=80, validation_attacks=40, junk_rate=0.01, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _log_lines(paths) -> list[bytes]:
    lines = []
    for path in paths:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert data.endswith(b"\n")
        lines.extend(data[:-1].split(b"\n"))
    return lines


def _parse_all(lines: list[bytes]) -> list:
    """Per line, ``(match, aware datetime)`` if well formed, else None (too long, no match, bad address or time)."""
    matches = [COMBINED_LOG_RE.match(line) if len(line) <= MAX_LINE_BYTES else None for line in lines]
    ips = [m["ip"].decode() if m else "0.0.0.0" for m in matches]
    ip_ok = parse_ipv4(ips).valid  # one vectorized call, not one per line
    out = []
    for m, ok in zip(matches, ip_ok.tolist(), strict=True):
        try:
            out.append((m, dt.datetime.strptime(m["time"].decode(), "%d/%b/%Y:%H:%M:%S %z")) if m and ok else None)
        except ValueError:
            out.append(None)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_dataset(out, TINY)


@pytest.fixture(scope="module")
def in_memory():
    world = generate_world(TINY)
    events = generate_events(world, TINY)
    return world, events, generate_attacks(world, events, TINY)


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    again = generate_dataset(tmp_path / "again", TINY)
    assert _files(tiny.root) == _files(again.root)
    other = generate_dataset(tmp_path / "other", SynthSpec(**{**TINY.__dict__, "seed": 8}))
    assert other.logs[0].read_bytes() != tiny.logs[0].read_bytes()
    assert other.test_labelled.read_bytes() != tiny.test_labelled.read_bytes()


def test_gzip_is_deterministic_and_holds_the_same_lines(tiny, tmp_path):
    spec = SynthSpec(**{**TINY.__dict__, "gzip": True})
    a, b = generate_dataset(tmp_path / "a", spec), generate_dataset(tmp_path / "b", spec)
    assert [p.name for p in a.logs] == ["access-00000.log.gz", "access-00001.log.gz"]
    assert a.logs[0].read_bytes() == b.logs[0].read_bytes()
    assert _log_lines(a.logs) == _log_lines(tiny.logs)


def test_every_line_is_well_formed_or_junk_at_the_configured_rate(tiny):
    manifest = json.loads(tiny.manifest.read_text())
    counts = manifest["counts"]
    lines = _log_lines(tiny.logs)
    parsed = _parse_all(lines)
    n_junk = sum(p is None for p in parsed)
    assert len(lines) == counts["lines"]
    assert n_junk == counts["junk_lines"]
    assert n_junk / len(lines) == pytest.approx(TINY.junk_rate, rel=0.1)
    assert all(counts[f"junk_{kind}"] > 0 for kind in ("truncated", "bad_timestamp", "bad_ip", "binary", "overlong"))
    good = [m for m, _ in filter(None, parsed)]
    logins = [m for m in good if m["request"] == LOGIN_REQUEST.encode() and m["status"] == b"200" and m["user"] != b"-"]
    assert len(logins) == counts["events"] == pq.read_table(tiny.events).num_rows
    # Filtering matters: failed / forbidden logins, anonymous requests, escaped quotes inside a UA.
    statuses = collections.Counter(m["status"] for m in good)
    assert statuses[b"401"] > 0 and statuses[b"403"] > 0
    assert any(m["user"] == b"-" for m in good)
    assert any(b'\\"' in m["ua"] for m in good)
    assert any(b"\xff" in line or len(line) > MAX_LINE_BYTES for line in lines)


def test_at_least_50_events_per_user_heavy_tailed(tiny):
    per_user = pq.read_table(tiny.events).group_by("entity").aggregate([("ip", "count")])["ip_count"].to_numpy()
    assert len(per_user) == TINY.users
    assert per_user.min() >= 50
    assert per_user.max() > 3 * np.median(per_user) or per_user.max() > 600


def test_offsets_vary_and_truth_ts_is_log_time_minus_offset(tiny):
    truth = pq.read_table(tiny.events)
    assert len(set(truth["utc_offset_minutes"].to_pylist())) >= 3
    from_logs = collections.Counter()
    for parsed in _parse_all(_log_lines(tiny.logs)):
        if parsed and parsed[0]["request"] == LOGIN_REQUEST.encode() and parsed[0]["status"] == b"200":
            m, when = parsed
            from_logs[(m["user"].decode(), m["ip"].decode(), int(when.timestamp()))] += 1
    ts_s = (pc.cast(truth["ts"], "int64").to_numpy() // 1_000_000).tolist()
    assert from_logs == collections.Counter(
        zip(truth["entity"].to_pylist(), truth["ip"].to_pylist(), ts_s, strict=True)
    )
    # dt is the UTC day of ts and every event is inside the period.
    days = {str(d.date()) for d in truth["ts"].to_pylist()}
    assert days == set(truth["dt"].to_pylist()) and min(days) == TINY.start_date and len(days) == TINY.days


def test_labelled_files_have_both_classes_and_the_right_labels(tiny):
    for path, n in ((tiny.test_labelled, TINY.attacks), (tiny.validation_labelled, TINY.validation_attacks)):
        table = read_labelled_csv(path)
        kinds = collections.Counter(table["kind"].to_pylist())
        assert set(kinds) == {*ATTACK_KINDS, "normal"}
        assert kinds["normal"] == n and sum(kinds.values()) >= 2 * n - 2
        for kind, label in zip(table["kind"].to_pylist(), table["label"].to_pylist(), strict=True):
            assert label == ATTACK_LABELS.get(kind, 0)


def test_attacks_are_test_day_events_of_trained_users(in_memory):
    _, events, attacks = in_memory
    start = dt.datetime.fromisoformat(TINY.start_date).replace(tzinfo=dt.timezone.utc)
    first_test = start + dt.timedelta(days=TINY.train_days + TINY.validation_days)
    assert min(attacks["ts"].to_pylist()) >= first_test
    trained = set(
        events.filter(pc.less(events["ts"], start + dt.timedelta(days=TINY.train_days)))["entity"].to_pylist()
    )
    assert set(attacks["entity"].to_pylist()) <= trained


def test_attack_addresses_relate_to_the_users_networks_as_their_kind_says(in_memory):
    world, events, attacks = in_memory
    plan = world.plan
    used = collections.defaultdict(set)
    used_asn = collections.defaultdict(set)
    for entity, net in zip(
        events["entity"].to_pylist(), plan.lookup(events["ip_int"].to_numpy()).tolist(), strict=True
    ):
        used[entity].add(net)
        used_asn[entity].add(int(plan.asn[net]))
    country = dict(zip(world.users["entity"].to_pylist(), world.users["country"].to_pylist(), strict=True))
    inside = collections.defaultdict(list)
    for entity, kind, net in zip(
        attacks["entity"].to_pylist(),
        attacks["kind"].to_pylist(),
        plan.lookup(attacks["ip_int"].to_numpy()),
        strict=True,
    ):
        inside[kind].append(net in used[entity])
        if kind == "same_country_other_isp":
            assert plan.country[net] == country[entity] and int(plan.asn[net]) not in used_asn[entity]
    assert all(inside["own_network"]) and inside["own_network"]
    assert np.mean(inside["random_ip"]) < 0.1
    assert not any(inside["popular_isp"])


def test_ip2asn_round_trip_dotted_integer_and_gzip(tmp_path):
    plan = AddressPlan.synthetic(seed=3, networks=200)
    for name, dotted in (("dotted.tsv", True), ("integer.tsv", False)):
        loaded = AddressPlan.from_ip2asn_tsv(plan.to_ip2asn_tsv(tmp_path / name, dotted=dotted))
        for column in ("start", "end", "asn", "country", "kind", "description"):
            assert np.array_equal(getattr(loaded, column), getattr(plan, column)), column
    gz = tmp_path / "plan.tsv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "dotted.tsv").read_bytes()))
    assert np.array_equal(AddressPlan.from_ip2asn_tsv(gz).start, plan.start)


def test_ip2asn_reader_skips_unrouted_and_names_bad_lines(tmp_path):
    good = "# comment\n1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET - Cloudflare, Inc.\n"
    good += "16777472\t16777727\t0\tNone\tNot routed\n\n"
    path = tmp_path / "ok.tsv"
    path.write_text(good)
    plan = AddressPlan.from_ip2asn_tsv(path)
    assert len(plan) == 1 and plan.kind[0] == "hosting" and plan.end[0] == 0x010000FF
    for bad, needle in (
        ("300.0.0.1\t300.0.0.2\t1\tUS\tX\n", "octet above 255"),
        ("1.0.1.0\t1.0.0.0\t1\tUS\tX\n", "before range_start"),
        ("1.0.1.0 only-two\n", "expected 5"),
        ("1.0.1.0\t1.0.1.9\tASx\tUS\tX\n", "AS_number"),
        ("1.0.0.9\t1.0.1.9\t7\tUS\tX\n", "overlaps"),
    ):
        path.write_text(good + bad)
        with pytest.raises(DataFormatError, match=rf"ok\.tsv:5: .*{needle}"):
            AddressPlan.from_ip2asn_tsv(path)


def test_a_user_supplied_plan_drives_the_world(tiny, tmp_path):
    spec = SynthSpec(**{**TINY.__dict__, "address_plan": str(tiny.networks), "attacks": 8, "validation_attacks": 4})
    paths = generate_dataset(tmp_path / "own", spec)
    assert paths.networks.read_bytes() == tiny.networks.read_bytes()
    assert pq.read_table(paths.events).num_rows > 0


def test_inject_attacks_puts_them_in_the_logs_and_the_truth(tmp_path):
    spec = SynthSpec(**{**TINY.__dict__, "inject_attacks": True, "junk_rate": 0.0})
    paths = generate_dataset(tmp_path / "inj", spec)
    truth = pq.read_table(paths.events)
    kinds = collections.Counter(truth["kind"].to_pylist())
    assert kinds["normal"] == json.loads(paths.manifest.read_text())["counts"]["events"]
    assert set(kinds) == {*ATTACK_KINDS, "normal"}
    logins = [
        line for line in _log_lines(paths.logs) if f'"{LOGIN_REQUEST}" 200 '.encode() in line and b" - - [" not in line
    ]
    assert len(logins) == truth.num_rows


def test_spec_validation_names_parameter_and_range():
    with pytest.raises(ConfigError, match="train_days"):
        SynthSpec(days=8, train_days=7, validation_days=1)
    with pytest.raises(ConfigError, match=r"noise_rate=2.*\[0.0, 0.95\]"):
        SynthSpec(noise_rate=2.0)
    with pytest.raises(ConfigError, match="attack_kinds"):
        SynthSpec(attack_kinds=("nope",))


def test_existing_output_is_refused_unless_overwrite(tiny):
    with pytest.raises(FileExistsError):
        generate_dataset(tiny.root, TINY)


@pytest.mark.spark
def test_spark_path_writes_identical_files(spark, tiny, tmp_path):
    paths = generate_dataset_spark(spark, tmp_path / "spark", TINY)
    assert _files(paths.root) == _files(tiny.root)


def test_cli_end_to_end(tmp_path, capsys):
    from ipinsights_jobs import generate

    out = tmp_path / "cli"
    args = ["--out", str(out), "--users=30", "--n_files=1", "--attacks=8", "--validation-attacks=4", "--gzip"]
    assert generate.main(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "manifest.json") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["users"] == 30 and manifest["spec"]["gzip"] is True
    assert (out / "logs" / "access-00000.log.gz").exists()
    assert generate.main(args) == 2  # already there
    assert generate.main([*args, "--overwrite", "--users=0"]) == 2  # out of range
    assert "users=0" in capsys.readouterr().err
