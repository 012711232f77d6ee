"""The fused risk score: a one-split tree with a logistic regression in each leaf, stored as plain numbers.

The model's dot product alone sees only the pair (entity, address). The fusion adds what the profiles
know (:mod:`ipinsights.score.features`: the entity's history of the event's networks, how common those
networks are across the population, hosting and reserved ranges) and weighs them all:

* **one split** on the gate feature: "the entity has used this AS before" with an ip2asn table
  (``as_seen``), "this /24 (/48)" without one (``subnet_seen``). Finer novelty must not count once the
  coarsest network is the entity's own: with a table, a new /24 of the entity's own ISP is normal (its
  ISP renumbers it), so the /24 features live only in the "new AS" leaf; and in the "known AS" leaf only
  the client counts (see ``fusion_fit._TABLE_SEEN``). The leaves are the interactions "new network x every
  other feature";
* **a logistic regression in each leaf** on standardised features (mean and scale stored), fitted by
  iteratively reweighted least squares with an L2 penalty (:mod:`ipinsights.score.fusion_fit`: a few
  Newton steps on a few hundred thousand rows, seconds). Its output, ``risk_score``, is the leaf's logit: the log-odds
  that the event is an attack rather than the entity's own login (higher = more suspicious);
* it is fitted without labels (:mod:`ipinsights.score.fusion_data`): real held-out logins against
  attacks drawn for them, plus labelled rows and investigators' verdicts when given
  (:mod:`ipinsights.score.spark_fusion`, the scoring job's sidecar).

Why a logistic regression per leaf and not boosted trees: fitted without labels, trees did no better. On the
scattered world (3,000 users, with a table, seed 0) gradient-boosted trees fitted on the same drawn rows
ranked popular-ISP and same-country attacks at 0.987-0.988 AUC at depth 3 and 0.96-0.97 deeper, against the
leaves' 0.991-0.992 on the same rows. What separates those two kinds from a traveller's login is not in attacks drawn
without labels (``bench/fusion_eval.py --oracle``, 3 seeds: fitted on the test labels themselves, trees reach
0.997 / 0.995 and these leaves 0.994 / 0.990); a tree fusion belongs with labelled rows and verdicts. And it is
a few dozen numbers that a reviewer can read (per-feature
contributions are exact: coefficient x standardised value, the explanations' words), fits in seconds on
the driver with numpy, and scores with one matrix product wherever the model scores, the endpoint too,
with no new dependency. The feature lists and the gate are data: the fusion file names them, so
changing them needs no change to the plumbing (``fusion.features_new``, ``fusion.features_seen``,
``fusion.gate`` in the scoring settings).

The file, ``<model>.fusion.json`` beside the model (like the calibration), is JSON: the format and its
version, the model's fingerprint, the ip2asn table's fingerprint (or null), the profile build it was
fitted with, the hosting AS numbers, the gate and per leaf its features, means, scales, coefficients
and bias. Loading parses numbers and names only: nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ipinsights.core.errors import UsageError
from ipinsights.core.ip import ParsedIPs
from ipinsights.score.clients import EventDevices
from ipinsights.score.features import FEATURES, event_features
from ipinsights.storage.files import atomic_write, read_text, uri_exists

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable
    from ipinsights.score.profiles import EntityProfiles

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "VERSION",
    "FusionError",
    "FusionLeaf",
    "FusionModel",
    "FusionSpec",
    "check_names",
    "find_fusion",
    "fused_scores",
    "fusion_uri",
    "load_fusion",
    "save_fusion",
]

FORMAT = "ipinsights-fusion"
VERSION = 2  # 2: fitted with uniform addresses among the drawn attacks (a version 1 file is refitted)
SUFFIX = ".fusion.json"


def fusion_uri(model_dir: str | Path) -> str:
    """The default fusion file of a model: ``<model_dir>.fusion.json`` beside it (a path or URI)."""
    from ipinsights.storage.modelfile import sidecar_uri

    return sidecar_uri(model_dir, SUFFIX)


class FusionError(UsageError):
    """A fusion file is missing, malformed, or made for another model, table or profile."""


def check_names(names: tuple[str, ...] | list[str]) -> None:
    """``ValueError`` naming the first feature name that is neither a feature nor a product ``a*b`` of them."""
    for name in names:
        for part in name.split("*"):
            if part not in FEATURES:
                raise ValueError(f"unknown fusion feature {part!r} (in {name!r}); known: {', '.join(FEATURES)}")


@dataclass(frozen=True)
class FusionSpec:
    """What to fit: the gate feature (its value > 0 picks the "seen" leaf) and each leaf's features."""

    gate: str
    new: tuple[str, ...]  # the leaf of a network the entity never used
    seen: tuple[str, ...]  # the leaf of one it did

    def __post_init__(self) -> None:
        check_names((self.gate, *self.new, *self.seen))

    @property
    def names(self) -> tuple[str, ...]:
        """Every feature the fit needs, the gate first, each once."""
        return tuple(dict.fromkeys((self.gate, *self.new, *self.seen)))


@dataclass(frozen=True)
class FusionLeaf:
    """One leaf: a logistic regression on standardised features (``(x - mean) / scale``)."""

    when: int  # the gate's value that picks it: 0 (a new network) or 1 (a known one)
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float

    def standardised(self, features: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``(len(rows), len(self.features))`` standardised values of ``rows``."""
        x = (
            np.column_stack([np.asarray(features[n], np.float64)[rows] for n in self.features])
            if self.features
            else None
        )
        if x is None:
            return np.zeros((rows.size, 0))
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        # NaN is "unknown" (a device feature of an event without a user agent): the mean, weighing nothing.
        return np.nan_to_num(z, nan=0.0)


@dataclass(frozen=True)
class FusionModel:
    """A fitted fusion and what it was fitted with (the file's content)."""

    gate: str
    leaves: tuple[FusionLeaf, ...]
    model_fingerprint: str
    asn_table_fingerprint: str | None  # the table the features were computed with (None: none)
    profile: str  # the profile build (its rows table's name) the features were read from
    hosting_asns: tuple[int, ...] = ()
    source: str = ""  # what traffic it was fitted on
    rows: dict[str, float] = field(default_factory=dict)  # rows (and weights) per kind of the fit
    fit_seconds: float = 0.0
    created_at: str = ""
    version: int = VERSION

    @property
    def names(self) -> tuple[str, ...]:
        """Every feature scoring needs, the gate first."""
        return tuple(dict.fromkeys((self.gate, *(n for leaf in self.leaves for n in leaf.features))))

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides its scores (gate, leaves, hosting list): a calibration on its risk scores
        records it, and is refitted when it changes."""
        body = json.dumps([self.gate, [asdict(leaf) for leaf in self.leaves], list(self.hosting_asns)])
        return hashlib.sha256(body.encode()).hexdigest()

    def leaf_of(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Index into :attr:`leaves` of each row (by the gate's value)."""
        gate = (np.asarray(features[self.gate]) > 0).astype(np.int64)
        out = np.full(gate.size, -1, np.int64)
        for i, leaf in enumerate(self.leaves):
            out[gate == leaf.when] = i
        return out

    def risk(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """``risk_score`` of each row: its leaf's logit (float64; NaN where no leaf takes the row)."""
        leaf_of = self.leaf_of(features)
        out = np.full(leaf_of.size, np.nan)
        for i, leaf in enumerate(self.leaves):
            rows = np.flatnonzero(leaf_of == i)
            if rows.size:
                out[rows] = leaf.standardised(features, rows) @ np.asarray(leaf.coef) + leaf.bias
        return out

    def contributions(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per feature, its share of each row's ``risk_score`` (coefficient x standardised value; 0 where the
        row's leaf does not use it): what the explanations word, largest first."""
        leaf_of = self.leaf_of(features)
        out = {name: np.zeros(leaf_of.size) for name in self.names}
        for i, leaf in enumerate(self.leaves):
            rows = np.flatnonzero(leaf_of == i)
            if rows.size and leaf.features:
                parts = leaf.standardised(features, rows) * np.asarray(leaf.coef)
                for j, name in enumerate(leaf.features):
                    out[name][rows] += parts[:, j]
        return out

    def to_json(self) -> str:
        data = asdict(self)
        data["leaves"] = [asdict(leaf) for leaf in self.leaves]
        return json.dumps({"format": FORMAT, **data}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "fusion") -> FusionModel:
        """The fusion of a file's text; :class:`FusionError` naming ``where`` when it is not one of this version."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FusionError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise FusionError(f"{where}: not an ipinsights fusion file")
        if data.get("version") != VERSION:
            raise FusionError(f"{where}: fusion format version {data.get('version')!r}, not {VERSION} (refit it)")
        try:
            leaves = tuple(_leaf(x) for x in data.pop("leaves"))
            data["hosting_asns"] = tuple(int(a) for a in data.get("hosting_asns", ()))
            model = cls(leaves=leaves, **data)
            check_names([model.gate, *(n for leaf in leaves for n in leaf.features)])
            if len({leaf.when for leaf in leaves}) != len(leaves):
                raise ValueError("two leaves for one gate value")
        except (KeyError, TypeError, ValueError) as exc:
            raise FusionError(f"{where}: malformed fusion ({type(exc).__name__}: {exc})") from None
        return model


def _leaf(data: dict[str, Any]) -> FusionLeaf:
    """A leaf from its JSON object, its numbers checked (finite, one per feature; scales positive)."""
    names = tuple(str(n) for n in data["features"])
    nums = {k: tuple(float(v) for v in data[k]) for k in ("mean", "scale", "coef")}
    bias = float(data["bias"])
    if any(len(v) != len(names) for v in nums.values()):
        raise ValueError(f"a leaf has {len(names)} features but {[len(v) for v in nums.values()]} numbers")
    if not all(math.isfinite(x) for v in nums.values() for x in v) or not math.isfinite(bias):
        raise ValueError("a leaf's numbers are not all finite")
    if any(s <= 0 for s in nums["scale"]):
        raise ValueError("a leaf's scales must be positive")
    return FusionLeaf(int(data["when"]), names, nums["mean"], nums["scale"], nums["coef"], bias)


def save_fusion(model: FusionModel, path: str | Path) -> str | Path:
    """Write the fusion file atomically (a path or URI)."""
    with atomic_write(path) as fh:
        fh.write(model.to_json())
    return path


def load_fusion(
    path: str | Path,
    model_fingerprint: str | None = None,
    asn_table_fingerprint: str | None = None,
    profile: str | None = None,
) -> FusionModel:
    """Read a fusion file; with ``model_fingerprint``, refuse it (:class:`FusionError`) unless it was made for
    that model and the ip2asn table of ``asn_table_fingerprint`` (None: scored without one), and with
    ``profile``, for that profile build."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise FusionError(f"{path}: no fusion file") from None
    model = FusionModel.from_json(text, str(path))
    if model_fingerprint is not None:
        if model.model_fingerprint != model_fingerprint:
            raise FusionError(f"{path}: made for another model (refit it)")
        if model.asn_table_fingerprint != asn_table_fingerprint:
            raise FusionError(f"{path}: fitted with another ip2asn table than this scorer's (refit it)")
    if profile is not None and model.profile != profile:
        raise FusionError(f"{path}: fitted with another profile build than {profile} (refit it)")
    return model


def find_fusion(
    path: str | None, model_dir: str | Path, asn_table: AsnTable | None, profile: str | None
) -> FusionModel | None:
    """The fusion a scorer uses: the one at ``path`` (which must be usable: :class:`FusionError` otherwise),
    or ``<model>.fusion.json`` when it is usable (else None, logged when it exists); made for the model at
    ``model_dir``, scored with ``asn_table`` and fitted with the profile build ``profile`` (None: no profile
    loaded, so no fusion)."""
    from ipinsights.storage.modelfile import model_fingerprint

    where = path or fusion_uri(model_dir)
    try:
        if profile is None:
            raise FusionError(f"{where}: a fusion needs the entity profiles it was fitted with (none loaded)")
        table = asn_table.fingerprint if asn_table is not None else None
        return load_fusion(where, model_fingerprint(model_dir), table, profile)
    except FusionError as exc:
        if path is not None:
            raise
        if uri_exists(where):
            log.warning("%s", exc)
        return None


def fused_scores(
    fusion: FusionModel,
    parsed: ParsedIPs,
    dot_product: np.ndarray,
    profiles: EntityProfiles,
    rows: np.ndarray,
    asn_table: AsnTable | None,
    days: np.ndarray | None = None,
    devices: EventDevices | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``risk_score`` of every row (NaN for an invalid address) and its features (0 for an invalid one): the
    rows' addresses, the model's dot products, their entities' profile ``rows`` in ``profiles``, their days
    (None: no timestamps) and devices (None: no user agents)."""
    ok = parsed.valid & np.isfinite(dot_product)
    at = np.flatnonzero(ok)
    d = None if days is None else np.asarray(days, np.float64)[at]
    dev = None if devices is None else devices.take(at)
    feats = event_features(
        fusion.names, parsed.value[at], rows[at], profiles, dot_product[at], asn_table, d, fusion.hosting_asns, dev
    )
    risk = np.full(ok.size, np.nan)
    risk[at] = fusion.risk(feats)
    full = {}
    for name, values in feats.items():
        full[name] = np.zeros(ok.size)
        full[name][at] = values
    return risk, full
