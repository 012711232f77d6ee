"""The profile rows' way to the scoring workers: packed once per entity, unpacked whole, each batch whole."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ipinsights.score.profile_rows import LISTS, ROW_SCHEMA, SCALARS, list_parts
from ipinsights.score.profile_stream import PROFILE, attach_profiles, joined_profiles, pack_rows, unpack_rows
from ipinsights.score.profiles import QUANTILES, PopulationPrior


def _rows(n: int, seed: int = 0) -> pa.Table:
    """``n`` profile rows with lists of every length (empty and null ones too) and values of every size."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"entity": pa.array([f"user{i:03d}" for i in range(n)])}
    for name in LISTS:
        kind = ROW_SCHEMA.field(name).type
        if name == "q":
            values = [np.sort(rng.normal(size=QUANTILES.size)).astype(np.float32).tolist() for _ in range(n)]
        else:
            values = [rng.integers(-(2**62), 2**62, size=rng.integers(0, 6)).tolist() for _ in range(n)]
            values = [None if i % 7 == 3 else v for i, v in enumerate(values)]  # a null list reads as empty
        columns[name] = pa.array(values, kind)
    for name in SCALARS:
        columns[name] = pa.array(rng.integers(0, 10**9, size=n), pa.int64())
    return pa.table(columns)


@pytest.mark.parametrize("n", [0, 1, 23])
def test_packed_rows_unpack_to_the_same_lists_and_scalars(n):
    rows = _rows(n)
    packed = pack_rows(rows)
    assert packed.type == pa.binary() and len(packed) == n and packed.null_count == 0
    for got in (packed, packed.cast(pa.large_binary())):  # Spark may hand binaries with 64-bit offsets
        lists, scalars = unpack_rows(got)
        for name in LISTS:
            offsets, values = list_parts(rows[name])
            np.testing.assert_array_equal(lists[name][0], offsets)
            np.testing.assert_array_equal(lists[name][1], values)
        for name in SCALARS:
            np.testing.assert_array_equal(scalars[name], rows[name].to_numpy())


def test_a_slice_of_packed_rows_unpacks_to_its_own_rows():
    rows = _rows(30, seed=1)
    packed = pack_rows(rows)
    lists, _ = unpack_rows(packed.slice(11, 9))
    offsets, values = list_parts(rows["net_keys"].slice(11, 9))
    np.testing.assert_array_equal(lists["net_keys"][1], values)
    np.testing.assert_array_equal(lists["net_keys"][0], offsets)


def _stream(rows: pa.Table, events_per_entity: list[int]) -> pa.Table:
    """The sorted stream the Spark side sends: each entity's packed row, then its events; a few entities
    have events and no row (unseen in training), some rows have no event (not seen today)."""
    packed = pack_rows(rows)
    entity, ip, profile = [], [], []
    for i, count in enumerate(events_per_entity):
        name = rows["entity"][i].as_py()
        if i % 5 != 4:  # every fifth entity has no profile row
            entity.append(name)
            ip.append(None)
            profile.append(packed[i].as_py())
        for k in range(count):
            entity.append(name)
            ip.append(f"10.0.{i}.{k}")
            profile.append(None)
    return pa.table({"entity": entity, "ip": ip, PROFILE: pa.array(profile, pa.binary())})


@pytest.mark.parametrize("cut", [1, 2, 7, 1000])
def test_every_batch_brings_the_rows_of_its_events_however_the_stream_is_cut(cut):
    rows = _rows(40, seed=2)
    counts = [int(c) for c in np.random.default_rng(3).integers(0, 9, size=40)]
    stream = _stream(rows, counts)
    events_seen: list[tuple[str, str]] = []
    for batch in attach_profiles(iter(stream.to_batches(max_chunksize=cut))):
        events, (profiles, at) = joined_profiles(batch, PopulationPrior())
        assert PROFILE not in events.schema.names and events.num_rows > 0
        for j, (name, ip) in enumerate(zip(events["entity"].to_pylist(), events["ip"].to_pylist(), strict=True)):
            i = int(name.removeprefix("user"))
            events_seen.append((name, ip))
            if i % 5 == 4:
                assert at[j] == -1, name
            else:  # its own row: the training events and networks it was packed with
                assert profiles.history.events[at[j]] == rows["events"][i].as_py()
                start, end = profiles.net_offsets[at[j]], profiles.net_offsets[at[j] + 1]
                assert profiles.net_keys[start:end].tolist() == (rows["net_keys"][i].as_py() or [])
    want = [(e, ip) for e, ip in zip(stream["entity"].to_pylist(), stream["ip"].to_pylist(), strict=True) if ip]
    assert events_seen == want  # every event once, in the stream's order


def test_joined_rows_give_each_event_its_own_entity_s_row():
    """Joined on (a small input), every event carries its entity's packed row: read once per entity."""
    from ipinsights.score.profile_stream import JOINED

    rows = _rows(6, seed=4)
    packed = pack_rows(rows)
    entities = ["user003", "user001", "user003", "nobody", "user005", "user001"]
    at = {f"user{i:03d}": i for i in range(6)}
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(entities),
            pa.array([f"10.0.0.{k}" for k in range(6)]),
            pa.array([packed[at[e]].as_py() if e in at else None for e in entities], pa.binary()),
        ],
        names=["entity", "ip", JOINED],
    )
    events, (profiles, where) = joined_profiles(batch, PopulationPrior())
    assert events.schema.names == ["entity", "ip"] and events.num_rows == 6
    assert len(profiles) == 3  # user001, user003, user005: one row each
    assert where[3] == -1 and where[0] == where[2] and where[1] == where[5]
    for e, r in zip(entities, where, strict=True):
        if e in at:
            assert profiles.history.events[r] == rows["events"][at[e]].as_py()
