"""Fitting the fused risk score on Spark: a sidecar of the model, like the calibration.

Why the score stage, as a sidecar (``<model>.fusion.json``), and not the end of training: the fusion's
features read the entity profiles, which the scoring job builds from the model's training days, and it
is fitted on logins the model and the profiles never saw, the held-out days the model records (its
validation days, the calibration days). Both exist only here; and like the calibration it is redone when
its inputs change (another model, profile build, ip2asn table or settings), which the file records.

The steps (:func:`build_fusion`): sample up to ``fusion.sample_rows`` logins of the calibration days,
join their entities' profile rows, and on the executors draw an attack of each kind per login and
compute every row's features (:func:`ipinsights.score.fusion_data.fusion_rows`, one ``mapInArrow``), add
the labelled rows and the investigators' verdicts when given; the rows (bounded by the sample) are
written as Parquet from the tasks, read on the driver, weighted (:func:`row_weights`) and fitted there
(:func:`ipinsights.score.fusion_fit.fit_fusion`: numpy, seconds).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial, reduce
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.score.config import ScoreConfig
from ipinsights.score.fusion import FusionModel, FusionSpec, save_fusion
from ipinsights.score.fusion_data import ATTACKS, NORMAL, fixed_chunks, fusion_rows, rows_schema
from ipinsights.score.fusion_fit import default_spec, fit_fusion
from ipinsights.score.hosting import parse_asn_list, shipped_hosting_asns
from ipinsights.score.profile_stream import JOINED
from ipinsights.score.profiles import ProfileHeader
from ipinsights.score.spark_arrow import map_in_arrow, struct_type
from ipinsights.score.spark_profiles import join_profile_rows, written_parts
from ipinsights.score.spark_scoring import with_devices
from ipinsights.score.worker import ScorerSource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = ["build_fusion", "fusion_spec", "hosting_asns", "row_weights"]

LABELLED, VERDICT = "labelled", "verdict"


def fusion_spec(cfg: ScoreConfig, with_table: bool) -> FusionSpec:
    """The features the settings ask for (``fusion.gate``, ``fusion.features_*``), else the shipped ones."""
    base = default_spec(with_table)
    s = cfg.fusion
    return FusionSpec(s.gate or base.gate, s.features_new or base.new, s.features_seen or base.seen)


def hosting_asns(cfg: ScoreConfig) -> tuple[int, ...]:
    """The hosting AS numbers: the file ``fusion.hosting_asns`` names, else the shipped list."""
    from ipinsights.storage.files import read_text

    path = cfg.fusion.hosting_asns
    return parse_asn_list(read_text(path), path) if path else shipped_hosting_asns()


def row_weights(kind: np.ndarray, labelled_weight: float = 1.0, verdict_weight: float = 1.0) -> np.ndarray:
    """Each training row's weight: a login 1; each drawn attack kind as much in all as the logins divided by
    the number of kinds (equal total weight per kind, attacks and logins balanced); the labelled rows and
    the verdicts ``labelled_weight`` and ``verdict_weight`` times the drawn rows' total, spread evenly."""
    kind = np.asarray(kind, object)
    w = np.zeros(kind.size)
    normal = kind == NORMAL
    w[normal] = 1.0
    logins = float(normal.sum())
    kinds = [k for k in ATTACKS if (kind == k).any()]
    for k in kinds:
        rows = kind == k
        w[rows] = logins / (len(kinds) * rows.sum())
    drawn = 2.0 * logins if kinds else logins
    for k, share in ((LABELLED, labelled_weight), (VERDICT, verdict_weight)):
        rows = kind == k
        if rows.any():
            w[rows] = share * max(drawn, float(rows.sum())) / rows.sum()
    return w


_ROWS_PER_PART = 25_000  # the fit's input rows per task: a few Arrow batches each
_BUCKET = "_fusion_bucket"
_HASH_RANGE = 1 << 30  # the sample's hash is cut to this range: a fraction's resolution


def build_fusion(
    spark: SparkSession,
    cfg: ScoreConfig,
    header: ProfileHeader,
    path: str,
    table_fingerprint: str | None,
    fence: Callable[[], None] | None = None,
) -> FusionModel:
    """Fit the fusion on the calibration days (see the module docstring) and store it at ``path``; ``fence``
    (the sidecar's lease check) runs just before it is stored, so a run that lost the lease stores nothing."""
    from ipinsights.storage.files import delete_uri
    from ipinsights.storage.modelfile import model_fingerprint

    window = cfg.window("calibration")
    assert window is not None and cfg.events is not None  # the sidecar is built only with its days
    t0 = time.perf_counter()
    spec = fusion_spec(cfg, table_fingerprint is not None)
    hosting = hosting_asns(cfg)
    schema = rows_schema(spec.names)
    rows = _fit_rows(spark, cfg, header, spec.names, hosting, window)
    folder = f"{path}.rows-{uuid.uuid4().hex[:12]}"
    try:
        files, n = written_parts(rows, folder, schema)
        # In one order whatever the tasks' files are named: the same rows give the same numbers.
        table = _read(files, schema).sort_by([(name, "ascending") for name in schema.names])
    finally:
        delete_uri(folder)
    kind = table["kind"].to_numpy(zero_copy_only=False)
    if not (kind == NORMAL).any() and not (kind == LABELLED).any():
        raise ValueError(f"no logins to fit the fusion on in events dt {window[0]}..{window[1]}")
    weight = row_weights(kind, cfg.fusion.labelled_weight, cfg.fusion.verdict_weight)
    features = {name: table[name].to_numpy() for name in spec.names}
    counts = {str(k): int(c) for k, c in zip(*np.unique(kind.astype(str), return_counts=True), strict=True)}
    model = fit_fusion(
        spec,
        features,
        table["label"].to_numpy(),
        weight,
        cfg.fusion.l2,
        model_fingerprint=model_fingerprint(cfg.model),
        asn_table_fingerprint=table_fingerprint,
        profile=header.build,
        hosting_asns=hosting,
        source=f"events dt {window[0]}..{window[1]}",
        rows=counts,
    )
    if fence is not None:
        fence()
    save_fusion(model, path)
    log.info(
        "fusion fitted on %d rows %s in %.2f s (the fit %.2f s), saved to %s",
        n,
        counts,
        time.perf_counter() - t0,
        model.fit_seconds,
        path,
    )
    return model


def _fit_rows(
    spark: SparkSession,
    cfg: ScoreConfig,
    header: ProfileHeader,
    names: Sequence[str],
    hosting: tuple[int, ...],
    window: tuple[str, str],
) -> DataFrame:
    """The fit's rows (:func:`~ipinsights.score.fusion_data.rows_schema`): every input's features, computed
    by the workers with the profile rows joined on, attacks drawn for the sampled logins."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    source = ScorerSource.with_profile(cfg.model, header.path, cfg.asn_table)
    # The attacks are drawn per chunk of rows, which must not depend on how Spark laid the rows out (the
    # join's strategy, adaptive execution, which drops a repartition its input already has and coalesces
    # small shuffles, the session's settings, the cluster's size): the entities are hashed into buckets
    # set by the sample, each bucket's rows sorted and cut into fixed chunks by the workers.
    spread = max(1, math.ceil(cfg.fusion.sample_rows / _ROWS_PER_PART))
    bucket = F.pmod(F.xxhash64("entity"), F.lit(spread)).alias(_BUCKET)
    parts = [
        map_in_arrow(
            join_profile_rows(df, header.files)
            .select(bucket, *df.columns, JOINED)
            .repartition(spread, _BUCKET)
            .sortWithinPartitions(_BUCKET, *df.columns),
            source,
            partial(fusion_rows, names, hosting, cfg.fusion.seed, kind),
            struct_type(rows_schema(names)),
            regroup=partial(fixed_chunks, _BUCKET),
        )
        for kind, df in _inputs(spark, cfg, window)
    ]
    return reduce(DataFrame.unionByName, parts)


def _inputs(spark: SparkSession, cfg: ScoreConfig, window: tuple[str, str]) -> list[tuple[str | None, DataFrame]]:
    """The fit's inputs, each with its labelled kind (None: logins to draw attacks for): a sample of the
    calibration days, the labelled rows, the verdicts' events."""
    from pyspark.sql import functions as F

    from ipinsights.storage.events import read_events

    assert cfg.events is not None
    events = with_devices(read_events(spark, cfg.events, *window), "entity", "ip", "ts")
    total = events.count()
    fraction = min(1.0, cfg.fusion.sample_rows / max(total, 1))
    # Kept by a hash of the row and the seed, not by Spark's sampler (seeded per partition): the same rows
    # whatever the events' files were split into.
    keep = F.pmod(F.xxhash64(F.lit(cfg.fusion.seed), "entity", "ip", "ts"), F.lit(_HASH_RANGE)) < fraction * _HASH_RANGE
    sample = events if fraction >= 1.0 else events.where(keep)
    out: list[tuple[str | None, DataFrame]] = [(None, sample)]
    if cfg.fusion.labelled and cfg.fusion.labelled_weight > 0:
        out.append((LABELLED, _labelled(spark, cfg.fusion.labelled)))
    if cfg.verdicts and cfg.fusion.verdict_weight > 0:
        from ipinsights.score.spark_verdicts import verdict_pairs
        from ipinsights.score.verdicts import read_verdicts

        verdicts = read_verdicts(cfg.verdicts)
        for verdict, label in (("benign", 0.0), ("malicious", 1.0)):
            pairs = verdict_pairs(spark, verdicts, cfg.cases_table, window[1], verdict, ("entity", "ip", "ts"))
            out.append((VERDICT, pairs.withColumn("label", F.lit(label))))
    return out


def _labelled(spark: SparkSession, path: str) -> DataFrame:
    """Labelled rows: a Parquet table with ``entity``, ``ip``, ``label`` (and ``ts``, the user-agent columns
    when it has them), or a headerless ``entity,ip,label[,kind[,user_agent]]`` CSV (no timestamps: no
    recency features)."""
    from pyspark.sql import functions as F

    if path.rstrip("/").endswith(".parquet") or not path.lower().endswith((".csv", ".txt")):
        df = spark.read.parquet(path)
        ts = F.col("ts") if "ts" in df.columns else F.lit(None).cast("timestamp")
        df = df.withColumn("ts", ts).withColumn("label", F.col("label").cast("double"))
        return with_devices(df, "entity", "ip", "ts", "label")
    from ipinsights.storage.sagemaker_csv import read_labelled_csv

    table = read_labelled_csv(path)
    columns = ["entity", "ip", "label", *(["user_agent"] if "user_agent" in table.column_names else [])]
    rows = list(zip(*(table[c].to_pylist() for c in columns), strict=True))
    df = spark.createDataFrame(rows, ", ".join(f"{c} {'int' if c == 'label' else 'string'}" for c in columns))
    return df.select(
        "entity", "ip", F.lit(None).cast("timestamp").alias("ts"), F.col("label").cast("double"), *columns[3:]
    )


def _read(files: list[str], schema: pa.Schema) -> pa.Table:
    """The training rows the tasks wrote (bounded by the sample)."""
    import pyarrow.parquet as pq

    from ipinsights.storage.filesystems import arrow_fs

    tables = []
    for uri in files:
        fs, p = arrow_fs(uri)
        with fs.open_input_file(p) as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()
