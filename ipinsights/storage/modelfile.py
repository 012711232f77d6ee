"""The model file: a directory with safetensors weights and a JSON manifest.

Layout (format version 1)::

    MODEL_DIR/
      model.json            manifest: format, format_version, hyperparameters, model options
                            (hash seed included), hash_version, sha256 + size of every file,
                            training metrics, the resolved config
      weights.safetensors   tensors only: loading never executes code (no pickle)
      <extra files>         e.g. calibration written by later jobs, listed with their sha256

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipinsights._version import __version__
from ipinsights.core.config import ConfigError, Hyperparameters, ModelOptions, config_from_dict, config_to_dict
from ipinsights.core.hashing import HASH_VERSION
from ipinsights.core.model import IPInsightsModel
from ipinsights.storage.files import swap_dir_into_place

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "ModelBundle", "save_model", "load_model", "sha256_file"]

FORMAT = "ipinsights-model"
FORMAT_VERSION = 2
#: Versions this code reads. Version 1 predates IPv6: its models have no IPv6 levels.
READABLE_VERSIONS = (1, 2)
MANIFEST = "model.json"
WEIGHTS = "weights.safetensors"


class ModelFileError(ValueError):
    """A model directory is missing, corrupt, truncated, foreign or of an unsupported version."""


@dataclass
class ModelBundle:
    """A loaded model with its manifest."""

    model: IPInsightsModel
    hyperparameters: Hyperparameters
    options: ModelOptions
    manifest: dict[str, Any]
    path: Path
    extras: dict[str, Any] = field(default_factory=dict)

    def extra_path(self, name: str) -> Path:
        """Path of an extra file stored with the model (checked at load time)."""
        if name not in self.manifest.get("files", {}):
            raise ModelFileError(f"{self.path}: the model holds no file {name!r}")
        return self.path / name


def _is_plain_name(name: object) -> bool:
    """A file name that stays inside the model directory: no separators, no ``..``, not hidden."""
    return isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``model`` to directory ``path``, replacing any model already there, atomically.

    Written into a temporary sibling directory first and renamed into place, so a reader (or a crash)
    never sees a half-written model.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if bad := _non_finite(tensors):
            raise ValueError(f"refusing to save a model with NaN or infinite weights in {', '.join(bad)} (diverged)")
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        for name, data in (extra_files or {}).items():
            if not _is_plain_name(name) or name in (MANIFEST, WEIGHTS):
                raise ValueError(f"invalid extra file name {name!r}")
            (tmp / name).write_bytes(data)
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
            "files": files,
            "training": dict(training or {}),
            "config": dict(config or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        swap_dir_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse and check ``model.json`` of a model directory (no weights are read)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: not a model directory (expected a directory holding {MANIFEST})")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{mpath}: missing; {path} is not an ipinsights model") from None
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
    return manifest


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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load and verify a model directory written by :func:`save_model`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
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
        model = IPInsightsModel(hp, opts)
    except ConfigError as exc:  # e.g. over the size limit
        raise ModelFileError(f"{path / MANIFEST}: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        raise ModelFileError(f"{path / WEIGHTS}: tensors {got} do not match the hyperparameters' shapes {expected}")
    if bad := _non_finite(tensors):
        raise ModelFileError(f"{path / WEIGHTS}: NaN or infinite weights in {', '.join(bad)}: a diverged run's model")
    model.load_state_dict(tensors)
    model.to(device).eval()
    return ModelBundle(model=model, hyperparameters=hp, options=opts, manifest=manifest, path=path)


CALIBRATION_SUFFIX = ".calibration.json"


def calibration_path(model_dir: str | Path) -> Path:
    """Default calibration file of a model: ``<model_dir>.calibration.json`` (a sibling of the directory)."""
    p = Path(model_dir)
    return p.with_name(p.name + CALIBRATION_SUFFIX)


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the model's file checksums (weights and entity stats): changes whenever the model does."""
    files = read_manifest(model_dir)["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


PROFILE_SUFFIX = ".profile.safetensors"


def profile_path(model_dir: str | Path) -> Path:
    """Default profile file of a model: ``<model_dir>.profile.safetensors`` (a sibling of the directory)."""
    p = Path(model_dir)
    return p.with_name(p.name + PROFILE_SUFFIX)
