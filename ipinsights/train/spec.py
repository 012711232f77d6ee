"""A training run as plain values (:class:`RunSpec`) and the files it reads and writes on an executor:
encoded-pair Parquet work files and per-epoch metrics.

A run that crosses to a Spark executor (a distributed rank, a tuning trial) gets only a spec of
paths and dicts, never a SparkSession or a DataFrame, and reads its data itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions, config_from_dict
from ipinsights.core.errors import DataFormatError
from ipinsights.core.hashing import buckets_of
from ipinsights.storage.files import atomic_write
from ipinsights.storage.parquet import read_parquet_files
from ipinsights.train.data import EncodedPairs

__all__ = ["PAIR_COLUMNS", "RunSpec", "encoded_pairs", "read_pairs", "write_metrics"]


@dataclass(kw_only=True)
class RunSpec:
    """What every training run on an executor needs: its configs (as dicts), where the model goes,
    the validation pairs and the entity stats (paths or URIs), and the resolved config saved with the model."""

    hyperparameters: dict[str, Any]
    model_options: dict[str, Any]
    train_options: dict[str, Any]
    model_dir: str
    validation_files: list[str] = field(default_factory=list)
    entity_stats_file: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: More of the training record saved with the model (e.g. the day windows it was trained on).
    record: dict[str, Any] = field(default_factory=dict)

    def options(self) -> tuple[Hyperparameters, ModelOptions, TrainOptions]:
        """The typed (and validated) hyperparameters, model options and train options."""
        return (
            config_from_dict(Hyperparameters, self.hyperparameters),
            config_from_dict(ModelOptions, self.model_options),
            config_from_dict(TrainOptions, self.train_options),
        )


#: The columns of an encoded-pair work file (:mod:`ipinsights.train.prepare` writes them).
PAIR_COLUMNS = ["entity_hash", "ip"]


def read_pairs(files: Sequence[str], num_entity_vectors: int) -> EncodedPairs:
    """Encoded pairs from work files of (64-bit ``entity_hash``, ``ip``) rows: local paths, file: or s3 URIs.

    The files hold the entities' full hashes, so that a run chooses its ``num_entity_vectors`` (a
    tuning trial may tune it); the row is :func:`ipinsights.core.hashing.buckets_of` the hash, as for
    every other entity row. All of it is read into memory: a training rank streams its shard instead
    (:mod:`ipinsights.train.stream`).
    """
    if not files:  # a rank may be dealt no bucket in an epoch
        return EncodedPairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    what = files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more files)"
    return encoded_pairs(read_parquet_files(files, PAIR_COLUMNS), num_entity_vectors, what)


def encoded_pairs(table: pa.Table, num_entity_vectors: int, what: str) -> EncodedPairs:
    """The pairs of a table of work-file rows (``what``: where it was read, for errors)."""
    try:
        hashes = np.asarray(table["entity_hash"].to_numpy(), dtype=np.int64)
        ips = np.array(table["ip"].to_numpy(), dtype=np.int64)  # a copy: Arrow's view is read-only
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise DataFormatError(f"{what}: not encoded (entity_hash, ip) pairs: {exc}") from exc
    return EncodedPairs(buckets_of(hashes.view(np.uint64), num_entity_vectors), ips)


def write_metrics(path: str | Path, history: Iterable[Mapping[str, Any]]) -> None:
    """Per-epoch metrics as JSON lines (one epoch a line), written atomically to a path or URI."""
    with atomic_write(path) as fh:
        fh.writelines(json.dumps(dict(h), default=str) + "\n" for h in history)
