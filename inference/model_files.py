"""What every model loader shares: the weights file's hash, its check against the manifest, the device."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
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
