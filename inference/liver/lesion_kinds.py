"""The seven focal liver lesion classes of seed 003 (Zhen et al. 2020), shared by simulator and classifier.

Also the coded vocabulary the classification report (TID 1500 SR) uses for
them. Every SNOMED CT code below was checked against a public source that
states its description; where none could be confirmed, a pacsnode private
code (scheme ``99PACSNODE``, numbers ``PN-02xx``) is used instead and said so.
Checked against:

* 85057007 "Cyst of liver (disorder)": a SNOMED CT validation table in a
  public terminology repository. (235866006, sometimes given for liver cyst,
  is "Acute hepatitis C (disorder)" in the Swiss FHIR CodeSystem: do not use.)
* 93469006 "Hemangioma of liver": VisualDx's code list for hepatic
  hemangioma and a radiology finding model's index code.
* 278527001 "Focal nodular hyperplasia of liver": one public FHIR resource
  (system http://snomed.info/sct). The weakest of the checks; 62129009,
  also seen for FNH, appeared only in a file that mislabels other codes.
* 109841003 "Liver cell carcinoma (disorder)" (synonym hepatocellular
  carcinoma): the Swiss FHIR CodeSystem and FHIR Condition examples.
* 94381002 "Secondary malignant neoplasm of liver" (current fully specified
  name "Metastatic malignant neoplasm to liver (disorder)"): German FHIR
  oncology examples and a FHIR ValueSet expansion.
* 95214007 "Primary malignant neoplasm of liver (disorder)": a FHIR ValueSet
  and a FHIR Condition example. Used for "other primary malignancy": HCC has
  its own class, so this parent concept stands for the primary liver
  malignancies other than HCC (e.g. cholangiocarcinoma).
* 30807003 "Benign" and 21594007 "Malignant" (qualifier values): pydicom's
  code dictionary (``codes.SCT.Benign`` / ``codes.SCT.Malignant``).
* "Other benign nodule" has no verified SNOMED CT concept ("Nodule of liver"
  exists as a child of 302285008 "Space occupying lesion of liver", but its
  code could not be confirmed): private code PN-0213.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.sr import PRIVATE_SCHEME

#: The question the seven-class findings answer: DCM 111023 (CodedFinding's default name).
LESION_CLASS_QUESTION = codes.DCM.DifferentialDiagnosisImpression
#: Benign or malignant, answered with :data:`BENIGN_CODE` or :data:`MALIGNANT_CODE`.
MALIGNANCY_QUESTION = Code("PN-0211", PRIVATE_SCHEME, "Benign or malignant")
#: Subtype of a malignant lesion (HCC, metastasis, other primary malignancy); needs clinical data.
MALIGNANT_SUBTYPE_QUESTION = Code("PN-0212", PRIVATE_SCHEME, "Malignant liver lesion subtype")
#: Whether the models used clinical data (answered SCT Yes/No); image-only models when No.
CLINICAL_DATA_USED = Code("PN-0201", PRIVATE_SCHEME, "Clinical data used")
BENIGN_CODE = codes.SCT.Benign
MALIGNANT_CODE = codes.SCT.Malignant
OTHER_BENIGN_NODULE = Code("PN-0213", PRIVATE_SCHEME, "Other benign liver nodule")


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

    @property
    def code(self) -> Code:
        """The coded concept of this class in reports (SNOMED CT, or pacsnode's private code)."""
        return _CODES[self]

    @property
    def display_name(self) -> str:
        """Short name for burned-in captions ("HCC", "cyst", …)."""
        return _DISPLAY[self]


_CODES = {
    LesionKind.CYST: Code("85057007", "SCT", "Cyst of liver"),
    LesionKind.HEMANGIOMA: Code("93469006", "SCT", "Hemangioma of liver"),
    LesionKind.FNH: Code("278527001", "SCT", "Focal nodular hyperplasia of liver"),
    LesionKind.OTHER_BENIGN: OTHER_BENIGN_NODULE,
    LesionKind.HCC: Code("109841003", "SCT", "Liver cell carcinoma"),
    LesionKind.METASTASIS: Code("94381002", "SCT", "Secondary malignant neoplasm of liver"),
    LesionKind.OTHER_MALIGNANT: Code("95214007", "SCT", "Primary malignant neoplasm of liver"),
}
_DISPLAY = {
    LesionKind.CYST: "cyst",
    LesionKind.HEMANGIOMA: "hemangioma",
    LesionKind.FNH: "FNH",
    LesionKind.OTHER_BENIGN: "other benign",
    LesionKind.HCC: "HCC",
    LesionKind.METASTASIS: "metastasis",
    LesionKind.OTHER_MALIGNANT: "other malignant",
}


def kind_of(code: Code) -> LesionKind:
    """The class a report code stands for (the inverse of :attr:`LesionKind.code`)."""
    for kind, known in _CODES.items():
        if (known.value, known.scheme_designator) == (code.value, code.scheme_designator):
            return kind
    raise KeyError(f"{code.scheme_designator} {code.value} ({code.meaning}) is not a liver lesion class code")
