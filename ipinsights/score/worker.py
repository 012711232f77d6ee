"""Load once per Python worker, then map Arrow batches: the body of every ``mapInArrow`` of the score stage.

Spark hands a Python worker one partition after another, and the model takes far longer to load than a
batch takes to score: each worker loads its :class:`~ipinsights.score.scorer.Scorer` once (cached per
process, keyed by :class:`ScorerSource`) and runs a per-batch function over every batch it is given.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import overload

import pyarrow as pa

from ipinsights.score.scorer import BATCH_ROWS, Scorer
from ipinsights.storage.files import file_stamp

#: What a worker does with each batch: the worker's scorer and the batch in, the output batch out.
BatchFn = Callable[[Scorer, pa.RecordBatch], pa.RecordBatch]
#: How a task's batches are cut again before ``BatchFn`` sees them (the fusion's fixed chunks).
Regroup = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


@dataclass(frozen=True)
class ScorerSource:
    """What a worker loads: the model and the files that give its scorer context (the per-worker cache key).

    ``profile_stamp`` (the profile file's mtime, see :meth:`with_profile`) is only part of the key, so
    that a profile rebuilt on the driver is not served from a worker's cache.
    """

    model: str
    profile: str | None = None
    profile_stamp: int = 0
    asn_table: str | None = None
    fusion: str | None = None  # the fusion file (risk_score; needs the profile), and its stamp like the profile's
    fusion_stamp: int = 0

    @classmethod
    def with_profile(
        cls, model: str, profile: str | None = None, asn_table: str | None = None, fusion: str | None = None
    ) -> ScorerSource:
        """The source of ``model`` with the stamps of the ``profile`` and ``fusion`` files as they are now."""
        stamp = file_stamp(fusion) if fusion else 0
        return cls(model, profile, file_stamp(profile) if profile else 0, asn_table, fusion, stamp)

    def resolved(self) -> ScorerSource:
        """Absolute local paths: executors may run in another working directory than the driver."""
        return replace(
            self, model=_resolved(self.model), profile=_resolved(self.profile), fusion=_resolved(self.fusion)
        )


#: The process's one loaded scorer and its source (see :func:`worker_scorer`).
_loaded: tuple[ScorerSource, Scorer] | None = None


def worker_scorer(source: ScorerSource) -> Scorer:
    """The process's :class:`Scorer` of ``source``: loaded on first use, then reused for every batch.

    One scorer per process at a time: a long-lived worker that serves the profile build, then the
    calibration, then the scoring drops each before loading the next, so it never holds two models.
    """
    global _loaded
    if _loaded is None or _loaded[0] != source:
        _loaded = None  # released before the next one loads, not after
        gc.collect()
        # A profile's header only (the population prior): each batch brings its own entities' rows.
        scorer = Scorer.load(
            source.model,
            profile=source.profile or False,
            asn_table=source.asn_table,
            profile_rows=False,
            fusion=source.fusion or False,
        )
        _loaded = (source, scorer)
    return _loaded[1]


def batch_mapper(
    source: ScorerSource, fn: BatchFn, batch_size: int = BATCH_ROWS, regroup: Regroup | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function (:func:`ipinsights.score.spark_scoring.map_in_arrow`): a picklable closure
    that loads the worker's scorer once and maps ``fn`` (over the batches ``regroup`` makes, when given).

    ``batch_size`` is rows per torch call (the Arrow batch size is Spark's ``maxRecordsPerBatch``).
    """

    def map_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        # Spark runs one Python worker per task slot: more torch threads per worker only oversubscribe cores.
        torch.set_num_threads(1)
        scorer = worker_scorer(source)
        scorer.batch_size = batch_size  # not part of the cache key: the same model serves any batch size
        for batch in batches if regroup is None else regroup(batches):
            yield fn(scorer, batch)

    return map_batches


@overload
def _resolved(path: str) -> str: ...
@overload
def _resolved(path: None) -> None: ...
def _resolved(path: str | None) -> str | None:
    if path is None or "://" in str(path):
        return path
    return str(Path(path).resolve())
