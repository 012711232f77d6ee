"""Run the endpoint under uvicorn: one worker process per core, a supervisor that replaces dead workers.

uvicorn with uvloop + httptools was the fastest well-kept option measured on 2 cores (see
``bench/serve_latency.py``); its multi-process supervisor health-checks each worker and restarts one
that dies or hangs, so one bad request can never take the endpoint down.
"""

from __future__ import annotations

import logging
import os

from ipinsights.serve.settings import SETTINGS_ENV, ServeSettings, is_loopback

__all__ = ["check_model", "serve"]

log = logging.getLogger("ipinsights.serve")

_APP = "ipinsights.serve.app:app_from_env"


def check_model(settings: ServeSettings) -> None:
    """Load and verify the model once in the parent, so a bad path fails fast with one clear error.

    Raises :class:`~ipinsights.storage.modelfile.ModelFileError`. The workers load it again (each needs its own).
    """
    from ipinsights.score.scorer import Scorer
    from ipinsights.serve.app import resolve_model_dir

    scorer = Scorer.load(resolve_model_dir(settings.model))
    log.info(
        "model %s: vector_dim=%d, num_entity_vectors=%d, entity stats: %s",
        settings.model,
        scorer.vector_dim,
        scorer.num_entity_vectors,
        "yes" if scorer.entity_stats is not None else "no",
    )


def serve(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    import uvicorn

    if not is_loopback(settings.host):
        log.warning(
            "binding to %s: the endpoint has no authentication; anyone who can reach this address "
            "can query the model (put it behind a firewall, a proxy with auth, or SageMaker)",
            settings.host,
        )
    # Workers are spawned processes: they inherit the environment, so the thread caps apply before
    # torch is imported there, and they read the settings from it.
    os.environ[SETTINGS_ENV] = settings.to_env()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    workers = settings.resolved_workers
    log.info("serving on http://%s:%d with %d worker(s)", settings.host, settings.port, workers)
    uvicorn.run(
        _APP,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        server_header=False,
        proxy_headers=False,
    )
