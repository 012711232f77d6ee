"""The Spark side of the Arrow plumbing: table schemas as Spark structs, and the workers' ``mapInArrow``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from ipinsights.score.scorer import BATCH_ROWS
from ipinsights.score.worker import BatchFn, Regroup, ScorerSource, batch_mapper

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

__all__ = ["map_in_arrow", "struct_type"]


def struct_type(schema: pa.Schema) -> StructType:
    """The Spark struct of a pyarrow schema (:mod:`ipinsights.score.schemas`; zoned timestamps are Spark's
    ``timestamp``)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def map_in_arrow(
    df: DataFrame,
    source: ScorerSource,
    fn: BatchFn,
    schema: StructType | str,
    batch_size: int = BATCH_ROWS,
    regroup: Regroup | None = None,
) -> DataFrame:
    """``df.mapInArrow`` with ``fn`` run on every batch (as ``regroup`` cuts them again, when given) by the
    worker's scorer of ``source`` (:func:`ipinsights.score.worker.batch_mapper`: one load per Python worker)."""
    return df.mapInArrow(batch_mapper(source.resolved(), fn, batch_size, regroup), schema)
