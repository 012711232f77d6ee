"""The generator's devices (``devices: realistic``): users' 1-3 devices, version updates, attackers by
sophistication; and the legacy generator unchanged."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ipinsights.core.config import ConfigError
from ipinsights.core.useragent import parse_user_agent
from ipinsights.storage.sagemaker_csv import read_labelled_csv
from ipinsights.synth import COMBINED_LOG_RE, SynthSpec, generate_dataset
from ipinsights.synth.dataset import labelled_csv_bytes
from ipinsights.synth.devices import CATALOGUE, current_release, device_agents
from ipinsights.synth.world import load_plan, user_devices

LEGACY = {"users": 60, "days": 10, "n_files": 2, "networks": 300, "attacks": 80, "validation_attacks": 40}
LEGACY |= {"junk_rate": 0.01, "seed": 7}
#: What the generator wrote before issue 31 for these specs (:func:`_digest`): its logs and labels byte
#: for byte, its Parquet tables row for row, its manifest's counts.
LEGACY_DIGESTS = {
    "default": "d20c0042dd6c6ef7fbf3a1cb6c60115c863480b928d0c3229372763f886f193b",
    "inject_spraying": "007dcabe84193c0aa8098fb79e9135d0224674f199efb094a1bd5c30f6354a67",
}
KINDS = ("naive", "vpn", "targeted", "very_targeted", "same_country_other_isp", "own_network")
REALISTIC = SynthSpec(
    users=400,
    days=10,
    n_files=2,
    networks=1000,
    attacks=600,
    validation_attacks=30,
    seed=11,
    devices="realistic",
    attack_kinds=KINDS,
    inject_attacks=True,
    spraying_accounts=20,
)


def _digest(root: Path) -> str:
    """One hash of a data set: text files byte for byte, Parquet files by their rows (the file bytes name the
    writer's version), the manifest by its counts (its spec lists every setting, new ones included)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel == "manifest.json":
            data = json.dumps(json.loads(p.read_text())["counts"], sort_keys=True).encode()
        elif p.suffix == ".parquet":
            data = repr(pq.read_table(p).to_pydict()).encode()
        else:
            data = p.read_bytes()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("name", "extra"), [("default", {}), ("inject_spraying", {"inject_attacks": True, "spraying_accounts": 10})]
)
def test_the_legacy_generator_writes_what_it_wrote_before(tmp_path, name, extra):
    paths = generate_dataset(tmp_path, SynthSpec(**LEGACY, **extra))
    assert SynthSpec().devices == "legacy"
    assert _digest(paths.root) == LEGACY_DIGESTS[name]


def test_realistic_devices_add_user_agents_to_the_legacy_data(tmp_path):
    """Devices draw from random streams of their own: the same spec with realistic devices has the same
    logins and labelled rows, plus their user agents (and the logs differ in their last field only)."""
    spec = {**LEGACY, "inject_attacks": True, "spraying_accounts": 10}
    legacy = generate_dataset(tmp_path / "legacy", SynthSpec(**spec))
    realistic = generate_dataset(tmp_path / "realistic", SynthSpec(**spec, devices="realistic"))
    before, after = read_labelled_csv(legacy.test_labelled), read_labelled_csv(realistic.test_labelled)
    assert after.drop_columns(["user_agent"]).equals(before) and "user_agent" not in before.column_names
    agents = after["user_agent"].to_pylist()
    assert all(agents) and any("," in a for a in agents)  # quoted: "(KHTML, like Gecko)" stays one field
    truth = pq.read_table(realistic.events)
    assert truth.drop_columns(["user_agent"]).equals(pq.read_table(legacy.events))
    assert pc.all(pc.is_valid(truth["user_agent"])).as_py()

    def heads(paths):  # of the well-formed lines (junk lines cut at a random length differ with their length)
        lines = [line for p in paths.logs for line in p.read_bytes().splitlines()]
        return [line.rsplit(b' "', 1)[0] for line in lines if COMBINED_LOG_RE.match(line)]

    assert heads(legacy) == heads(realistic)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    paths = generate_dataset(tmp_path_factory.mktemp("devices"), REALISTIC)
    users = pq.read_table(paths.users)
    truth = pq.read_table(paths.events)
    return paths, users, truth


def _identity(agent: str) -> tuple[str, str, str]:
    return tuple(parse_user_agent(agent))


def test_every_catalogue_device_parses_as_itself_whatever_its_version_and_model():
    rng = np.random.default_rng(0)
    for template in CATALOGUE:
        for day in (dt.date(2021, 3, 1), dt.date(2024, 1, 1), dt.date(2027, 6, 1)):
            now = current_release(template.scheme, day)
            for release in (now - 4, now, now + 1):
                for detail in rng.integers(0, 1 << 30, 8).tolist():
                    agent = template.render(release, detail)
                    assert _identity(agent) == (template.family, template.os, template.device), agent
    shares = np.array([t.share for t in CATALOGUE])
    desktop = sum(t.share for t in CATALOGUE if t.device == "desktop") / shares.sum()
    assert 0.4 < desktop < 0.55  # about half of the logins from desktops, as the market goes


def test_the_labelled_csv_carries_the_user_agent_quoted_and_empty_when_unknown(tmp_path):
    agents = ['Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "quoted"', None, "curl/8.1.2"]
    table = pa.table(
        {"entity": ["a", "b", "c"], "ip": ["1.2.3.4", "::1", "10.0.0.1"], "label": [1, 0, 1], "kind": ["x"] * 3}
    )
    path = tmp_path / "labelled.csv"
    path.write_bytes(labelled_csv_bytes(table.append_column("user_agent", pa.array(agents, pa.string()))))
    back = read_labelled_csv(path)
    assert back["user_agent"].to_pylist() == agents and back["label"].to_pylist() == [1, 0, 1]
    path.write_bytes(labelled_csv_bytes(table))
    assert read_labelled_csv(path).column_names == ["entity", "ip", "label", "kind"]


def test_each_user_has_one_to_three_devices_and_uses_only_them(world):
    _, users, truth = world
    devices = user_devices(users)
    count = (devices["template"] >= 0).sum(axis=1)
    assert count.min() == 1 and count.max() == 3
    assert {1, 2, 3} <= set(count.tolist())
    own = {}
    for i, entity in enumerate(users["entity"].to_pylist()):
        held = [CATALOGUE[t] for t in devices["template"][i] if t >= 0]
        assert len({(t.family, t.os, t.device) for t in held}) == len(held)  # distinct devices
        own[entity] = {(t.family, t.os, t.device) for t in held}
    # A user with a mobile carrier has a phone.
    carrier = users["mobile_net"].to_numpy() >= 0
    phones = np.array([any(d == "mobile" for _, _, d in own[e]) for e in users["entity"].to_pylist()])
    assert phones[carrier].all()
    normal = truth.filter(pc.equal(truth["kind"], "normal"))
    used: dict[str, set] = {}
    for entity, agent in zip(normal["entity"].to_pylist(), normal["user_agent"].to_pylist(), strict=True):
        used.setdefault(entity, set()).add(_identity(agent))
    assert all(used[e] <= own[e] for e in used)  # trips and one-off logins included
    assert np.mean([len(used[e]) for e in used]) > 1.3  # users do use their other devices


def test_a_version_update_keeps_the_device(world):
    _, users, truth = world
    normal = truth.filter(pc.equal(truth["kind"], "normal"))
    strings: dict[tuple, set] = {}
    for entity, agent in zip(normal["entity"].to_pylist(), normal["user_agent"].to_pylist(), strict=True):
        strings.setdefault((entity, _identity(agent)), set()).add(agent)
    updated = {key: s for key, s in strings.items() if len(s) > 1}
    devices = user_devices(users)
    assert len(updated) >= 0.2 * (devices["update_day"] >= 0).sum()  # many devices updated during the period
    assert all(len(s) == 2 for s in updated.values())  # one update: the string before and after it
    families = {family for (_, (family, _, _)) in updated}
    assert {"Chrome", "Safari"} <= families  # auto-updating browsers and the OS's point releases


def _attacks(paths) -> pa.Table:
    truth = pq.read_table(paths.events)
    return truth.filter(pc.is_in(truth["kind"], pa.array(KINDS)))


def test_attackers_user_agents_follow_their_sophistication(world):
    paths, users, truth = world
    attacks = _attacks(paths)
    plan = load_plan(REALISTIC)
    devices = user_devices(users)
    row = {e: i for i, e in enumerate(users["entity"].to_pylist())}
    country = users["country"].to_pylist()
    offsets = users["utc_offset_minutes"].to_numpy()
    start = REALISTIC.start_epoch_s
    kinds = attacks["kind"].to_pylist()
    assert all(80 < kinds.count(k) <= 100 for k in KINDS)  # 100 dealt each; a few found no new ISP or device
    match = {"naive": [], "vpn": []}
    expected = {"naive": [], "vpn": []}
    share = np.array([t.share for t in CATALOGUE]) / sum(t.share for t in CATALOGUE)
    for entity, ip, kind, ts, agent in zip(
        *(attacks[c].to_pylist() for c in ("entity", "ip", "kind", "ts", "user_agent")), strict=True
    ):
        i = row[entity]
        held = [t for t in devices["template"][i] if t >= 0]
        identities = {(CATALOGUE[t].family, CATALOGUE[t].os, CATALOGUE[t].device) for t in held}
        local_day = (int(ts.timestamp()) - start + int(offsets[i]) * 60) // 86400
        own = set(
            device_agents(
                devices, np.full(len(held), i), np.arange(len(held)), np.full(len(held), local_day)
            ).to_pylist()
        )
        net = plan.lookup(np.array([int(ipaddress.IPv4Address(ip))]))[0]
        if kind in ("naive", "vpn"):
            match[kind].append(_identity(agent) in identities)
            expected[kind].append(share[held].sum())  # the chance that a device drawn by share is one of them
            assert (plan.kind[net] == "hosting") == (kind == "vpn")
        elif kind == "targeted":
            family, _, _ = _identity(agent)
            assert family in {f for f, _, _ in identities} and _identity(agent) not in identities
            assert plan.country[net] == country[i]
        elif kind == "very_targeted":
            assert agent in own  # the victim's exact string, as the victim's device sent it that day
            assert plan.country[net] == country[i] and plan.kind[net] in ("broadband", "mobile")
        else:  # the address-only kinds: the victim's own device
            assert agent in own
    for kind in ("naive", "vpn"):
        n, p = len(match[kind]), np.mean(expected[kind])
        assert abs(np.mean(match[kind]) - p) < 4 * np.sqrt(p * (1 - p) / n)  # as often as the market says
    spraying = truth.filter(pc.equal(truth["kind"], "spraying"))["user_agent"].to_pylist()
    assert len(spraying) == 20 and len(set(spraying)) == 1  # one client string for every account
    normal = set(truth.filter(pc.equal(truth["kind"], "normal"))["user_agent"].to_pylist())
    assert spraying[0] not in normal and _identity(spraying[0]) == ("Chrome", "Windows", "desktop")


def test_the_logs_carry_each_logins_user_agent(world):
    from ipinsights.ingest.logparse import classify_batch

    paths, _, truth = world
    lines = pa.concat_arrays([pa.array(p.read_bytes().splitlines(), pa.binary()) for p in paths.logs])
    events = classify_batch(lines)
    kept = events.filter(pc.equal(events["outcome"], "kept"))
    got = sorted(zip(kept["entity"].to_pylist(), kept["user_agent"].to_pylist(), strict=True))
    assert got == sorted(zip(truth["entity"].to_pylist(), truth["user_agent"].to_pylist(), strict=True))
    assert len(set(kept["user_agent"].to_pylist())) > 200  # many distinct strings, as real logs have


def test_device_attack_kinds_need_realistic_devices():
    with pytest.raises(ConfigError, match=r"\['naive'\] need devices=realistic"):
        SynthSpec(attack_kinds=("naive", "random_ip"))
    with pytest.raises(ConfigError, match="devices='phones' must be one of legacy, realistic"):
        SynthSpec(devices="phones")
