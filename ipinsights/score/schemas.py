"""The score stage's tables, each defined once as a pyarrow schema (no Spark needed to read them).

The Spark schemas are derived from these (:func:`ipinsights.score.spark_arrow.struct_type`), and so are
the column lists; the Arrow batches the workers return are built against the same fields.

* :data:`SCORES`: one row per scored event (``dt``-partitioned);
* :data:`FLAGGED`: the flagged events, with what training knew (:data:`~ipinsights.score.rules.BASELINES`),
  their explanations and the threshold in force;
* :data:`CASES`: the day's cases (:mod:`ipinsights.score.cases`), ranked.
"""

from __future__ import annotations

import pyarrow as pa

from ipinsights.score.rules import BASELINES

__all__ = [
    "CASE_EVENT",
    "CASES",
    "CASES_UNRANKED",
    "EXPLAIN_FIELDS",
    "FINISHED_FIELDS",
    "FLAGGED",
    "GROUPED",
    "SCORE_FIELDS",
    "SCORES",
    "names",
    "schema_of",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: What scoring adds to an event (:func:`ipinsights.score.batches.score_batch`).
SCORE_FIELDS = pa.schema(
    [
        ("dot_product", pa.float32()),  # SageMaker's raw output (higher = more compatible); null: invalid address
        ("prior_score", pa.float32()),  # anomaly score against the population prior (the learning period's rule)
        ("anomaly_score", pa.float32()),  # the score of the row's rule (higher = more suspicious)
        ("risk_score", pa.float32()),  # the fused risk score (higher = more suspicious); null without a fusion
        ("training_count", pa.int64()),  # the entity's events in training (0 = unseen; null: no entity stats)
        ("unseen_entity", pa.bool_()),  # training_count == 0
        ("rule", pa.string()),  # model_score, learning_period or invalid_ip (ipinsights.score.rules)
        ("entity_percentile", pa.float64()),  # 0-100 among the entity's own training scores (profile)
        ("normal_percentile", pa.float64()),  # 0-100 among normal traffic of its rule (calibration)
        ("level", pa.string()),  # low / medium / high from the thresholds of the rule
        ("flagged", pa.bool_()),  # level == high (or an unseen entity, with flag_unseen)
    ]
)


def _before_dt(schema: pa.Schema, *fields: pa.Field | tuple[str, pa.DataType]) -> pa.Schema:
    """``schema`` with ``fields`` inserted before its last column, ``dt`` (the partition column comes last)."""
    return pa.schema([*schema.remove(schema.get_field_index("dt")), *fields, ("dt", pa.string())])


#: The scores table.
SCORES = pa.schema(
    [
        ("entity", pa.string()),
        ("ip", pa.string()),
        ("ts", TIMESTAMP),
        ("user_agent", pa.string()),  # the event's client (null: none in the log, or a table from before it)
        *SCORE_FIELDS,
        ("dt", pa.string()),
    ]
)

#: The explanation of a flagged event (:class:`ipinsights.score.explain.Explanations`).
EXPLAIN_FIELDS = pa.schema(
    [
        ("subnet", pa.string()),
        ("subnet_seen", pa.bool_()),
        ("network", pa.string()),
        ("network_seen", pa.bool_()),
        ("asn", pa.int64()),
        ("asn_seen", pa.bool_()),
        ("as_name", pa.string()),
        ("usual_ases", pa.string()),
        ("nearest_networks", pa.string()),
        ("closest_network", pa.string()),
        ("shared_prefix_bits", pa.int32()),
        ("typical_low", pa.float64()),
        ("typical_high", pa.float64()),
        ("known_networks", pa.int32()),
        ("usual_events", pa.int64()),
        ("risk_factors", pa.string()),  # what raised the risk score most, in words (null without a fusion)
        ("device", pa.string()),  # the client against the entity's in training, in words (null: no user agent)
        ("agent_entities", pa.int64()),  # training entities that used its user-agent string (null: none)
    ]
)

#: The flagged table: the scores' columns, the training lookups, the explanation and the threshold.
FLAGGED = _before_dt(SCORES, *((name, pa.bool_()) for name in BASELINES), *EXPLAIN_FIELDS, ("threshold", pa.float64()))

#: One event of a case, as the case keeps it (the report's details, verdicts, training input).
CASE_EVENT = pa.struct(
    [
        ("risk_score", pa.float32()),  # first: a case's events are listed by the score in force, highest first
        ("anomaly_score", pa.float32()),
        ("ts", TIMESTAMP),
        ("entity", pa.string()),
        ("ip", pa.string()),
        ("normal_percentile", pa.float64()),
        ("network_name", pa.string()),
        ("new_network", pa.bool_()),
        ("network_key", pa.string()),
        ("subnet", pa.string()),
        ("network", pa.string()),
    ]
)

#: A case as grouped on Spark, before :func:`ipinsights.score.cases.finish_batch` (both kinds).
GROUPED = pa.schema(
    [
        ("kind", pa.string()),
        ("entity", pa.string()),
        ("source", pa.string()),
        ("entities", pa.int64()),
        ("events", pa.int64()),
        ("networks", pa.int64()),
        ("first_ts", TIMESTAMP),
        ("last_ts", TIMESTAMP),
        ("score_percentile", pa.float64()),
        ("top_score", pa.float32()),
        ("top_ip", pa.string()),
        ("top_network", pa.string()),
        ("top_new", pa.bool_()),
        ("top_device", pa.string()),  # the top event's client in words (explain.device_words); null: none
        ("top_new_device", pa.bool_()),  # its device is not one of the entity's in training
        ("training_count", pa.int64()),
        ("known_networks", pa.int32()),
        ("usual_events", pa.int64()),
        ("usual_today", pa.int64()),
        ("usual_ases", pa.string()),
        ("network_keys", pa.list_(pa.string())),
        ("network_names", pa.list_(pa.string())),
        ("members", pa.list_(pa.string())),
        ("events_detail", pa.list_(CASE_EVENT)),
        ("prior_verdict", pa.string()),
        ("dt", pa.string()),
    ]
)

#: What finishing a case adds: its id, severity, whether it is open (above the case floor) and its summary.
FINISHED_FIELDS = pa.schema(
    [("case_id", pa.string()), ("severity", pa.float64()), ("open", pa.bool_()), ("summary", pa.string())]
)


#: A finished case: the grouped columns, the finishing ones, then ``dt`` (as :func:`finish_batch` returns it).
CASES_UNRANKED = _before_dt(GROUPED, *FINISHED_FIELDS)

#: The cases table (``rank`` 1 = most severe case of its day).
CASES = _before_dt(CASES_UNRANKED, ("rank", pa.int32()))


def names(schema: pa.Schema) -> list[str]:
    """The column names of ``schema``, in order."""
    return list(schema.names)


def schema_of(table: pa.Schema, *columns: str) -> pa.Schema:
    """The fields of ``table`` named by ``columns``, in that order (a projection of a table's schema)."""
    return pa.schema([table.field(c) for c in columns])


#: Columns of the flagged cases shown in the report and written to the CSV.
CASE_COLUMNS = (
    "entity",
    "ip",
    "ts",
    "anomaly_score",
    "level",
    "rule",
    "risk_score",
    "normal_percentile",
    "entity_percentile",
    "typical_low",
    "typical_high",
    "training_count",
    "nearest_networks",
    "closest_network",
    "shared_prefix_bits",
    "subnet",
    "subnet_seen",
    "network",
    "network_seen",
    "asn",
    "asn_seen",
    "as_name",
    "usual_ases",
    "risk_factors",
    "device",
    "user_agent",
    *BASELINES,
)
