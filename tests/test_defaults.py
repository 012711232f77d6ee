"""One set of defaults: the shipped ``conf/train.yml`` is the ``TrainConfig`` dataclasses' defaults (SageMaker's
documented hyperparameter defaults), ``conf/demo.yml`` differs from it only in the SageMaker tutorial's
hyperparameters, and the README's table says the same as both files."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from ipinsights.core.config import Hyperparameters, TrainConfig, config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
#: The two values SageMaker requires (no default): its example's entity vectors, its recommended dimension.
REQUIRED = {"num_entity_vectors": 20_000, "vector_dim": 128}
#: What the SageMaker tutorial notebook sets beyond those, and so what the demo trains with.
TUTORIAL = {"epochs": 5, "learning_rate": 0.01, "mini_batch_size": 1000, "random_negative_sampling_rate": 5}


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _differences(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[object, object]]:
    fa, fb = _flat(config_to_dict(a)), _flat(config_to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}


def test_the_shipped_training_config_is_the_dataclass_defaults():
    shipped = load_config(TrainConfig, ROOT / "conf" / "train.yml")
    defaults = TrainConfig(hyperparameters=Hyperparameters(**REQUIRED))
    assert _differences(shipped, defaults) == {}  # field by field, every section
    # ... and the file spells out every hyperparameter, so that reading it tells the values.
    raw = yaml.safe_load((ROOT / "conf" / "train.yml").read_text())["hyperparameters"]
    assert set(raw) == {f.name for f in dataclasses.fields(Hyperparameters)}


def test_the_demo_differs_only_in_the_tutorials_hyperparameters():
    demo = load_config(TrainConfig, ROOT / "conf" / "demo.yml")
    shipped = load_config(TrainConfig, ROOT / "conf" / "train.yml")
    diff = _differences(demo, shipped)
    assert {k: v[0] for k, v in diff.items()} == {f"hyperparameters.{k}": v for k, v in TUTORIAL.items()}


def _readme_table() -> dict[str, tuple[str, str]]:
    """name -> (SageMaker's default, the demo's value), as the README's hyperparameter table writes them."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Hyperparameters") : text.index("## The model")]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if re.match(r"\| [a-z_]+ ", line)][1:]  # no header
    return {cells[0].split()[0]: (cells[1].strip(), cells[2].strip()) for cells in rows}


def _number(cell: str) -> float | None:
    """The cell's value (its first number, thousands separators dropped); None for ``required (...)``."""
    if cell.startswith("required"):
        return None
    return float(re.match(r"[0-9.,e-]+", cell).group().replace(",", ""))  # type: ignore[union-attr]


def test_the_readme_table_says_which_default_is_which():
    table = _readme_table()
    demo = config_to_dict(load_config(TrainConfig, ROOT / "conf" / "demo.yml").hyperparameters)
    shipped = config_to_dict(load_config(TrainConfig, ROOT / "conf" / "train.yml").hyperparameters)
    assert set(table) == set(shipped)
    for name, (sagemaker, ours) in table.items():
        expected = None if name in REQUIRED else shipped[name]
        assert _number(sagemaker) == expected, (name, sagemaker)
        assert _number(ours) == demo[name], (name, ours)
