"""Clinical data of a simulated liver case, consistent with its lesions.

The variables are those of seed 003 (Zhen et al. 2020, Table S3): age, sex,
cirrhosis-related history, other cancers, tumour markers (AFP, CEA, CA-125,
CA19-9, PSA, ferritin) and liver function (albumin, total bilirubin,
prothrombin time, hepatic encephalopathy, ascites). Each is drawn from a
distribution conditional on the case's leading lesion kind, with wide,
overlapping spreads (log-normal markers, many malignant cases with normal
markers), so clinical data help a classifier without giving the answer.
Units are part of the key names. Research use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.liver.lesion_kinds import LesionKind

#: Probability of cirrhosis given the leading lesion kind (None: no lesion).
_CIRRHOSIS = {
    None: 0.08, LesionKind.CYST: 0.07, LesionKind.HEMANGIOMA: 0.06, LesionKind.FNH: 0.04,
    LesionKind.OTHER_BENIGN: 0.5, LesionKind.HCC: 0.8, LesionKind.METASTASIS: 0.06,
    LesionKind.OTHER_MALIGNANT: 0.2,
}
#: (mean age, sd, probability female)
_DEMOGRAPHY = {
    None: (52, 15, 0.5), LesionKind.CYST: (57, 13, 0.6), LesionKind.HEMANGIOMA: (47, 12, 0.65),
    LesionKind.FNH: (36, 10, 0.85), LesionKind.OTHER_BENIGN: (55, 12, 0.35), LesionKind.HCC: (60, 10, 0.2),
    LesionKind.METASTASIS: (62, 11, 0.5), LesionKind.OTHER_MALIGNANT: (64, 10, 0.45),
}
#: Probability of a history of another cancer.
_OTHER_CANCER = {
    None: 0.05, LesionKind.CYST: 0.08, LesionKind.HEMANGIOMA: 0.06, LesionKind.FNH: 0.03,
    LesionKind.OTHER_BENIGN: 0.06, LesionKind.HCC: 0.06, LesionKind.METASTASIS: 0.88,
    LesionKind.OTHER_MALIGNANT: 0.1,
}


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * math.exp(rng.normal(0.0, sigma)))


def cirrhosis_probability(leading: LesionKind | None) -> float:
    return _CIRRHOSIS[leading]


def sample_clinical(rng: np.random.Generator, kinds: Sequence[LesionKind], cirrhosis: bool) -> dict[str, object]:
    """Clinical variables for a case whose leading (first) lesion kind is ``kinds[0]`` (none if empty)."""
    leading = kinds[0] if kinds else None
    mean_age, sd_age, p_female = _DEMOGRAPHY[leading]
    age = int(np.clip(round(rng.normal(mean_age, sd_age)), 18, 92))
    female = bool(rng.random() < p_female)
    hcc = leading is LesionKind.HCC
    met = leading is LesionKind.METASTASIS
    cca = leading is LesionKind.OTHER_MALIGNANT

    viral = bool(rng.random() < (0.7 if cirrhosis and hcc else 0.45 if cirrhosis else 0.06))
    afp = _lognormal(rng, 90.0, 1.9) if hcc else _lognormal(rng, 7.0, 0.8) if cirrhosis else _lognormal(rng, 3.0, 0.5)
    if leading is LesionKind.OTHER_BENIGN and cirrhosis:
        afp = _lognormal(rng, 9.0, 0.9)  # dysplastic nodules: mildly raised AFP overlaps small HCC
    cea = _lognormal(rng, 14.0, 1.3) if met else _lognormal(rng, 3.5, 0.9) if cca else _lognormal(rng, 2.0, 0.5)
    ca19_9 = (_lognormal(rng, 120.0, 1.6) if cca else _lognormal(rng, 35.0, 1.3) if met
              else _lognormal(rng, 12.0, 0.6))
    ascites = bool(rng.random() < (0.35 if cirrhosis else 0.12 if met else 0.02))
    ca125 = _lognormal(rng, 45.0 if ascites else 28.0 if met else 12.0, 0.7)
    psa = 0.02 if female else (_lognormal(rng, 1.8, 1.0) if met else _lognormal(rng, 1.0, 0.6))
    ferritin = _lognormal(rng, 260.0 if (cirrhosis or hcc) else 70.0 if female else 150.0, 0.6)
    albumin = float(rng.normal(33.0, 5.0) if cirrhosis else rng.normal(38.0, 4.5) if (met or cca or hcc)
                    else rng.normal(43.0, 3.5))
    bilirubin = (_lognormal(rng, 28.0, 0.6) if cirrhosis else _lognormal(rng, 22.0, 0.9) if cca
                 else _lognormal(rng, 11.0, 0.4))
    prothrombin = float(rng.normal(15.0, 1.8) if cirrhosis else rng.normal(12.4, 0.8))
    encephalopathy = bool(rng.random() < (0.12 if cirrhosis else 0.005))
    return {
        "age_years": age,
        "sex": "F" if female else "M",
        "cirrhosis": bool(cirrhosis),
        "viral_hepatitis": viral,
        "other_cancer_history": bool(rng.random() < _OTHER_CANCER[leading]),
        "afp_ng_ml": round(afp, 2),
        "cea_ng_ml": round(cea, 2),
        "ca125_u_ml": round(ca125, 1),
        "ca19_9_u_ml": round(ca19_9, 1),
        "psa_ng_ml": round(psa, 2),
        "ferritin_ng_ml": round(ferritin, 1),
        "albumin_g_l": round(float(np.clip(albumin, 18.0, 55.0)), 1),
        "bilirubin_umol_l": round(bilirubin, 1),
        "prothrombin_time_s": round(float(np.clip(prothrombin, 10.0, 30.0)), 1),
        "hepatic_encephalopathy": encephalopathy,
        "ascites": ascites,
    }
