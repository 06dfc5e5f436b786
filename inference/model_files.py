"""What every model loader shares: the weights file's hash and the device to run on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def sha256_of_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (weights manifests record it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_device() -> torch.device:
    """CUDA when torch sees a GPU, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
