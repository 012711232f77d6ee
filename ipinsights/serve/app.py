"""The endpoint as an ASGI app (Starlette): ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters``.

Each worker process builds its own app and loads the model once, in the lifespan startup, before the
server accepts connections: ``/ping`` answers 200 only from a worker that can score. Scoring runs
inline on the event loop rather than in a thread pool: one request is well under a millisecond of
torch work, a thread hop would cost more than it saves, and the worker pool (one process per core,
one torch thread each) provides the parallelism.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ipinsights.score.clients import event_devices
from ipinsights.score.rules import Thresholds
from ipinsights.serve import protocol
from ipinsights.serve.protocol import RequestError
from ipinsights.serve.settings import ServeSettings
from ipinsights.storage.modelfile import MANIFEST

if TYPE_CHECKING:
    from ipinsights.score.fusion import FusionModel
    from ipinsights.score.scorer import Scorer

__all__ = [
    "Batcher",
    "Policy",
    "create_app",
    "app_from_env",
    "load_policy",
    "load_scorer",
    "resolve_model_dir",
    "score_records",
]

log = logging.getLogger("ipinsights.serve")


def resolve_model_dir(path: str | Path) -> str | Path:
    """``path``, or its only subdirectory holding a model (``tar czf model.tar.gz model/`` nests one level).

    A URI (``s3://``) is taken as the model itself (loaded through the local model cache)."""
    from ipinsights.storage.files import is_local

    if not is_local(path):
        return str(path)
    p = Path(path)
    if (p / MANIFEST).is_file() or not p.is_dir():
        return p
    nested = [d for d in p.iterdir() if (d / MANIFEST).is_file()]
    return nested[0] if len(nested) == 1 else p


@dataclass(frozen=True)
class Policy:
    """The scoring rules of the batch job, for the endpoint: learning period, level thresholds, alert rule."""

    learning_period_events: int = 10
    thresholds: Thresholds | None = None
    flag_unseen: bool = False


def score_records(
    scorer: Scorer,
    records: protocol.Records,
    options: protocol.Options,
    dot_product: np.ndarray | None = None,
    policy: Policy | None = None,
) -> list[dict]:
    """Score parsed records with :class:`~ipinsights.score.scorer.Scorer`; 400 naming the records with a bad IP.

    ``dot_product`` may be given when it was computed for these records already (see :class:`Batcher`).
    With ``anomaly`` or ``verbose`` the answer carries the batch job's verdict: the rule that produced
    ``anomaly_score`` (learning-period entities are judged by the population prior), the per-entity
    percentile, and the level and ``flagged`` when thresholds are known; ``verbose`` adds the explanation
    and the embeddings.
    """
    policy = policy or Policy()
    dp = scorer.dot_product(records.entities, records.ips) if dot_product is None else dot_product
    bad = np.flatnonzero(np.isnan(dp))
    if bad.size:  # the Scorer marks unparseable addresses NaN: name them instead of answering NaN
        raise protocol.invalid_ip_error(records, bad.tolist())
    verdict = risk = None
    # The optional third column: the fusion's device features (without it, as an event without a user agent).
    devices = event_devices(pa.table({"user_agent": pa.array(records.agents, pa.string())})) if records.agents else None
    if options.anomaly or options.verbose or options.risk:
        # No timestamps here: the fusion's recency features are 0 (ipinsights.score.features).
        verdict = scorer.assess(
            records.entities,
            records.ips,
            policy.learning_period_events,
            policy.thresholds,
            policy.flag_unseen,
            devices=devices,
        )
        if options.risk or scorer.fusion is not None:
            risk = verdict.risk_score if verdict.risk_score is not None else np.full(len(records), np.nan)
        if not (options.anomaly or options.verbose):
            verdict = None
    ent_emb = ip_emb = explanation = None
    if options.verbose:
        ent_emb = scorer.entity_embedding(records.entities)
        ip_emb = scorer.ip_embedding(records.ips)
        explanation = scorer.explain(records.entities, records.ips, devices=devices, agents=records.agents).columns()
    return protocol.build_predictions(
        dp, verdict=verdict, entity_embedding=ent_emb, ip_embedding=ip_emb, explanation=explanation, risk_score=risk
    )


class Batcher:
    """Scores together the requests a worker has read in one pass of its event loop.

    The Scorer is vectorised: one record costs almost as much as a hundred. When a worker falls behind
    (a burst, or the OS gave its core to someone else), the requests that piled up meanwhile are parsed
    in the same loop pass and scored with one ``dot_product`` call instead of one each, so the backlog
    drains in about the time of one request. Nothing waits for a batch to fill: the flush is queued
    behind the requests already runnable, so an idle server answers a lone request at once.
    """

    def __init__(self, scorer: Scorer, policy: Policy | None = None) -> None:
        self.scorer = scorer
        self.policy = policy
        self.pending: list[tuple[protocol.Records, protocol.Options, asyncio.Future]] = []

    def score(self, records: protocol.Records, options: protocol.Options) -> asyncio.Future:
        """A future of :func:`score_records`'s result (or its exception) for these records."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((records, options, fut))
        if len(self.pending) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        dps: Sequence[np.ndarray | None] = [None] * len(batch)
        if len(batch) > 1:
            try:
                dp = self.scorer.dot_product(
                    [e for r, _, _ in batch for e in r.entities], [i for r, _, _ in batch for i in r.ips]
                )
            except Exception as exc:  # answer every waiting request, never leave one hanging
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            ends = np.cumsum([len(r) for r, _, _ in batch])
            dps = np.split(dp, ends[:-1])
        for (records, options, fut), dp_part in zip(batch, dps, strict=True):
            if fut.done():  # the client went away
                continue
            try:
                fut.set_result(score_records(self.scorer, records, options, dp_part, self.policy))
            except Exception as exc:
                fut.set_exception(exc)


def load_scorer(settings: ServeSettings) -> Scorer:
    """The settings' model with its context: the entity profile and the fusion (default: the ones beside the
    model, when made for it) and the ASN table. An explicit profile or fusion must be usable."""
    from ipinsights.score.scorer import Scorer

    return Scorer.load(
        resolve_model_dir(settings.model),
        profile=settings.profile or True,
        asn_table=settings.asn_table,
        fusion=settings.fusion or True,
    )


def load_policy(settings: ServeSettings, model_dir: str | Path, fusion: FusionModel | None = None) -> Policy:
    """The batch job's rules for the model at ``model_dir``: learning period, alert rule and calibrated levels.

    The calibration beside the model (written by the scoring job) is used when present and made for this
    model and for the scorer's ``fusion`` (levels on risk_score need that fusion); an explicit
    ``settings.calibration`` must be usable.
    """
    from ipinsights.score.calibration import CalibrationError, load_calibration
    from ipinsights.storage.modelfile import calibration_uri

    path = settings.calibration or calibration_uri(model_dir)
    thresholds = None
    try:
        cal = load_calibration(path, model_dir)
        if cal.fusion_fingerprint != (fusion.fingerprint if fusion is not None else None):
            raise CalibrationError(f"{path}: calibrated on the {cal.score} of another fusion than this endpoint's")
        thresholds = cal.thresholds()
    except CalibrationError as exc:
        if settings.calibration:
            raise
        log.info("no levels: %s", exc)
    return Policy(settings.learning_period_events, thresholds, settings.flag_unseen)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (before reading it if possible)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads announce no length: count as they arrive
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: RequestError) -> Response:
    return Response(protocol.error_body(exc.reason), status_code=exc.status, media_type=protocol.JSON)


def create_app(settings: ServeSettings, scorer=None) -> Starlette:
    """The endpoint app. ``scorer`` (complete, see :func:`load_scorer`) may be given (tests); otherwise it
    loads ``settings.model`` with its context at startup."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if scorer is None:
            import torch

            # One torch thread per worker: the workers are the parallelism, and idle intra-op threads
            # spinning on a 2-core machine would steal the cores from the other workers.
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            app.state.scorer = load_scorer(settings)
            log.info("model %s loaded in %.2f s", settings.model, time.perf_counter() - t0)
        else:
            app.state.scorer = scorer
        s = app.state.scorer
        app.state.batcher = Batcher(s, load_policy(settings, s.bundle.uri, s.fusion))
        yield

    async def ping(request: Request) -> Response:
        ready = getattr(request.app.state, "scorer", None) is not None
        return Response(status_code=200 if ready else 503)

    async def execution_parameters(request: Request) -> Response:
        # Batch transform asks this once to size its requests.
        return JSONResponse(
            {
                "MaxConcurrentTransforms": settings.resolved_workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": max(1, settings.max_body_bytes // (1024 * 1024)),
            }
        )

    async def invocations(request: Request) -> Response:
        try:
            content_type = protocol.read_content_type(request.headers.get("content-type"))
            media_type, verbose = protocol.negotiate_output(request.headers.get("accept"))
            flags = protocol.parse_flags(
                request.query_params, request.headers.get("x-amzn-sagemaker-custom-attributes")
            )
            options = protocol.Options(
                media_type,
                verbose or flags.get("verbose", False),
                flags.get("anomaly", False),
                flags.get("risk", False),
            )
            body = await _read_body(request, settings.max_body_bytes)
            records = protocol.parse_records(body, content_type, settings.max_records, settings.max_entity_bytes)
            predictions = await request.app.state.batcher.score(records, options)
            return Response(protocol.format_predictions(predictions, media_type), media_type=media_type)
        except RequestError as exc:
            log.debug("refused (%d): %s", exc.status, exc.reason)
            return _error(exc)
        except Exception:  # a bug must cost one request, never the worker
            log.exception("internal error while answering /invocations")
            return _error(RequestError(500, "internal error (logged by the server)"))

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/execution-parameters", execution_parameters, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """App factory for the server's worker processes: settings from :data:`~.settings.SETTINGS_ENV`."""
    settings = ServeSettings.from_env()
    logging.getLogger("ipinsights").setLevel(settings.log_level.upper())
    return create_app(settings)
