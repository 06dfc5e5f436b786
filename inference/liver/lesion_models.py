"""The liver lesion classifier family of seed 003 (models A–G), its network and the clinical encoding.

Seed 003 (Zhen et al. 2020) fine-tunes Inception-ResNet V2 (55 M parameters,
299×299 inputs) per model. That is far beyond a CPU-only node and beyond
what simulated training data can support, so every model here is
:class:`LesionNet`: a small residual 2D CNN (about 0.2 M parameters) over
lesion-centred multi-sequence patches (:mod:`inference.liver.lesion_patches`),
whose pooled image features are concatenated with the lesion's size and —
for the clinical models — the encoded clinical vector *before* the classifier
head ("fused before the classifier head", as in the seed).

:data:`MODEL_SPECS` is exactly the seed's family:

====  =========  ===============  ========  =========================================
A     seven      six sequences    image     7-way (the :class:`LesionKind` order)
B     seven      three unenhanced image     7-way
C     binary     six sequences    image     benign / malignant
D     binary     three unenhanced image     benign / malignant
E     malignant  six sequences    image     HCC / metastasis / other primary malignancy
F     malignant  six sequences    clinical  same, with clinical data
G     malignant  three unenhanced clinical  same, with clinical data
====  =========  ===============  ========  =========================================

:func:`encode_clinical` turns a case's clinical data (the fields of
:class:`node.clinical.ClinicalData`) into a fixed-length vector. Research use only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from inference.liver.lesion_kinds import LesionKind
from node.clinical import FIELDS, FLAGS

__all__ = [
    "BINARY_CLASSES", "CLINICAL_ENCODING_VERSION", "CLINICAL_FEATURES", "MALIGNANT_CLASSES", "MALIGNANT_KINDS",
    "MODEL_SPECS", "SEVEN_CLASSES", "SIX", "TASK_CLASSES", "THREE", "ClinicalEncodingError", "LesionNet",
    "ModelSpec", "build_network", "count_parameters", "encode_clinical", "target_index",
]

SIX: tuple[str, ...] = ("t2", "dwi", "pre", "arterial", "portal", "delayed")
#: The unenhanced sequences (the seed's models B, D and G).
THREE: tuple[str, ...] = ("t2", "dwi", "pre")
SEVEN_CLASSES: tuple[str, ...] = tuple(kind.name.lower() for kind in LesionKind)
BINARY_CLASSES: tuple[str, ...] = ("benign", "malignant")
MALIGNANT_KINDS: tuple[LesionKind, ...] = (LesionKind.HCC, LesionKind.METASTASIS, LesionKind.OTHER_MALIGNANT)
MALIGNANT_CLASSES: tuple[str, ...] = tuple(kind.name.lower() for kind in MALIGNANT_KINDS)
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "seven": SEVEN_CLASSES, "binary": BINARY_CLASSES, "malignant": MALIGNANT_CLASSES,
}


class ClinicalEncodingError(ValueError):
    """Clinical data that cannot be encoded for a model (unknown field or a value of the wrong kind)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the family: its task, input sequences and whether it takes clinical data."""

    letter: str
    task: str
    sequences: tuple[str, ...]
    uses_clinical: bool

    @property
    def classes(self) -> tuple[str, ...]:
        return TASK_CLASSES[self.task]

    @property
    def version(self) -> str:
        return f"liver-cls-{self.letter.lower()}-v1"

    @property
    def malignant_only(self) -> bool:
        """Trained and evaluated on malignant lesions only (the 3-way subtype task)."""
        return self.task == "malignant"


MODEL_SPECS: dict[str, ModelSpec] = {
    "A": ModelSpec("A", "seven", SIX, False),
    "B": ModelSpec("B", "seven", THREE, False),
    "C": ModelSpec("C", "binary", SIX, False),
    "D": ModelSpec("D", "binary", THREE, False),
    "E": ModelSpec("E", "malignant", SIX, False),
    "F": ModelSpec("F", "malignant", SIX, True),
    "G": ModelSpec("G", "malignant", THREE, True),
}


def target_index(spec: ModelSpec, kind: LesionKind | int) -> int | None:
    """The class index of a lesion kind for *spec*'s task; None when the task does not cover it."""
    kind = LesionKind(int(kind))
    if spec.task == "seven":
        return int(kind)
    if spec.task == "binary":
        return int(kind.malignant)
    return MALIGNANT_KINDS.index(kind) if kind in MALIGNANT_KINDS else None


# --------------------------------------------------------------------------- clinical encoding

CLINICAL_ENCODING_VERSION = "liver-clinical-v1"
#: Numeric fields: (transform, centre, scale) applied as (transform(value) - centre) / scale.
#: Markers are log-scaled (they span orders of magnitude); centres and scales are typical adult values.
_NUMERIC: dict[str, tuple[str, float, float]] = {
    "age_years": ("linear", 55.0, 15.0),
    "afp_ng_ml": ("log", math.log(5.0), 1.5),
    "cea_ng_ml": ("log", math.log(3.0), 1.2),
    "ca125_u_ml": ("log", math.log(15.0), 0.9),
    "ca19_9_u_ml": ("log", math.log(20.0), 1.3),
    "psa_ng_ml": ("log", math.log(1.0), 1.5),
    "ferritin_ng_ml": ("log", math.log(150.0), 0.8),
    "albumin_g_l": ("linear", 40.0, 6.0),
    "bilirubin_umol_l": ("log", math.log(14.0), 0.6),
    "prothrombin_time_s": ("linear", 13.0, 2.0),
}
_SEXES = ("F", "M", "O")
_NUMERIC_CLIP = 5.0


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for name in FIELDS:
        if name in _NUMERIC:
            names += [name, f"{name}:missing"]
        elif name == "sex":
            names += [*(f"sex:{s}" for s in _SEXES), "sex:missing"]
        elif name in FLAGS:
            names += [f"{name}:yes", f"{name}:no", f"{name}:missing"]
        else:  # a field added to ClinicalData without an encoding here
            raise RuntimeError(f"clinical field {name!r} has no encoding in {__name__}")
    return tuple(names)


#: The name of each element of :func:`encode_clinical`'s vector (its length is fixed).
CLINICAL_FEATURES: tuple[str, ...] = _feature_names()


def encode_clinical(data: Mapping[str, Any] | None, age_years: float | None = None,
                    sex: str | None = None) -> np.ndarray:
    """A fixed-length float32 vector (:data:`CLINICAL_FEATURES`) for one case's clinical data.

    *data* holds :class:`node.clinical.ClinicalData` fields in canonical
    units (the clinical store's ``given()``); *age_years* and *sex* come from
    the DICOM header (PatientAge, PatientSex) and take precedence over the
    same fields in *data*. Numeric fields are (log-)scaled and centred, sex
    and yes/no fields one-hot; every field has a missing indicator, so a
    case without clinical data is all zeros except the indicators.
    """
    values: dict[str, Any] = dict(data or {})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ClinicalEncodingError(f"unknown clinical field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    if age_years is not None:
        values["age_years"] = age_years
    if sex is not None:
        values["sex"] = sex
    out: list[float] = []
    for name in FIELDS:
        value = values.get(name)
        if name in _NUMERIC:
            out += _encode_number(name, value)
        elif name == "sex":
            if value is not None and str(value).upper() not in _SEXES:
                raise ClinicalEncodingError(f"sex must be one of {', '.join(_SEXES)}, got {value!r}")
            code = None if value is None else str(value).upper()
            out += [float(code == s) for s in _SEXES] + [float(code is None)]
        else:
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise ClinicalEncodingError(f"{name} must be true or false, got {value!r}")
            out += [float(value is True or value is np.True_), float(value is False or value is np.False_),
                    float(value is None)]
    return np.asarray(out, dtype=np.float32)


def _encode_number(name: str, value: Any) -> list[float]:
    if value is None:
        return [0.0, 1.0]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ClinicalEncodingError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        return [0.0, 1.0]
    transform, centre, scale = _NUMERIC[name]
    x = math.log(max(number, 0.0) + 0.01) if transform == "log" else number
    return [float(np.clip((x - centre) / scale, -_NUMERIC_CLIP, _NUMERIC_CLIP)), 0.0]


# --------------------------------------------------------------------------- network


class _ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN with a (strided 1×1 when needed) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class LesionNet(nn.Module):
    """Small residual CNN over a lesion patch, fused with size (and clinical) features before the head.

    ``forward(patches [N, in_channels, P, P], extra [N, n_extra]) -> logits [N, n_classes]``;
    ``extra`` is the size feature followed by the clinical vector (if any).
    """

    def __init__(self, in_channels: int, n_classes: int, n_extra: int = 1,
                 widths: tuple[int, ...] = (24, 32, 48, 96), hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "n_classes": n_classes, "n_extra": n_extra,
                       "widths": list(widths), "hidden": hidden, "dropout": dropout}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(_ResidualBlock(a, b, 2) for a, b in itertools.pairwise(widths)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(widths[-1] + n_extra, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, patches: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.blocks(self.stem(patches))).flatten(1)
        return self.head(torch.cat([features, extra], dim=1))


def build_network(config: Mapping[str, Any]) -> LesionNet:
    """A :class:`LesionNet` from a manifest's architecture dict (raises ValueError if it is not one)."""
    try:
        return LesionNet(int(config["in_channels"]), int(config["n_classes"]), int(config["n_extra"]),
                         tuple(int(w) for w in config["widths"]), int(config["hidden"]), float(config["dropout"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a LesionNet architecture ({exc!r}): {dict(config)}") from exc


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
