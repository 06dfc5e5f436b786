"""DICOM Parametric Maps of perfusion parameters (float32, one series per parameter).

Each map stores the computed values themselves (float32, uncompressed: no
codec exists for floating-point pixel data) with a Real World Value Mapping
that names the quantity and its UCUM unit as DICOM CID 4108 spells them, and
a VOI LUT window that shows the physiological range by default. OHIF shows
Parametric Maps only since 3.9 and many viewers not at all, which is why the
same maps also go out as colour summary images
(:mod:`dicom_io.secondary_capture`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.errors import WriterError
from dicom_io.identity import (
    AlgorithmInfo,
    NodeIdentity,
    copy_patient_and_study,
    fit_lo,
)
from dicom_io.source_images import (
    check_series_description,
    check_series_number,
    check_source_series,
)

logger = logging.getLogger(__name__)

#: UCUM units of CID 4108 (Perfusion Model Parameters); the code meaning is the code itself.
ML_PER_100G_PER_MIN = Code("ml/(100.g)/min", "UCUM", "ml/(100.g)/min")
ML_PER_100G = Code("ml/(100.g)", "UCUM", "ml/(100.g)")
SECOND = Code("s", "UCUM", "s")


class MapParameter(Enum):
    """A perfusion parameter: its concept code, unit and default display range.

    Concept codes are from CID 4108 / CID 7180: DCM 126390 "Absolute Regional
    Blood Flow", 126391 "Absolute Regional Blood Volume", 113052 "Mean
    Transit Time", 113084 "Tmax". The display range (``display_min`` to
    ``display_max``) becomes the default window and the colour bar of the
    summary images; Tmax is centred on the 6 s hypoperfusion threshold.
    """

    CBF = ("CBF", "Cerebral blood flow", codes.DCM.AbsoluteRegionalBloodFlow, ML_PER_100G_PER_MIN, 0.0, 80.0)
    CBV = ("CBV", "Cerebral blood volume", codes.DCM.AbsoluteRegionalBloodVolume, ML_PER_100G, 0.0, 8.0)
    MTT = ("MTT", "Mean transit time", codes.DCM.MeanTransitTime, SECOND, 0.0, 12.0)
    TMAX = ("Tmax", "Time to maximum of the residue function", codes.DCM.Tmax, SECOND, 0.0, 12.0)

    def __init__(self, short: str, title: str, quantity: Code, unit: Code,
                 display_min: float, display_max: float) -> None:
        self.short = short
        self.title = title
        self.quantity = quantity
        self.unit = unit
        self.display_min = display_min
        self.display_max = display_max

    @property
    def window_center(self) -> float:
        return (self.display_min + self.display_max) / 2.0

    @property
    def window_width(self) -> float:
        return self.display_max - self.display_min

    @property
    def unit_text(self) -> str:
        """The unit as printed for people (UCUM code, which CID 4108 also uses as meaning)."""
        return self.unit.value


class ParametricMapWriter:
    """Builds Parametric Map objects for one node identity."""

    def __init__(self, node: NodeIdentity | None = None) -> None:
        self.node = node or NodeIdentity()

    def write(
        self,
        source_images: Sequence[Dataset],
        values: np.ndarray,
        parameter: MapParameter,
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str | None = None,
        *,
        anatomic_region: Code = codes.SCT.Brain,
        window: tuple[float, float] | None = None,
        instance_number: int = 1,
    ) -> hd.pm.ParametricMap:
        """A Parametric Map of ``values`` (float, ``(z, y, x)`` aligned with ``source_images``).

        ``series_description`` defaults to ``"<parameter> map (<algorithm>)"``;
        ``window`` overrides the parameter's default ``(center, width)``.
        Values must be finite: set voxels outside the tissue mask to 0 first.
        """
        source = check_source_series(source_images)
        series_number = check_series_number(series_number)
        if not isinstance(parameter, MapParameter):
            raise WriterError(f"parameter must be a MapParameter (CBF, CBV, MTT, TMAX), got {parameter!r}")
        if not isinstance(algorithm, AlgorithmInfo):
            raise WriterError(f"algorithm must be an AlgorithmInfo, got {type(algorithm).__name__}")
        if series_description is None:
            series_description = fit_lo(f"{parameter.short} map ({algorithm.name})")
        series_description = check_series_description(series_description)
        source.check_array(values, f"{parameter.short} map")
        if not np.issubdtype(values.dtype, np.floating):
            raise WriterError(f"{parameter.short} map has dtype {values.dtype}; a float map (float32) is expected")
        if not np.all(np.isfinite(values)):
            raise WriterError(
                f"{parameter.short} map contains NaN or infinite values; set voxels outside the tissue "
                "mask to 0 before writing"
            )
        finfo = np.finfo(np.float32)
        if values.size and (values.min() < finfo.min or values.max() > finfo.max):
            raise WriterError(f"{parameter.short} map has values outside the float32 range")
        pixels = np.ascontiguousarray(values, dtype=np.float32)
        center, width = window if window is not None else (parameter.window_center, parameter.window_width)
        if not (np.isfinite(center) and np.isfinite(width) and width > 0):
            raise WriterError(f"Window of the {parameter.short} map must have a finite center and positive width")
        if not isinstance(anatomic_region, (Code, hd.sr.CodedConcept)):
            raise WriterError("anatomic_region must be a coded concept (pydicom Code)")

        low, high = float(pixels.min()), float(pixels.max())
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=parameter.short,
            lut_explanation=fit_lo(f"{parameter.title} ({parameter.unit_text})"),
            unit=parameter.unit,
            value_range=(low, high),
            slope=1.0,
            intercept=0.0,
            quantity_definition=parameter.quantity,
        )
        voi = hd.VOILUTTransformation(
            window_center=float(center),
            window_width=float(width),
            window_explanation=f"{parameter.short} {center - width / 2:g}-{center + width / 2:g} {parameter.unit_text}",
        )
        try:
            pmap = hd.pm.ParametricMap(
                source_images=list(source.images),
                pixel_array=pixels,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=instance_number,
                contains_recognizable_visual_features=False,
                real_world_value_mappings=[mapping],
                voi_lut_transformations=[voi],
                content_label=parameter.short.upper(),
                content_description=fit_lo(f"{parameter.short} ({parameter.unit_text}) by {algorithm.label}"),
                series_description=series_description,
                **self.node.equipment_kwargs(algorithm),
            )
        except (ValueError, TypeError) as exc:
            raise WriterError(f"{source.label}: highdicom refused the {parameter.short} map: {exc}") from exc
        _add_frame_anatomy(pmap, anatomic_region)
        copy_patient_and_study(source.first, pmap)
        logger.info("Built %s Parametric Map %r (series %d), %d frames",
                    parameter.short, series_description, series_number, source.slice_count)
        return pmap


def _add_frame_anatomy(pmap: Dataset, anatomic_region: Code) -> None:
    """Frame Anatomy functional group (shared): what was imaged, laterality 'U' (unpaired).

    Without it the General Series Laterality condition cannot be resolved and
    validators report the map as incomplete.
    """
    region = hd.sr.CodedConcept(anatomic_region.value, anatomic_region.scheme_designator, anatomic_region.meaning)
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = DicomSequence([region])
    anatomy.FrameLaterality = "U"
    pmap.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = DicomSequence([anatomy])
