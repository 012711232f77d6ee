"""A training rank's shard read as a stream: Parquet row groups through a bounded shuffle buffer.

A rank's shard of an epoch can be far larger than its memory (90 days at 1B events a day is ~1.4 TB
of pairs), so it is never read whole. A background thread reads the shard's row groups (in a seeded
random order), adds each to a shuffle buffer of ``buffer_rows`` rows, and whenever the buffer overflows
draws whole batches from it uniformly at random; at the end of the shard the buffer is emptied in a
random order. Batches wait in a queue of :data:`PREFETCH_BATCHES`, so reading overlaps training.

Rows held at any time: at most ``buffer_rows`` + one row group + the queue (plus the batch in use),
whatever the shard's size. The row count, and so the number of steps, comes from the Parquet footers
before any data is read. The order depends only on the files and the seed: the same seed, epoch and
rank give the same batches, however the thread is scheduled.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from ipinsights.core.errors import DataFormatError
from ipinsights.storage.filesystems import arrow_fs
from ipinsights.train.data import EncodedPairs
from ipinsights.train.spec import PAIR_COLUMNS, encoded_pairs

__all__ = ["PREFETCH_BATCHES", "ShardStream", "StreamStats"]

log = logging.getLogger(__name__)

#: Batches read ahead of the one being trained on.
PREFETCH_BATCHES = 4

_END = object()  # the producer's last item


@dataclass
class StreamStats:
    """What one pass over a shard read and the most rows it held at once (buffer, row group, queue)."""

    rows_read: int = 0
    row_groups_read: int = 0
    rows_held: int = 0
    peak_rows_held: int = 0


@dataclass(frozen=True)
class _RowGroup:
    uri: str
    index: int
    rows: int
    metadata: pq.FileMetaData


class ShardStream:
    """Encoded (entity row, address key) pairs of Parquet work files, in a seeded shuffled order.

    ``files`` hold (64-bit ``entity_hash``, ``ip``) rows as :func:`ipinsights.train.spec.read_pairs`
    reads them; ``seed`` (e.g. ``[seed, epoch, rank]``) fixes the order. ``len()`` is the row count
    from the footers. Each :meth:`batches` call is one pass; :attr:`stats` describes the latest.
    """

    def __init__(self, files: Sequence[str], num_entity_vectors: int, buffer_rows: int, seed: Sequence[int]):
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.num_entity_vectors = num_entity_vectors
        self.buffer_rows = buffer_rows
        self.seed = list(seed)
        self.row_groups = [rg for f in files for rg in _row_groups(f)]
        self.stats = StreamStats()

    def __len__(self) -> int:
        return sum(rg.rows for rg in self.row_groups)

    def max_rows_held(self, batch_size: int) -> int:
        """The most rows a pass with ``batch_size`` may hold: buffer, one row group, the queue."""
        largest = max((rg.rows for rg in self.row_groups), default=0)
        return max(self.buffer_rows, batch_size) + largest + PREFETCH_BATCHES * batch_size

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        """(entity rows, address keys) batches of ``batch_size`` (the last may be smaller) on ``device``.

        Every row of the shard comes exactly once. Stopping early (closing the iterator) stops the
        reading thread and waits for it, so that no pass outlives its epoch and its buffer.
        """
        device = torch.device(device)
        self.stats = stats = StreamStats()
        items: queue.Queue[object] = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()
        lock = threading.Lock()

        def hold(rows: int) -> None:
            with lock:
                stats.rows_held += rows
                stats.peak_rows_held = max(stats.peak_rows_held, stats.rows_held)

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for ent, ips in self._shuffled(batch_size, stats, hold, stop):
                    # Pinned host memory lets the copy to a GPU run while the previous step computes.
                    e, i = torch.from_numpy(ent), torch.from_numpy(ips)
                    if device.type == "cuda":
                        e, i = e.pin_memory(), i.pin_memory()
                    if not put((e, i)):
                        return
                put(_END)
            except BaseException as exc:  # handed to the training thread, which raises it
                put(exc)

        thread = threading.Thread(target=produce, name="shard-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, tuple)
                e, i = item
                hold(-len(e))  # the batch in use is the trainer's
                yield e.to(device, non_blocking=True), i.to(device, non_blocking=True)
        finally:
            stop.set()
            thread.join()
            log.debug("shard pass: %s (bound %d rows)", stats, self.max_rows_held(batch_size))

    def _shuffled(
        self, batch_size: int, stats: StreamStats, hold: Callable[[int], None], stop: threading.Event
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The shuffle buffer (runs on the reading thread): numpy batches, each row once."""
        rng = np.random.default_rng(self.seed)
        cap = max(self.buffer_rows, batch_size)  # a whole batch must fit to be drawn from the buffer
        largest = max((rg.rows for rg in self.row_groups), default=0)
        # Allocated once: the buffer plus room for the row group just read.
        size = min(cap + largest, len(self))
        ent_buf, ip_buf = np.empty(size, np.int64), np.empty(size, np.int64)
        n = 0
        for k in rng.permutation(len(self.row_groups)):
            if stop.is_set():
                return
            pairs = self._read(self.row_groups[k])
            hold(len(pairs))
            ent_buf[n : n + len(pairs)] = pairs.entity_rows
            ip_buf[n : n + len(pairs)] = pairs.ips
            n += len(pairs)
            stats.rows_read += len(pairs)
            stats.row_groups_read += 1
            del pairs
            if n <= cap:
                continue
            # Draw whole batches uniformly from the buffer until it is back within its size (a batch at
            # a time: the buffer is left as it is until they are queued), then let survivors at the
            # tail fill the holes the drawn rows left below the new end.
            m = math.ceil((n - cap) / batch_size) * batch_size
            drawn = rng.choice(n, m, replace=False)
            for s in range(0, m, batch_size):
                c = drawn[s : s + batch_size]
                yield ent_buf[c], ip_buf[c]
            end = n - m
            tail = np.ones(m, bool)
            tail[drawn[drawn >= end] - end] = False
            holes = drawn[drawn < end]
            src = end + np.flatnonzero(tail)
            ent_buf[holes], ip_buf[holes] = ent_buf[src], ip_buf[src]
            n = end
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            c = order[s : s + batch_size]
            yield ent_buf[c], ip_buf[c]

    def _read(self, rg: _RowGroup) -> EncodedPairs:
        fs, path = arrow_fs(rg.uri)
        try:
            with fs.open_input_file(path) as fh:
                table = pq.ParquetFile(fh, metadata=rg.metadata).read_row_group(rg.index, columns=PAIR_COLUMNS)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{rg.uri}: row group {rg.index}: {exc}") from exc
        if table.num_rows != rg.rows:
            raise DataFormatError(f"{rg.uri}: row group {rg.index} has {table.num_rows} rows, its footer {rg.rows}")
        return encoded_pairs(table, self.num_entity_vectors, rg.uri)


def _row_groups(uri: str) -> list[_RowGroup]:
    """The row groups of one work file, from its footer alone (no data is read)."""
    fs, path = arrow_fs(uri)
    try:
        with fs.open_input_file(path) as fh:
            md = pq.ParquetFile(fh).metadata
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{uri}: cannot read its Parquet footer: {exc}") from exc
    missing = [c for c in PAIR_COLUMNS if c not in md.schema.names]
    if missing:
        raise DataFormatError(f"{uri}: no column {', '.join(missing)} (has {', '.join(md.schema.names)})")
    return [_RowGroup(uri, i, md.row_group(i).num_rows, md) for i in range(md.num_row_groups)]
