"""The demo pipeline end to end on local[2] (generate -> ingest -> train -> score -> cases -> evaluate), the
run a new user makes first; CI runs it on the newest and on the oldest supported Spark (oldest_spark).

Each run leaves its results in ``$IPINSIGHTS_SPARK_RESULTS/pipeline-spark<version>.json`` when that
variable is set (CI's legs set it to one folder); a run that finds the other version's file there checks
that both versions gave the same results: the per-kind AUCs within ``AUC_TOLERANCE`` and the precision of
each test day's top cases within ``PRECISION_TOLERANCE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

#: How far the two Spark versions' per-kind AUCs and case precisions may be apart (measured: identical,
#: 2026-12-07). Training runs on two threads, whose float sums need not be reproducible to the bit.
AUC_TOLERANCE = 0.002
PRECISION_TOLERANCE = 0.1  # one case in the top 10


def _summary(w: Path) -> dict:
    ev = json.loads((w / "evaluation.json").read_text())
    cases = ev.get("cases", {})
    return {
        "auc": ev["auc"]["model"],
        "cases": {d: m["cases_at_50"] for d, m in cases.items()},
        "precision": {f"{d} top {k}": m[f"precision_at_{k}"] for d, m in cases.items() for k in (10, 50)},
    }


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.oldest_spark
@pytest.mark.timeout(1200)
def test_demo_pipeline_runs_end_to_end_on_local_spark(spark, tmp_path, capsys):
    import pyspark

    from ipinsights_jobs import pipeline

    w = tmp_path / "demo"
    argv = ["--workdir", str(w), "--users", "300", "--epochs", "1", "--seed", "3", "--max-cases", "20"]
    assert pipeline.main(argv) == 0
    out = capsys.readouterr().out
    assert "test AUC per attack kind (model)" in out and "report:" in out
    got = _summary(w)
    # The model learns: attacks from random addresses stand out, and each test day has cases to read.
    assert got["auc"]["random_ip"] > 0.9, got
    assert got["cases"] and all(n > 0 for n in got["cases"].values()), got
    for day in got["cases"]:
        assert (w / "reports" / f"dt={day}" / "report.html").exists()
    results = os.environ.get("IPINSIGHTS_SPARK_RESULTS")
    if not results:
        return
    version = ".".join(pyspark.__version__.split(".")[:2])
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"pipeline-spark{version}.json").write_text(json.dumps(got, indent=1, sort_keys=True))
    for other in sorted(folder.glob("pipeline-spark*.json")):
        if other.name == f"pipeline-spark{version}.json":
            continue
        theirs = json.loads(other.read_text())
        assert sorted(theirs["auc"]) == sorted(got["auc"]), (other.name, theirs, got)
        gaps = {k: abs(theirs["auc"][k] - got["auc"][k]) for k in got["auc"]}
        assert max(gaps.values()) <= AUC_TOLERANCE, (other.name, gaps)
        precision = {k: abs((theirs["precision"][k] or 0) - (v or 0)) for k, v in got["precision"].items()}
        assert max(precision.values(), default=0) <= PRECISION_TOLERANCE, (other.name, theirs, got)
        print(
            f"same pipeline on {other.name}: largest per-kind AUC gap {max(gaps.values()):.4f}, "
            f"largest case precision gap {max(precision.values(), default=0):.3f}"
        )
