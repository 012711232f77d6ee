"""The events' clients: each login's device and user-agent string as ids, for the fused score's device features.

A **device** is a browser family, an OS family and a device type (the ingest's ``ua_family``, ``ua_os`` and
``ua_device``): a version update of the browser or the OS is the same device. The exact user-agent string is
kept apart (an attacker may copy the victim's string; a script sends its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ipinsights.core.ip import to_string_array

__all__ = ["DEVICE_COLUMNS", "NEW_DEVICE", "EventDevices", "event_devices"]

#: The events table's user-agent columns (ingest): the string and its parsed family, OS family and device type.
DEVICE_COLUMNS = ("user_agent", "ua_family", "ua_os", "ua_device")

#: How an explanation's ``device`` starts for a device the entity never used in training (cases read it).
NEW_DEVICE = "new device"

#: The seed of the device and user-agent hashes: fixed, so that a device has one id in every profile.
_DEVICE_SEED = 0x1D_5EED


@dataclass(frozen=True)
class EventDevices:
    """Each event's client: ``device``, the hash of its browser family, OS family and device type (a version
    update is the same device), and ``agent``, the hash of its exact user-agent string (int64; 0: no user
    agent)."""

    device: np.ndarray
    agent: np.ndarray

    @classmethod
    def none(cls, n: int) -> EventDevices:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64))

    def take(self, rows: np.ndarray) -> EventDevices:
        return EventDevices(self.device[rows], self.agent[rows])


def _string_ids(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 hash of each string (0 for null, empty or ``-``), each distinct string hashed once."""
    import pyarrow.compute as pc

    from ipinsights.core.hashing import hash_strings

    values = to_string_array(values)
    codes = pc.dictionary_encode(values)
    words = codes.dictionary
    if not len(words):
        return np.zeros(len(values), np.int64)
    ids = hash_strings(words, _DEVICE_SEED).view(np.int64).copy()
    ids[pc.is_in(words, pa.array(["", "-"])).to_numpy(zero_copy_only=False)] = 0
    idx = pc.fill_null(codes.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, ids[np.maximum(idx, 0)], 0)


def event_devices(batch: pa.RecordBatch | pa.Table) -> EventDevices:
    """The events' devices and user-agent strings (:class:`EventDevices`) from a batch's user-agent columns
    (:data:`DEVICE_COLUMNS`); all 0 when it has none (an events table written before them, a CSV)."""
    import pyarrow.compute as pc

    names = batch.schema.names
    n = batch.num_rows
    if "user_agent" not in names:
        return EventDevices.none(n)
    agent = _string_ids(batch.column("user_agent"))
    if all(c in names for c in DEVICE_COLUMNS[1:]):
        parts = [pc.cast(batch.column(c), pa.string()) for c in DEVICE_COLUMNS[1:]]
        device = _string_ids(pc.binary_join_element_wise(*parts, "\x1f"))
    else:  # the string without its parsed columns: parsed here (each distinct string once)
        from ipinsights.core.useragent import parse_user_agents

        parsed = parse_user_agents(to_string_array(batch.column("user_agent")))
        device = _string_ids(pc.binary_join_element_wise(*(p.cast(pa.string()) for p in parsed), "\x1f"))
    return EventDevices(np.where(agent != 0, device, 0), agent)
