"""In-process scoring with a saved model: the one implementation behind every way of scoring.

The CLI, the Spark jobs' Arrow functions (:mod:`ipinsights.score.worker`: one load per Python worker) and
the endpoint all call :class:`Scorer`, built complete by :meth:`Scorer.load`, so a pair scores the same
everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ipinsights.core.entities import ENTITY_FILE, EntityStats
from ipinsights.core.hashing import buckets_of, hash_strings
from ipinsights.core.ip import ParsedIPs, parse_ip, to_string_array
from ipinsights.score.clients import EventDevices
from ipinsights.score.explain import Explanations, explain_clients, explain_rows, risk_factors
from ipinsights.score.fusion import fused_scores
from ipinsights.score.rules import (
    LEVEL_OBJECTS,
    RISK_SCORE,
    RULE_INVALID_CODE,
    RULE_LEARNING_CODE,
    RULE_OBJECTS,
    RULE_SCORE_CODE,
    Thresholds,
    flag_rows,
)
from ipinsights.storage.modelfile import ModelBundle, ModelFileError, load_model

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable
    from ipinsights.score.fusion import FusionModel
    from ipinsights.score.profiles import EntityProfiles, PopulationPrior

#: Profiles brought by a batch (:func:`ipinsights.score.profile_stream.joined_profiles`): the batch's profiles and
#: the profile row of each batch row (-1: none).
Joined: TypeAlias = "tuple[EntityProfiles, np.ndarray]"

log = logging.getLogger(__name__)


ArrayLike: TypeAlias = Iterable[str] | pa.Array | np.ndarray | pd.Series


#: Rows per torch call on CPU. Small: the (rows, vector_dim) intermediates stay in cache, and freeing them
#: does not hand pages back to the OS only to fault them in again on the next call (8192 rows cost up to 2x).
BATCH_ROWS = 2048


GPU_BATCH_ROWS = 65536  # an accelerator wants few, large calls


#: Largest entity table folded through the last encoder layer once per model (a second table of that size).
FOLD_MAX_BYTES = 512 << 20


@dataclass
class Assessment:
    """Everything scoring says about a batch of (entity, IP) rows; arrays of one row each."""

    dot_product: np.ndarray  # float32: the model's raw output (SageMaker's); NaN for an invalid IP
    prior_score: np.ndarray  # float32: population-prior anomaly score; NaN for an invalid IP or without profiles
    training_count: np.ndarray | None  # int64 events in training (None: the model has no entity stats)
    rule_code: np.ndarray  # int8 per row: index into RULES
    anomaly_score: np.ndarray  # float32: the score of the row's rule (higher = more suspicious); NaN if none
    entity_percentile: np.ndarray  # float64 0-100 among the entity's training scores; NaN if unknown
    level_code: np.ndarray | None = None  # int8 per row: index into LEVELS, -1 = none (with thresholds)
    normal_percentile: np.ndarray | None = None  # float64 0-100 among normal traffic of its rule (calibration)
    flagged: np.ndarray | None = None  # bool per row: the alert rule (with thresholds)
    risk_score: np.ndarray | None = None  # float32: the fused risk score (None without a fusion; NaN: invalid)

    @property
    def rule(self) -> np.ndarray:
        """object: RULE_* per row."""
        return RULE_OBJECTS[self.rule_code]

    @property
    def level(self) -> np.ndarray | None:
        """object: LEVELS per row, None where there is no score (None without thresholds)."""
        return None if self.level_code is None else LEVEL_OBJECTS[self.level_code]

    @property
    def unseen_entity(self) -> np.ndarray | None:
        """bool per row: the entity has no training events (None without entity stats)."""
        return None if self.training_count is None else self.training_count == 0


class Scorer:
    """Scores (entity, IP) pairs with a loaded model.

    ``dot_product`` is SageMaker's output (higher = more compatible); ``anomaly_score`` is its
    negation (higher = more suspicious). Rows whose IP is not a valid address score NaN.
    """

    def __init__(self, bundle: ModelBundle, batch_size: int | None = None) -> None:
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.device = self.model.entity_table.device
        self.hash_seed = bundle.options.hash_seed
        self.num_entity_vectors = bundle.hyperparameters.num_entity_vectors
        self.vector_dim = bundle.hyperparameters.vector_dim
        self.batch_size = batch_size or (BATCH_ROWS if self.device.type == "cpu" else GPU_BATCH_ROWS)
        files = bundle.manifest.get("files", {})
        # Models written before entity stats existed (or by tools that skip them) have none.
        self.entity_stats = _entity_stats(bundle) if ENTITY_FILE in files else None
        self._folded: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see _folded_table
        # (stats, profiles, row of each stat)
        self._profile_rows: tuple[EntityStats, EntityProfiles, np.ndarray] | None = None
        self.profiles: EntityProfiles | None = None  # see load: percentiles and explanations, every entity
        self.population: PopulationPrior | None = None  # see load: the population prior (learning period)
        self.asn_table: AsnTable | None = None  # see load: ASNs in explanations
        self.profile_build: str | None = None  # the loaded profile's build (what a fusion must be fitted with)
        self.fusion: FusionModel | None = None  # see load: the fused risk score (needs the profiles)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        batch_size: int | None = None,
        profile: str | Path | bool = False,
        asn_table: str | Path | None = None,
        profile_rows: bool = True,
        fusion: str | Path | bool = False,
    ) -> Scorer:
        """The model at ``path`` with its context: entity profiles and an ip2asn ``asn_table`` (explanations;
        for a model trained with a table, its AS and country levels: by default the table it was trained with).

        ``profile``: ``False`` for none; ``True`` for the profile beside the model
        (``<model>.profile.safetensors``) when there is one made for this model (another model's is logged
        and left out); a path for that profile, which must be this model's (``ProfileError`` otherwise).
        ``profile_rows=False`` loads only its header (the population prior): a Spark scoring worker's
        batches bring their own entities' rows (``joined`` in :meth:`assess` and :meth:`explain`).
        ``fusion`` (:mod:`ipinsights.score.fusion`: the ``risk_score``; it needs the profile it was fitted
        with): ``False`` for none, ``True`` for ``<model>.fusion.json`` when it is usable, or a path that must be.
        ``path`` and ``profile`` may be URIs (``s3://``): they are read through a local cache.
        """
        table = str(asn_table) if asn_table else None
        scorer = cls(load_model(path, device=device, asn_table=table), batch_size=batch_size)
        if profile is not False:
            scorer._set_profiles(None if profile is True else str(profile), profile_rows)
        # A model trained with a table explains with it too (as loaded); another model may be given one for
        # explanations only.
        scorer.asn_table = scorer.bundle.asn_table
        if scorer.asn_table is None and table:
            from ipinsights.storage.modelfile import network_table

            scorer.asn_table = network_table(table)
        if fusion is not False:
            from ipinsights.score.fusion import find_fusion

            scorer.fusion = find_fusion(
                None if fusion is True else str(fusion), scorer.bundle.uri, scorer.asn_table, scorer.profile_build
            )
        return scorer

    def _set_profiles(self, path: str | None, rows: bool) -> None:
        """The model's profile at ``path`` (must be usable), or beside the model (left out when unusable)."""
        from ipinsights.score.profile_rows import load_profiles
        from ipinsights.score.profiles import ProfileError, ProfileHeader
        from ipinsights.storage.files import uri_exists
        from ipinsights.storage.modelfile import profile_uri

        where = path or profile_uri(self.bundle.uri)
        try:
            header = ProfileHeader.load(where, self.bundle.uri)
            if rows:
                self.profiles = load_profiles(header)
            self.population = header.population
            self.profile_build = header.build
        except ProfileError as exc:
            if path is not None:
                raise
            if uri_exists(where):
                log.warning("%s", exc)

    def entity_hashes(self, entities: ArrayLike) -> np.ndarray:
        """64-bit stable hash of each entity: its embedding row, training count and profile all derive from it."""
        return hash_strings(to_string_array(entities), self.hash_seed)

    def entity_rows(self, entities: ArrayLike) -> np.ndarray:
        """Hashed embedding row of each entity."""
        return buckets_of(self.entity_hashes(entities), self.num_entity_vectors)

    def _run(self, fn: Callable[..., torch.Tensor], *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        n = arrays[0].shape[0]
        out = np.empty((n, *out_shape), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                ts = [torch.as_tensor(a[s : s + self.batch_size], device=self.device) for a in arrays]
                out[s : s + self.batch_size] = fn(*ts).float().cpu().numpy()
        return out

    def parse(self, ips: ArrayLike | ParsedIPs) -> ParsedIPs:
        """Address keys of ``ips``; IPv6 counts as invalid for a model without IPv6 levels."""
        if isinstance(ips, ParsedIPs):
            return ips
        parsed = parse_ip(ips)
        if not self.model.supports_ipv6:
            parsed = ParsedIPs(np.where(parsed.is_v6, 0, parsed.value), parsed.valid & ~parsed.is_v6)
        return parsed

    def dot_product(self, entities: ArrayLike, ips: ArrayLike | ParsedIPs) -> np.ndarray:
        """``float32`` dot products, NaN where the IP is invalid."""
        return self._dot(self.entity_rows(entities), self.parse(ips))

    def dot_product_of_hashes(self, hashes: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Dot products of entities given by their hashes with valid address keys."""
        return self._dot(buckets_of(hashes, self.num_entity_vectors), ParsedIPs(keys, np.ones(keys.size, bool)))

    def _dot(self, rows: np.ndarray, parsed: ParsedIPs) -> np.ndarray:
        """Dot products of embedding ``rows`` with parsed addresses, with the last encoder layer folded
        into the entity side (:meth:`IPInsightsModel.folded_entities`): once per model for tables up to
        ``FOLD_MAX_BYTES``, else per batch (as costly as the unfolded layer, no more)."""
        if rows.shape[0] != parsed.value.shape[0]:
            raise ValueError(f"{rows.shape[0]} entities but {parsed.value.shape[0]} IPs")
        folded = self._folded_table()
        model = self.model

        def dot(r: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
            if folded is None:
                return model.folded_forward(*model.folded_entities(r), keys)
            table, bias = folded
            b = None if bias is None else bias.index_select(0, r)
            return model.folded_forward(table.index_select(0, r), b, keys)

        out = self._run(dot, rows, parsed.value.astype(np.int64), out_shape=())
        out[~parsed.valid] = np.nan
        return out

    def _entity_lookup(self, hashes: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Training counts (None without entity stats) and profile rows (-1: none; None without profiles).

        One search of the entity stats gives both: a profile row is only ever used for an entity past its
        learning period, so one seen in training (without stats, every row is searched in the profiles).
        """
        stats, prof = self.entity_stats, self.profiles
        if stats is None:
            return None, None if prof is None else prof.index_of(hashes)
        counts, pos = stats.lookup(hashes)
        if prof is None:
            return counts, None
        if self._profile_rows is None or self._profile_rows[0] is not stats or self._profile_rows[1] is not prof:
            # Profile row of every stats entry, then -1: position -1 (not in stats) picks "no profile".
            self._profile_rows = (stats, prof, np.append(prof.index_of(stats.hashes), -1))
        return counts, self._profile_rows[2][pos]

    def _folded_table(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The whole entity table folded (cached), or None when that would cost more than FOLD_MAX_BYTES."""
        if self._folded is None and self.num_entity_vectors * self.vector_dim * 4 <= FOLD_MAX_BYTES:
            with torch.inference_mode():
                self._folded = self.model.folded_entities()
        return self._folded

    def assess(
        self,
        entities: ArrayLike,
        ips: ArrayLike,
        learning_period_events: int = 0,
        thresholds: Thresholds | None = None,
        flag_unseen: bool = False,
        joined: Joined | None = None,
        days: np.ndarray | None = None,
        devices: EventDevices | None = None,
    ) -> Assessment:
        """Score rows, choosing the rule per row: invalid address, learning period (fewer than
        ``learning_period_events`` training events: the population prior scores it, never a random
        vector), or the entity's own model score; plus per-entity percentiles, the fused ``risk_score``
        (with a fusion: every valid row, whatever its rule) and, with ``thresholds``, levels and flags
        (:func:`~ipinsights.score.rules.flag_rows`; on ``risk_score`` when the thresholds say so).
        ``joined``: the rows' profiles, joined onto them (the Spark jobs); default, looked up in the
        scorer's own profiles. ``days``: the rows' days (:func:`~ipinsights.score.features.event_days`);
        ``devices``: their clients (:func:`~ipinsights.score.clients.event_devices`).
        """
        hashes = self.entity_hashes(entities)  # once: rows, training counts and profiles all key on it
        parsed = self.parse(ips)
        dp = self._dot(buckets_of(hashes, self.num_entity_vectors), parsed)
        prior = np.full(dp.size, np.nan, dtype=np.float32)
        if self.population is not None:
            prior[parsed.valid] = self.population.prior_anomaly(parsed.value[parsed.valid])
        counts, profile_rows = self._entity_lookup(hashes)
        profiles = self.profiles
        if joined is not None:
            profiles, profile_rows = joined
        valid = np.isfinite(dp)
        learning = np.zeros(dp.size, bool) if counts is None else counts < max(learning_period_events, 1)
        code = np.where(~valid, RULE_INVALID_CODE, np.where(learning, RULE_LEARNING_CODE, RULE_SCORE_CODE)).astype(
            np.int8
        )
        # Learning period: the prior's score, or none at all without a profile; never the entity's own vector.
        anomaly = np.where(learning, prior, -dp).astype(np.float32)
        learning, scored = code == RULE_LEARNING_CODE, code == RULE_SCORE_CODE
        pct = np.full(dp.size, np.nan)
        if profiles is not None:
            assert profile_rows is not None  # _entity_lookup finds profile rows whenever there are profiles
            pct = profiles.percentile(np.where(scored, profile_rows, -1), -dp)
        out = Assessment(dp, prior, counts, code, anomaly, pct)
        if self.fusion is not None and profiles is not None and profile_rows is not None:
            # float32 as stored: a flag must agree with the stored score, which the threshold was calibrated on
            # (ties at the threshold are common: an entity's repeated logins from one address score alike).
            risk = fused_scores(self.fusion, parsed, dp, profiles, profile_rows, self.asn_table, days, devices)[0]
            out.risk_score = risk.astype(np.float32)
        if thresholds is not None:
            level_score = anomaly
            if thresholds.score == RISK_SCORE:
                if out.risk_score is None:
                    raise ValueError("thresholds calibrated on risk_score, but the scorer has no fusion")
                # One scale for every valid row: the fusion weighs the entity's history and the population.
                level_score, scored, learning = out.risk_score, np.isfinite(out.risk_score), np.zeros(dp.size, bool)
            out.level_code = thresholds.level_codes(level_score, learning)
            out.flagged = flag_rows(out.level_code, out.unseen_entity, flag_unseen)
            out.normal_percentile = thresholds.normal_percentile(level_score, scored, learning)
        return out

    def explain(
        self,
        entities: ArrayLike,
        ips: ArrayLike,
        top: int = 3,
        joined: Joined | None = None,
        days: np.ndarray | None = None,
        devices: EventDevices | None = None,
        agents: Sequence[str | None] | None = None,
    ) -> Explanations:
        """Why each row looks the way it does, from its entity's profile: a column per field of
        :class:`~ipinsights.score.explain.Explanations` (None where the entity has no profile); ``top`` nearest
        known networks per row; with a fusion, what raised its risk score most, in words; with the user-agent
        strings (``agents``), the client against the entity's. ``joined``, ``days``, ``devices`` as in :meth:`assess`.
        """
        ent = to_string_array(entities)
        prof = self.profiles if joined is None else joined[0]
        if joined is not None:
            rows = joined[1]
        else:
            rows = prof.index_of(self.entity_hashes(ent)) if prof is not None else np.full(len(ent), -1, np.int64)
        parsed = self.parse(ips)
        ex = explain_rows(parsed, rows, prof, self.asn_table, self._ip_vectors, top)
        if self.fusion is not None and prof is not None:
            dp = self._dot(self.entity_rows(ent), parsed)
            feats = fused_scores(self.fusion, parsed, dp, prof, rows, self.asn_table, days, devices)[1]
            ex.risk_factors[:] = risk_factors(self.fusion, feats, parsed.valid & np.isfinite(dp), prof.population)
        if agents is not None and devices is not None:
            explain_clients(ex, agents, devices, rows, prof)
        return ex

    def anomaly_score(self, entities: ArrayLike, ips: ArrayLike) -> np.ndarray:
        """``-dot_product``: higher means more suspicious."""
        return -self.dot_product(entities, ips)

    def entity_embedding(self, entities: ArrayLike) -> np.ndarray:
        """``(n, vector_dim)`` entity vectors."""
        return self._run(self.model.entity_vectors, self.entity_rows(entities), out_shape=(self.vector_dim,))

    def ip_embedding(self, ips: ArrayLike) -> np.ndarray:
        """``(n, vector_dim)`` IP vectors; rows of invalid addresses are NaN."""
        parsed = self.parse(ips)
        out = self._ip_vectors(parsed.value.astype(np.int64))
        out[~parsed.valid] = np.nan
        return out

    def _ip_vectors(self, keys: np.ndarray) -> np.ndarray:
        """``(n, vector_dim)`` vectors of int64 address keys."""
        return self._run(self.model.ip_vectors, keys, out_shape=(self.vector_dim,))

    def training_counts(self, entities: ArrayLike) -> np.ndarray | None:
        """Training events of each entity (0 = never seen), or None if the model holds no entity stats."""
        if self.entity_stats is None:
            return None
        return self.entity_stats.counts_of(self.entity_hashes(entities))

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


def _entity_stats(bundle: ModelBundle) -> EntityStats:
    """The model's training entity counts; an unreadable file is a model-file error like any other."""
    path = bundle.extra_path(ENTITY_FILE)
    try:
        return EntityStats.open(path)
    except (KeyError, TypeError, ValueError, OSError) as exc:  # KeyError: a tensor missing
        raise ModelFileError(f"{path}: not a readable entity stats file: {type(exc).__name__}: {exc}") from None
