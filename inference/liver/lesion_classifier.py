"""Loading and running the liver lesion classifiers (models A–G), with saliency and model choice.

A model travels as ``<version>.pt`` (torch state dict) beside ``<version>.json``
(manifest: letter, task, sequences, clinical encoding, patch size,
normalisation, classes, the weights' sha256, recipe and metrics).
:meth:`LesionClassifier.load` refuses a missing, malformed or tampered pair
with a :class:`LesionModelError` naming the file and what is wrong.

:meth:`LesionClassifier.classify` follows the seed's per-patient rule: the
softmax of every slice patch is summed and the sum normalised, and the
class with the largest value is the diagnosis. :meth:`LesionClassifier.saliency`
is the seed's saliency map: the gradient of the class score with respect to
the input, L1 norm over the channels. :func:`choose_models` picks the models a
study's sequences and clinical data allow. Research use only; not a medical device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.liver.lesion_models import (
    CLINICAL_ENCODING_VERSION,
    CLINICAL_FEATURES,
    MODEL_SPECS,
    SIX,
    THREE,
    ModelSpec,
    build_network,
)
from inference.liver.lesion_patches import LesionPatches
from inference.model_files import default_device, read_manifest_file, verified_weights

__all__ = [
    "MANIFEST_FORMAT", "WEIGHTS_DIR", "LesionClassifier", "LesionModelError", "LesionPrediction",
    "choose_models", "default_manifest", "read_manifest",
]

log = logging.getLogger("pacsnode.inference.liver.classification")

MANIFEST_FORMAT = "pacsnode-liver-cls"
MANIFEST_FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_REQUIRED = ("version", "letter", "task", "sequences", "uses_clinical", "classes", "patch_size", "normalisation",
             "architecture", "weights_file", "weights_sha256")
_RETRAIN = "retrain with `pacsnode train liver-cls` or restore the committed files"


class LesionModelError(Exception):
    """A lesion classifier cannot be loaded, chosen or run; the message names the file or input and the fix."""


@dataclass(frozen=True)
class LesionPrediction:
    """A lesion's diagnosis: slice probabilities summed and normalised (seed 003's per-patient rule)."""

    probabilities: np.ndarray
    per_slice: np.ndarray
    predicted: int
    classes: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.classes[self.predicted]


def default_manifest(letter: str) -> Path:
    """The committed manifest of model *letter* (A–G), e.g. ``weights/liver-cls-a-v1.json``."""
    spec = MODEL_SPECS.get(str(letter).upper())
    if spec is None:
        raise LesionModelError(f"unknown lesion model {letter!r}; models are {', '.join(MODEL_SPECS)}")
    return WEIGHTS_DIR / f"{spec.version}.json"


def choose_models(sequences_available: set[str], has_clinical: bool) -> dict[str, str]:
    """Task ("seven", "binary", "malignant") → model letter for what a study has.

    All six sequences: A and C, and F with clinical data, else E. Only the
    three unenhanced ones: B and D, and G with clinical data, else no subtype
    model (E needs all six). Fewer: :class:`LesionModelError` naming what is missing.
    """
    available = set(sequences_available)
    if set(SIX) <= available:
        return {"seven": "A", "binary": "C", "malignant": "F" if has_clinical else "E"}
    if set(THREE) <= available:
        chosen = {"seven": "B", "binary": "D"}
        if has_clinical:
            chosen["malignant"] = "G"
        return chosen
    missing = [s for s in THREE if s not in available]
    raise LesionModelError(
        f"the study lacks the {', '.join(missing)} sequence(s); lesion classification needs at least the "
        f"unenhanced {', '.join(THREE)} (models B, D, G) or all of {', '.join(SIX)} (models A, C, E, F)")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a lesion classifier manifest (*path*: the ``.json`` or its ``.pt``)."""
    manifest, manifest_file = read_manifest_file(
        path, format_name=MANIFEST_FORMAT, format_version=MANIFEST_FORMAT_VERSION, required=_REQUIRED, what="lesion classifier",
        fix=_RETRAIN, missing=LesionModelError, invalid=LesionModelError)
    spec = MODEL_SPECS.get(str(manifest["letter"]))
    if spec is None:
        raise LesionModelError(f"{manifest_file} names model {manifest['letter']!r}; known: {', '.join(MODEL_SPECS)}")
    expected = {"task": spec.task, "sequences": list(spec.sequences), "classes": list(spec.classes),
                "uses_clinical": spec.uses_clinical}
    wrong = [f"{k} {manifest[k]!r} (model {spec.letter} has {v!r})" for k, v in expected.items() if manifest[k] != v]
    if wrong:
        raise LesionModelError(f"{manifest_file} does not describe model {spec.letter}: {'; '.join(wrong)}")
    if spec.uses_clinical:
        clinical = manifest.get("clinical") or {}
        if clinical.get("encoding") != CLINICAL_ENCODING_VERSION or list(clinical.get("features", [])) != list(
                CLINICAL_FEATURES):
            raise LesionModelError(f"{manifest_file} was trained with clinical encoding "
                                   f"{clinical.get('encoding')!r}; this pacsnode encodes {CLINICAL_ENCODING_VERSION}")
    return manifest


class LesionClassifier:
    """One trained lesion classifier with its manifest, on CUDA when torch sees one, else the CPU."""

    def __init__(self, network: torch.nn.Module, manifest: Mapping[str, Any],
                 device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.network = network.to(self.device).eval()
        self.manifest = dict(manifest)
        self.spec: ModelSpec = MODEL_SPECS[str(manifest["letter"])]
        self.version: str = str(manifest["version"])
        self.letter: str = self.spec.letter
        self.task: str = self.spec.task
        self.sequences: tuple[str, ...] = self.spec.sequences
        self.uses_clinical: bool = self.spec.uses_clinical
        self.classes: tuple[str, ...] = self.spec.classes
        self.patch_size: int = int(manifest["patch_size"])

    @classmethod
    def load(cls, manifest_path: str | Path, device: torch.device | str | None = None) -> LesionClassifier:
        """Load a manifest and its weights; refuse weights whose sha256 is not the manifest's."""
        manifest = read_manifest(manifest_path)
        weights = verified_weights(manifest, "lesion classifier", _RETRAIN, LesionModelError, LesionModelError)
        try:
            network = build_network(manifest["architecture"])
            state = torch.load(weights, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        except Exception as exc:  # torch raises several types for malformed files
            raise LesionModelError(f"cannot load lesion classifier weights {weights}: {exc}") from exc
        classifier = cls(network, manifest, device)
        log.info("lesion classifier loaded", extra={"model_version": classifier.version,
                                                    "device": str(classifier.device)})
        return classifier

    def _inputs(self, patches: LesionPatches, clinical: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.asarray(patches.patches, dtype=np.float32)
        channels = len(self.sequences) + 1
        if array.ndim != 4 or array.shape[1] != channels or array.shape[2:] != (self.patch_size,) * 2:
            raise LesionModelError(
                f"model {self.version} expects patches [slices, {channels} ({', '.join(self.sequences)}, mask), "
                f"{self.patch_size}, {self.patch_size}], got {array.shape}")
        extra = np.full((len(array), 1), patches.size_feature, dtype=np.float32)
        if self.uses_clinical:
            if clinical is None:
                raise LesionModelError(f"model {self.version} needs the clinical vector (encode_clinical)")
            vector = np.asarray(clinical, dtype=np.float32).reshape(-1)
            if vector.shape != (len(CLINICAL_FEATURES),):
                raise LesionModelError(f"clinical vector has {vector.size} values, model {self.version} expects "
                                       f"{len(CLINICAL_FEATURES)} (encode_clinical)")
            extra = np.concatenate([extra, np.repeat(vector[None], len(array), axis=0)], axis=1)
        return (torch.from_numpy(np.ascontiguousarray(array)).to(self.device),
                torch.from_numpy(extra).to(self.device))

    def classify(self, patches: LesionPatches, clinical: np.ndarray | None = None) -> LesionPrediction:
        """Per-slice softmax summed over the slices and normalised; the largest is the prediction."""
        x, extra = self._inputs(patches, clinical)
        with torch.inference_mode():
            per_slice = torch.softmax(self.network(x, extra).float(), dim=1).cpu().numpy().astype(np.float64)
        summed = per_slice.sum(axis=0)
        probabilities = summed / summed.sum()
        return LesionPrediction(probabilities=probabilities, per_slice=per_slice,
                                predicted=int(np.argmax(probabilities)), classes=self.classes)

    def saliency(self, patches: LesionPatches, class_index: int, clinical: np.ndarray | None = None) -> np.ndarray:
        """``[S, P, P]`` input-gradient saliency of *class_index*'s score, L1 over channels, scaled to 0..1."""
        if not 0 <= int(class_index) < len(self.classes):
            raise LesionModelError(f"class index {class_index} outside 0..{len(self.classes) - 1} of {self.version}")
        x, extra = self._inputs(patches, clinical)
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            scores = self.network(x, extra)[:, int(class_index)]
            (gradient,) = torch.autograd.grad(scores.sum(), x)
        # Image channels only: the mask channel is an input too, but its gradient says nothing about the images.
        maps = gradient[:, :len(self.sequences)].abs().sum(dim=1).cpu().numpy().astype(np.float32)
        peak = float(maps.max())
        return maps / peak if peak > 0 else maps

