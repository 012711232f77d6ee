"""Synthetic login traffic, like the SageMaker IP Insights tutorial's but more realistic.

Users log into a website from home, work, mobile carriers and while travelling; the generator writes
Apache combined-format access logs (with other traffic and malformed lines to filter out), labelled
attack rows for evaluation, and the ground truth. Deterministic for a seed; vectorized with numpy and
Arrow; large runs shard users over Spark tasks with the same output.

Users are dual stack: a share has IPv6 at home (a delegated /56), at work or on their mobile carrier,
and logs in over it part of the time; IPv6 rows carry RFC 5952 text in ``ip``, a null ``ip_int`` and
``ip_version`` 6. :func:`ipv6_to_str` formats ``(hi, lo)`` 64-bit halves as that text, vectorized.

With ``devices: realistic`` each user has 1-3 devices with realistic user agents, and attackers come in
Wiefling et al.'s levels of sophistication (:mod:`ipinsights.synth.devices`); the truth and the labelled
tables get a ``user_agent`` column (the labelled CSVs a fifth, quoted field: ``entity,ip,label,kind,user_agent``).

Typical use::

    from ipinsights.synth import SynthSpec, generate_dataset
    paths = generate_dataset("data/synth", SynthSpec(users=10_000, days=10, seed=0))
"""

from ipinsights.synth.dataset import DatasetPaths, generate_dataset, generate_dataset_spark, read_spec
from ipinsights.synth.events import EVENT_SCHEMA, LABELLED_SCHEMA, generate_attacks, generate_events
from ipinsights.synth.ipv6 import ipv6_to_str
from ipinsights.synth.logs import COMBINED_LOG_RE, JUNK_KINDS, LOGIN_REQUEST, MAX_LINE_BYTES, write_access_logs
from ipinsights.synth.plan import KINDS, AddressPlan
from ipinsights.synth.spec import (
    ATTACK_KINDS,
    ATTACK_LABELS,
    DEVICE_ATTACK_KINDS,
    DEVICE_MODES,
    IPV6_ATTACK_KINDS,
    SynthSpec,
)
from ipinsights.synth.world import World, generate_world

__all__ = [
    "ATTACK_KINDS",
    "ATTACK_LABELS",
    "COMBINED_LOG_RE",
    "DEVICE_ATTACK_KINDS",
    "DEVICE_MODES",
    "EVENT_SCHEMA",
    "IPV6_ATTACK_KINDS",
    "JUNK_KINDS",
    "KINDS",
    "LABELLED_SCHEMA",
    "LOGIN_REQUEST",
    "MAX_LINE_BYTES",
    "AddressPlan",
    "DatasetPaths",
    "SynthSpec",
    "World",
    "generate_attacks",
    "generate_dataset",
    "generate_dataset_spark",
    "generate_events",
    "generate_world",
    "ipv6_to_str",
    "read_spec",
    "write_access_logs",
]
