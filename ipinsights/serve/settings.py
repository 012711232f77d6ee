"""Endpoint settings: a frozen dataclass loaded like every other config (``conf/serve.yml`` + overrides)."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass

from ipinsights.core.config import ConfigError
from ipinsights.core.hashing import MAX_ENTITY_BYTES

__all__ = ["SETTINGS_ENV", "DEFAULT_MODEL_DIR", "ServeSettings", "environment_settings", "is_loopback"]

#: How the ``serve`` command hands the settings to its worker processes (they import the app by name).
SETTINGS_ENV = "IPINSIGHTS_SERVE_SETTINGS"
#: Where SageMaker unpacks ``model.tar.gz`` in a bring-your-own container.
DEFAULT_MODEL_DIR = "/opt/ml/model"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class ServeSettings:
    """How the endpoint runs. ``workers=0`` means one per CPU core.

    ``max_body_bytes`` defaults to 6 MiB, SageMaker's real-time payload limit, so a client that works
    against SageMaker works here; ``max_records`` bounds the work (and the blocking time) of one request,
    ``max_entity_bytes`` the length (UTF-8) of one entity.
    """

    model: str = DEFAULT_MODEL_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0
    max_body_bytes: int = 6 * 1024 * 1024
    max_records: int = 10_000
    max_entity_bytes: int = MAX_ENTITY_BYTES
    keep_alive_seconds: int = 5
    # How long a worker may take to answer the supervisor's health check before it is killed and replaced.
    # Uvicorn's 5 s default kills workers that are still importing torch and loading a large model, or
    # that share a busy machine, so they are restarted over and over.
    worker_healthcheck_seconds: int = 60
    access_log: bool = False
    log_level: str = "info"
    # The batch job's rules (anomaly/verbose answers): learning period, alert rule, the files beside the model.
    learning_period_events: int = 10
    flag_unseen: bool = False  # also flag every entity never seen in training (as the scoring job's setting)
    calibration: str | None = None  # default: <model>.calibration.json when present (levels)
    profile: str | None = None  # default: <model>.profile.safetensors when present (percentiles, explanations)
    fusion: str | None = None  # default: <model>.fusion.json when present and made for the profile (risk_score)
    asn_table: str | None = None  # ip2asn TSV (ASN in explanations)

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("port", 0, 65535),
            ("workers", 0, 256),
            ("max_body_bytes", 1, 2**31 - 1),
            ("max_records", 1, 10_000_000),
            ("max_entity_bytes", 1, 2**31 - 1),
            ("keep_alive_seconds", 0, 3600),
            ("worker_healthcheck_seconds", 1, 3600),
            ("learning_period_events", 0, 1_000_000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name}={value!r} must be an integer in [{lo}, {hi}]")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r} must be one of {', '.join(_LOG_LEVELS)}")
        if not isinstance(self.flag_unseen, bool):
            raise ConfigError(f"flag_unseen={self.flag_unseen!r} must be true or false")
        if not self.host:
            raise ConfigError("host must not be empty")

    @property
    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise RuntimeError(f"{SETTINGS_ENV} is not set: start the endpoint with `ipinsights serve`")
        return cls(**json.loads(raw))


def environment_settings() -> dict[str, str]:
    """Settings that SageMaker (or the container image) passes through the environment."""
    env = {
        "model": os.environ.get("IPINSIGHTS_MODEL"),
        "host": os.environ.get("IPINSIGHTS_SERVE_HOST"),
        "port": os.environ.get("SAGEMAKER_BIND_TO_PORT"),
        "workers": os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS"),
    }
    return {k: v for k, v in env.items() if v}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
