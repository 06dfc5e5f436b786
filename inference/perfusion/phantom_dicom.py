"""Write the stroke phantom as a DSC-MRI DICOM study, with its ground truth beside it.

The series looks like a 2D multi-slice gradient-echo EPI perfusion series as
scanners export it: one single-frame MR Image Storage instance per slice and
time point, 16-bit unsigned pixels (the simulated signal times
``pixel_scale``, no rescale), EchoTime/RepetitionTime/FlipAngle,
NumberOfTemporalPositions and TemporalPositionIdentifier, and per-image
AcquisitionTime/ContentTime with ascending slice timing within each TR.
Geometry is axial, LPS: columns run to patient left (+x, the lesion side),
rows to posterior.

Beside the ``DSC/`` folder: ``ground_truth.npz`` (truth maps and masks,
``(z, y, x)`` in the same slice order as ImagePositionPatient z ascending)
and ``ground_truth.json`` (volumes, DEFUSE 3 truth, timing, κ, pixel scale).
UIDs are derived from the seed, so the same seed writes the same study.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from dicom_io.part10 import write_part10
from inference.perfusion.simulation import (
    TISSUE_LABELS,
    ZONE_LABELS,
    AcquisitionTiming,
    StrokePhantom,
    StrokePhantomDesign,
    make_stroke_phantom,
)

SERIES_DESCRIPTION = "ep2d_perf DSC"
#: Stored value = round(signal × PIXEL_SCALE): S0 ≈ 100 becomes ≈ 2000.
PIXEL_SCALE = 20.0
_STUDY_START = datetime(2024, 1, 15, 10, 0, 0)
DEFAULT_DESIGN = StrokePhantomDesign()
DEFAULT_TIMING = AcquisitionTiming()


def _uid(seed: int | None, name: str) -> str:
    return generate_uid(entropy_srcs=[f"pacsnode-stroke-phantom-{seed}", name])


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _series_template(phantom: StrokePhantom, seed: int | None) -> Dataset:
    """Attributes shared by every image of the series."""
    timing = phantom.timing
    _nz, ny, nx = phantom.labels.shape
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = "pacsnode"
    ds.ManufacturerModelName = "stroke phantom (simulated)"
    ds.InstitutionName = "pacsnode test data"
    ds.PatientName = "Phantom^Stroke"
    ds.PatientID = f"PACSNODE-PHANTOM-{seed}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference")
    ds.PositionReferenceIndicator = ""  # Type 2: present, empty
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _STUDY_START.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = _tm(_STUDY_START)
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""  # Type 2: present, empty
    ds.AccessionNumber = f"PHANTOM{seed if seed is not None else 0:05d}"
    ds.StudyDescription = "MR brain stroke (phantom)"
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ProtocolName = SERIES_DESCRIPTION
    ds.SeriesNumber = 7
    ds.BodyPartExamined = "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = "EP"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = "FS"
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*epfid2d1_128"
    ds.EchoTime = f"{timing.te_s * 1000:g}"
    ds.RepetitionTime = f"{timing.tr_s * 1000:g}"
    ds.FlipAngle = "90"
    ds.MagneticFieldStrength = "3"
    ds.ImagingFrequency = "123.2"
    ds.EchoTrainLength = ny
    ds.NumberOfTemporalPositions = timing.n_timepoints
    ds.SliceThickness = f"{phantom.spacing_mm[0]:g}"
    ds.SpacingBetweenSlices = f"{phantom.spacing_mm[0]:g}"
    ds.PixelSpacing = [f"{phantom.spacing_mm[1]:g}", f"{phantom.spacing_mm[2]:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{100 * PIXEL_SCALE:g}"
    ds.WindowWidth = f"{200 * PIXEL_SCALE:g}"
    return ds


def write_phantom_series(phantom: StrokePhantom, out_dir: Path, seed: int | None) -> list[Path]:
    """One file per slice and time point under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    template = _series_template(phantom, seed)
    timing = phantom.timing
    n_t, nz, ny, nx = phantom.signal.shape
    pixels = np.clip(np.rint(phantom.signal * PIXEL_SCALE), 0, 65535).astype("<u2")
    origin_x = -(nx - 1) / 2 * phantom.spacing_mm[2]
    origin_y = -(ny - 1) / 2 * phantom.spacing_mm[1]
    paths = []
    for t in range(n_t):
        for z in range(nz):
            ds = Dataset()
            ds.update(template)
            number = t * nz + z + 1
            ds.SOPInstanceUID = _uid(seed, f"image-{t}-{z}")
            ds.InstanceNumber = number
            ds.AcquisitionNumber = t + 1
            ds.TemporalPositionIdentifier = t + 1
            moment = _STUDY_START + timedelta(seconds=t * timing.tr_s + z * timing.tr_s / nz)
            ds.AcquisitionTime = ds.ContentTime = _tm(moment)
            z_mm = (z - (nz - 1) / 2) * phantom.spacing_mm[0]
            ds.ImagePositionPatient = [f"{origin_x:g}", f"{origin_y:g}", f"{z_mm:g}"]
            ds.SliceLocation = f"{z_mm:g}"
            ds.PixelData = pixels[t, z].tobytes()
            paths.append(write_part10(ds, out_dir / f"IM_{number:05d}.dcm"))
    return paths


def _json_ready(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def write_stroke_phantom(out_dir: str | Path, seed: int = 0, snr: float | None = 50.0, *,
                         design: StrokePhantomDesign = DEFAULT_DESIGN,
                         timing: AcquisitionTiming = DEFAULT_TIMING) -> Path:
    """Simulate the stroke phantom and write it as a DICOM study with its ground truth; returns ``out_dir``.

    Layout: ``out_dir/DSC/IM_*.dcm``, ``out_dir/ground_truth.npz``, ``out_dir/ground_truth.json``.
    """
    out = Path(out_dir)
    phantom = make_stroke_phantom(seed=seed, snr=snr, design=design, timing=timing)
    paths = write_phantom_series(phantom, out / "DSC", seed)
    truth = phantom.truth
    np.savez_compressed(
        out / "ground_truth.npz", cbf=truth.cbf, cbv=truth.cbv, mtt=truth.mtt, tmax=truth.tmax,
        labels=phantom.labels, zones=phantom.zones, tissue_mask=phantom.tissue_mask,
        brain_mask=phantom.brain_mask, artery_mask=phantom.artery_mask, vein_mask=phantom.vein_mask,
        hypoperfusion_mask=phantom.hypoperfusion_mask, severe_mask=phantom.severe_mask,
        core_mask=phantom.core_mask, aif_concentration=phantom.aif_concentration, times_s=phantom.times_s,
        spacing_mm=np.array(phantom.spacing_mm))
    lesion = {k: _json_ready(v) for k, v in phantom.lesion_truth().items()}
    summary = {
        "description": "pacsnode DSC-MRI stroke phantom (simulated; research use only)",
        "seed": seed, "snr": snr, "n_files": len(paths),
        "axes": "maps are (z, y, x); z ascending with ImagePositionPatient; +x is the lesion side (patient left)",
        "units": {"cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s", "volumes": "ml"},
        "tmax_convention": "delay + argmax of the dispersed residue function",
        "lesion_truth": lesion,
        "timing": asdict(timing),
        "pixel_scale": PIXEL_SCALE,
        "relaxivity_per_s_per_mM": {"artery": phantom.relaxivity.artery, "tissue": phantom.relaxivity.tissue,
                                    "tissue_to_artery_ratio": phantom.relaxivity.tissue_to_artery_ratio},
        "haematocrit": asdict(phantom.haematocrit),
        "tissue_labels": TISSUE_LABELS, "zone_labels": ZONE_LABELS,
        "design": json.loads(json.dumps(asdict(design), default=str)),
    }
    (out / "ground_truth.json").write_text(json.dumps(summary, indent=2, default=_json_ready))
    return out
