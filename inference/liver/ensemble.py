"""Liver model ensembles: trained models of the same inputs whose class probabilities are combined.

Two networks trained differently make different mistakes. On the multi-phase CT
phantoms the 3D U-Net finds more of the small lesions and the fused U-Net
outlines the lesions it finds more closely; the mean of their probabilities
keeps most of both (see the model card's "Ensembles").

A cascade, after seed 000's liver-then-lesion system, takes where the liver is
from its first member and how the liver splits into liver and tumour from the
mean of the others. Its members may work on different grids: a portal-venous CT
model on the coarse grid tells the liver from its neighbours, models on a finer
grid find more of the lesions but, from one phase in a small crop, grow the
liver into the organs beside it.

An ensemble travels as one manifest (format ``pacsnode-liver-seg-ensemble``)
in the folder of its members' own manifests and weights. It pins each member
by model version and weights sha256, so a member swapped for other weights is
refused like tampered weights, and it repeats the members' common input
(channels, modality) so the pipeline can pick a study's series before loading
any network. :func:`load_liver_model` loads either kind of manifest.

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

from inference.liver import preprocess
from inference.liver import weights as lw
from inference.model_files import read_manifest_file

logger = logging.getLogger("pacsnode.inference.liver")

ENSEMBLE_FORMAT = "pacsnode-liver-seg-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
#: How the members' outputs are combined (the manifest's ``combination``): the default, averaging.
COMBINATION = "mean of the members' class probabilities, then argmax"
#: The cascade's combination: P(background) from the first member, the rest shared between liver and
#: tumour in the proportions of the other members' mean probabilities (tumour given liver or tumour).
CASCADE = ("background probability from the first member, the rest split between liver and tumour as the "
           "mean of the other members' probabilities splits it, then argmax")
COMBINATIONS = (COMBINATION, CASCADE)

_REQUIRED = ("model_version", "members", "input")
_FIX = "rebuild it with `pacsnode ensemble liver-seg VERSION MEMBER.json MEMBER.json`"


class LiverEnsembleError(lw.LiverManifestError):
    """An ensemble manifest is malformed, or its members do not fit together or are not the pinned ones."""


class LiverEnsemble:
    """Several :class:`~inference.liver.weights.LiverSegmenter` of the same inputs, run as one model."""

    def __init__(self, members: Sequence[lw.LiverSegmenter], manifest: Mapping[str, Any]):
        if len(members) < 2:
            raise LiverEnsembleError(f"an ensemble needs at least two members, got {len(members)}")
        combination = str(manifest.get("combination", COMBINATION))
        if combination not in COMBINATIONS:
            raise LiverEnsembleError(f"ensemble {manifest.get('model_version', 'unknown')}: unknown combination "
                                     f"{combination!r}; known: {' | '.join(COMBINATIONS)}; {_FIX}")
        first = members[0]
        for member in members[1:]:
            if member.channels != first.channels or member.modality.upper() != first.modality.upper():
                raise LiverEnsembleError(
                    f"ensemble members read different inputs: {first.version} takes {', '.join(first.channels)} "
                    f"({first.modality}), {member.version} takes {', '.join(member.channels)} ({member.modality})")
            if combination == COMBINATION and (member.spacing != first.spacing
                                               or member.normalisation != first.normalisation):
                raise LiverEnsembleError(
                    f"ensemble members prepare their input differently: {first.version} at {first.spacing} mm "
                    f"with {first.normalisation}, {member.version} at {member.spacing} mm with "
                    f"{member.normalisation}; an ensemble's members share model spacing and normalisation")
        self.members = list(members)
        self.manifest = dict(manifest)
        self.combination = combination
        self.channels: tuple[str, ...] = first.channels
        self.modality: str = first.modality
        #: The grid the tumours are found on (every member's for a mean, the last's for a cascade):
        #: evaluation phantoms are simulated on it, and the pipeline routes studies by it.
        self.spacing: tuple[float, float, float] = members[-1].spacing
        self.device: torch.device = first.device

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> LiverEnsemble:
        """Load an ensemble manifest and each member, refusing members that are not the pinned weights."""
        manifest = read_ensemble_manifest(path)
        folder = Path(manifest["_dir"])
        members = []
        for pin in manifest["members"]:
            member = lw.LiverSegmenter.load(folder / str(pin["manifest"]), device)
            if (member.version, member.manifest["weights_sha256"]) != (pin["model_version"], pin["weights_sha256"]):
                raise LiverEnsembleError(
                    f"ensemble {manifest['model_version']} pins {pin['manifest']} as {pin['model_version']} "
                    f"(sha256 {pin['weights_sha256'][:16]}…), but it is {member.version} "
                    f"(sha256 {member.manifest['weights_sha256'][:16]}…); restore the member or {_FIX}")
            members.append(member)
        ensemble = cls(members, manifest)
        logger.info("liver ensemble loaded", extra={"model_version": ensemble.version,
                                                    "members": [m.version for m in members]})
        return ensemble

    @property
    def version(self) -> str:
        return str(self.manifest["model_version"])

    def segment(self, channels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """The combined probabilities ``[3, z, y, x]`` on the study's grid (see ``LiverSegmenter.segment``).

        Averaging members share model spacing and normalisation, so the input is
        prepared once and the mean resampled back once (resampling is linear). A
        cascade's liver model runs on its own grid, its tumour models on theirs.
        """
        if self.combination == CASCADE:
            liver = self.members[0].segment(channels, spacing)
            return cascade_probabilities(liver, mean_probabilities(self.members[1:], channels, spacing))
        return mean_probabilities(self.members, channels, spacing)


def mean_probabilities(members: Sequence[lw.LiverSegmenter], channels: np.ndarray,
                       spacing: Sequence[float]) -> np.ndarray:
    """The members' mean probabilities ``[3, z, y, x]`` on the study's grid.

    Members of one model spacing and normalisation read one prepared input, and
    their mean is resampled back once (resampling is linear): the cost of a
    study's resampling is paid per grid, not per member.
    """
    groups: dict[str, list[lw.LiverSegmenter]] = {}
    for member in members:
        groups.setdefault(json.dumps([member.spacing, member.normalisation], sort_keys=True), []).append(member)
    shape = np.shape(channels)[1:]
    total = np.zeros((3, *shape), np.float32)
    for group in groups.values():
        inputs = group[0].model_grid_input(channels, spacing)
        on_model_grid = group[0].predict(inputs, normalised=True)
        for member in group[1:]:
            on_model_grid += member.predict(inputs, normalised=True)
        on_model_grid /= len(group)
        total += len(group) * preprocess.probabilities_to_grid(on_model_grid, group[0].spacing, shape, spacing)
    return total / len(members)


LiverModel = lw.LiverSegmenter | LiverEnsemble


def cascade_probabilities(liver: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """``[background, liver, tumour]`` probabilities of a cascade: background from *liver* (the first member's
    probabilities), the rest shared between liver and tumour as *tumour* (the others' mean) shares it; where
    *tumour* sees only background, the rest is liver."""
    inside = tumour[1] + tumour[2]
    tumour_share = np.divide(tumour[2], inside, out=np.zeros_like(inside), where=inside > 0)
    rest = 1.0 - liver[0]
    return np.stack([liver[0], rest * (1.0 - tumour_share), rest * tumour_share]).astype(np.float32, copy=False)


def read_ensemble_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check an ensemble manifest (its members are checked when loaded)."""
    manifest, manifest_file = read_manifest_file(
        path, format_name=ENSEMBLE_FORMAT, format_version=ENSEMBLE_FORMAT_VERSION, required=_REQUIRED,
        what="liver ensemble", fix=_FIX, missing=lw.LiverWeightsMissingError, invalid=LiverEnsembleError)
    members = manifest["members"]
    if (not isinstance(members, list) or len(members) < 2
            or not all(isinstance(m, dict) and {"manifest", "model_version", "weights_sha256"} <= m.keys()
                       for m in members)):
        raise LiverEnsembleError(f"{manifest_file} must list at least two members, each with manifest, "
                                 f"model_version and weights_sha256; {_FIX}")
    if not {"channels", "modality"} <= set(manifest["input"]):
        raise LiverEnsembleError(f"{manifest_file} lacks input.channels or input.modality; {_FIX}")
    return manifest


def is_ensemble(path: str | Path) -> bool:
    """Whether *path* (a ``.json`` manifest) holds an ensemble rather than one model."""
    try:
        return json.loads(Path(path).read_text()).get("format") == ENSEMBLE_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def read_model_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a single model or of an ensemble; both have ``input.channels`` and ``input.modality``."""
    return read_ensemble_manifest(path) if is_ensemble(path) else lw.read_manifest(path)


def load_liver_model(path: str | Path, device: torch.device | str | None = None) -> LiverModel:
    """A single model (:class:`~inference.liver.weights.LiverSegmenter`) or an ensemble, by its manifest."""
    return LiverEnsemble.load(path, device) if is_ensemble(path) else lw.LiverSegmenter.load(path, device)


def build_ensemble_manifest(model_version: str, member_manifests: Sequence[str | Path],
                            metrics: Mapping[str, Any] | None = None, *,
                            combination: str = COMBINATION) -> dict[str, Any]:
    """The manifest of an ensemble of the models whose manifests are *member_manifests*.

    The members must lie in one folder, where the ensemble's manifest is written
    too, so that the three travel together. Each member is loaded (and so
    checked) here, and must read the same inputs as the others. *combination*
    is :data:`COMBINATION` (the mean) or :data:`CASCADE` (the liver model, then the tumour models).
    """
    paths = [Path(p).with_suffix(".json") for p in member_manifests]
    folders = {p.resolve().parent for p in paths}
    if len(folders) != 1:
        raise LiverEnsembleError("ensemble members must lie in one folder (the ensemble's manifest goes there "
                                 f"too); got {', '.join(sorted(str(f) for f in folders))}")
    members = [lw.LiverSegmenter.load(p, device="cpu") for p in paths]
    ensemble = LiverEnsemble(members, {"model_version": model_version, "combination": combination})
    return {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "model_version": model_version,
        "members": [{"manifest": p.name, "model_version": m.version, "weights_sha256": m.manifest["weights_sha256"]}
                    for p, m in zip(paths, members, strict=True)],
        "combination": combination,
        "input": {"channels": list(ensemble.channels), "modality": ensemble.modality,
                  "spacing_zyx_mm": list(ensemble.spacing)},
        "classes": list(members[0].manifest["classes"]),
        "metrics": dict(metrics or {}),
        "intended_use": "research use only; not a medical device",
    }


def write_ensemble(model_version: str, member_manifests: Sequence[str | Path], *,
                   combination: str = COMBINATION) -> Path:
    """Write ``<model_version>.json`` beside the members (:func:`build_ensemble_manifest`); return its path."""
    manifest = build_ensemble_manifest(model_version, member_manifests, combination=combination)
    path = Path(member_manifests[0]).resolve().parent / f"{model_version}.json"
    lw.write_manifest(manifest, path)
    return path


__all__ = [
    "CASCADE",
    "COMBINATION",
    "COMBINATIONS",
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_FORMAT_VERSION",
    "LiverEnsemble",
    "LiverEnsembleError",
    "LiverModel",
    "build_ensemble_manifest",
    "cascade_probabilities",
    "is_ensemble",
    "load_liver_model",
    "mean_probabilities",
    "read_ensemble_manifest",
    "read_model_manifest",
    "write_ensemble",
]
