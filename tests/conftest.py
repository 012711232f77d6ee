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


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The golden scoring test first, in the session as fresh as when its files were recorded.

    Known problem (issue 30's fusion, open): after the rest of the suite has run in the shared session,
    the fused run's fusion comes out different (the same different numbers every time, while the test
    alone, or after tests/test_fusion.py, matches). Which earlier test's state leaks into it is not found
    yet; production jobs get a session of their own. The order of the rest is kept (a stable sort).
    """
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_golden_score.py") else 1)
