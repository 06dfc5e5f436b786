"""What every model loader shares: reading its manifest, checking the weights file against it, the device."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def sha256_of_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (weights manifests record it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest_file(path: str | Path, *, format_name: str, format_version: int, required: Sequence[str],
                       what: str, fix: str, missing: type[Exception], invalid: type[Exception]) -> tuple[dict[str, Any], Path]:
    """The JSON manifest beside a model's weights (*path*: the ``.json`` or its weights file), checked.

    Raises *missing* when there is no manifest, *invalid* when it cannot be
    read, is of another *format_name* or *format_version*, or lacks a *required*
    key; *what* names the model ("ST-Net") and *fix* says what to do. Returns
    the manifest, with ``_dir`` (its folder) added, and the manifest's path
    for the caller's own checks.
    """
    path = Path(path)
    manifest_file = path if path.suffix == ".json" else path.with_suffix(".json")
    if not manifest_file.is_file():
        raise missing(f"no {what} manifest at {manifest_file}; {fix}")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"cannot read {what} manifest {manifest_file}: {exc}; {fix}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise invalid(f"{manifest_file} is not a {what} manifest (format {found!r})")
    if manifest.get("format_version") != format_version:
        raise invalid(f"{manifest_file} has manifest format version {manifest.get('format_version')!r}; this pacsnode "
                      f"reads version {format_version}: upgrade pacsnode or retrain")
    absent = [key for key in required if key not in manifest]
    if absent:
        raise invalid(f"{manifest_file} lacks {', '.join(repr(key) for key in absent)}; {fix}")
    manifest["_dir"] = str(manifest_file.parent)
    return manifest, manifest_file


def verified_weights(manifest: Mapping[str, Any], what: str, fix: str, missing: type[Exception],
                     tampered: type[Exception]) -> Path:
    """The weights file *manifest* names (``_dir`` / ``weights_file``), checked against its ``weights_sha256``.

    Raises *missing* when the file is not there and *tampered* when its hash
    differs; *what* names the model ("ST-Net") and *fix* says what to do.
    """
    weights = Path(manifest["_dir"]) / str(manifest["weights_file"])
    if not weights.is_file():
        raise missing(f"{what} weights {weights} named by the manifest are missing; {fix}")
    actual = sha256_of_file(weights)
    if actual != manifest["weights_sha256"]:
        raise tampered(f"{what} weights {weights} have sha256 {actual}, but the manifest expects "
                       f"{manifest['weights_sha256']}: the file was changed or belongs to other weights; {fix}")
    return weights


def default_device() -> torch.device:
    """CUDA when torch sees a GPU, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
