"""A training rank streams its shard: every pair once per epoch, disjoint ranks, seeded order, bounded rows."""

from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.errors import DataFormatError
from ipinsights.train.distributed import data_for_epoch
from ipinsights.train.stream import ShardStream
from ipinsights.train.trainer import train_model

ROWS = 10**6  # num_entity_vectors larger than any hash below: a pair's entity row is its hash


def _buckets(tmp_path, n_buckets=4, files=2, rows=113, row_group=29):
    """Bucket -> files of distinct (entity_hash, ip) pairs, each file several row groups (the last short)."""
    out, start = [], 0
    for b in range(n_buckets):
        bucket = []
        for f in range(files):
            h = np.arange(start, start + rows, dtype=np.int64)
            start += rows
            path = tmp_path / f"bucket={b}" / f"part-{f}.parquet"
            path.parent.mkdir(exist_ok=True)
            pq.write_table(pa.table({"entity_hash": h, "ip": h * 7 + 3}), path, row_group_size=row_group)
            bucket.append(f"file:{path}")  # as Spark lists them
        out.append(bucket)
    return out, start


def _epoch(stream, batch_size=16):
    return [(e.numpy().copy(), i.numpy().copy()) for e, i in stream.batches(batch_size)]


def _pairs(batches):
    return Counter((int(e), int(i)) for ent, ips in batches for e, i in zip(ent, ips, strict=True))


def test_a_shard_larger_than_its_buffer_gives_every_pair_once(tmp_path):
    buckets, total = _buckets(tmp_path)
    files = [f for b in buckets for f in b]
    stream = ShardStream(files, ROWS, buffer_rows=50, seed=[0, 1, 0])
    assert len(stream) == total == 904 and len(stream.row_groups) == 8 * 4  # from the footers
    batches = _epoch(stream)
    assert _pairs(batches) == Counter((h, h * 7 + 3) for h in range(total))
    assert [len(e) for e, _ in batches] == [16] * (total // 16) + [total % 16]  # whole batches, then the rest
    assert len(batches) == math.ceil(len(stream) / 16)
    assert stream.stats.rows_read == total and stream.stats.row_groups_read == 32
    # shuffled across row groups and files: the first batches mix rows of several row groups, read in random order
    first = np.concatenate([e for e, _ in batches[:4]])
    assert len({(int(h) // 113, int(h) % 113 // 29) for h in first}) > 3
    assert not np.array_equal(np.sort(first), first)
    assert {int(h) // 113 for h in first} != {0}  # row groups are read in a random order, not the files' order


def test_the_reader_holds_at_most_buffer_row_group_and_queue(tmp_path):
    buckets, total = _buckets(tmp_path, n_buckets=8, files=2, rows=500, row_group=40)
    files = [f for b in buckets for f in b]
    stream = ShardStream(files, ROWS, buffer_rows=100, seed=[3, 1, 0])
    bound = stream.max_rows_held(16)
    assert bound == 100 + 40 + 4 * 16 and bound < total / 20
    assert len(_epoch(stream)) == math.ceil(total / 16)
    assert stream.stats.rows_read == total
    assert 100 <= stream.stats.peak_rows_held <= bound
    assert stream.stats.rows_held == 0  # every row read went to the trainer


def test_two_ranks_are_disjoint_cover_everything_and_change_every_epoch(tmp_path):
    buckets, total = _buckets(tmp_path, n_buckets=8, files=1, rows=40, row_group=15)
    shards = {e: [data_for_epoch(buckets, r, 2, e, 0, ROWS, buffer_rows=20) for r in range(2)] for e in (1, 2)}
    for epoch, (a, b) in shards.items():
        pa_, pb = _pairs(_epoch(a)), _pairs(_epoch(b))
        assert not set(pa_) & set(pb), epoch
        assert pa_ + pb == Counter((h, h * 7 + 3) for h in range(total)), epoch
        assert len(a) + len(b) == total
    assert set(_pairs(_epoch(shards[1][0]))) != set(_pairs(_epoch(shards[2][0])))  # a rank's shard changes


def test_the_same_seed_gives_the_same_order(tmp_path):
    buckets, _ = _buckets(tmp_path)
    files = [f for b in buckets for f in b]

    def order(seed):
        return np.concatenate([e for e, _ in _epoch(ShardStream(files, ROWS, buffer_rows=60, seed=seed), 10)])

    first = order([5, 2, 1])
    assert np.array_equal(first, order([5, 2, 1]))
    stream = ShardStream(files, ROWS, buffer_rows=60, seed=[5, 2, 1])
    assert np.array_equal(np.concatenate([e for e, _ in _epoch(stream, 10)]), first)  # and a second pass
    for other in ([5, 3, 1], [5, 2, 0], [6, 2, 1]):  # another epoch, rank or seed
        assert not np.array_equal(order(other), first)


def test_stopping_early_stops_the_reading_thread(tmp_path):
    buckets, _ = _buckets(tmp_path)
    stream = ShardStream([f for b in buckets for f in b], ROWS, buffer_rows=30, seed=[0, 1, 0])
    batches = stream.batches(8)
    next(batches)
    assert any(t.name == "shard-stream" for t in threading.enumerate())
    batches.close()  # as the trainer does after the steps every rank takes
    assert not any(t.name == "shard-stream" for t in threading.enumerate())
    assert stream.stats.rows_read < len(stream)


def test_bad_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"missing\.parquet"):
        ShardStream([str(tmp_path / "missing.parquet")], ROWS, 10, seed=[0])
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"entity": ["a"], "ip": [1]}), wrong)
    with pytest.raises(DataFormatError, match=r"wrong\.parquet: no column entity_hash"):
        ShardStream([str(wrong)], ROWS, 10, seed=[0])


def test_no_files_is_an_empty_shard():
    stream = ShardStream([], ROWS, 10, seed=[0])
    assert len(stream) == 0 and _epoch(stream) == []


def test_training_on_a_stream(tmp_path):
    buckets, total = _buckets(tmp_path, n_buckets=2, files=2, rows=300, row_group=64)
    hp = Hyperparameters(num_entity_vectors=1000, vector_dim=8, epochs=2, mini_batch_size=50)

    def shard(epoch):
        return data_for_epoch(buckets, 0, 1, epoch, 0, hp.num_entity_vectors, buffer_rows=100)

    small = ModelOptions(ip_hash_buckets=1024, ipv6_hash_buckets=1024)
    result = train_model(hp, small, TrainOptions(device="cpu", progress_bar="off"), shard)
    assert [m.pairs for m in result.history] == [total, total]
    assert all(math.isfinite(m.loss) for m in result.history)
    assert not any(t.name == "shard-stream" for t in threading.enumerate())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_reach_the_gpu_as_they_are_used(tmp_path):
    buckets, total = _buckets(tmp_path)
    stream = ShardStream([f for b in buckets for f in b], ROWS, buffer_rows=50, seed=[0, 1, 0])
    got = list(stream.batches(16, "cuda"))
    assert all(e.is_cuda and i.is_cuda for e, i in got)
    assert sorted(torch.cat([e for e, _ in got]).cpu().tolist()) == list(range(total))
