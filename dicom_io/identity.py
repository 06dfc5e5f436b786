"""Who made an output: the algorithm, the node, and the patient/study it belongs to.

Every object pacsnode writes names the algorithm that produced it
(:class:`AlgorithmInfo`), identifies pacsnode as the manufacturer
(:class:`NodeIdentity`), and carries the patient and study attributes of its
source series unchanged (:func:`copy_patient_and_study`), so that a PACS files
it into the same study and a radiologist sees it next to the images it was
derived from.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.errors import WriterError

#: Manufacturer (0008,0070) of every object pacsnode writes.
MANUFACTURER = "pacsnode"

#: Longest value of a LO (Long String) element, e.g. ManufacturerModelName.
_LO_MAX = 64


def pacsnode_version() -> str:
    """The installed pacsnode version, or ``"0+unknown"`` when run from an uninstalled checkout."""
    try:
        return importlib.metadata.version("pacsnode")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def fit_lo(text: str) -> str:
    """``text`` shortened to fit a LO element (64 characters), for descriptive values we compose."""
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def _require_lo(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WriterError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _LO_MAX or "\\" in value or any(ord(c) < 32 for c in value):
        raise WriterError(
            f"{what} {value!r} cannot be stored in a DICOM LO element "
            f"(at most {_LO_MAX} characters, no backslash or control characters)"
        )
    return value


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model or pipeline that produced a result.

    ``name`` becomes ManufacturerModelName and the algorithm name in SEG
    segment descriptions and SR observer context; ``version`` goes into
    SoftwareVersions next to pacsnode's own version. ``family`` is a code from
    CID 7162 (Surface Processing Algorithm Families); DCM 123110
    "Artificial Intelligence" by default. ``parameters`` are recorded in the
    SEG AlgorithmIdentificationSequence and the SR algorithm identification
    (e.g. thresholds such as ``{"Tmax threshold": "6 s"}``).
    """

    name: str
    version: str
    family: Code = codes.DCM.ArtificialIntelligence
    parameters: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        _require_lo(self.name, "Algorithm name")
        _require_lo(self.version, "Algorithm version")
        if not isinstance(self.family, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"Algorithm family must be a coded concept, got {self.family!r}")
        for key, value in self.parameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise WriterError(f"Algorithm parameters must map str to str, got {key!r}: {value!r}")

    @property
    def label(self) -> str:
        """``name version``, as shown in software version lists."""
        return f"{self.name} {self.version}"

    def segmentation_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The AlgorithmIdentificationSequence a SEG segment description carries."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family,
            version=self.version,
            source=self.source,
            parameters=dict(self.parameters) or None,
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """The TID 4019 Algorithm Identification of SR measurement groups."""
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=[f"{k}={v}" for k, v in self.parameters.items()] or None,
        )

    def device_uid(self) -> str:
        """A UID for the algorithm as an SR observer device, the same for every run of this version."""
        return generate_uid(entropy_srcs=["pacsnode-algorithm", self.name, self.version])


@dataclass(frozen=True)
class NodeIdentity:
    """pacsnode as the equipment that creates outputs (General / Enhanced General Equipment)."""

    manufacturer: str = MANUFACTURER
    software_version: str = field(default_factory=pacsnode_version)
    #: DeviceSerialNumber: identifies this pacsnode installation; set it from the node's config.
    device_serial_number: str = "pacsnode"
    institution_name: str | None = None

    def __post_init__(self) -> None:
        _require_lo(self.manufacturer, "Manufacturer")
        _require_lo(self.device_serial_number, "Device serial number")

    def software_versions(self, algorithm: AlgorithmInfo) -> list[str]:
        """SoftwareVersions (0018,1020): pacsnode's version, then the algorithm's."""
        return [
            _require_lo(f"{self.manufacturer} {self.software_version}", "pacsnode software version"),
            _require_lo(algorithm.label, "Algorithm name and version"),
        ]

    def equipment_kwargs(self, algorithm: AlgorithmInfo) -> dict[str, object]:
        """Keyword arguments for highdicom constructors that fill the equipment module."""
        kwargs: dict[str, object] = {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": algorithm.name,
            "software_versions": self.software_versions(algorithm),
            "device_serial_number": self.device_serial_number,
        }
        if self.institution_name:
            kwargs["institution_name"] = self.institution_name
        return kwargs


#: Attributes of the Patient, Patient Study and General Study modules (plus
#: the character set that decodes them) that every output carries exactly as
#: in its source. Copied when present in the source, empty values included.
PATIENT_AND_STUDY_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    # Patient module
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientComments",
    # General Study module
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    # Patient Study module
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    # Clinical Trial Subject / Study modules
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)


#: Type 2 attributes of those modules: present (possibly empty) in every output.
_REQUIRED_EMPTY_IF_UNKNOWN = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
})


def copy_patient_and_study(source: Dataset, target: Dataset) -> Dataset:
    """Give ``target`` the patient and study attributes of ``source``, exactly.

    Attributes in :data:`PATIENT_AND_STUDY_KEYWORDS` that ``source`` has are
    deep-copied (an empty value stays empty). Those it lacks are removed from
    ``target`` so nothing is invented, except the Type 2 ones, which are left
    empty as the output IODs require, and SpecificCharacterSet, which keeps
    the value the writer chose for its own text. Returns ``target``.
    """
    if "StudyInstanceUID" not in source or not source.StudyInstanceUID:
        raise WriterError("The source image has no StudyInstanceUID; an output cannot be filed into its study")
    for keyword in PATIENT_AND_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])
        elif keyword in _REQUIRED_EMPTY_IF_UNKNOWN:
            setattr(target, keyword, None)
        elif keyword in target and keyword != "SpecificCharacterSet":
            del target[keyword]
    return target
