"""Write a liver phantom as a real DICOM study (MR phases or CT), with its ground truth beside it.

Layout of ``out_dir``::

    <series folder>/IM_00001.dcm …   one folder per series (e.g. "05_t1_vibe_portal")
    ground_truth/labels.npz            labels, lesion_labels, spacing, motion_mm (reference grid)
    ground_truth/truth.json            lesions, motion, channels and times, clinical data, seed, UIDs
    ground_truth/truth-seg.dcm         DICOM SEG on the reference series: liver, all tumours, each lesion
    ground_truth/clinical.json         (lesion studies) the clinical data, as `pacsnode clinical put` takes them

The MR series look like a liver protocol as scanners export it: single-frame
MR Image Storage, one instance per slice, 16-bit unsigned pixels
(signal × :data:`MR_PIXEL_SCALE`, one scale for every series so phases
compare), axial LPS geometry, one Frame of Reference for the study. T2
HASTE and DWI (b = 800, ``DiffusionBValue``) come first, then the T1 VIBE
dynamic: SeriesDescription names the phase ("t1_vibe_fs_tra_arterial"),
post-contrast series carry the Contrast/Bolus module with
``ContrastBolusStartTime``, and ``AcquisitionTime`` follows the phase's time
after injection. ``as_4d=True`` writes the dynamic phases as one series with
``TemporalPositionIdentifier``, ``NumberOfTemporalPositions`` and each phase's
``AcquisitionTime``. (Many scanners also put TriggerTime on non-gated multiphase
series; the MR Image module allows it only with cardiac or pulse gating, so the
phantom leaves it out and every object it writes passes dciodvfy.) The per-channel motion is in the pixel data; the labels and
the SEG are on the portal-venous (reference) series.

CT: CT Image Storage, unsigned 16-bit stored values with RescaleIntercept
−1024 (HU = stored − 1024), portal-venous contrast.

Patient identity is obviously synthetic ("PHANTOM^LIVER", ID "LIVER-<seed>");
the image UIDs derive from the seed, so a seed always writes the same study
(the truth SEG gets fresh UIDs each time, as any derived object would).
Research use only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from dicom_io.part10 import write_part10
from inference.liver.lesion_kinds import LesionKind
from inference.liver.phantom import (
    DCE_PHASES,
    LIVER_CLASSES,
    MR_SEQUENCES,
    LiverPhantom,
    simulate_liver_mr,
)

log = logging.getLogger("pacsnode.liver.phantom")

#: Stored MR value = round(signal × MR_PIXEL_SCALE) (liver ≈ 100 signal units → ≈ 1000).
MR_PIXEL_SCALE = 10.0
CT_RESCALE_INTERCEPT = -1024.0
_STUDY_START = datetime(2024, 3, 11, 9, 30, 0)
#: Pre-contrast series starts this long after the study starts; contrast is injected after it.
_PRE_OFFSET_S = 420.0
_INJECTION_AFTER_PRE_S = 40.0
CONTRAST_AGENT_MR = "Gadoterate meglumine 0.5 mmol/ml"
CONTRAST_AGENT_CT = "Iohexol 350 mgI/ml"

#: Per MR channel: folder name, SeriesDescription, and sequence attributes.
_MR_SERIES: dict[str, dict[str, object]] = {
    "t2": {"number": 2, "description": "t2_haste_fs_tra", "ScanningSequence": "SE", "SequenceVariant": ["SK", "SP"],
           "ScanOptions": "FS", "MRAcquisitionType": "2D", "SequenceName": "*h2d1_256", "EchoTime": "90",
           "RepetitionTime": "4000", "FlipAngle": "150", "EchoTrainLength": 128},
    "dwi": {"number": 3, "description": "ep2d_diff_b800_tra TRACEW", "ScanningSequence": "EP",
            "SequenceVariant": ["SK", "SP"], "ScanOptions": "FS", "MRAcquisitionType": "2D",
            "SequenceName": "*ep_b800t", "EchoTime": "62", "RepetitionTime": "5200", "FlipAngle": "90",
            "EchoTrainLength": 64},
    **{phase: {"number": 4 + i, "description": f"t1_vibe_fs_tra_{phase}", "ScanningSequence": "GR",
               "SequenceVariant": ["SK", "SP"], "ScanOptions": ["PFP", "FS"], "MRAcquisitionType": "3D",
               "SequenceName": "*fl3d1", "EchoTime": "1.9", "RepetitionTime": "4.1", "FlipAngle": "12",
               "EchoTrainLength": 1}
       for i, phase in enumerate(DCE_PHASES)},
}
_MR_4D = {"number": 4, "description": "t1_vibe_fs_tra_dynamic"}
_TRUTH_SEG_SERIES_NUMBER = 900


class PhantomWriteError(ValueError):
    """The phantom cannot be written as requested (wrong modality, missing reference channel…)."""


def _uid(seed: int, name: str) -> str:
    return generate_uid(entropy_srcs=[f"pacsnode-liver-phantom-{seed}", name])


def phantom_accession_number(seed: int) -> str:
    """The AccessionNumber of the phantom study written for *seed* (what ``pacsnode clinical put`` takes)."""
    return f"LIVER{seed % 10**10:010d}"


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _patient_and_study(phantom: LiverPhantom, seed: int, description: str) -> Dataset:
    clinical = phantom.clinical or {}
    age = int(clinical.get("age_years", 50))
    sex = {"F": "F", "M": "M"}.get(str(clinical.get("sex", "O")), "O")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "PHANTOM^LIVER"
    ds.PatientID = f"LIVER-{seed}"
    ds.PatientBirthDate = f"{_STUDY_START.year - age}0101"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.StudyDate = _STUDY_START.strftime("%Y%m%d")
    ds.StudyTime = _tm(_STUDY_START)
    ds.StudyID = "1"
    ds.AccessionNumber = phantom_accession_number(seed)
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "pacsnode"
    ds.ManufacturerModelName = "liver phantom (simulated)"
    ds.InstitutionName = "pacsnode test data"
    ds.DeviceSerialNumber = "PHANTOM"
    ds.SoftwareVersions = "pacsnode liver phantom 1"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "FFS"
    return ds


def _geometry(ds: Dataset, phantom: LiverPhantom) -> None:
    dz, dy, dx = phantom.spacing
    _nz, ny, nx = phantom.labels.shape
    ds.SliceThickness = f"{dz:g}"
    ds.PixelSpacing = [f"{dy:g}", f"{dx:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0


def slice_origin(phantom: LiverPhantom, z_index: int) -> tuple[float, float, float]:
    """LPS position (mm) of the centre of voxel ``[z_index, 0, 0]``: the volume is centred on the isocentre."""
    nz, ny, nx = phantom.labels.shape
    dz, dy, dx = phantom.spacing
    return (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, (z_index - (nz - 1) / 2) * dz)


def _instances(template: Dataset, phantom: LiverPhantom, pixels: np.ndarray, out_dir: Path, seed: int,
               series_key: str, *, start_number: int = 1, per_instance: dict[str, object] | None = None
               ) -> list[Path]:
    """One single-frame instance per slice of ``pixels`` (z, y, x) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in range(pixels.shape[0]):
        ds = Dataset()
        ds.update(template)
        number = start_number + z
        ds.SOPInstanceUID = _uid(seed, f"{series_key}-image-{number}")
        ds.InstanceNumber = number
        position = slice_origin(phantom, z)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position[2]:.4f}"
        for keyword, value in (per_instance or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(pixels[z]).tobytes()
        paths.append(write_part10(ds, out_dir / f"IM_{number:05d}.dcm"))
    return paths


def _window(stored: np.ndarray) -> tuple[str, str]:
    low, high = np.percentile(stored, [1.0, 99.5])
    return f"{(low + high) / 2:.0f}", f"{max(high - low, 1.0):.0f}"


def _mr_template(base: Dataset, phantom: LiverPhantom, channel: str, series_uid: str, number: int,
                 description: str) -> Dataset:
    spec = _MR_SERIES[channel]
    ds = Dataset()
    ds.update(base)
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"] if channel != "dwi" else ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]
    for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
                    "EchoTime", "RepetitionTime", "FlipAngle", "EchoTrainLength"):
        setattr(ds, keyword, spec[keyword])
    ds.MagneticFieldStrength = "1.5"
    ds.ImagingFrequency = "63.6"
    ds.ImagedNucleus = "1H"
    ds.NumberOfAverages = "1"
    ds.SpacingBetweenSlices = f"{phantom.spacing[0]:g}"
    _geometry(ds, phantom)
    ds.BitsStored = 16
    ds.HighBit = 15
    if channel == "dwi":
        ds.DiffusionBValue = 800.0
        ds.DiffusionDirectionality = "ISOTROPIC"
    return ds


def _contrast(ds: Dataset, agent: str, start: datetime, volume_ml: float) -> None:
    ds.ContrastBolusAgent = agent
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = f"{volume_ml:g}"
    ds.ContrastBolusStartTime = _tm(start)


def _check_channels(phantom: LiverPhantom, channels: Sequence[str] | None) -> tuple[str, ...]:
    if phantom.modality != "MR":
        raise PhantomWriteError(f"write_liver_dce_study needs an MR phantom, got {phantom.modality}")
    chosen = tuple(phantom.channels if channels is None else channels)
    missing = [c for c in chosen if c not in phantom.channels]
    if missing:
        raise PhantomWriteError(f"channels {missing} were not simulated; this phantom has {phantom.channels}")
    if phantom.reference_channel not in chosen:
        raise PhantomWriteError(f"the reference channel {phantom.reference_channel!r} must be written: "
                                "the labels and the truth SEG are on its grid")
    return chosen


def write_liver_dce_study(phantom: LiverPhantom, out_dir: str | Path, *, as_4d: bool = False,
                          seed: int | None = None, channels: Sequence[str] | None = None) -> Path:
    """Write the MR channels of ``phantom`` (all, or ``channels``) as a DICOM study with ground truth.

    Returns ``out_dir``. ``seed`` (default: the phantom's) derives the UIDs and the patient ID.
    """
    seed = phantom.seed if seed is None else seed
    chosen = _check_channels(phantom, channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = _patient_and_study(phantom, seed, "MR liver dynamic (phantom)")
    pixels = np.clip(np.rint(phantom.images * MR_PIXEL_SCALE), 0, 65535).astype("<u2")
    pre_start = _STUDY_START + timedelta(seconds=_PRE_OFFSET_S)
    injection = pre_start + timedelta(seconds=_INJECTION_AFTER_PRE_S)
    times = dict(zip(phantom.channels, phantom.channel_times_s))
    dce = [c for c in DCE_PHASES if c in chosen]
    series: dict[str, dict[str, object]] = {}

    def acquired(channel: str) -> datetime:
        if channel == "t2":
            return _STUDY_START + timedelta(seconds=60)
        if channel == "dwi":
            return _STUDY_START + timedelta(seconds=240)
        if channel == "pre":
            return pre_start
        return injection + timedelta(seconds=float(times[channel]))

    for channel in chosen:
        if as_4d and channel in DCE_PHASES:
            continue
        spec = _MR_SERIES[channel]
        uid = _uid(seed, f"series-{channel}")
        template = _mr_template(base, phantom, channel, uid, int(spec["number"]), str(spec["description"]))
        moment = acquired(channel)
        template.SeriesDate = template.AcquisitionDate = template.ContentDate = moment.strftime("%Y%m%d")
        template.SeriesTime = template.AcquisitionTime = template.ContentTime = _tm(moment)
        template.AcquisitionNumber = 1
        if channel in DCE_PHASES and channel != "pre":
            _contrast(template, CONTRAST_AGENT_MR, injection, 15.0)
        stored = pixels[phantom.channels.index(channel)]
        template.WindowCenter, template.WindowWidth = _window(stored)
        folder = out / f"{int(spec['number']):02d}_{spec['description']}".replace(" ", "_")
        paths = _instances(template, phantom, stored, folder, seed, f"series-{channel}")
        series[channel] = {"series_instance_uid": uid, "series_number": int(spec["number"]),
                           "series_description": str(spec["description"]), "folder": folder.name,
                           "n_instances": len(paths)}
    if as_4d and dce:
        uid = _uid(seed, "series-dce-4d")
        template = _mr_template(base, phantom, dce[0], uid, _MR_4D["number"], str(_MR_4D["description"]))
        template.NumberOfTemporalPositions = len(dce)
        template.SeriesDate = template.AcquisitionDate = template.ContentDate = pre_start.strftime("%Y%m%d")
        template.SeriesTime = _tm(pre_start)
        _contrast(template, CONTRAST_AGENT_MR, injection, 15.0)
        stack = np.stack([pixels[phantom.channels.index(c)] for c in dce])
        template.WindowCenter, template.WindowWidth = _window(stack)
        folder = out / f"{_MR_4D['number']:02d}_{_MR_4D['description']}"
        nz = phantom.labels.shape[0]
        for t, channel in enumerate(dce):
            moment = acquired(channel)
            _instances(template, phantom, stack[t], folder, seed, "series-dce-4d", start_number=t * nz + 1,
                       per_instance={"TemporalPositionIdentifier": t + 1, "AcquisitionNumber": t + 1,
                                     "AcquisitionTime": _tm(moment), "ContentTime": _tm(moment)})
        for channel in dce:
            series[channel] = {"series_instance_uid": uid, "series_number": _MR_4D["number"],
                               "series_description": _MR_4D["description"], "folder": folder.name,
                               "temporal_position": dce.index(channel) + 1, "n_instances": len(dce) * nz}
    reference = phantom.reference_channel
    _write_truth(phantom, out, seed, series, reference, injection_time=_tm(injection))
    log.info("wrote liver MR phantom study", extra={"series": len({s["series_instance_uid"] for s in series.values()}),
                                                     "as_4d": as_4d, "lesions": len(phantom.lesions)})
    return out


def write_liver_lesion_study(out_dir: str | Path, seed: int, *,
                             lesion_kinds: Sequence[LesionKind | int] | None = None, n_lesions: int | None = None,
                             shape: Sequence[int] = (32, 224, 224), spacing: Sequence[float] = (6.0, 1.5, 1.5),
                             as_4d: bool = False) -> Path:
    """A six-sequence liver MR study for lesion classification (T2, DWI b 800, the four T1 phases), with
    its ground truth and ``ground_truth/clinical.json``; returns ``out_dir``.

    The default geometry is the classifier's (CLS_SHAPE and CLS_SPACING of
    inference.liver.lesion_patches; kept as literals so writing a study does
    not load the classifier). ``truth.json`` gives each lesion's kind;
    ``clinical.json`` holds the case's clinical data in the fields and units of
    :class:`node.clinical.ClinicalData`, validated by it, ready for
    ``pacsnode clinical put <AccessionNumber> clinical.json`` (the study's
    AccessionNumber is :func:`phantom_accession_number`). Raises
    :class:`~inference.liver.phantom.PhantomParameterError` for a geometry or
    lesion list the simulator cannot honour.
    """
    from node.clinical import ClinicalData

    phantom = simulate_liver_mr(seed, shape=shape, spacing=spacing, channels=MR_SEQUENCES, n_lesions=n_lesions,
                                lesion_kinds=lesion_kinds)
    clinical = ClinicalData.parse(phantom.clinical).given()
    out = write_liver_dce_study(phantom, out_dir, as_4d=as_4d, seed=seed)
    (out / "ground_truth" / "clinical.json").write_text(json.dumps(clinical, indent=2))
    return out


#: How each CT phase is described and numbered in a multi-phase study (the way scanners name them).
_CT_SERIES = {
    "pre": (2, "Abdomen native 3.0 Br40", "Liver unenhanced"),
    "arterial": (3, "Abdomen arterial 3.0 Br40", "Liver late arterial"),
    "portal": (4, "Abdomen PV 3.0 Br40", "Liver portal venous"),
    "delayed": (5, "Abdomen delayed 3.0 Br40", "Liver delayed"),
}
#: The single-series CT study: one portal-venous series.
_CT_SINGLE_SERIES = (3, "Abdomen PV 3.0 Br40", "Liver portal venous")


def write_liver_ct_study(phantom: LiverPhantom, out_dir: str | Path, seed: int | None = None) -> Path:
    """Write a CT phantom with ground truth beside it; returns ``out_dir``.

    A single-phase phantom (channel ``"ct"``) becomes one portal-venous series;
    a multi-phase one a series per phase, acquired at its time after the
    injection (the unenhanced one before it, without ``ContrastBolusAgent``).
    The truth SEG lies on the portal-venous series.
    """
    if phantom.modality != "CT":
        raise PhantomWriteError(f"write_liver_ct_study needs a CT phantom, got {phantom.modality}")
    seed = phantom.seed if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    single = phantom.channels == ("ct",)
    base = _patient_and_study(phantom, seed, "CT abdomen portal venous (phantom)" if single
                              else "CT liver multiphase (phantom)")
    times = dict(zip(phantom.channels, phantom.channel_times_s))
    # The portal-venous series (or the last phase) is acquired 5 minutes into the study.
    last = times["ct"] if single else times.get("portal", max(times.values()))
    injection = _STUDY_START + timedelta(seconds=300.0 - float(last))
    series: dict[str, dict[str, object]] = {}
    for index, channel in enumerate(phantom.channels):
        number, description, protocol = _CT_SINGLE_SERIES if single else _CT_SERIES[channel]
        scan = injection + timedelta(seconds=float(times[channel]) if channel != "pre" else -120.0)
        key = "series-ct" if single else f"series-ct-{channel}"
        ds = _ct_template(base, phantom, _uid(seed, key), number, description, protocol, scan)
        if channel != "pre":
            _contrast(ds, CONTRAST_AGENT_CT, injection, 100.0)
        stored = np.clip(np.rint(phantom.images[index] - CT_RESCALE_INTERCEPT), 0, 4095).astype("<u2")
        folder = out / f"{number:02d}_{description.replace(' ', '_')}"
        paths = _instances(ds, phantom, stored, folder, seed, key)
        series[channel] = {"series_instance_uid": ds.SeriesInstanceUID, "series_number": number,
                           "series_description": description, "folder": folder.name, "n_instances": len(paths)}
    reference = "ct" if single else phantom.reference_channel
    _write_truth(phantom, out, seed, series, reference, injection_time=_tm(injection))
    log.info("wrote liver CT phantom study", extra={"series": len(series), "lesions": len(phantom.lesions)})
    return out


def _ct_template(base: Dataset, phantom: LiverPhantom, series_uid: str, number: int, description: str,
                 protocol: str, scan: datetime) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ProtocolName = protocol
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = scan.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(scan)
    ds.AcquisitionNumber = 1
    ds.KVP = "120"
    ds.XRayTubeCurrent = 220
    ds.ExposureTime = 500
    ds.ConvolutionKernel = "Br40"
    ds.ReconstructionDiameter = f"{phantom.labels.shape[2] * phantom.spacing[2]:g}"
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.SpacingBetweenSlices = f"{phantom.spacing[0]:g}"
    _geometry(ds, phantom)
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.RescaleIntercept = f"{CT_RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "60", "400"
    return ds


# --------------------------------------------------------------------------- ground truth


def _write_truth(phantom: LiverPhantom, out: Path, seed: int, series: dict[str, dict[str, object]],
                 reference: str, injection_time: str) -> None:
    truth_dir = out / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(truth_dir / "labels.npz", labels=phantom.labels, lesion_labels=phantom.lesion_labels,
                        spacing=np.array(phantom.spacing), motion_mm=phantom.motion_mm,
                        channels=np.array(phantom.channels))
    origin = np.array(slice_origin(phantom, 0))
    lesions = []
    for lesion in phantom.lesions:
        entry = asdict(lesion)
        entry["kind"] = lesion.kind.name.lower()
        entry["kind_index"] = int(lesion.kind)
        entry["malignant"] = lesion.kind.malignant
        cz, cy, cx = lesion.centre_zyx_mm
        entry["centre_lps_mm"] = [float(origin[0] + cx), float(origin[1] + cy), float(origin[2] + cz)]
        lesions.append(entry)
    reference_series = series[reference]
    seg_path = truth_dir / "truth-seg.dcm"
    _write_truth_seg(out / str(reference_series["folder"]), phantom, seg_path, reference_series)
    truth = {
        "description": "pacsnode liver phantom (simulated; research use only)",
        "seed": seed,
        "modality": phantom.modality,
        "classes": list(LIVER_CLASSES),
        "axes": "arrays (z, y, x) on the reference series' grid, z ascending with ImagePositionPatient; "
                "centre_zyx_mm from the centre of voxel [0, 0, 0]",
        "spacing_mm": list(phantom.spacing),
        "shape": list(phantom.labels.shape),
        "reference_channel": reference,
        "channels": list(phantom.channels),
        "channel_times_after_injection_s": [None if math.isnan(t) else round(float(t), 2)
                                            for t in phantom.channel_times_s],
        "contrast_bolus_start_time": injection_time,
        "motion_mm_zyx": {c: [round(float(v), 4) for v in m] for c, m in zip(phantom.channels, phantom.motion_mm)},
        "motion_convention": "anatomy in channel c sits at reference position + motion_mm[c] (z, y, x)",
        "liver_volume_ml": float(np.count_nonzero(phantom.labels > 0) * np.prod(phantom.spacing) / 1000.0),
        "tumour_volume_ml": float(np.count_nonzero(phantom.labels == 2) * np.prod(phantom.spacing) / 1000.0),
        "lesions": lesions,
        "clinical": phantom.clinical,
        "series": series,
        "truth_seg": {"file": "ground_truth/truth-seg.dcm", "segments": ["Liver", "Liver tumours"]
                      + [f"Liver lesion {lesion.index}" for lesion in phantom.lesions]},
    }
    (truth_dir / "truth.json").write_text(json.dumps(truth, indent=2))


def _write_truth_seg(folder: Path, phantom: LiverPhantom, path: Path, reference_series: dict[str, object]) -> None:
    """The ground truth as a DICOM SEG on the reference series (liver, all tumours, one segment per lesion)."""
    from pydicom import dcmread

    from dicom_io.identity import AlgorithmInfo
    from dicom_io.seg import SegmentationWriter, liver_segment, tumour_segment

    sources = [dcmread(p) for p in sorted(folder.glob("IM_*.dcm"))]
    position = reference_series.get("temporal_position")
    if position is not None:
        sources = [ds for ds in sources if int(ds.TemporalPositionIdentifier) == int(position)]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    masks = {liver_segment(): phantom.labels > 0}
    if phantom.lesions:
        masks[tumour_segment()] = phantom.labels == 2
        for lesion in phantom.lesions:
            masks[tumour_segment(lesion.index)] = phantom.lesion_labels == lesion.index
    algorithm = AlgorithmInfo(name="pacsnode liver phantom", version="1",
                              parameters={"seed": str(phantom.seed), "truth": "simulated ground truth"})
    seg = SegmentationWriter().write(sources, masks, algorithm, _TRUTH_SEG_SERIES_NUMBER,
                                     "Ground truth (phantom)", content_label="GROUND_TRUTH",
                                     content_description="Simulated ground truth; research use only")
    seg.save_as(path, enforce_file_format=True)
