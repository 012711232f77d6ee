"""Entity profiles on their way to the Spark scoring workers: each entity's row once, packed, among its events.

A scoring batch needs its entities' profile rows (:mod:`ipinsights.score.profile_rows`), and a worker must
not hold every entity's: :func:`ipinsights.score.spark_profiles.with_profile_rows` streams the rows with
the events, each entity's row just before its events. A row travels as one binary column,
:data:`PROFILE` (null on events), packed by :func:`pack_rows`: about twenty list columns, null on every
event row, would cost each event their slots through the shuffle, the sort and Arrow (measured: about a
quarter of the scoring job's CPU), and joined on they would repeat an entity's lists on each of its events.

On the worker, :func:`attach_profiles` cuts the stream into batches that hold their events' rows, and
:func:`joined_profiles` unpacks a batch's rows (:func:`unpack_rows`, vectorised: no Python per row).

The packing, for each row: little-endian 64-bit words, first the length of each of :data:`LISTS`, then
:data:`SCALARS`, then each list's values in that order (``q``'s floats as float64 bits, the rest int64).
It lives only between two tasks of one job; nothing stores it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.score.profile_rows import LISTS, SCALARS, list_parts, profiles_of_parts, scalar_column
from ipinsights.score.profiles import PopulationPrior

if TYPE_CHECKING:
    from ipinsights.score.scorer import Joined

__all__ = ["JOINED", "PROFILE", "attach_profiles", "joined_profiles", "pack_rows", "unpack_rows"]

#: The column that carries an entity's profile row, packed, in the stream to the workers (null: an event).
PROFILE = "_profile"
#: The column that carries an event's own entity's profile row, packed, when the rows are joined on
#: (:func:`~ipinsights.score.spark_profiles.join_profile_rows`: a small input; null: no profile).
JOINED = "_profile_joined"

_HEAD = len(LISTS) + len(SCALARS)  # words before a row's values


def pack_rows(rows: pa.RecordBatch | pa.Table) -> pa.Array:
    """The rows (columns :data:`LISTS` and :data:`SCALARS` of the rows table) packed, one binary value each."""
    n = rows.num_rows
    parts = [list_parts(rows.column(name)) for name in LISTS]
    lengths = np.stack([np.diff(offsets) for offsets, _ in parts], axis=1) if n else np.zeros((0, len(LISTS)))
    lengths = lengths.astype(np.int64)
    sizes = _HEAD + lengths.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    words = np.zeros(int(starts[-1]), np.int64)
    heads = starts[:-1, None] + np.arange(_HEAD)
    words[heads[:, : len(LISTS)]] = lengths
    words[heads[:, len(LISTS) :]] = np.stack([scalar_column(rows.column(name)) for name in SCALARS], axis=1)
    at = starts[:-1] + _HEAD  # where each row's next list begins
    for (offsets, values), name, width in zip(parts, LISTS, lengths.T, strict=True):
        flat = np.asarray(values, np.float64).view(np.int64) if name == "q" else np.asarray(values, np.int64)
        words[_spread(at, offsets, width)] = flat
        at = at + width
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer((starts * 8).astype(np.int32)), pa.py_buffer(words)]
    )


def unpack_rows(packed: pa.Array) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Rows packed by :func:`pack_rows` (none null): each list's (offsets, flat values) and each scalar."""
    if pa.types.is_large_binary(packed.type):
        packed = packed.cast(pa.binary())
    n = len(packed)
    offsets_buffer, data = packed.buffers()[1:3]
    byte_starts = np.frombuffer(offsets_buffer, np.int32, n + 1, packed.offset * 4).astype(np.int64)
    words = np.frombuffer(data, np.int64, (int(byte_starts[-1]) - int(byte_starts[0])) // 8, int(byte_starts[0]))
    starts = (byte_starts[:-1] - byte_starts[0]) // 8
    head = words[starts[:, None] + np.arange(_HEAD)] if n else np.zeros((0, _HEAD), np.int64)
    lengths = head[:, : len(LISTS)]
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    at = starts + _HEAD
    for name, width in zip(LISTS, lengths.T, strict=True):
        offsets = np.concatenate([[0], np.cumsum(width)]).astype(np.int64)
        flat = words[_spread(at, offsets, width)]
        lists[name] = (offsets, flat.view(np.float64).astype(np.float32) if name == "q" else flat)
        at = at + width
    scalars = {name: head[:, len(LISTS) + i].copy() for i, name in enumerate(SCALARS)}
    return lists, scalars


def _spread(at: np.ndarray, offsets: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The word index of each flat value of a list column whose row ``i``'s values sit from ``at[i]`` on."""
    return np.repeat(at - offsets[:-1], width) + np.arange(int(offsets[-1]), dtype=np.int64)


def attach_profiles(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A worker's stream of events and profile rows (each entity's row just before its events) cut into
    batches that each hold their events' rows: the last profile row of a batch is carried into the next
    one, where its entity's events may go on. Batches without an event are not passed on."""
    carry: pa.RecordBatch | None = None
    for batch in batches:
        if carry is not None:
            batch = pa.Table.from_batches([carry, batch]).combine_chunks().to_batches()[0]
        profile_rows = np.flatnonzero(batch.column(PROFILE).is_valid().to_numpy(zero_copy_only=False))
        if profile_rows.size:
            carry = batch.slice(int(profile_rows[-1]), 1)
        if profile_rows.size < batch.num_rows:
            yield batch


def joined_profiles(batch: pa.RecordBatch, population: PopulationPrior) -> tuple[pa.RecordBatch, Joined]:
    """The events of a batch (without the profile column), their profiles, and the profile row of each
    event (-1: the entity has none). The batch is one of :func:`attach_profiles` (:data:`PROFILE`: its
    profile rows among its events) or of joined rows (:data:`JOINED`: each event with its entity's row,
    read once per entity). Only this batch's profile rows are in memory."""
    import pyarrow.compute as pc

    if JOINED in batch.schema.names:
        packed = batch.column(JOINED)
        events = batch.select([n for n in batch.schema.names if n != JOINED])
        # Each entity's row from its first event that has one; an event without (no profile) gets -1.
        codes = pc.dictionary_encode(events.column("entity")).indices.to_numpy(zero_copy_only=False)
        codes = np.where(packed.is_valid().to_numpy(zero_copy_only=False), codes, -1)
        distinct, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        known = distinct >= 0
        rows = np.where(known[inverse], (np.cumsum(known) - 1)[inverse], -1).astype(np.int64)
        packed = packed.take(pa.array(first[known]))
    else:
        present = batch.column(PROFILE).is_valid()
        rows_of, events = batch.filter(present), batch.filter(pc.invert(present))
        events = events.select([n for n in batch.schema.names if n != PROFILE])
        found = pc.index_in(events.column("entity"), value_set=rows_of.column("entity"))
        rows = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), np.int64)
        packed = rows_of.column(PROFILE)
    lists, scalars = unpack_rows(packed)
    return events, (profiles_of_parts(lists, scalars, np.zeros(len(packed), np.uint64), population), rows)
