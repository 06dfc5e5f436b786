"""Clinical data attached to a study by its AccessionNumber: validated, unit-checked, kept in the index.

The fields are those of seed 003 (Zhen et al. 2020, Table S3), with the unit
in every name: age, sex, cirrhosis-related history, other cancers, tumour
markers (AFP, CEA, CA-125, CA19-9, PSA, ferritin) and liver function
(albumin, total bilirubin, prothrombin time, hepatic encephalopathy,
ascites). A value is either a plain number in the field's unit
(``"albumin_g_l": 35``) or ``{"value": ..., "unit": ...}`` in one of the few
units converted explicitly (``"albumin": {"value": 3.5, "unit": "g/dL"}``).
Anything else (an unknown field, an unknown unit, a value outside what is
physiologically possible) raises :class:`ClinicalDataError` naming the field,
the value and what is allowed, so whoever feeds the node can fix the sender.

Values never reach the logs at INFO; the audit trail records which fields
arrived for which accession, never their values. Research use only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError, model_validator

from node.audit import AuditLog
from node.index import Index

log = logging.getLogger("pacsnode.clinical")


class ClinicalDataError(ValueError):
    """Clinical data that cannot be accepted; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Quantity:
    """A numeric field: its unit, its physiologically possible range and the other units converted to it."""

    unit: str
    low: float
    high: float
    #: Accepted units as written in messages (the field's own included) -> factor to the field's unit.
    conversions: Mapping[str, float]
    #: The field's name without its unit, accepted only with an explicit unit.
    short_name: str


_SAME_MASS_PER_VOLUME = {"ng/ml": 1.0, "µg/l": 1.0}
_SAME_UNITS_PER_VOLUME = {"U/ml": 1.0, "kU/l": 1.0}

#: Numeric fields. Ranges are what a living patient can have, wide on purpose:
#: they catch wrong units and typing errors, not abnormal results.
QUANTITIES: dict[str, Quantity] = {
    "age_years": Quantity("years", 0, 120, {"years": 1.0}, "age"),
    # AFP: 1 IU/ml = 1.21 ng/ml (WHO 72/225 standard).
    "afp_ng_ml": Quantity("ng/ml", 0, 1e6, {**_SAME_MASS_PER_VOLUME, "IU/ml": 1.21, "kIU/l": 1.21}, "afp"),
    "cea_ng_ml": Quantity("ng/ml", 0, 1e5, _SAME_MASS_PER_VOLUME, "cea"),
    "ca125_u_ml": Quantity("U/ml", 0, 1e5, _SAME_UNITS_PER_VOLUME, "ca125"),
    "ca19_9_u_ml": Quantity("U/ml", 0, 1e6, _SAME_UNITS_PER_VOLUME, "ca19_9"),
    "psa_ng_ml": Quantity("ng/ml", 0, 1e4, _SAME_MASS_PER_VOLUME, "psa"),
    "ferritin_ng_ml": Quantity("ng/ml", 0, 2e5, _SAME_MASS_PER_VOLUME, "ferritin"),
    "albumin_g_l": Quantity("g/l", 5, 70, {"g/l": 1.0, "g/dl": 10.0}, "albumin"),
    # Bilirubin: 1 mg/dl = 17.1 umol/l (molar mass 584.7 g/mol).
    "bilirubin_umol_l": Quantity("µmol/l", 0, 1000, {"µmol/l": 1.0, "mg/dl": 17.1}, "bilirubin"),
    "prothrombin_time_s": Quantity("s", 5, 150, {"s": 1.0, "seconds": 1.0}, "prothrombin_time"),
}
FLAGS = ("cirrhosis", "viral_hepatitis", "other_cancer_history", "hepatic_encephalopathy", "ascites")
SEXES = ("F", "M", "O")
FIELDS = ("age_years", "sex", "cirrhosis", "viral_hepatitis", "other_cancer_history", "afp_ng_ml",
          "cea_ng_ml", "ca125_u_ml", "ca19_9_u_ml", "psa_ng_ml", "ferritin_ng_ml", "albumin_g_l",
          "bilirubin_umol_l", "prothrombin_time_s", "hepatic_encephalopathy", "ascites")
_BY_SHORT_NAME = {q.short_name: name for name, q in QUANTITIES.items()}


def _number(name: str) -> Any:
    q = QUANTITIES[name]
    return Field(None, ge=q.low, le=q.high, description=f"{q.low:.10g}–{q.high:.10g} {q.unit}")


_Number = Annotated[float, Strict()] | None


class ClinicalData(BaseModel):
    """One patient's clinical variables at the time of a study; every field optional, at least one given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    age_years: _Number = _number("age_years")
    sex: Literal["F", "M", "O"] | None = None
    cirrhosis: StrictBool | None = None
    viral_hepatitis: StrictBool | None = None
    other_cancer_history: StrictBool | None = None
    afp_ng_ml: _Number = _number("afp_ng_ml")
    cea_ng_ml: _Number = _number("cea_ng_ml")
    ca125_u_ml: _Number = _number("ca125_u_ml")
    ca19_9_u_ml: _Number = _number("ca19_9_u_ml")
    psa_ng_ml: _Number = _number("psa_ng_ml")
    ferritin_ng_ml: _Number = _number("ferritin_ng_ml")
    albumin_g_l: _Number = _number("albumin_g_l")
    bilirubin_umol_l: _Number = _number("bilirubin_umol_l")
    prothrombin_time_s: _Number = _number("prothrombin_time_s")
    hepatic_encephalopathy: StrictBool | None = None
    ascites: StrictBool | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> ClinicalData:
        if not self.given():
            raise ValueError("no clinical data field given")
        return self

    def given(self) -> dict[str, Any]:
        """The fields that were given, in canonical units."""
        return self.model_dump(exclude_none=True)

    @classmethod
    def parse(cls, payload: Any) -> ClinicalData:
        """Validate a JSON/YAML mapping, converting the supported units; raises :class:`ClinicalDataError`."""
        if not isinstance(payload, Mapping):
            raise ClinicalDataError(
                f"clinical data must be a mapping of field names to values, not {type(payload).__name__}; "
                f"fields: {', '.join(FIELDS)}")
        canonical = _to_canonical_units(payload)
        try:
            return cls.model_validate(canonical)
        except ValidationError as exc:
            raise ClinicalDataError("; ".join(_explain(err) for err in exc.errors())) from None


def _unit_key(unit: str) -> str:
    """A unit's spelling for lookup: case, spaces and the micro sign do not matter (µmol/L == umol/l)."""
    return re.sub(r"\s+", "", unit).replace("µ", "u").replace("μ", "u").lower()


def _allowed(name: str) -> str:
    q = QUANTITIES[name]
    others = [u for u in q.conversions if _unit_key(u) != _unit_key(q.unit)]
    text = f"{q.low:.10g}–{q.high:.10g} {q.unit}"
    if others:
        text += f" (or {{\"value\": ..., \"unit\": ...}} in {', '.join(others)})"
    return text


def _to_canonical_units(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve short names and ``{"value", "unit"}`` forms to canonical field names and units."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        key = str(key)
        name = _BY_SHORT_NAME.get(key, key)
        if name in out:
            raise ClinicalDataError(f"clinical data field {name!r} is given twice (as {name!r} and {key!r})")
        if name not in FIELDS:
            raise ClinicalDataError(f"unknown clinical data field {key!r}; known fields: {', '.join(FIELDS)}")
        if isinstance(value, Mapping):
            if name not in QUANTITIES:
                raise ClinicalDataError(
                    f"clinical data field {name!r} takes no unit; give it as a plain value")
            out[name] = _convert(key, name, value)
        elif key != name:
            raise ClinicalDataError(
                f"clinical data field {key!r} = {value!r} has no unit: give {name!r} in "
                f"{QUANTITIES[name].unit}, or {{\"value\": ..., \"unit\": ...}}; allowed: {_allowed(name)}")
        else:
            out[name] = value
    return out


def _convert(key: str, name: str, given: Mapping[str, Any]) -> float:
    """``{"value": v, "unit": u}`` in the field's unit, range-checked against what was sent."""
    q = QUANTITIES[name]
    field = key if key == name else f"{key} ({name})"
    if set(given) != {"value", "unit"}:
        raise ClinicalDataError(
            f"clinical data field {field!r} = {dict(given)!r}: a value with a unit is "
            f"{{\"value\": <number>, \"unit\": <text>}}; allowed: {_allowed(name)}")
    value, unit = given["value"], given["unit"]
    factors = {_unit_key(u): f for u, f in q.conversions.items()}
    factor = factors.get(_unit_key(unit)) if isinstance(unit, str) else None
    if factor is None:
        raise ClinicalDataError(
            f"clinical data field {field!r} = {value!r} {unit!r}: unit not supported; "
            f"allowed: {_allowed(name)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClinicalDataError(
            f"clinical data field {field!r} = {value!r}: not a number; allowed: {_allowed(name)}")
    converted = float(f"{value * factor:.6g}")
    if not q.low <= converted <= q.high:
        raise ClinicalDataError(
            f"clinical data field {field!r} = {value:g} {unit} ({converted:g} {q.unit}) is not possible; "
            f"allowed: {_allowed(name)}")
    return converted


def _explain(err: Mapping[str, Any]) -> str:
    """A pydantic error as a sentence naming the field, the value and what is allowed."""
    name = str(err["loc"][0]) if err.get("loc") else ""
    value = err.get("input")
    if not name:
        return f"no clinical data field given; expected at least one of {', '.join(FIELDS)}"
    if name in QUANTITIES and str(err.get("type", "")).endswith("_type"):
        return f"clinical data field {name!r} = {value!r} is not a number; allowed: {_allowed(name)}"
    if name in QUANTITIES:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        return f"clinical data field {name!r} = {shown} is not possible; allowed: {_allowed(name)}"
    if name == "sex":
        return f"clinical data field 'sex' = {value!r}; allowed: {', '.join(map(repr, SEXES))}"
    if name in FLAGS:
        return f"clinical data field {name!r} = {value!r}; allowed: true or false"
    return f"clinical data field {name!r} = {value!r}: {err.get('msg')}"


_ACCESSION = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # DICOM SH: printable, no backslash, <= 16 chars


def check_accession(accession: str) -> str:
    """The AccessionNumber as DICOM allows it (VR SH), surrounding spaces removed."""
    stripped = accession.strip()
    if not stripped or not _ACCESSION.fullmatch(stripped):
        raise ClinicalDataError(
            f"accession number {accession!r} is not a DICOM AccessionNumber "
            "(1-16 printable ASCII characters, no backslash)")
    return stripped


@dataclass(frozen=True)
class ClinicalRecord:
    """Clinical data as stored for one accession."""

    accession_number: str
    data: ClinicalData
    source: str | None
    received_at: float

    def as_json(self) -> dict[str, Any]:
        return {"accession_number": self.accession_number, "data": self.data.given(),
                "source": self.source, "received_at": self.received_at}


class ClinicalStore:
    """Clinical data per AccessionNumber in the node's index; a later put replaces an earlier one."""

    def __init__(self, index: Index, audit: AuditLog | None = None) -> None:
        self.index = index
        self.audit = audit

    def put(self, accession: str, data: ClinicalData, source: str | None = None) -> ClinicalRecord:
        accession = check_accession(accession)
        record = ClinicalRecord(accession, data, source, time.time())
        replaced = self.index.put_clinical_data(
            accession, json.dumps(data.given(), sort_keys=True), source, record.received_at)
        fields = sorted(data.given())
        if self.audit is not None:
            self.audit.record("clinical-data-received", accession_number=accession, fields=fields,
                              source=source, replaced=replaced)
        log.info("clinical data stored", extra={"fields": fields, "source": source, "replaced": replaced})
        return record

    def get(self, accession: str) -> ClinicalRecord | None:
        row = self.index.clinical_data(check_accession(accession))
        if row is None:
            return None
        data_json, source, received_at = row
        return ClinicalRecord(accession.strip(), ClinicalData.model_validate(json.loads(data_json)),
                              source, received_at)

    def delete(self, accession: str) -> bool:
        accession = check_accession(accession)
        deleted = self.index.delete_clinical_data(accession)
        if deleted and self.audit is not None:
            self.audit.record("clinical-data-deleted", accession_number=accession)
        return deleted
