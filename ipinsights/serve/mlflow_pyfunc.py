"""The model as an MLflow ``pyfunc``: ``predict`` takes a DataFrame of ``entity`` and ``ip`` and returns a
DataFrame with one column, ``dot_product``: the model's score of each pair as :meth:`Scorer.dot_product`
computes it (higher = more compatible, SageMaker's output; NaN where the address is not valid). SageMaker's
headerless CSV reads in with ``pd.read_csv(f, header=None, names=["entity", "ip"])``: the signature wants
the names (unnamed columns are refused by MLflow before the model sees them).

The logged model holds the project's own model files (``model.json`` and its safetensors) as an artifact,
with the ip2asn table a model trained with one needs (so it loads anywhere), and ``load_context`` loads
them with the project's loader. Nothing of ours is pickled: the model's code is MLflow's "model from
code", a three-line file naming :class:`ScorerModel`, which comes from the installed ``ipinsights``
(a pip requirement of the model, at the version that logged it).

This module imports mlflow: :mod:`ipinsights.serve.mlflow_run` imports it only when logging is on.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, log_model
from mlflow.types import ColSpec, Schema

from ipinsights._version import __version__
from ipinsights.score.scorer import Scorer
from ipinsights.storage.files import local_copy
from ipinsights.storage.modelfile import load_model, local_model

__all__ = ["ENTITY", "IP", "OUTPUT", "SIGNATURE", "ScorerModel", "log_scorer_model"]

log = logging.getLogger(__name__)

ENTITY, IP, OUTPUT = "entity", "ip", "dot_product"

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", ENTITY), ColSpec("string", IP)]),
    outputs=Schema([ColSpec("float", OUTPUT)]),
)

#: Made-up pairs (documentation addresses), not rows of the training data: the example is stored with the model.
INPUT_EXAMPLE = pd.DataFrame({ENTITY: ["alice", "bob"], IP: ["192.0.2.10", "198.51.100.7"]})

#: The model's code as MLflow runs it when loading (the class itself comes from the installed package).
MODEL_CODE = (
    "from mlflow.models import set_model\n"
    "from ipinsights.serve.mlflow_pyfunc import ScorerModel\n"
    "\n"
    "set_model(ScorerModel())\n"
)

#: Artifact keys of the model directory and of the ip2asn table's files (``asn_table_0``, ``asn_table_1``...).
MODEL_ARTIFACT, TABLE_ARTIFACT = "model", "asn_table_"


class ScorerModel(PythonModel):
    """The project's :class:`Scorer` behind MLflow's ``pyfunc`` interface."""

    def load_context(self, context: Any) -> None:
        files = context.artifacts
        tables = sorted((k for k in files if k.startswith(TABLE_ARTIFACT)), key=lambda k: int(k[len(TABLE_ARTIFACT) :]))
        table = ",".join(str(files[k]) for k in tables) or None
        self.scorer = Scorer.load(files[MODEL_ARTIFACT], asn_table=table)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # MLflow has checked the input against the signature: a DataFrame with (at least) these two columns.
        scores = self.scorer.dot_product(model_input[ENTITY], model_input[IP])
        return pd.DataFrame({OUTPUT: scores}, index=model_input.index)


def log_scorer_model(model_uri: str, name: str = "model", registered_model_name: str | None = None) -> Any:
    """Log the model at ``model_uri`` (a path or URI) into the active MLflow run as a ``pyfunc`` called
    ``name``, registered under ``registered_model_name`` when given; returns MLflow's ``ModelInfo``."""
    local = local_model(model_uri)  # a remote model is downloaded once (the project's cache)
    artifacts = {MODEL_ARTIFACT: str(local)}
    # Loaded as scoring loads it: checked, and with the ip2asn table it finds (the recorded one, else the
    # networks cache's with the model's fingerprint), which travels with the logged model.
    table = load_model(local).asn_table
    for i, uri in enumerate(u.strip() for u in (table.source if table else "").split(",") if u.strip()):
        artifacts[f"{TABLE_ARTIFACT}{i}"] = str(local_copy(uri))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "ipinsights_model.py"
        code.write_text(MODEL_CODE, encoding="utf-8")
        return log_model(
            name=name,
            python_model=str(code),
            artifacts=artifacts,
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=[f"ipinsights=={__version__}"],  # the package the model's code comes from
            registered_model_name=registered_model_name,
        )
