"""Versioned liver segmentation weights, their manifest, and the segmenter that runs them.

A model travels as two files side by side: ``<version>.pt`` (a torch state
dict) and ``<version>.json``, the manifest. The manifest says what the weights
are (model kind and architecture), what they expect (channels in order,
modality, model spacing, normalisation, patch size), what they output (classes),
how they were made (training recipe, seed, metrics) and the weights' sha256.
:meth:`LiverSegmenter.load` refuses weights whose hash differs from the
manifest's, so a site always knows which model produced a result.

:meth:`LiverSegmenter.predict` runs the model over channels already on the
model grid with MONAI's sliding-window inference (Gaussian blending, overlap
0.5, windows of the manifest's patch size), so any volume fits in memory;
:meth:`LiverSegmenter.segment` does the whole job for a study's arrays:
normalise, resample to the model spacing, predict, and bring the
probabilities back onto the study's grid.

Research use only; not a medical device.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from inference.liver import preprocess
from inference.liver.models import LIVER_CLASSES, ModelConfigError, build_model
from inference.model_files import (
    default_device,
    read_manifest_file,
    sha256_of_file,
    verified_weights,
)

logger = logging.getLogger("pacsnode.inference.liver")

MANIFEST_FORMAT = "pacsnode-liver-seg"
MANIFEST_FORMAT_VERSION = 1
#: Where the committed weights live.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The committed models by name (each ``<name>.pt`` + ``<name>.json`` in :data:`WEIGHTS_DIR`; an ensemble,
#: see :mod:`inference.liver.ensemble`, is a ``<name>.json`` naming its members there).
DEFAULT_MODELS = {
    "mr": "liver-seg-mr-v7",
    "mr-fine": "liver-seg-mr-v10",
    "ct": "liver-seg-ct-v6",
    "ct-multiphase": "liver-seg-ct-multiphase-v9",
    "ct-multiphase-fine": "liver-seg-ct-multiphase-v15",
    "ct-fine": "liver-seg-ct-ensemble-v1",
    "mr-baseline": "liver-seg-mr-baseline-v7",
}
#: Sliding-window overlap between neighbouring windows (fraction of the window).
SLIDING_WINDOW_OVERLAP = 0.5
#: Axes of the ``[z, y, x]`` grid by the names a manifest's ``inference.mirroring`` uses.
MIRROR_AXES = {"z": 0, "y": 1, "x": 2}
#: The mirrored copies a model trained on mirrored crops (``pacsnode train --mirror``) is run on
#: besides the study itself, their probabilities averaged: one per axis.
MIRRORED_VIEWS: tuple[tuple[str, ...], ...] = (("z",), ("y",), ("x",))

_REQUIRED = ("model_version", "model_kind", "architecture", "weights_file", "weights_sha256", "input", "classes")
_REQUIRED_INPUT = ("channels", "modality", "spacing_zyx_mm", "normalisation", "patch_size_zyx")


class LiverModelError(Exception):
    """A liver segmentation model could not be loaded or run; the message says what to do."""


class LiverWeightsMissingError(LiverModelError, FileNotFoundError):
    """The manifest or the weights file it names does not exist."""


class LiverManifestError(LiverModelError):
    """The manifest cannot be read or does not describe a usable liver model."""


class LiverWeightsTamperedError(LiverModelError):
    """The weights file's sha256 is not the one in its manifest."""


class LiverInputError(LiverModelError, ValueError):
    """The arrays given to the segmenter do not match what the model expects."""


def default_weights(name: str) -> Path:
    """The manifest of a committed model: a key of :data:`DEFAULT_MODELS` or a full model version."""
    version = DEFAULT_MODELS.get(name, name)
    return WEIGHTS_DIR / f"{version}.json"


def build_manifest(
    *,
    model_version: str,
    model_kind: str,
    architecture: Mapping[str, Any],
    weights_file: str,
    weights_sha256: str,
    channels: Sequence[str],
    modality: str,
    spacing_zyx_mm: Sequence[float],
    normalisation: Mapping[str, Any],
    patch_size_zyx: Sequence[int],
    training: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    mirroring: Sequence[Sequence[str]] = (),
    overlap: float = SLIDING_WINDOW_OVERLAP,
) -> dict[str, Any]:
    """The manifest that weights travel with (read back by :meth:`LiverSegmenter.load`).

    *mirroring* lists the mirrored copies of the input (each a list of axes,
    ``"z"``, ``"y"``, ``"x"``) whose predictions are averaged with the input's
    own; only for a network trained on mirrored crops.
    """
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "model_version": model_version,
        "model_kind": model_kind,
        "architecture": dict(architecture),
        "weights_file": weights_file,
        "weights_sha256": weights_sha256,
        "input": {
            "channels": list(channels),
            "modality": modality,
            "layout": "channel,z,y,x",
            "spacing_zyx_mm": [float(s) for s in spacing_zyx_mm],
            "normalisation": dict(normalisation),
            "patch_size_zyx": [int(p) for p in patch_size_zyx],
        },
        "classes": list(LIVER_CLASSES),
        "inference": {"sliding_window_overlap": float(overlap), "blending": "gaussian",
                      "mirroring": [list(view) for view in mirroring]},
        "training": dict(training),
        "metrics": dict(metrics or {}),
        "intended_use": "research use only; not a medical device",
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a manifest; *path* may name the manifest (``.json``) or its weights (``.pt``)."""
    manifest, manifest_file = read_manifest_file(
        path, format_name=MANIFEST_FORMAT, format_version=MANIFEST_FORMAT_VERSION, required=_REQUIRED, what="liver model",
        fix="weights must come with the manifest written by `pacsnode train liver-seg-mr` / `liver-seg-ct`",
        missing=LiverWeightsMissingError, invalid=LiverManifestError)
    missing = [f"input.{k}" for k in _REQUIRED_INPUT if k not in manifest.get("input", {})]
    if missing:
        raise LiverManifestError(f"{manifest_file} lacks {', '.join(repr(m) for m in missing)}")
    if list(manifest["classes"]) != list(LIVER_CLASSES):
        raise LiverManifestError(
            f"{manifest_file} has classes {manifest['classes']}; this pacsnode expects {list(LIVER_CLASSES)}"
        )
    return manifest


class LiverSegmenter:
    """A trained liver/tumour segmentation model with its manifest, ready to run.

    Use :meth:`load` (the ``.pt`` file or its ``.json`` manifest); the weights'
    sha256 must match the manifest's.
    """

    def __init__(self, model: nn.Module, manifest: Mapping[str, Any], device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.manifest = dict(manifest)
        spec = self.manifest["input"]
        self.channels: tuple[str, ...] = tuple(spec["channels"])
        self.modality: str = str(spec["modality"])
        self.spacing: tuple[float, float, float] = tuple(float(s) for s in spec["spacing_zyx_mm"])  # type: ignore
        self.normalisation: dict[str, Any] = dict(spec["normalisation"])
        self.patch_size: tuple[int, int, int] = tuple(int(p) for p in spec["patch_size_zyx"])  # type: ignore
        self.mirroring = mirrored_views(self.manifest)
        self.overlap = sliding_window_overlap(self.manifest)
        divisor = int(getattr(self.model, "size_divisor", 1))
        if len(self.patch_size) != 3 or any(p % divisor for p in self.patch_size):
            raise LiverManifestError(
                f"manifest patch size {self.patch_size} is not three multiples of {divisor} for this model"
            )

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> LiverSegmenter:
        """Load weights and manifest, refusing weights whose sha256 is not the manifest's."""
        manifest = read_manifest(path)
        weights = verified_weights(manifest, "liver model",
                                   "restore it or retrain with `pacsnode train liver-seg-mr` / `liver-seg-ct`",
                                   LiverWeightsMissingError, LiverWeightsTamperedError)
        try:
            model = build_model(str(manifest["model_kind"]), manifest["architecture"])
        except ModelConfigError as exc:
            raise LiverManifestError(f"manifest of {weights}: {exc}") from exc
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for malformed files
            raise LiverManifestError(f"cannot load liver model weights {weights}: {exc}") from exc
        segmenter = cls(model, manifest, device)
        logger.info(
            "liver model loaded",
            extra={"model_version": segmenter.version, "device": str(segmenter.device), "weights": str(weights)},
        )
        return segmenter

    @property
    def version(self) -> str:
        return str(self.manifest.get("model_version", "unknown"))

    def _check_channels(self, channels: np.ndarray) -> np.ndarray:
        channels = np.asarray(channels, dtype=np.float32)
        if channels.ndim != 4 or channels.shape[0] != len(self.channels):
            raise LiverInputError(
                f"model {self.version} expects [{len(self.channels)} channels ({', '.join(self.channels)}), z, y, x], "
                f"got shape {channels.shape}"
            )
        if not np.all(np.isfinite(channels)):
            raise LiverInputError("the input has NaN or infinite values")
        return channels

    def predict(self, channels: np.ndarray, *, normalised: bool = False, sw_batch_size: int = 1) -> np.ndarray:
        """Class probabilities ``[3, z, y, x]`` float32 for ``[P, z, y, x]`` channels on the model grid.

        Channels are in the manifest's order (:attr:`channels`) at the model
        spacing (:attr:`spacing`). Unless *normalised*, the manifest's
        normalisation is applied first. Windows of :attr:`patch_size` overlap by
        :attr:`overlap` (the manifest's, by default half) and are blended with
        Gaussian weights; volumes smaller than a window are padded (zeros after
        normalisation, which is air for MR and the window's mid-level for CT)
        and the padding is cut off again. A
        model whose manifest lists mirrored views (:attr:`mirroring`) is also
        run on each mirrored copy, mirrored back, and the probabilities averaged.
        """
        channels = self._check_channels(channels)
        if not normalised:
            channels = preprocess.normalise(channels, self.normalisation)
        inputs = torch.from_numpy(np.ascontiguousarray(channels))[None]
        views = ((), *self.mirroring)
        with torch.inference_mode():
            total = self._view_probabilities(inputs, views[0], sw_batch_size)
            for axes in views[1:]:
                total += self._view_probabilities(inputs, axes, sw_batch_size)
            total /= len(views)
        return total.numpy().astype(np.float32, copy=False)

    def _view_probabilities(self, inputs: torch.Tensor, axes: tuple[int, ...], sw_batch_size: int) -> torch.Tensor:
        """Probabilities ``[3, z, y, x]`` of *inputs* ``[1, P, z, y, x]`` mirrored along *axes*, mirrored back."""
        dims = [axis + 2 for axis in axes]
        logits = sliding_window_inference(
            inputs.flip(dims) if dims else inputs,
            roi_size=self.patch_size,
            sw_batch_size=sw_batch_size,
            predictor=self.model,
            overlap=self.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
            sw_device=self.device,
            device=torch.device("cpu"),
        )
        probabilities = torch.softmax(logits.float(), dim=1)
        return (probabilities.flip(dims) if dims else probabilities)[0]

    def segment(self, channels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Probabilities ``[3, z, y, x]`` on the study's own grid for its raw ``[P, z, y, x]`` channels.

        Normalises, resamples to the model spacing, runs :meth:`predict`, and
        resamples the probabilities back onto the study's grid (*spacing* zyx mm).
        """
        probabilities = self.predict(self.model_grid_input(channels, spacing), normalised=True)
        return preprocess.probabilities_to_grid(probabilities, self.spacing, np.shape(channels)[1:], spacing)

    def model_grid_input(self, channels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """A study's raw ``[P, z, y, x]`` channels normalised and resampled onto the model grid, for :meth:`predict`."""
        normalised = preprocess.normalise(self._check_channels(channels), self.normalisation)
        return preprocess.to_model_grid(normalised, spacing, self.spacing)


def mirrored_views(manifest: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
    """The ``inference.mirroring`` of *manifest* as ``[z, y, x]`` axis indices; none when absent."""
    views = manifest.get("inference", {}).get("mirroring", [])
    if not isinstance(views, list) or not all(
            isinstance(view, list) and view and all(axis in MIRROR_AXES for axis in view) for view in views):
        raise LiverManifestError(
            f"manifest of {manifest.get('model_version', 'unknown')}: inference.mirroring must list views, each "
            f"a non-empty list of axes {sorted(MIRROR_AXES)}, got {views!r}")
    return tuple(tuple(MIRROR_AXES[axis] for axis in view) for view in views)


def valid_overlap(overlap: object) -> bool:
    """Whether *overlap* is a sliding-window overlap a model may use: a number from 0 to under 1."""
    return not isinstance(overlap, bool) and isinstance(overlap, int | float) and 0 <= overlap < 1


def sliding_window_overlap(manifest: Mapping[str, Any]) -> float:
    """The ``inference.sliding_window_overlap`` of *manifest* (0 to under 1); :data:`SLIDING_WINDOW_OVERLAP` when absent.

    Less overlap means fewer windows (0.25 runs about a third as many as 0.5 in 3D) and
    less blending across window borders.
    """
    overlap = manifest.get("inference", {}).get("sliding_window_overlap", SLIDING_WINDOW_OVERLAP)
    if not valid_overlap(overlap):
        raise LiverManifestError(
            f"manifest of {manifest.get('model_version', 'unknown')}: inference.sliding_window_overlap must be a "
            f"number from 0 to under 1, got {overlap!r}")
    return float(overlap)


def save_weights(model: nn.Module, weights_path: Path) -> str:
    """Write *model*'s state dict to *weights_path* and return its sha256."""
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights_path)
    return sha256_of_file(weights_path)


def write_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    clean = {k: v for k, v in manifest.items() if not k.startswith("_")}
    path.write_text(json.dumps(clean, indent=2) + "\n")


__all__ = [
    "DEFAULT_MODELS",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "MIRRORED_VIEWS",
    "MIRROR_AXES",
    "SLIDING_WINDOW_OVERLAP",
    "WEIGHTS_DIR",
    "LiverInputError",
    "LiverManifestError",
    "LiverModelError",
    "LiverSegmenter",
    "LiverWeightsMissingError",
    "LiverWeightsTamperedError",
    "build_manifest",
    "default_device",
    "default_weights",
    "mirrored_views",
    "read_manifest",
    "save_weights",
    "sha256_of_file",
    "sliding_window_overlap",
    "valid_overlap",
    "write_manifest",
]
