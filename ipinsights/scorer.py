"""In-process scoring with a saved model: the one implementation behind every way of scoring.

The CLI, the Spark pandas UDFs (loaded once per Python worker) and the endpoint all call
:class:`Scorer`, so a pair scores the same everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ipinsights.entities import ENTITY_FILE, EntityStats
from ipinsights.hashing import entity_buckets
from ipinsights.ip import parse_ipv4, to_string_array
from ipinsights.modelfile import ModelBundle, load_model

__all__ = ["Scorer", "load_scorer"]

ArrayLike = Iterable[str] | pa.Array | np.ndarray | pd.Series


class Scorer:
    """Scores (entity, IP) pairs with a loaded model.

    ``dot_product`` is SageMaker's output (higher = more compatible); ``anomaly_score`` is its
    negation (higher = more suspicious). Rows whose IP is not a valid address score NaN.
    """

    def __init__(self, bundle: ModelBundle, batch_size: int = 65536) -> None:
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.device = self.model.entity_table.device
        self.hash_seed = bundle.options.hash_seed
        self.num_entity_vectors = bundle.hyperparameters.num_entity_vectors
        self.vector_dim = bundle.hyperparameters.vector_dim
        self.batch_size = batch_size
        files = bundle.manifest.get("files", {})
        # Models written before entity stats existed (or by tools that skip them) have none.
        self.entity_stats = (
            EntityStats.from_bytes(bundle.extra_path(ENTITY_FILE).read_bytes()) if ENTITY_FILE in files else None
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", batch_size: int = 65536) -> Scorer:
        return cls(load_model(path, device=device), batch_size=batch_size)

    def entity_rows(self, entities: ArrayLike) -> np.ndarray:
        """Hashed embedding row of each entity."""
        return entity_buckets(to_string_array(entities), self.hash_seed, self.num_entity_vectors)

    def _run(self, fn, *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        n = arrays[0].shape[0]
        out = np.empty((n, *out_shape), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                ts = [torch.as_tensor(a[s : s + self.batch_size], device=self.device) for a in arrays]
                out[s : s + self.batch_size] = fn(*ts).float().cpu().numpy()
        return out

    def dot_product(self, entities: ArrayLike, ips: ArrayLike) -> np.ndarray:
        """``float32`` dot products, NaN where the IP is invalid."""
        ent = self.entity_rows(entities)
        parsed = parse_ipv4(ips)
        if ent.shape[0] != parsed.value.shape[0]:
            raise ValueError(f"{ent.shape[0]} entities but {parsed.value.shape[0]} IPs")
        out = self._run(self.model, ent, parsed.value.astype(np.int64), out_shape=())
        out[~parsed.valid] = np.nan
        return out

    def anomaly_score(self, entities: ArrayLike, ips: ArrayLike) -> np.ndarray:
        """``-dot_product``: higher means more suspicious."""
        return -self.dot_product(entities, ips)

    def entity_embedding(self, entities: ArrayLike) -> np.ndarray:
        """``(n, vector_dim)`` entity vectors."""
        return self._run(self.model.entity_vectors, self.entity_rows(entities), out_shape=(self.vector_dim,))

    def ip_embedding(self, ips: ArrayLike) -> np.ndarray:
        """``(n, vector_dim)`` IP vectors; rows of invalid addresses are NaN."""
        parsed = parse_ipv4(ips)
        out = self._run(self.model.ip_vectors, parsed.value.astype(np.int64), out_shape=(self.vector_dim,))
        out[~parsed.valid] = np.nan
        return out

    def training_counts(self, entities: ArrayLike) -> np.ndarray | None:
        """Training events of each entity (0 = never seen), or None if the model holds no entity stats."""
        if self.entity_stats is None:
            return None
        return self.entity_stats.counts_for(to_string_array(entities), self.hash_seed)

    def score_frame(self, df: pd.DataFrame, entity_col: str = "entity", ip_col: str = "ip") -> pd.DataFrame:
        """``df`` with ``dot_product``, ``anomaly_score`` and (when known) ``unseen_entity`` added."""
        dp = self.dot_product(df[entity_col], df[ip_col])
        out = df.assign(dot_product=dp, anomaly_score=-dp)
        counts = self.training_counts(df[entity_col])
        if counts is not None:
            out["unseen_entity"] = counts == 0
        return out

    @property
    def manifest(self) -> dict[str, Any]:
        return self.bundle.manifest


@functools.lru_cache(maxsize=4)
def load_scorer(path: str, device: str = "cpu") -> Scorer:
    """A :class:`Scorer` cached per process: Spark's Python workers load each model once, not per batch."""
    return Scorer.load(path, device=device)
