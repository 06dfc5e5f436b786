"""The seven focal liver lesion classes of seed 003 (Zhen et al. 2020), shared by simulator and classifier."""

from __future__ import annotations

from enum import IntEnum


class LesionKind(IntEnum):
    """Lesion class; the values are the class indices of the seven-way classifier (issue 6)."""

    CYST = 0
    HEMANGIOMA = 1
    FNH = 2
    OTHER_BENIGN = 3
    HCC = 4
    METASTASIS = 5
    OTHER_MALIGNANT = 6

    @property
    def malignant(self) -> bool:
        return self >= LesionKind.HCC
