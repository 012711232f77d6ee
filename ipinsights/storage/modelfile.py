"""The model file: a directory with safetensors weights and a JSON manifest.

Layout (format version 1)::

    MODEL_DIR/
      model.json            manifest: format, format_version, hyperparameters, model options
                            (hash seed included), hash_version, sha256 + size of every file,
                            training metrics, the resolved config
      weights.safetensors   tensors only: loading never executes code (no pickle)
      <extra files>         e.g. calibration written by later jobs, listed with their sha256

A model may live at any URI (:mod:`ipinsights.storage.files`): written locally then published with
``model.json`` last (a directory without its manifest is not a model), and loaded from a local copy
(:func:`local_model`, cached by the manifest's checksum).

Loading checks, in order: the manifest parses and says it is an ipinsights model of a known format
version; every listed file exists with the recorded size and sha256 (so truncation or corruption is
caught before any bytes are interpreted); tensor names and shapes match the hyperparameters. Each
failure raises :class:`ModelFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ipinsights._version import __version__
from ipinsights.core.asn import AsnTable, load_asn_table
from ipinsights.core.config import ConfigError, Hyperparameters, ModelOptions, config_from_dict, config_to_dict
from ipinsights.core.errors import UsageError
from ipinsights.core.hashing import HASH_VERSION
from ipinsights.core.model import IPInsightsModel, NetworkTableError
from ipinsights.storage.files import (
    cached,
    download_dir,
    fetch,
    is_local,
    join_uri,
    local_copy,
    local_path,
    publish_dir,
    read_bytes,
)
from ipinsights.storage.network_cache import AUTO, CACHE_ENV, find_table

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelBundle",
    "save_model",
    "load_model",
    "local_model",
    "sha256_file",
    "network_table",
]

FORMAT = "ipinsights-model"
FORMAT_VERSION = 2
#: Versions this code reads. Version 1 predates IPv6: its models have no IPv6 levels.
READABLE_VERSIONS = (1, 2)
MANIFEST = "model.json"
WEIGHTS = "weights.safetensors"


class ModelFileError(UsageError):
    """A model directory is missing, corrupt, truncated, foreign or of an unsupported version."""


@dataclass
class ModelBundle:
    """A loaded model with its manifest."""

    model: IPInsightsModel
    hyperparameters: Hyperparameters
    options: ModelOptions
    manifest: dict[str, Any]
    path: Path  # local: the model itself or its cached copy
    extras: dict[str, Any] = field(default_factory=dict)
    uri: str = ""  # where the model was loaded from (its sidecar files are beside it there)
    asn_table: AsnTable | None = None  # the ip2asn table attached to the model's AS and country levels

    def __post_init__(self) -> None:
        self.uri = self.uri or str(self.path)

    def extra_path(self, name: str) -> Path:
        """Path of an extra file stored with the model (checked at load time)."""
        if name not in self.manifest.get("files", {}):
            raise ModelFileError(f"{self.path}: the model holds no file {name!r}")
        return self.path / name


def network_table(uris: str) -> AsnTable:
    """The ip2asn table of ``uris`` (one or several comma-separated paths or URIs: local copies, read once
    per process)."""
    if str(uris).strip() == AUTO:  # a setting, not a file: the training job resolves it (network_cache)
        raise NetworkTableError(
            "asn_table: auto (the networks cache's newest table) is resolved by `ipinsights train` only; "
            "give the table's path (`ipinsights networks list` shows the cached ones)"
        )
    local = [str(local_copy(u.strip())) for u in str(uris).split(",") if u.strip()]
    if not local:
        raise NetworkTableError(f"asn_table={uris!r} names no file")
    table = load_asn_table(",".join(local))
    return table if table.source == uris else replace(table, source=uris)


def _is_plain_name(name: object) -> bool:
    """A file name that stays inside the model directory: no separators, no ``..``, not hidden."""
    return isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def _non_finite(tensors: Mapping[str, torch.Tensor], chunk: int = 1 << 22) -> list[str]:
    """Names of the floating-point tensors holding a NaN or infinity. Checked a chunk at a time: the mask
    of a whole 48 GiB table would add a quarter of its size to the peak."""

    def finite(v: torch.Tensor) -> bool:
        flat = v.reshape(-1)
        return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))

    return [k for k, v in tensors.items() if v.is_floating_point() and not finite(v)]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_model(
    model: IPInsightsModel,
    path: str | Path,
    *,
    training: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes | str] | None = None,
) -> str | Path:
    """Write ``model`` to directory ``path`` (a path or URI), replacing any model already there, atomically.

    ``extra_files``: name -> contents, or the path or URI of a file to copy in (streamed: the entity stats
    of millions of entities are never held whole).

    Written into a temporary directory first (a sibling, for a local path) and then published
    (:func:`ipinsights.storage.files.publish_dir`, the manifest last), so a reader (or a crash) never
    sees a half-written model.
    """
    from safetensors.torch import save_file

    if is_local(path):
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="ipinsights-model-"))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if bad := _non_finite(tensors):
            raise ValueError(f"refusing to save a model with NaN or infinite weights in {', '.join(bad)} (diverged)")
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        for name, data in (extra_files or {}).items():
            if not _is_plain_name(name) or name in (MANIFEST, WEIGHTS):
                raise ValueError(f"invalid extra file name {name!r}")
            if isinstance(data, bytes):
                (tmp / name).write_bytes(data)
            else:
                fetch(data, tmp / name)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ipinsights_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hash_version": HASH_VERSION,
            "hyperparameters": config_to_dict(model.hp),
            "model_options": config_to_dict(model.opts),
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "asn_table_fingerprint": model.network_fingerprint,
            "files": files,
            "training": dict(training or {}),
            "config": dict(config or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        publish_dir(tmp, path, last=MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone when renamed into place
    return local_path(path) if is_local(path) else str(path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse and check ``model.json`` of a model directory (a path or URI; no weights are read)."""
    return _parse_manifest(_manifest_bytes(path), join_uri(path, MANIFEST))


def _manifest_bytes(path: str | Path) -> bytes:
    if is_local(path):
        local = local_path(path)
        if not local.is_dir():
            raise ModelFileError(f"{path}: not a model directory (expected a directory holding {MANIFEST})")
    try:
        return read_bytes(join_uri(path, MANIFEST))
    except FileNotFoundError:
        raise ModelFileError(f"{join_uri(path, MANIFEST)}: missing; {path} is not an ipinsights model") from None


def _parse_manifest(data: bytes, mpath: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{mpath}: not valid JSON ({exc}); the model file is corrupt or foreign") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{mpath}: not an ipinsights model manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{mpath}: format_version {version!r} is not supported by ipinsights {__version__} "
            f"(reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    if manifest.get("hash_version") != HASH_VERSION:
        raise ModelFileError(f"{mpath}: entity hash version {manifest.get('hash_version')!r} is not {HASH_VERSION}")
    if not isinstance(manifest.get("files"), dict) or WEIGHTS not in manifest["files"]:
        raise ModelFileError(f"{mpath}: lists no {WEIGHTS}")
    # Names come from a file anyone may have written: never let one reach outside the directory.
    if bad := [n for n in manifest["files"] if not _is_plain_name(n)]:
        raise ModelFileError(f"{mpath}: lists {bad[0]!r}, which is not a file name inside the model directory")
    if MANIFEST in manifest["files"]:
        raise ModelFileError(f"{mpath}: lists {MANIFEST} itself as a file")
    return manifest


#: Models kept in the local cache of remote models (see :func:`local_model`).
MODEL_CACHE_ENTRIES = 4


def local_model(path: str | Path) -> Path:
    """A local directory holding the model at ``path``: the directory itself when local, else a copy.

    A remote model is downloaded (the manifest first read, then the files it lists) into the local
    cache, keyed by the manifest's sha256: a new model at the same URI gets a new entry, the same
    model is downloaded once per machine, and only the last few models are kept. The copy is checked
    like any model when loaded.
    """
    if is_local(path):
        return local_path(path)
    data = _manifest_bytes(path)
    manifest = _parse_manifest(data, join_uri(path, MANIFEST))

    def fill(tmp: Path) -> None:
        try:
            download_dir(str(path), tmp, sorted(manifest["files"]))
        except FileNotFoundError as exc:
            raise ModelFileError(f"{exc} (listed in {join_uri(path, MANIFEST)})") from None
        (tmp / MANIFEST).write_bytes(data)

    return cached("models", hashlib.sha256(data).hexdigest(), fill, keep=MODEL_CACHE_ENTRIES)


def _verify_files(path: Path, manifest: Mapping[str, Any]) -> None:
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise ModelFileError(f"{f}: listed in {MANIFEST} but missing")
        size = f.stat().st_size
        if size != meta.get("bytes"):
            raise ModelFileError(f"{f}: {size} bytes, expected {meta.get('bytes')} (truncated or replaced)")
        digest = sha256_file(f)
        if digest != meta.get("sha256"):
            raise ModelFileError(
                f"{f}: checksum mismatch (sha256 {digest[:12]}…, expected {str(meta.get('sha256'))[:12]}…)"
            )


def load_model(path: str | Path, device: str | torch.device = "cpu", asn_table: str | None = None) -> ModelBundle:
    """Load and verify a model directory written by :func:`save_model` (a path or URI).

    A model trained with an ip2asn table (``model_options.asn_table``) gets its table attached:
    ``asn_table`` when given, else the one it was trained with; either must have the fingerprint
    the model recorded, and a table that cannot be read is an error (:class:`NetworkTableError`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    uri = str(path)
    path = local_model(path)
    manifest = read_manifest(path)
    _verify_files(path, manifest)
    try:
        hp = config_from_dict(Hyperparameters, manifest["hyperparameters"])
        raw_opts = dict(manifest["model_options"])
        if manifest["format_version"] == 1:
            raw_opts.setdefault("ipv6_prefix_lengths", [])  # v1 models are IPv4 only
        opts = config_from_dict(ModelOptions, raw_opts)
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path / MANIFEST}: invalid hyperparameters or model options: {exc}") from None
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path / WEIGHTS}: not a readable safetensors file: {exc}") from None
    try:
        model = IPInsightsModel(hp, opts, init_weights=False)  # the weights below become its tables
    except ConfigError as exc:  # e.g. over the size limit
        raise ModelFileError(f"{path / MANIFEST}: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        raise ModelFileError(f"{path / WEIGHTS}: tensors {got} do not match the hyperparameters' shapes {expected}")
    if bad := _non_finite(tensors):
        raise ModelFileError(f"{path / WEIGHTS}: NaN or infinite weights in {', '.join(bad)}: a diverged run's model")
    # assign: the loaded tensors become the parameters (no second copy of the weights at any point).
    model.load_state_dict(tensors, assign=True)
    model.to(device).eval()
    table = _attach_table(model, manifest, asn_table or opts.asn_table or "", path) if model.networks else None
    return ModelBundle(
        model=model, hyperparameters=hp, options=opts, manifest=manifest, path=path, uri=uri, asn_table=table
    )


def _attach_table(model: IPInsightsModel, manifest: Mapping[str, Any], uris: str, path: Path) -> AsnTable:
    """The model's ip2asn table, attached: ``uris`` (given, else recorded at training) when it holds the
    table with the model's fingerprint, else the networks cache's version with that fingerprint (the
    recorded file moved or was replaced, the model was copied to another machine), else an error.
    The one place scoring, serving, export and evaluation find a model's table."""
    expected = manifest.get("asn_table_fingerprint")
    if not isinstance(expected, str):
        raise ModelFileError(f"{path / MANIFEST}: the model has AS and country levels but no asn_table_fingerprint")
    table: AsnTable | None = None
    try:
        table = network_table(uris)
        problem = f"{uris} holds another table (fingerprint {table.fingerprint[:12]}…)"
    except (OSError, ValueError) as exc:  # missing file, unreadable URI, malformed table
        problem = f"reading {uris or 'it'} failed: {exc}"
    if table is None or table.fingerprint != expected:
        recorded = manifest.get("training", {}).get("asn_table_version")
        cached = find_table(expected, [recorded.get("cache")] if isinstance(recorded, dict) else [])
        if cached is not None:
            log.warning(
                "%s: %s; using the networks cache's table with the model's fingerprint: %s", path, problem, cached
            )
            table = network_table(cached)
        elif table is None:
            raise NetworkTableError(
                f"{path}: this model was trained with the ip2asn table {model.opts.asn_table} "
                f"(fingerprint {expected[:12]}…) and cannot score without it; {problem}, and the networks cache "
                f"holds no table with that fingerprint. Give its location with asn_table (or the cache that holds "
                f"it with ${CACHE_ENV})"
            )
    model.attach_networks(table, expected)  # another table (none cached) is refused here, naming both
    return table


CALIBRATION_SUFFIX = ".calibration.json"


def sidecar_uri(model_dir: str | Path, suffix: str) -> str:
    """``<model_dir><suffix>``: a file beside the model directory (a path or URI, kept in its form)."""
    if is_local(model_dir) and "://" not in str(model_dir):
        p = local_path(model_dir)
        return str(p.with_name(p.name + suffix))
    return str(model_dir).rstrip("/") + suffix


def calibration_path(model_dir: str | Path) -> Path:
    """Default calibration file of a local model: ``<model_dir>.calibration.json`` (a sibling of the directory)."""
    return local_path(sidecar_uri(model_dir, CALIBRATION_SUFFIX))


def calibration_uri(model_dir: str | Path) -> str:
    """Default calibration file of a model at a path or URI (see :func:`calibration_path`)."""
    return sidecar_uri(model_dir, CALIBRATION_SUFFIX)


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the model's file checksums (weights and entity stats): changes whenever the model does."""
    files = read_manifest(model_dir)["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


PROFILE_SUFFIX = ".profile.safetensors"


def profile_path(model_dir: str | Path) -> Path:
    """Default profile file of a local model: ``<model_dir>.profile.safetensors`` (a sibling of the directory)."""
    return local_path(sidecar_uri(model_dir, PROFILE_SUFFIX))


def profile_uri(model_dir: str | Path) -> str:
    """Default profile file of a model at a path or URI (see :func:`profile_path`)."""
    return sidecar_uri(model_dir, PROFILE_SUFFIX)
