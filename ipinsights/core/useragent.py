"""User agents: a string -> its browser family, OS family and device type, one distinct string at a time.

The rules are the ua-parser project's (``ua-parser`` with its compiled regexes in ``ua-parser-builtins``,
the ones Browserscope and most log tools use), run by its Rust resolver (``ua-parser-rs``, abi3 wheels for
CPython 3.10+ on Linux, macOS and Windows: about 18 us a string against about 0.9 ms for the pure-Python
resolver, which ua-parser falls back to where the Rust one is not installed).

What this module adds on top is what the ingest and the scorer compare devices by:

* ``family``: the browser (or client) family without the mobile qualifier, so that the same browser on a
  phone and a desktop has one family ("Chrome Mobile" and "Chrome Mobile iOS" are "Chrome", "Mobile
  Safari" is "Safari"); the device type says which. "Other" when the rules know no family.
* ``os``: ua-parser's OS family ("Windows", "Mac OS X", "iOS", "Android", "Linux", ...), "Other" when none.
* ``device``: one of :data:`DEVICE_TYPES`: ``bot`` (crawlers: ua-parser's "Spider" device), ``tablet``
  (iPads and Android tablets, which ua-parser tells by the missing "Mobile" token), ``mobile`` (a mobile
  OS), ``desktop`` (a desktop OS), else ``other`` (HTTP libraries, scripts, unknown apps, empty strings).

A **device** is (family, os, device type): a new browser or OS version is the same device.

Strings are parsed once: :func:`parse_user_agents` dictionary-encodes a batch and parses its distinct
strings, and :func:`parse_user_agent` keeps the last results in a bounded cache, since the same few
thousand strings fill a day of logs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DEVICE_TYPES",
    "OTHER",
    "UserAgentInfo",
    "parse_user_agent",
    "parse_user_agents",
]

#: Device types, as :func:`parse_user_agent` names them.
DEVICE_TYPES = ("desktop", "mobile", "tablet", "bot", "other")
#: The family and OS of a string the rules do not know (ua-parser's own name for it).
OTHER = "Other"
# ua-parser names a browser's mobile build apart; the device type carries that here.
_FAMILY = {
    "Mobile Safari": "Safari",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
}
_MOBILE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "BlackBerry Tablet OS", "KaiOS", "Tizen", "HarmonyOS"}
    | {"Symbian OS", "Firefox OS", "Sailfish", "webOS", "Windows Mobile", "Bada", "MeeGo", "Maemo"}
)
_DESKTOP_OS = frozenset(
    {"Windows", "Mac OS X", "Mac OS", "Linux", "Ubuntu", "Debian", "Fedora", "Red Hat", "Mint", "Arch Linux"}
    | {"openSUSE", "Gentoo", "Slackware", "Mandriva", "CentOS", "Chrome OS", "Chromecast", "FreeBSD"}
    | {"OpenBSD", "NetBSD", "Solaris", "SunOS", "Haiku", "BeOS", "OS/2"}
)


class UserAgentInfo(NamedTuple):
    """What a user agent string says about its device (see the module doc)."""

    family: str
    os: str
    device: str


@functools.lru_cache(maxsize=1 << 15)
def parse_user_agent(text: str) -> UserAgentInfo:
    """The family, OS and device type of one user agent string (cached: a bounded number of strings)."""
    import ua_parser  # its global parser: the best resolver installed, built on first use

    result = ua_parser.parse(text)
    agent, os_, dev = result.user_agent, result.os, result.device
    family = _FAMILY.get(agent.family, agent.family) if agent is not None else OTHER
    os_family = os_.family if os_ is not None else OTHER
    model = dev.family if dev is not None else ""
    brand = (dev.brand or "") if dev is not None else ""
    if model == "Spider":
        kind = "bot"
    elif model in ("iPad", "Kindle") or brand.endswith("Tablet") or "Tablet" in model:
        kind = "tablet"
    elif os_family in _MOBILE_OS:
        kind = "mobile"
    elif os_family in _DESKTOP_OS or model == "Mac":
        kind = "desktop"
    else:
        kind = "other"
    return UserAgentInfo(family, os_family, kind)


def parse_user_agents(agents: pa.Array) -> tuple[pa.DictionaryArray, pa.DictionaryArray, pa.DictionaryArray]:
    """(family, os, device type) of each string of ``agents``, as dictionary arrays (null where the
    string is null). Each distinct string is parsed once: the batch is dictionary-encoded, its
    dictionary parsed, and the results taken back to the rows."""
    encoded = agents if isinstance(agents, pa.DictionaryArray) else pc.dictionary_encode(agents)
    parsed = [parse_user_agent(s) for s in encoded.dictionary.to_pylist()]
    out = []
    for i in range(3):
        level = pc.dictionary_encode(pa.array([p[i] for p in parsed], pa.string()))
        out.append(pa.DictionaryArray.from_arrays(level.indices.take(encoded.indices), level.dictionary))
    return out[0], out[1], out[2]
