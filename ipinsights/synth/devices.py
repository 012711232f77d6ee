"""Users' devices and their user agents (``devices: realistic``), and the user agents of attackers.

Each user has 1-3 devices (45% one, 40% two, 15% three), drawn from :data:`CATALOGUE` by its share of
logins (roughly StatCounter's global shares of 2024: about half of the logins from desktops, mostly
Chrome and Edge on Windows, Chrome and Safari on macOS; the other half from phones, Chrome on Android
and Safari on iPhones, in-app browsers and the service's own app; a few tablets; a few scripts). A
user's devices are distinct devices: a **device** is a browser (or client) family, an OS family and a
device type, as :mod:`ipinsights.core.useragent` parses them from the strings (tested for every entry);
a user with a mobile carrier has a phone among them.

A device keeps its model and build for the period, and its version moves as auto-updating software does:
most devices run the release current at the start of the period (others are 1-4 releases behind), and a
device on the current release updates a few days after the next release comes out, if that falls in the
period (Chrome, Edge and Opera every 4 weeks, Firefox every 4, Samsung Internet every 10, iOS and
Safari point releases about monthly, apps every 1-2); a device behind updates one release at a random day
with probability 0.25. A version change is the same device. Releases are numbered from real dates
(Chrome 120 on 2023-12-05, Firefox 121 on 2023-12-19, iOS 17.0 on 2023-09-18, ...), so a period in
2024 shows the versions of 2024.

Events pick one of the user's devices (the first most often); logins over the mobile carrier use the
user's phone; trips and one-off logins elsewhere keep the user's own devices.

Attackers' user agents, after the attacker models of Wiefling et al. (2022), by sophistication:
``naive`` and ``vpn`` draw a device by the same shares (so it is the victim's by chance as often as
the market says), ``targeted`` knows the victim's browser family and uses it on another OS or device
type (one the victim does not have), ``very_targeted`` uses the victim's exact user agent string.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = [
    "CATALOGUE",
    "DEVICE_SLOTS",
    "Template",
    "current_release",
    "device_agents",
    "draw_devices",
    "event_slots",
    "market_devices",
    "render_agents",
    "targeted_devices",
]

DEVICE_SLOTS = 3  # devices per user at most
_N_DEVICES = np.array([0.45, 0.40, 0.15])  # shares of users with 1, 2, 3 devices
_SLOT_USE = np.array([0.6, 0.3, 0.1])  # how often a user's events use each of their devices
_LAG = np.array([0.72, 0.18, 0.06, 0.02, 0.02])  # releases behind the current one at the period's start
_BEHIND_UPDATES = 0.25  # chance that a device behind updates one release during the period
_UPDATE_DELAY = 0.35  # a device on the current release updates Geometric(this) - 1 days after the next one


@dataclass(frozen=True)
class _Scheme:
    """How a product's releases are numbered: release ``first`` came out on ``day``, then one every ``cadence`` days."""

    day: _dt.date
    first: int
    cadence: int


_SCHEMES = {
    "chromium": _Scheme(_dt.date(2023, 12, 5), 120, 28),
    "firefox": _Scheme(_dt.date(2023, 12, 19), 121, 28),
    "samsung": _Scheme(_dt.date(2023, 11, 20), 23, 70),
    "apple": _Scheme(_dt.date(2023, 9, 18), 0, 30),  # iOS/Safari point releases: see _apple
    "instagram": _Scheme(_dt.date(2024, 1, 2), 312, 7),
    "facebook": _Scheme(_dt.date(2024, 1, 4), 445, 7),
    "app": _Scheme(_dt.date(2024, 1, 8), 66, 14),  # the service's own app (5.14 then: see _app)
    "tool": _Scheme(_dt.date(2024, 1, 1), 0, 90),
}

_ANDROID = ((11, "RP1A.201005.001"), (12, "SP1A.210812.016"), (13, "TP1A.220624.014"), (14, "UP1A.231005.007"))
_ANDROID_SHARE = (1, 2, 3, 4)  # newer Android versions are more common (detail % 10 picks one)
# Phones and tablets that Samsung Internet, Instagram and the service's app name (Samsung's, the commonest).
_PHONES = (
    *("SM-S918B", "SM-S911B", "SM-A546B", "SM-A536B", "SM-A146B", "SM-G991B", "SM-A346B", "SM-A256B"),
    *("SM-G781B", "SM-S928B", "SM-A155F", "SM-M146B"),
)
_TABLETS = ("SM-X710", "SM-X210", "SM-X910", "SM-T220", "SM-X510")
_IPHONES = (
    "iPhone14,5",
    "iPhone15,2",
    "iPhone15,3",
    "iPhone16,1",
    "iPhone16,2",
    "iPhone13,2",
    "iPhone14,7",
    "iPhone12,1",
)
_SCREENS = ("1170x2532", "1179x2556", "1290x2796", "1179x2556", "1290x2796", "1170x2532", "1170x2532", "828x1792")
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_APPLEKIT = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
_REDUCED_ANDROID = "Linux; Android 10; K"  # Chrome's reduced user agent on every Android phone and tablet


def _android(detail: int) -> tuple[int, str]:
    """The Android version (and its build id) of a device's detail, newer ones likelier."""
    cdf = np.cumsum(_ANDROID_SHARE)
    return _ANDROID[int(np.searchsorted(cdf, detail % cdf[-1], side="right"))]


def _date_of(scheme: str, release: int) -> _dt.date:
    s = _SCHEMES[scheme]
    return s.day + _dt.timedelta(days=(release - s.first) * s.cadence)


def _ios_at(scheme: str, release: int, back: int = 0, sep: str = "_") -> str:
    """The iOS version of a device running ``release`` of ``scheme``: the one current then, ``back`` behind."""
    return _ios(current_release("apple", _date_of(scheme, release)) - back, sep)


def _apple(release: int) -> tuple[int, int, int]:
    """iOS / Safari version of an apple release number: 12 point releases a year, x.y and x.y.1 each."""
    return 17 + release // 12, (release % 12) // 2, release % 2


def _ios(release: int, sep: str = "_") -> str:
    major, minor, patch = _apple(release)
    return sep.join(str(v) for v in ((major, minor, patch) if patch else (major, minor)))


def _app(release: int) -> str:
    """The service app's ``major.minor``: a release every 2 weeks, a major version a year."""
    return f"{3 + release // 26}.{release % 26}"


def _build(release: int, base: int, per_release: int, detail: int, span: int) -> str:
    """A Chromium-style ``major.0.build.patch`` of a release (the build grows with the release)."""
    return f"{release}.0.{base + (release - 120) * per_release}.{detail % span}"


@dataclass(frozen=True)
class Template:
    """One kind of device: what :mod:`ipinsights.core.useragent` parses its strings to, its share of
    devices, how its releases are numbered and how a (release, detail) renders as a user agent.
    ``variants``: how many details give distinct strings (models, builds); the rest repeat."""

    family: str
    os: str
    device: str
    share: float
    scheme: str
    variants: int
    render: Callable[[int, int], str]


def _chrome_desktop(platform: str, suffix: Callable[[int, int], str] = lambda r, d: "") -> Callable[[int, int], str]:
    return lambda r, d: f"Mozilla/5.0 ({platform}) {_WEBKIT} Chrome/{r}.0.0.0 Safari/537.36{suffix(r, d)}"


_WINDOWS = "Windows NT 10.0; Win64; x64"
_MAC = "Macintosh; Intel Mac OS X 10_15_7"
_DESKTOP, _MOBILE, _TABLET = 0.47, 0.485, 0.04  # of devices; scripts take the rest


def _edge(r: int, d: int) -> str:
    return f" Edg/{_build(r, 2210, 70, d, 150)}"


def _opera(r: int, d: int) -> str:
    return f" OPR/{r - 14}.0.{4998 + (r - 120) * 70}.{d % 100}"


def _instagram_ios(r: int, d: int, ios: str, model: str, screen: str) -> str:
    """Instagram's in-app browser on an iPhone (``ios``: ``17_2``)."""
    return (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) {_APPLEKIT} Mobile/15E148 "
        f"Instagram {r}.0.0.{20 + d // 64 % 10}.{100 + d // 8 % 8} ({model}; iOS {ios}; en_US; en; scale=3.00; "
        f"{screen}; {540000000 + r * 1000})"
    )


def _facebook_ios(r: int, d: int, ios: str, model: str) -> str:
    """Facebook's in-app browser on an iPhone."""
    return (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) {_APPLEKIT} Mobile/15E148 "
        f"[FBAN/FBIOS;FBAV/{r}.0.0.{30 + d // 64 % 10}.{110 + d // 8 % 8};FBBV/{550000000 + r * 1000};FBDV/{model};"
        f"FBMD/iPhone;FBSN/iOS;FBSV/{ios.replace('_', '.')};FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]"
    )


#: Every kind of device the generator gives users and naive attackers, with its share.
CATALOGUE: tuple[Template, ...] = (
    Template("Chrome", "Windows", "desktop", _DESKTOP * 0.44, "chromium", 1, _chrome_desktop(_WINDOWS)),
    Template("Edge", "Windows", "desktop", _DESKTOP * 0.13, "chromium", 150, _chrome_desktop(_WINDOWS, _edge)),
    Template(
        "Firefox",
        "Windows",
        "desktop",
        _DESKTOP * 0.05,
        "firefox",
        1,
        lambda r, d: f"Mozilla/5.0 ({_WINDOWS}; rv:{r}.0) Gecko/20100101 Firefox/{r}.0",
    ),
    Template("Opera", "Windows", "desktop", _DESKTOP * 0.025, "chromium", 100, _chrome_desktop(_WINDOWS, _opera)),
    Template("Chrome", "Mac OS X", "desktop", _DESKTOP * 0.10, "chromium", 1, _chrome_desktop(_MAC)),
    Template(
        "Safari",
        "Mac OS X",
        "desktop",
        _DESKTOP * 0.10,
        "apple",
        1,
        lambda r, d: f"Mozilla/5.0 ({_MAC}) {_APPLEKIT} Version/{_ios(r, '.')} Safari/605.1.15",
    ),
    Template(
        "Firefox",
        "Mac OS X",
        "desktop",
        _DESKTOP * 0.015,
        "firefox",
        1,
        lambda r, d: f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{r}.0) Gecko/20100101 Firefox/{r}.0",
    ),
    Template("Edge", "Mac OS X", "desktop", _DESKTOP * 0.01, "chromium", 150, _chrome_desktop(_MAC, _edge)),
    Template("Opera", "Mac OS X", "desktop", _DESKTOP * 0.005, "chromium", 100, _chrome_desktop(_MAC, _opera)),
    Template("Chrome", "Linux", "desktop", _DESKTOP * 0.03, "chromium", 1, _chrome_desktop("X11; Linux x86_64")),
    Template(
        "Firefox",
        "Ubuntu",
        "desktop",
        _DESKTOP * 0.02,
        "firefox",
        1,
        lambda r, d: f"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{r}.0) Gecko/20100101 Firefox/{r}.0",
    ),
    Template(
        "Chrome",
        "Chrome OS",
        "desktop",
        _DESKTOP * 0.025,
        "chromium",
        60,
        lambda r, d: _chrome_desktop(f"X11; CrOS x86_64 {15633 + (r - 120) * 80}.{d % 60}.0")(r, d),
    ),
    # Phones.
    Template(
        "Chrome",
        "Android",
        "mobile",
        _MOBILE * 0.36,
        "chromium",
        1,
        lambda r, d: f"Mozilla/5.0 ({_REDUCED_ANDROID}) {_WEBKIT} Chrome/{r}.0.0.0 Mobile Safari/537.36",
    ),
    Template(
        "Samsung Internet",
        "Android",
        "mobile",
        _MOBILE * 0.05,
        "samsung",
        120,
        lambda r, d: (
            f"Mozilla/5.0 (Linux; Android {_android(d)[0]}; {_PHONES[d % 12]}) {_WEBKIT} "
            f"SamsungBrowser/{r}.0 Chrome/{115 + 3 * (r - 23)}.0.0.0 Mobile Safari/537.36"
        ),
    ),
    Template(
        "Firefox",
        "Android",
        "mobile",
        _MOBILE * 0.006,
        "firefox",
        10,
        lambda r, d: f"Mozilla/5.0 (Android {_android(d)[0]}; Mobile; rv:{r}.0) Gecko/{r}.0 Firefox/{r}.0",
    ),
    Template(
        "Edge",
        "Android",
        "mobile",
        _MOBILE * 0.006,
        "chromium",
        150,
        lambda r, d: (
            f"Mozilla/5.0 ({_REDUCED_ANDROID}) {_WEBKIT} Chrome/{r}.0.0.0 Mobile Safari/537.36 "
            f"EdgA/{_build(r, 2210, 70, d, 150)}"
        ),
    ),
    Template(
        "Opera",
        "Android",
        "mobile",
        _MOBILE * 0.01,
        "chromium",
        500,
        lambda r, d: (
            f"Mozilla/5.0 ({_REDUCED_ANDROID}) {_WEBKIT} Chrome/{r}.0.0.0 Mobile Safari/537.36 "
            f"OPR/{r - 41}.1.{4195 + (r - 120) * 40}.{76000 + d % 500}"
        ),
    ),
    Template(
        "Safari",
        "iOS",
        "mobile",
        _MOBILE * 0.29,
        "apple",
        1,
        lambda r, d: (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {_ios(r)} like Mac OS X) {_APPLEKIT} "
            f"Version/{_ios(r, '.')} Mobile/15E148 Safari/604.1"
        ),
    ),
    Template(
        "Chrome",
        "iOS",
        "mobile",
        _MOBILE * 0.04,
        "chromium",
        200,
        lambda r, d: (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {_ios_at('chromium', r, d % 4)} like Mac OS X) {_APPLEKIT} "
            f"CriOS/{_build(r, 6099, 90, d // 8, 25)} Mobile/15E148 Safari/604.1"
        ),
    ),
    Template(
        "Firefox",
        "iOS",
        "mobile",
        _MOBILE * 0.004,
        "firefox",
        8,
        lambda r, d: (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {_ios_at('firefox', r, d % 4)} like Mac OS X) {_APPLEKIT} "
            f"FxiOS/{r}.0 Mobile/15E148 Safari/605.1.15"
        ),
    ),
    Template(
        "Instagram",
        "iOS",
        "mobile",
        _MOBILE * 0.03,
        "instagram",
        640,
        lambda r, d: _instagram_ios(r, d, _ios_at("instagram", r, d % 4), _IPHONES[d // 8 % 8], _SCREENS[d // 8 % 8]),
    ),
    Template(
        "Facebook",
        "iOS",
        "mobile",
        _MOBILE * 0.03,
        "facebook",
        640,
        lambda r, d: _facebook_ios(r, d, _ios_at("facebook", r, d % 4), _IPHONES[d // 8 % 8]),
    ),
    Template(
        "Instagram",
        "Android",
        "mobile",
        _MOBILE * 0.03,
        "instagram",
        480,
        lambda r, d: (
            f"Mozilla/5.0 (Linux; Android {_android(d)[0]}; {_PHONES[d % 12]} Build/{_android(d)[1]}; wv) "
            f"{_WEBKIT} Version/4.0 Chrome/120.0.6099.{d // 40 % 40 + 100} Mobile Safari/537.36 Instagram "
            f"{r}.0.0.{20 + d // 12 % 4}.112 Android ({20 + _android(d)[0]}/{_android(d)[0]}; 420dpi; 1080x2340; "
            f"samsung; {_PHONES[d % 12]}; en_US; {548000000 + r * 1000})"
        ),
    ),
    Template(
        "ExampleBank",
        "iOS",
        "mobile",
        _MOBILE * 0.06,
        "app",
        24,
        lambda r, d: (
            f"ExampleBank/{_app(r)}.{d % 3} CFNetwork/{1485 + d // 3 % 8}.0.{d // 24 % 9} Darwin/23.{d // 3 % 8 // 2}.0"
        ),
    ),
    Template(
        "Android",
        "Android",
        "mobile",
        _MOBILE * 0.05,
        "app",
        120,
        lambda r, d: (
            f"Dalvik/2.1.0 (Linux; U; Android {_android(d)[0]}; {_PHONES[d % 12]} "
            f"Build/{_android(d)[1]}) ExampleBank/{_app(r)}.{d // 40 % 3}"
        ),
    ),
    # Tablets.
    Template(
        "Safari",
        "iOS",
        "tablet",
        _TABLET * 0.55,
        "apple",
        1,
        lambda r, d: (
            f"Mozilla/5.0 (iPad; CPU OS {_ios(r)} like Mac OS X) {_APPLEKIT} Version/{_ios(r, '.')} "
            "Mobile/15E148 Safari/604.1"
        ),
    ),
    Template(
        "Chrome",
        "iOS",
        "tablet",
        _TABLET * 0.10,
        "chromium",
        200,
        lambda r, d: (
            f"Mozilla/5.0 (iPad; CPU OS {_ios_at('chromium', r, d % 4)} like Mac OS X) {_APPLEKIT} "
            f"CriOS/{_build(r, 6099, 90, d // 8, 25)} Mobile/15E148 Safari/604.1"
        ),
    ),
    Template(
        "Chrome",
        "Android",
        "tablet",
        _TABLET * 0.25,
        "chromium",
        1,
        lambda r, d: f"Mozilla/5.0 ({_REDUCED_ANDROID}) {_WEBKIT} Chrome/{r}.0.0.0 Safari/537.36",
    ),
    Template(
        "Samsung Internet",
        "Android",
        "tablet",
        _TABLET * 0.10,
        "samsung",
        50,
        lambda r, d: (
            f"Mozilla/5.0 (Linux; Android {_android(d)[0]}; {_TABLETS[d % 5]}) {_WEBKIT} "
            f"SamsungBrowser/{r}.0 Chrome/{115 + 3 * (r - 23)}.0.0.0 Safari/537.36"
        ),
    ),
    # Scripts: users who log in from their own tools.
    Template("curl", "Other", "other", 0.0025, "tool", 6, lambda r, d: f"curl/{8 + r // 4}.{r % 4 + d % 6}.0"),
    Template(
        "Python Requests",
        "Other",
        "other",
        0.0025,
        "tool",
        4,
        lambda r, d: f"python-requests/2.{31 + r // 2 + d % 4}.{d % 3}",
    ),
)
_SHARE = np.array([t.share for t in CATALOGUE])
_SHARE_CDF = np.cumsum(_SHARE) / _SHARE.sum()
_SCHEME = np.array([t.scheme for t in CATALOGUE], dtype=object)
_VARIANTS = np.array([t.variants for t in CATALOGUE], np.int64)
_IS_PHONE = np.array([t.device == "mobile" for t in CATALOGUE])
_FAMILY = np.array([t.family for t in CATALOGUE], dtype=object)


def current_release(scheme: str, day: _dt.date) -> int:
    """The release of ``scheme`` that is current on ``day`` (see the module doc)."""
    s = _SCHEMES[scheme]
    return s.first + (day - s.day).days // s.cadence


def _weighted(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _releases(
    rng: np.random.Generator, template: np.ndarray, start: _dt.date, days: int, at: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(release, update day or -1) of devices of ``template`` on day ``at`` of the period (default 0, its
    start), and the day of the period from which each runs the next release (see the module doc)."""
    n = len(template)
    at = np.zeros(n, np.int64) if at is None else np.asarray(at, np.int64)
    lag = _weighted(rng, np.cumsum(_LAG), n)
    delay = rng.geometric(_UPDATE_DELAY, n) - 1
    behind_update = np.where(rng.random(n) < _BEHIND_UPDATES, rng.integers(1, max(days, 2), n), -1)
    release = np.zeros(n, np.int64)
    update = np.full(n, -1, np.int64)
    for scheme in sorted(set(_SCHEME[template].tolist())):
        rows = _SCHEME[template] == scheme
        s = _SCHEMES[scheme]
        since = (start - s.day).days + at[rows]
        release[rows] = s.first + since // s.cadence - lag[rows]
        on_time = s.cadence - since % s.cadence + delay[rows]  # after the next release, as auto-updates go
        update[rows] = np.where(lag[rows] == 0, on_time, behind_update[rows])
    update = np.where((update >= 1) & (update < days), update, -1)
    return release, update


def market_devices(
    rng: np.random.Generator, start: _dt.date, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Devices drawn by share, one per day ``at`` of the period (from ``start``): (template, release, detail),
    releases as users' devices have them on that day."""
    template = _weighted(rng, _SHARE_CDF, len(at))
    release, _ = _releases(rng, template, start, 1, at)
    return template, release, rng.integers(0, 1 << 30, len(at))


def draw_devices(
    rng: np.random.Generator, n: int, has_carrier: np.ndarray, start: _dt.date, days: int
) -> dict[str, np.ndarray]:
    """The devices of ``n`` users, ``(n, DEVICE_SLOTS)`` arrays: ``template`` (index into :data:`CATALOGUE`,
    -1 for no device), ``release`` (at the period's start), ``update_day`` (the local day from which the
    device runs the next release, -1: none) and ``detail`` (its model and build); see the module doc."""
    count = 1 + _weighted(rng, np.cumsum(_N_DEVICES), n)
    template = np.full((n, DEVICE_SLOTS), -1, np.int64)
    for slot in range(DEVICE_SLOTS):
        rows = np.flatnonzero(count > slot)
        pick = _weighted(rng, _SHARE_CDF, len(rows))
        for _ in range(30):  # another device than the user's others: redraw the repeats
            again = (template[rows, :slot] == pick[:, None]).any(axis=1)
            if not again.any():
                break
            pick[again] = _weighted(rng, _SHARE_CDF, int(again.sum()))
        template[rows, slot] = np.where((template[rows, :slot] == pick[:, None]).any(axis=1), -1, pick)
    # A user with a mobile carrier logs in through it from a phone: give one to those without.
    phone_cdf = np.cumsum(np.where(_IS_PHONE, _SHARE, 0.0))
    phone_cdf /= phone_cdf[-1]
    needs = np.flatnonzero(has_carrier & ~_IS_PHONE[np.maximum(template, 0)].any(axis=1, where=template >= 0))
    slot = np.minimum((template[needs] >= 0).sum(axis=1), DEVICE_SLOTS - 1)
    template[needs, slot] = _weighted(rng, phone_cdf, len(needs))
    flat = template.reshape(-1)
    release, update = _releases(rng, np.maximum(flat, 0), start, days)
    detail = rng.integers(0, 1 << 30, flat.size)
    return {
        "template": template,
        "release": release.reshape(n, DEVICE_SLOTS),
        "update_day": np.where(flat >= 0, update, -1).reshape(n, DEVICE_SLOTS),
        "detail": detail.reshape(n, DEVICE_SLOTS),
    }


def event_slots(rng: np.random.Generator, template: np.ndarray, uid: np.ndarray, on_carrier: np.ndarray) -> np.ndarray:
    """Which of its user's devices (slot) each event uses: by :data:`_SLOT_USE` among the user's devices,
    and the user's phone for the logins over the mobile carrier (``on_carrier``)."""
    use = np.where(template >= 0, _SLOT_USE, 0.0)
    cdf = np.cumsum(use, axis=1)
    cdf /= cdf[:, -1:]
    slot = (rng.random(len(uid))[:, None] >= cdf[uid]).sum(axis=1)
    phone = np.argmax(_IS_PHONE[np.maximum(template, 0)] & (template >= 0), axis=1)  # the user's first phone
    return np.where(on_carrier, phone[uid], np.minimum(slot, DEVICE_SLOTS - 1))


def device_agents(devices: dict[str, np.ndarray], user: np.ndarray, slot: np.ndarray, day: np.ndarray) -> pa.Array:
    """The user agent of each (user row, device slot) on its (local) ``day``: the device's release then."""
    update = devices["update_day"][user, slot]
    updated = ((update >= 0) & (day >= update)).astype(np.int64)
    # A device has two strings at most (before and after its update): render those, then take them back.
    distinct, inverse = np.unique((user * DEVICE_SLOTS + slot) * 2 + updated, return_inverse=True)
    user, slot, updated = distinct // 2 // DEVICE_SLOTS, distinct // 2 % DEVICE_SLOTS, distinct % 2
    release = devices["release"][user, slot] + updated
    texts = render_agents(devices["template"][user, slot], release, devices["detail"][user, slot])
    return texts.take(pa.array(inverse.reshape(-1)))


def render_agents(template: np.ndarray, release: np.ndarray, detail: np.ndarray) -> pa.StringArray:
    """User agent strings of (template, release, detail) triples: each distinct one rendered once."""
    template = np.asarray(template, np.int64)
    release = np.asarray(release, np.int64)
    if len(release) and not (np.abs(release) < 1 << 20).all():
        raise ValueError(f"release numbers out of range: {release[np.abs(release) >= 1 << 20][:3]}")
    variant = np.asarray(detail, np.int64) % _VARIANTS[template]
    distinct, inverse = np.unique((template << 48) | ((release + (1 << 20)) << 24) | variant, return_inverse=True)
    fields = (distinct >> 48, (distinct >> 24) % (1 << 24) - (1 << 20), distinct % (1 << 24))
    parts = zip(*(f.tolist() for f in fields), strict=True)
    texts = [CATALOGUE[t].render(r, v) for t, r, v in parts]
    return pa.array(texts, pa.string()).take(pa.array(inverse.reshape(-1)))


def targeted_devices(
    rng: np.random.Generator, victim: np.ndarray, start: _dt.date, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template, release, detail) of a device with the browser family of one of each victim's devices
    (``victim``: its ``(n, DEVICE_SLOTS)`` templates) on an OS or device type the victim does not have,
    by share, on day ``at`` of the period; template -1 where no device of the victim's families is one it lacks."""
    n = len(victim)
    held = np.zeros((n, len(CATALOGUE)), bool)
    for slot in range(victim.shape[1]):
        rows = np.flatnonzero(victim[:, slot] >= 0)
        held[rows, victim[rows, slot]] = True
    # Per row and slot: the templates of that device's family the victim lacks; pick a slot that has one.
    same_family = _FAMILY[:, None] == _FAMILY[None, :]
    options = same_family[np.maximum(victim, 0)] & ~held[:, None, :] & (victim >= 0)[:, :, None]
    usable = options.any(axis=2)
    order = np.argsort(rng.random(victim.shape), axis=1)  # a random slot among the usable ones
    first = np.take_along_axis(usable, order, axis=1).argmax(axis=1)
    slot = order[np.arange(n), first]
    weights = np.where(options[np.arange(n), slot], _SHARE, 0.0)
    total = weights.sum(axis=1)
    cdf = np.cumsum(weights, axis=1) / np.where(total > 0, total, 1.0)[:, None]
    template = np.minimum((rng.random(n)[:, None] >= cdf).sum(axis=1), len(CATALOGUE) - 1)
    template = np.where(total > 0, template, -1)
    release, _ = _releases(rng, np.maximum(template, 0), start, 1, at)
    return template, release, rng.integers(0, 1 << 30, n)
