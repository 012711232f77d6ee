"""The model's entity stats (``entities.safetensors``): built on the executors and streamed into the file, read
memory-mapped. Nothing per entity goes through the driver at any size."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ipinsights.core.entities import EntityStats, write_entity_file
from ipinsights.core.hashing import hash_strings


def _chunks(a: np.ndarray, size: int) -> list[np.ndarray]:
    return [a[i : i + size] for i in range(0, a.size, size)]


def test_a_streamed_file_is_the_stats_file(tmp_path):
    """Chunks in unsigned hash order make the file ``to_bytes`` makes: safetensors reads it, and so does the
    memory-mapped reader (hashes with the top bit set sort last, as unsigned numbers)."""
    entities = [f"user-{i}" for i in range(1000) for _ in range(i % 3 + 1)]
    want = EntityStats.from_entities(entities, hash_seed=7)
    assert (want.hashes >= 2**63).any() and (want.hashes < 2**63).any()  # both signs as int64
    out = io.BytesIO()
    chunks = zip(_chunks(want.hashes.view(np.int64), 64), _chunks(want.counts, 64), strict=True)
    write_entity_file(out, len(want), chunks)
    for got in (EntityStats.from_bytes(out.getvalue()), _opened(tmp_path, out.getvalue())):
        assert np.array_equal(got.hashes, want.hashes) and np.array_equal(got.counts, want.counts)
        assert np.array_equal(got.counts_for(["user-5", "nobody"], 7), [3, 0])
    assert _opened(tmp_path, EntityStats.from_hash_counts(np.zeros(0), np.zeros(0)).to_bytes()).counts.size == 0


def _opened(tmp_path, data: bytes) -> EntityStats:
    path = tmp_path / "entities.safetensors"
    path.write_bytes(data)
    return EntityStats.open(path)


def test_out_of_order_or_missing_entities_are_refused():
    h = np.array([5, 3], dtype=np.int64)
    with pytest.raises(ValueError, match="ascending"):
        write_entity_file(io.BytesIO(), 2, [(h, np.ones(2, np.int64))])
    with pytest.raises(ValueError, match="expected 3"):
        write_entity_file(io.BytesIO(), 3, [(h[::-1], np.ones(2, np.int64))])


@pytest.mark.spark
def test_the_executors_write_the_stats_and_the_driver_collects_no_entity(spark, tmp_path, monkeypatch):
    """Over many partitions of both hash signs: the same stats as counting in memory, no row collected (the
    unusable rows' count comes first in the same sorted write), and the parts removed once streamed."""
    from pyspark.sql import DataFrame

    from ipinsights.train.prepare import encode_pairs_df, write_entity_stats

    rows = [(f"acct-{i % 2000}", f"10.{i % 7}.{i % 200}.{i % 250}") for i in range(6000)] + [("acct-1", "bad")]
    df = spark.createDataFrame(rows, "entity string, ip string").repartition(5)
    collected: list[int] = []
    real_collect = DataFrame.collect

    def counting_collect(self):
        out = real_collect(self)
        collected.append(len(out))
        return out

    monkeypatch.setattr(DataFrame, "collect", counting_collect)
    monkeypatch.setattr(DataFrame, "toArrow", lambda self: pytest.fail("a table came back to the driver"))
    monkeypatch.setattr(DataFrame, "toPandas", lambda self: pytest.fail("a table came back to the driver"))
    spark.conf.set("spark.sql.shuffle.partitions", "7")  # conftest restores the session's own value
    enc = encode_pairs_df(df, 11, ipv6=False, keep_invalid=True)
    n, n_invalid = write_entity_stats(enc, str(tmp_path / "work" / "entities.safetensors"))
    assert collected == [], collected
    got = EntityStats.open(tmp_path / "work" / "entities.safetensors")
    want = EntityStats.from_hash_counts(hash_strings([e for e, _ in rows[:-1]], 11), np.ones(6000, np.int64))
    assert (n, n_invalid) == (2000, 1)
    assert np.array_equal(got.hashes, want.hashes) and np.array_equal(got.counts, want.counts)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["entities.safetensors"]
