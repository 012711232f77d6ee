"""bench/compare.py's parsing of bench output and its summary lines (no bench is run)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("bench_compare", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OUTPUT = """# input: /tmp/x (639 MB); load average 1.2
torch_threads=1
epoch_seconds=41.89
spark_noop_pairs_per_s=312,456
engine=arrow
run=0
run=1
not a figure
"""


def test_parse_figures_reads_numbers_and_skips_the_rest(compare):
    figures = compare.parse_figures(OUTPUT)
    assert figures == {"torch_threads": 1.0, "epoch_seconds": 41.89, "spark_noop_pairs_per_s": 312456.0, "run": 1.0}


def test_summarise_gives_medians_and_new_over_base(compare):
    base = [{"epoch_seconds": 10.0, "pairs": 5.0}, {"epoch_seconds": 12.0, "pairs": 5.0}, {"epoch_seconds": 11.0}]
    new = [{"epoch_seconds": 13.2, "pairs": 5.0, "only_new": 1.0}, {"epoch_seconds": 14.0, "pairs": 5.0}]
    lines = dict(line.split("=") for line in compare.summarise("train_speed", base, new))
    assert lines == {
        "train_speed.epoch_seconds_base": "11",
        "train_speed.epoch_seconds_new": "13.6",
        "train_speed.epoch_seconds_ratio": "1.236",
        "train_speed.pairs_base": "5",
        "train_speed.pairs_new": "5",
        "train_speed.pairs_ratio": "1.000",
    }


def test_summarise_of_a_zero_base_is_nan_and_of_no_runs_empty(compare):
    (_, _, ratio) = compare.summarise("b", [{"errors": 0.0}], [{"errors": 3.0}])
    assert math.isnan(float(ratio.split("=")[1]))
    assert compare.summarise("b", [], []) == []


def test_a_bench_missing_at_the_base_is_reported_not_run(compare, tmp_path, capsys):
    (tmp_path / "base" / "bench").mkdir(parents=True)
    compare.compare({"base": tmp_path / "base", "new": compare.HERE}, ["ingest_speed"], 1, {}, tmp_path)
    assert capsys.readouterr().out == "ingest_speed.missing=base\n"
