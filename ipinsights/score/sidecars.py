"""Files kept beside a model, made from traffic: one rule decides whether a run uses, rebuilds or lacks each.

The scoring job keeps three sidecars beside the model (``<model>.calibration.json``, the thresholds;
``<model>.profile.safetensors``, the entity profiles; ``<model>.cases.json``, the case floor). Each
records the model's fingerprint (and the settings it depends on), and each is resolved the same way,
before anything is scored (:func:`resolve`):

1. its path is its setting (``calibration``, ``profile``, ``case_floor``) or the default beside the model;
2. unless ``recalibrate`` is set, a stored file made for this model and these settings is used; one
   that is not (another model, threshold or budget, an older format, a malformed file) is logged and
   rebuilt;
3. it is built from the days its settings name (the calibration days for the thresholds and the case
   floor, the training days for the profiles) and stored;
4. **when those days are not set** (or there is no events table: a batch-transform CSV), a sidecar the
   run cannot do without (the thresholds when ``target_fpr`` asks for a calibration) is a usage error
   naming the settings to give; an optional one (the profiles, the case floor) is left out with one
   warning that says what the run lacks without it.

A run holds the sidecar's lease (:mod:`ipinsights.storage.lease`) while it looks for it and builds it:
runs that need the same sidecar at once (a parallel backfill) build it once, the others wait and then
use what it stored. The lease is renewed right before the file is stored (the fence: a run whose lease
was taken over stores nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ipinsights.core.errors import UsageError
from ipinsights.storage.files import uri_exists
from ipinsights.storage.lease import Leases

log = logging.getLogger(__name__)

__all__ = ["Sidecar", "StaleSidecarError", "resolve"]

T = TypeVar("T")


class StaleSidecarError(Exception):
    """A stored sidecar that is readable but not for this model or these settings (the message says why)."""


@dataclass(frozen=True)
class Sidecar(Generic[T]):
    """How to load, build and do without one sidecar (see the module docstring)."""

    name: str  # what it is, in messages: "calibration", "entity profiles", "case floor"
    path: str
    load: Callable[[str], T]  # the stored one; raises StaleSidecarError, or ValueError for an unusable file
    #: Builds it from its days, stores it at ``path`` and returns it; calls its argument (the fence) right
    #: before it stores anything at ``path``.
    build: Callable[[Callable[[], None]], T]
    can_build: bool  # its days (and the events table) are set
    days_hint: str  # the settings that build it, for messages: "calibration_start_date and ..."
    without: str | None  # None: the run cannot do without it; else what a run without it lacks


def resolve(sidecar: Sidecar[T], recalibrate: bool, leases: Leases) -> T | None:
    """The sidecar stored for this model, or a new one built and stored; None when it is optional and its
    days are not set. Raises :class:`UsageError` when it is required and cannot be built. Under the
    sidecar's lease, taken with ``leases`` (see the module docstring)."""
    leases.acquire([sidecar.path])
    try:
        return _resolve(sidecar, recalibrate, leases.renew)
    finally:
        leases.release([sidecar.path])


def _resolve(sidecar: Sidecar[T], recalibrate: bool, fence: Callable[[], None]) -> T | None:
    if not recalibrate and uri_exists(sidecar.path):
        try:
            found = sidecar.load(sidecar.path)
            log.info("using %s %s", sidecar.name, sidecar.path)
            return found
        except StaleSidecarError as exc:
            log.info("%s %s: %s: rebuilding", sidecar.name, sidecar.path, exc)
        except ValueError as exc:
            log.warning("%s %s: %s: rebuilding", sidecar.name, sidecar.path, exc)
    if not sidecar.can_build:
        if sidecar.without is None:
            raise UsageError(
                f"no usable {sidecar.name} at {sidecar.path} and none can be built: set events, {sidecar.days_hint}"
            )
        log.warning(
            "no %s at %s and no days to build it from (set %s): %s",
            sidecar.name,
            sidecar.path,
            sidecar.days_hint,
            sidecar.without,
        )
        return None
    return sidecar.build(fence)
