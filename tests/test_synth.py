"""The synthetic login-traffic generator: format, determinism, labels, address plans, IPv6, Spark and CLI paths."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import ipaddress
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ipinsights.core.config import ConfigError
from ipinsights.core.errors import DataFormatError
from ipinsights.core.ip import parse_ipv4
from ipinsights.storage.events import day_range
from ipinsights.storage.sagemaker_csv import read_labelled_csv
from ipinsights.synth import (
    ATTACK_KINDS,
    ATTACK_LABELS,
    COMBINED_LOG_RE,
    IPV6_ATTACK_KINDS,
    LOGIN_REQUEST,
    MAX_LINE_BYTES,
    AddressPlan,
    SynthSpec,
    generate_attacks,
    generate_dataset,
    generate_dataset_spark,
    generate_events,
    generate_world,
    ipv6_to_str,
    read_spec,
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


def _is_ipv6(text: str) -> bool:
    try:
        return ":" in text and "%" not in text and ipaddress.IPv6Address(text) is not None
    except ValueError:
        return False


def _parse_all(lines: list[bytes]) -> list:
    """Per line, ``(match, aware datetime)`` if well formed, else None (too long, no match, bad address or time)."""
    matches = [COMBINED_LOG_RE.match(line) if len(line) <= MAX_LINE_BYTES else None for line in lines]
    ips = [m["ip"].decode() if m else "0.0.0.0" for m in matches]
    ip_ok = parse_ipv4(ips).valid | np.array([_is_ipv6(ip) for ip in ips], bool)  # IPv4 vectorized
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


def _v4(table):
    return table.filter(pc.equal(table["ip_version"], 4))


def test_attack_addresses_relate_to_the_users_networks_as_their_kind_says(in_memory):
    world, events, attacks = in_memory
    plan = world.plan
    used = collections.defaultdict(set)
    used_asn = collections.defaultdict(set)
    events = _v4(events)
    for entity, net in zip(
        events["entity"].to_pylist(), plan.lookup(events["ip_int"].to_numpy()).tolist(), strict=True
    ):
        used[entity].add(net)
        used_asn[entity].add(int(plan.asn[net]))
    country = dict(zip(world.users["entity"].to_pylist(), world.users["country"].to_pylist(), strict=True))
    home = dict(zip(world.users["entity"].to_pylist(), world.users["home_net"].to_pylist(), strict=True))
    inside = collections.defaultdict(list)
    attacks = _v4(attacks)
    assert set(attacks["kind"].to_pylist()) == set(ATTACK_KINDS) - set(IPV6_ATTACK_KINDS)
    for entity, kind, net in zip(
        attacks["entity"].to_pylist(),
        attacks["kind"].to_pylist(),
        plan.lookup(attacks["ip_int"].to_numpy()),
        strict=True,
    ):
        inside[kind].append(net in used[entity])
        if kind == "same_country_other_isp":
            assert plan.country[net] == country[entity] and int(plan.asn[net]) not in used_asn[entity]
        if kind == "hosting_provider":
            assert plan.kind[net] == "hosting" and int(plan.asn[net]) not in used_asn[entity]
        if kind == "own_isp_other_prefix":  # a range of the home ISP that the user never used
            assert plan.asn[net] == plan.asn[home[entity]] and net not in used[entity]
    assert all(inside["own_network"]) and inside["own_network"]
    assert inside["own_isp_other_prefix"] and inside["hosting_provider"]
    assert np.mean(inside["random_ip"]) < 0.1
    assert not any(inside["popular_isp"])


def test_a_scattered_plan_spreads_isps_over_the_address_space_and_renumbers_homes():
    plan = AddressPlan.synthetic(seed=3, networks=1500, shape="scattered")
    _, inverse, count = np.unique(plan.asn, return_inverse=True, return_counts=True)
    assert count.max() >= 20 and np.median(count) <= 3  # a heavy tail: a few ISPs with tens of prefixes
    big = inverse == np.argmax(count)
    assert len(set((plan.start[big] >> 24).tolist())) >= 10  # its prefixes share no /8 to speak of
    lengths = 32 - np.log2(plan.size).astype(int)
    assert lengths.min() >= 14 and lengths.max() <= 24
    # Before issue 19's default, the same plan as ever; blocks keep countries together.
    blocks = AddressPlan.synthetic(seed=3, networks=1500, shape="blocks")
    assert np.array_equal(blocks.start, AddressPlan.synthetic(seed=3, networks=1500).start)
    # Renumbering moves a home to another range of its ISP, from one day on.
    spec = SynthSpec(users=400, n_files=1, networks=1500, seed=3, renumber_rate=1.0)
    world = generate_world(spec)
    users = world.users
    moved = users["renumber_day"].to_numpy() >= 0
    assert moved.mean() > 0.5
    home, new = users["home_net"].to_numpy()[moved], users["renumber_net"].to_numpy()[moved]
    assert np.all(world.plan.asn[home] == world.plan.asn[new]) and np.all(home != new)
    events = generate_events(world, spec)
    nets = world.plan.lookup(pc.fill_null(events["ip_int"], 0).to_numpy())
    assert np.isin(new, nets).mean() > 0.9  # the new ranges are logged from


def test_ip2asn_round_trip_dotted_integer_and_gzip(tmp_path):
    plan = AddressPlan.synthetic(seed=3, networks=200)
    for name, dotted in (("dotted.tsv", True), ("integer.tsv", False)):
        loaded = AddressPlan.from_ip2asn_tsv(plan.to_ip2asn_tsv(tmp_path / name, dotted=dotted), seed=3)
        for column in ("start", "end", "asn", "country", "kind", "description", "v6_start", "v6_len"):
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
    assert paths.networks_v6.read_bytes() == tiny.networks_v6.read_bytes()  # IPv6 derived from rows and seed
    assert pq.read_table(paths.events).num_rows > 0


def test_inject_attacks_puts_them_in_the_logs_and_the_truth(tmp_path):
    """The test days' attacks and the spraying source go into the logs; the validation days (what the
    scoring job calibrates on) stay normal traffic."""
    spec = SynthSpec(**{**TINY.__dict__, "inject_attacks": True, "junk_rate": 0.0, "spraying_accounts": 12})
    paths = generate_dataset(tmp_path / "inj", spec)
    truth = pq.read_table(paths.events)
    kinds = collections.Counter(truth["kind"].to_pylist())
    assert kinds["normal"] == json.loads(paths.manifest.read_text())["counts"]["events"]
    assert set(kinds) == {*ATTACK_KINDS, "spraying", "normal"} and kinds["spraying"] == 12
    test_days = set(day_range(*spec.split_dates("test")))
    injected = truth.filter(pc.not_equal(truth["kind"], "normal"))
    assert set(injected["dt"].to_pylist()) <= test_days
    spray = truth.filter(pc.equal(truth["kind"], "spraying"))
    assert len(set(spray["ip"].to_pylist())) == 1 and len(set(spray["entity"].to_pylist())) == 12
    ts = pc.cast(spray["ts"], pa.int64()).to_numpy()
    assert ts.max() - ts.min() < 45 * 60 * 1_000_000 and spray["dt"][0].as_py() == spec.split_dates("test")[0]
    labelled = paths.test_labelled.read_text()
    assert labelled.count(",1,spraying\n") == 12
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
    with pytest.raises(ConfigError, match=r"ipv6_share=1.5.*\[0.0, 1.0\]"):
        SynthSpec(ipv6_share=1.5)


def test_existing_output_is_refused_unless_overwrite(tiny):
    with pytest.raises(FileExistsError):
        generate_dataset(tiny.root, TINY)


@pytest.mark.spark
def test_spark_path_writes_identical_files(spark, tiny, tmp_path):
    paths = generate_dataset_spark(spark, tmp_path / "spark", TINY)
    assert _files(paths.root) == _files(tiny.root)


def test_spec_read_back_and_split_dates(tiny):
    """The pipeline's day windows: the manifest's spec, and each split's first and last UTC day."""
    spec = read_spec(tiny.root)
    assert spec == TINY
    dates = {split: spec.split_dates(split) for split in ("train", "validation", "test")}
    assert dates == {
        "train": ("2024-01-01", "2024-01-07"),
        "validation": ("2024-01-08", "2024-01-08"),
        "test": ("2024-01-09", "2024-01-10"),
    }
    with pytest.raises(ValueError, match="no days"):
        SynthSpec(users=60, days=10, validation_days=0).split_dates("validation")


def test_cli_end_to_end(tmp_path, capsys):
    from ipinsights_jobs import generate

    out = tmp_path / "cli"
    args = ["--output", str(out), "--users=30", "--n_files=1", "--attacks=8", "--validation-attacks=4", "--gzip"]
    assert generate.main(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "manifest.json") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["users"] == 30 and manifest["spec"]["gzip"] is True
    assert (out / "logs" / "access-00000.log.gz").exists()
    assert generate.main(args) == 2  # already there
    assert generate.main([*args, "--overwrite", "--users=0"]) == 2  # out of range
    assert "users=0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# IPv6
# ---------------------------------------------------------------------------------------------


def _halves(addresses: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([a >> 64 for a in addresses], np.uint64),
        np.array([a & (2**64 - 1) for a in addresses], np.uint64),
    )


def test_ipv6_text_is_rfc5952_as_ipaddress_writes_it():
    edge = [
        "::",
        "::1",
        "1::",
        "2001:db8::1",
        "2001:db8:0:1:1:1:1:1",  # a single zero group is not compressed
        "1:2:3:4:5:6:7:0",
        "0:2:3:4:5:6:7:8",
        "1:2:3:4:5:6::",
        "::3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8",
        # equal runs: the first; else the longest
        "2001:0:0:1::1",
        "2001:db8::1:0:0:1",
        "1::2:0:0:3:4",
        "1:0:0:2::3",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "2a01:4f8:1c1c:abcd::1",
        "fe80::a:0:0:0",
    ]
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 65536, size=(3000, 8))
    groups[rng.random((3000, 8)) < 0.45] = 0  # plenty of zero runs, ties included
    randoms = [sum(int(g) << (16 * (7 - i)) for i, g in enumerate(row)) for row in groups]
    addresses = [int(ipaddress.IPv6Address(a)) for a in edge] + randoms
    # IPv4-mapped addresses have a dotted-quad form that differs across Python versions; the generator makes none.
    addresses = [a for a in addresses if a >> 32 != 0xFFFF]
    text = ipv6_to_str(*_halves(addresses)).to_pylist()
    assert text == [str(ipaddress.IPv6Address(a)) for a in addresses]
    assert text[: len(edge)] == edge
    assert ipv6_to_str(np.array([], np.uint64), np.array([], np.uint64)).to_pylist() == []


def test_ipv6_allocations_are_distinct_global_unicast_and_grouped_by_country(tmp_path):
    plan = AddressPlan.synthetic(seed=3, networks=400)
    prefixes = [ipaddress.IPv6Network(p) for p in plan.v6_prefix_text().to_pylist()]
    reserved = [ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")]
    assert all(p.subnet_of(ipaddress.IPv6Network("2000::/3")) for p in prefixes)
    assert not any(p.overlaps(r) for p in prefixes for r in reserved)
    ordered = sorted(prefixes)
    assert all(a.broadcast_address < b.network_address for a, b in itertools.pairwise(ordered))
    bounds = {"broadband": (28, 32), "mobile": (28, 32), "hosting": (32, 40), "business": (40, 48)}
    assert all(bounds[k][0] <= n <= bounds[k][1] for k, n in zip(plan.kind, plan.v6_len.tolist(), strict=True))
    # Each country is one stretch of the IPv6 order, inside its registry's /12 (as in IPv4, neighbours share it).
    countries = plan.country[np.argsort(plan.v6_start)].tolist()
    assert sum(a != b for a, b in itertools.pairwise(countries)) == len(set(countries)) - 1
    us = [p for p, c in zip(prefixes, plan.country, strict=True) if c == "US"]
    assert all(p.subnet_of(ipaddress.IPv6Network("2600::/12")) for p in us)
    # Lookups and the ip2asn-v6 file agree with the prefixes.
    assert np.array_equal(plan.lookup_v6(plan.v6_start), np.arange(len(plan)))
    assert np.array_equal(plan.lookup_v6(plan.v6_end), np.arange(len(plan)))
    assert plan.lookup_v6(np.array([0, int(plan.v6_start.min()) - 1]))[0] == -1
    rows = [line.split("\t") for line in plan.to_ip2asn_v6_tsv(tmp_path / "v6.tsv").read_text().splitlines()]
    assert [ipaddress.IPv6Address(r[0]) for r in rows] == [p.network_address for p in ordered]
    assert [ipaddress.IPv6Address(r[1]) for r in rows] == [p.broadcast_address for p in ordered]
    # The same seed gives the same prefixes; another seed others.
    assert np.array_equal(AddressPlan.synthetic(seed=3, networks=400).v6_start, plan.v6_start)
    assert not np.array_equal(AddressPlan.synthetic(seed=4, networks=400).v6_start[:50], plan.v6_start[:50])


def test_ipv6_shares_are_near_the_spec():
    spec = SynthSpec(users=4000, n_files=2, networks=300, seed=3)
    users = generate_world(spec).users
    assert np.mean(users["home_v6"].to_numpy() >= 0) == pytest.approx(spec.ipv6_rate, abs=0.03)
    assert np.mean(users["work_v6"].to_numpy() >= 0) == pytest.approx(spec.ipv6_work_rate, abs=0.03)
    mobile = users["mobile_net"].to_numpy() >= 0
    assert np.mean(users["mobile_v6_pool"].to_numpy()[mobile] >= 0) == pytest.approx(spec.ipv6_mobile_rate, abs=0.04)
    # Where every path but travel has IPv6, ipv6_share of the logins use it.
    everywhere = SynthSpec(
        users=200,
        n_files=2,
        networks=300,
        seed=3,
        ipv6_rate=1.0,
        ipv6_work_rate=1.0,
        ipv6_mobile_rate=1.0,
        mobile_rate=1.0,
        travel_rate=0.0,
        roam_rate=0.0,
    )
    events = generate_events(generate_world(everywhere), everywhere)
    assert np.mean(events["ip_version"].to_numpy() == 6) == pytest.approx(everywhere.ipv6_share, abs=0.01)
    none = SynthSpec(**{**TINY.__dict__, "ipv6_rate": 0.0, "ipv6_work_rate": 0.0, "ipv6_mobile_rate": 0.0})
    assert set(generate_events(generate_world(none), none)["ip_version"].to_pylist()) == {4}


def _user_prefixes(world) -> dict[str, dict[str, ipaddress.IPv6Network | None]]:
    """Per entity, the /56 at home, the /64 at work and the /40 mobile pool (None: no IPv6 there)."""

    def net(hi: int, length: int):
        return ipaddress.IPv6Network((hi << 64, length)) if hi >= 0 else None

    users = world.users.to_pylist()
    return {
        u["entity"]: {
            "home": net(u["home_v6"], 56),
            "work": net(u["work_v6"], 64),
            "mobile": net(u["mobile_v6_pool"], 40),
        }
        for u in users
    }


def test_ipv6_logins_are_canonical_and_inside_the_users_prefixes(in_memory):
    world, events, _ = in_memory
    v6 = events.filter(pc.equal(events["ip_version"], 6))
    assert 0 < v6.num_rows < events.num_rows
    assert v6["ip_int"].null_count == v6.num_rows and events["ip_int"].null_count == v6.num_rows
    prefixes = _user_prefixes(world)
    daily = collections.defaultdict(set)  # (entity, home /64) -> (UTC day, interface id)
    for entity, text, day in zip(v6["entity"].to_pylist(), v6["ip"].to_pylist(), v6["dt"].to_pylist(), strict=True):
        address = ipaddress.IPv6Address(text)
        assert str(address) == text
        where = [k for k, p in prefixes[entity].items() if p is not None and address in p]
        assert where, (entity, text)
        if where == ["home"]:
            assert (int(address) >> 64) & 0xFF in (0, 1, 2, 3)  # one of the first /64s of the /56
            daily[(entity, int(address) >> 64)].add((day, int(address) & (2**64 - 1)))
    # Privacy addresses: one interface id per device and local day (at most two per UTC day), new ones every day.
    assert max(collections.Counter(day for day, _ in v).most_common(1)[0][1] for v in daily.values()) <= 2
    assert max(len({iid for _, iid in v}) for v in daily.values()) >= 3


def test_ipv6_attacks_relate_to_the_users_prefixes_as_their_kind_says(in_memory):
    world, events, attacks = in_memory
    prefixes = _user_prefixes(world)
    used = collections.defaultdict(set)
    used48, used56 = collections.defaultdict(set), collections.defaultdict(set)
    v6 = events.filter(pc.equal(events["ip_version"], 6))
    for entity, text in zip(v6["entity"].to_pylist(), v6["ip"].to_pylist(), strict=True):
        used[entity].add(text)
        used48[entity].add(int(ipaddress.IPv6Address(text)) >> 80)
        used56[entity].add(int(ipaddress.IPv6Address(text)) >> 72)
    plan = world.plan
    by_kind = collections.Counter()
    for row in attacks.filter(pc.equal(attacks["ip_version"], 6)).to_pylist():
        kind, entity, address = row["kind"], row["entity"], ipaddress.IPv6Address(row["ip"])
        by_kind[kind] += 1
        assert kind in IPV6_ATTACK_KINDS and row["ip_int"] is None and row["label"] == ATTACK_LABELS[kind]
        assert str(address) == row["ip"] and row["ip"] not in used[entity]
        home = prefixes[entity]["home"]
        assert home is not None and used[entity]  # dealt only to users with IPv6 at home who used it
        if kind == "own_prefix_ipv6":
            assert address in home and (int(address) >> 64) & 0xFF in (0, 1, 2, 3)
        else:
            assert int(address) >> 80 not in used48[entity] and int(address) >> 72 not in used56[entity]
            # ... and in a network none of whose prefixes the user has.
            net = int(plan.lookup_v6(np.array([int(address) >> 64]))[0])
            assert net >= 0
            allocation = ipaddress.IPv6Network((int(plan.v6_start[net]) << 64, int(plan.v6_len[net])))
            assert not any(p is not None and p.overlaps(allocation) for p in prefixes[entity].values())
    assert set(by_kind) == set(IPV6_ATTACK_KINDS)
    v4_kinds = collections.Counter(k for k in attacks["kind"].to_pylist() if k not in IPV6_ATTACK_KINDS)
    assert max(v4_kinds.values()) - min(by_kind.values()) <= 3  # every kind gets about the same share


def test_a_shard_without_ipv6_users_drops_ipv6_attacks_with_a_count(tmp_path):
    n = len(ATTACK_KINDS)
    spec = SynthSpec(**{**TINY.__dict__, "ipv6_rate": 0.0, "attacks": 2 * n, "validation_attacks": n})
    paths = generate_dataset(tmp_path / "v4", spec)
    counts = json.loads(paths.manifest.read_text())["counts"]
    assert counts["ipv6_home_users"] == 0
    for kind in IPV6_ATTACK_KINDS:
        assert counts[f"test_dropped_{kind}"] == 2 and f"test_{kind}" not in counts
    assert counts["test_random_ip"] == 2 and counts["test_normal"] == spec.attacks
    labelled = read_labelled_csv(paths.test_labelled)
    assert not set(labelled["kind"].to_pylist()) & set(IPV6_ATTACK_KINDS)


@pytest.mark.slow
@pytest.mark.spark
def test_ingest_reads_back_every_login_of_the_generated_logs_ipv6_included(spark, tiny, tmp_path):
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest

    overrides = {"inputs": str(tiny.logs_dir / "*"), "output": str(tmp_path / "events"), "run_id": "synth"}
    cfg = load_config(IngestConfig, Path(__file__).resolve().parent.parent / "conf" / "ingest.yml", overrides)
    summary = run_ingest(spark, cfg)
    truth = pq.read_table(tiny.events)
    assert summary["kept"] == truth.num_rows
    got = spark.read.parquet(cfg.output).select("entity", "ip", "ip_int", "ip_version", "ts").collect()
    ts_s = (pc.cast(truth["ts"], pa.int64()).to_numpy() // 1_000_000).tolist()
    columns = [truth[c].to_pylist() for c in ("entity", "ip", "ip_int", "ip_version")]
    expected = collections.Counter(zip(*columns, ts_s, strict=True))
    assert collections.Counter((r.entity, r.ip, r.ip_int, r.ip_version, int(r.ts.timestamp())) for r in got) == expected
    assert 0 < sum(r.ip_version == 6 for r in got) < len(got)
