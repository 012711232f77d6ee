"""The Spark side of the entity profiles on every Spark the project runs on (3.5 has no ``DataFrame.toArrow``)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.spark


def test_to_arrow_without_toarrow_gives_the_same_table(spark, monkeypatch):
    """Spark 3.5's path (rows collected into ``toArrow``'s Arrow schema) gives what ``toArrow`` gives."""
    from pyspark.sql import functions as F

    from ipinsights.score.spark_profiles import to_arrow

    df = spark.range(500).select(
        (F.col("id") % 37).alias("net"), F.lit(None).cast("string").alias("s"), (F.col("id") / 3).alias("d")
    )
    frames = [df.groupBy("net").count().orderBy("net"), df.orderBy("net", "d")]
    wanted = [frame.toArrow() for frame in frames]
    for cls in type(df).__mro__:  # as on Spark 3.5
        if "toArrow" in vars(cls):
            monkeypatch.delattr(cls, "toArrow")
    assert not hasattr(df, "toArrow")
    for frame, want in zip(frames, wanted, strict=True):
        got = to_arrow(frame)
        assert got.schema.equals(want.schema, check_metadata=True), (got.schema, want.schema)
        assert got.equals(want)
