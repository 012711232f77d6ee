"""Shared fixtures: one session-scoped local[2] SparkSession (created only if a test asks for it) and the
toy model the endpoint and export tests score with (trained once per session, copied per module)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from cluster import spark_cluster  # noqa: F401  (the session's standalone Spark cluster, for tests marked cluster)

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # otherwise Spark binds to the external address
# Spark's Python workers must run the interpreter the tests run in (the project's virtualenv).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by the whole test session (starting one costs ~6 s)."""
    pyspark = pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("ipinsights-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    assert pyspark is not None
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _session_settings_kept(request: pytest.FixtureRequest):
    """Every test leaves the shared session's SQL settings as it found them: a job run in a test sets its
    own (``build_spark``'s options on the existing session, the score job's Arrow batch size), and a test's
    ``spark.conf.unset`` would drop the fixture's values for Spark's defaults, changing how every later test
    is planned (its partitions, hence anything that depends on them)."""
    if "spark" not in request.fixturenames:
        yield
        return
    spark = request.getfixturevalue("spark")
    before = _settings(spark)
    yield
    # Through the session's own SQLConf, as build_spark's options on an existing session get there: the
    # public spark.conf refuses the core settings (spark.ui.*) those options may have added.
    conf = spark._jsparkSession.sessionState().conf()
    after = _settings(spark)
    for key in after.keys() - before.keys():
        conf.unsetConf(key)
    for key, value in before.items():
        if after.get(key) != value:
            conf.setConfString(key, value)


def _settings(spark) -> dict[str, str]:
    return {row.key: row.value for row in spark.sql("SET").collect()}


@pytest.fixture(scope="session")
def _toy_model_once(tmp_path_factory) -> Path:
    from servers import train_toy_model

    return train_toy_model(tmp_path_factory.mktemp("toy-model") / "model")


@pytest.fixture(scope="module")
def toy_model(_toy_model_once, tmp_path_factory) -> Path:
    """A small trained model (``tests/servers.train_toy_model``'s defaults) in a folder of this module's own:
    tests write calibrations and profiles beside it, which must not leak into other modules."""
    dst = tmp_path_factory.mktemp("model-copy") / "model"
    shutil.copytree(_toy_model_once, dst)
    return dst
