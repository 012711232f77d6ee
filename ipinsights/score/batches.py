"""What a scoring worker does to one Arrow batch: its score columns, or the explanation of flagged rows.

Both run inside Spark's Python workers (:mod:`ipinsights.score.worker`) and need no Spark themselves:
a batch comes in with ``entity`` and ``ip`` (and, with entity profiles, its entities' packed profile
rows), and goes out with the columns of :data:`~ipinsights.score.schemas.SCORE_FIELDS` or
:data:`~ipinsights.score.schemas.EXPLAIN_FIELDS` appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ipinsights.score.clients import event_devices
from ipinsights.score.features import event_days
from ipinsights.score.profile_stream import JOINED, PROFILE, joined_profiles
from ipinsights.score.profiles import PopulationPrior
from ipinsights.score.rules import LEVELS, RULES, Thresholds
from ipinsights.score.schemas import EXPLAIN_FIELDS, SCORE_FIELDS
from ipinsights.score.scorer import BATCH_ROWS, Joined, Scorer
from ipinsights.score.worker import ScorerSource

__all__ = ["ScoringSetup", "explain_batch", "score_batch"]


@dataclass(frozen=True)
class ScoringSetup:
    """What every Python worker needs to score: what to load (model, profile, ASN table), rules and thresholds."""

    source: ScorerSource
    batch_size: int = BATCH_ROWS  # rows per torch call
    learning_period_events: int = 10
    thresholds: Thresholds | None = None  # None: ``level`` and ``flagged`` null
    flag_unseen: bool = False
    profile_rows: tuple[str, ...] | None = None  # the profile's rows files, streamed along (percentiles, explanations)


def split_joined(scorer: Scorer, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, Joined | None]:
    """A batch's events and their profiles (None when it brings none:
    :func:`~ipinsights.score.profile_stream.joined_profiles`)."""
    if PROFILE not in batch.schema.names and JOINED not in batch.schema.names:
        return batch, None
    return joined_profiles(batch, scorer.population or PopulationPrior())


def _days(batch: pa.RecordBatch) -> np.ndarray | None:
    """The rows' days (the fusion's recency features), None when the batch has no timestamps."""
    return event_days(batch.column("ts"), batch.num_rows) if "ts" in batch.schema.names else None


_RULE_STRINGS = pa.array(RULES, pa.string())
_LEVEL_STRINGS = pa.array(LEVELS, pa.string())


def _strings(codes: np.ndarray, strings: pa.Array) -> pa.Array:
    """String column of small codes (-1: null), taken from ``strings`` in Arrow: no Python string per row."""
    return strings.take(pa.array(codes, mask=codes < 0))


def _floats(values: np.ndarray | None, n: int, kind: pa.DataType | None = None) -> pa.Array:
    """Float column (of ``kind``, else of the values' type; float64 when all null), null where not finite
    (Spark's null, not NaN, means "no score"); all null for None."""
    if values is None:
        return pa.nulls(n, kind or pa.float64())
    out = pa.array(values, mask=~np.isfinite(values))
    return out if kind is None else out.cast(kind)


def score_batch(setup: ScoringSetup, scorer: Scorer, batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` plus the score columns (:data:`~ipinsights.score.schemas.SCORE_FIELDS`)."""
    batch, joined = split_joined(scorer, batch)
    a = scorer.assess(
        batch.column("entity"),
        batch.column("ip"),
        setup.learning_period_events,
        setup.thresholds,
        setup.flag_unseen,
        joined,
        _days(batch),
        event_devices(batch),
    )
    n = len(a.dot_product)
    unseen = a.unseen_entity
    if a.level_code is not None and a.flagged is not None:
        flagged_col, level_col = pa.array(a.flagged), _strings(a.level_code, _LEVEL_STRINGS)
    else:
        flagged_col, level_col = pa.nulls(n, pa.bool_()), pa.nulls(n, pa.string())
    cols = [
        _floats(a.dot_product, n),
        _floats(a.prior_score, n),
        _floats(a.anomaly_score, n),
        _floats(a.risk_score, n, pa.float32()),
        pa.array(a.training_count, pa.int64()) if a.training_count is not None else pa.nulls(n, pa.int64()),
        pa.array(unseen) if unseen is not None else pa.nulls(n, pa.bool_()),
        _strings(a.rule_code, _RULE_STRINGS),
        _floats(a.entity_percentile, n),
        _floats(a.normal_percentile, n),
        level_col,
        flagged_col,
    ]
    return pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *SCORE_FIELDS.names])


def explain_batch(scorer: Scorer, batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` plus the explanation columns (flagged rows are few: Python lists are fine)."""
    batch, joined = split_joined(scorer, batch)
    ent, ip, devices = batch.column("entity"), batch.column("ip"), event_devices(batch)
    agents = batch.column("user_agent").to_pylist() if "user_agent" in batch.schema.names else None
    columns = scorer.explain(ent, ip, joined=joined, days=_days(batch), devices=devices, agents=agents).columns()
    columns["nearest_networks"] = [
        None if v is None else "; ".join(f"{x['network']} (cos {x['similarity']:.2f}, {x['events']} events)" for x in v)
        for v in columns["nearest_networks"]
    ]
    cols = [pa.array(columns[f.name], f.type) for f in EXPLAIN_FIELDS]
    return pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *EXPLAIN_FIELDS.names])
