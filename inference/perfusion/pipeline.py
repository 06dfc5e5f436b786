"""The ``perfusion`` pipeline: a DSC-MRI series in, perfusion maps, lesion masks and a report out.

DSC series → ΔR2* (automatic baseline and brain mask) → automatic AIF (with
VOF scaling) → deconvolution (oSVD by default; cSVD, sSVD) → CBF, CBV, MTT,
Tmax → Tmax > 6 s hypoperfusion, Tmax > 10 s, rCBF < 30 % core, volumes,
mismatch and the DEFUSE 3 decision → Parametric Maps, a SEG, a TID 1500 SR
(volumes, mismatch, the DEFUSE 3 decision as a coded yes/no with its limits,
the AIF's voxels and summary) and colour summary images for any viewer.
Research use only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io.errors import DicomIOError
from dicom_io.identity import AlgorithmInfo
from dicom_io.pmap import MapParameter, ParametricMapWriter
from dicom_io.reader import read_dynamic_series
from dicom_io.secondary_capture import SummaryImageWriter
from dicom_io.seg import SegmentationWriter, core_segment, hypoperfusion_segment
from dicom_io.sr import (
    AIF_QUALITY,
    ARTERIAL_INPUT_FUNCTION,
    DEFUSE3_CORE_LIMIT,
    DEFUSE3_MISMATCH_LIMIT,
    DEFUSE3_RATIO_LIMIT,
    DEFUSE3_TARGET_MISMATCH,
    MILLILITRE,
    NO_UNITS,
    PEAK_DELTA_R2STAR,
    PER_SECOND,
    RATIO,
    SECOND,
    TIME_OF_PEAK_CONCENTRATION,
    VOF_SCALING_FACTOR,
    VOXELS,
    VOXELS_AVERAGED,
    CodedFinding,
    Group,
    ImageFindings,
    ImageRegionFindings,
    MeasurementReportWriter,
    ScalarMeasurement,
    SegmentFindings,
    VolumeMeasurement,
    hypoperfusion_intensity_ratio,
    mismatch_ratio,
    mismatch_volume,
    yes_no,
)
from dicom_io.volume import DynamicVolume
from inference.base import Pipeline, PipelineInputError, SeriesInput, StudyInput
from inference.perfusion.aif import ArterialInputFunction, select_aif
from inference.perfusion.deconvolution import PerfusionMaps, deconvolve
from inference.perfusion.lesions import (
    Defuse3Criteria,
    LesionReport,
    LesionThresholds,
    segment_lesions,
)
from inference.perfusion.physiology import DEFAULT_HAEMATOCRIT
from inference.perfusion.signal import DeltaR2Star, signal_to_delta_r2star
from inference.perfusion.stnet import STNetError, STNetPredictor

log = logging.getLogger("pacsnode.perfusion")

METHODS = {"osvd": "oSVD", "csvd": "cSVD", "ssvd": "sSVD", "stnet": "ST-Net"}
#: The committed ST-Net-like weights; a site points ``stnet_weights`` at its own.
DEFAULT_STNET_WEIGHTS = Path(__file__).parent / "weights" / "stnet-v2.json"
MIN_TIME_POINTS = 10

# Output series numbers: deterministic, so a radiologist finds them in the same place every time.
SERIES = {"CBF": 9001, "CBV": 9002, "MTT": 9003, "Tmax": 9004, "SEG": 9010, "SR": 9011,
          "summary_tmax": 9020, "summary_cbf": 9021, "summary_lesions": 9022}


def choose_dsc_series(study: StudyInput) -> SeriesInput:
    """The study's DSC series: the MR series with the most instances (a perfusion run has hundreds)."""
    candidates = [s for s in study.series if (s.modality or "MR").upper() == "MR" and s.paths]
    if not candidates:
        raise PipelineInputError("the study has no MR series; a DSC perfusion series is needed")
    return max(candidates, key=lambda s: len(s.paths))


def read_dsc(series: SeriesInput) -> DynamicVolume:
    try:
        volume = read_dynamic_series(series.paths)
    except DicomIOError as exc:
        raise PipelineInputError(f"the DSC series cannot be read as a time series: {exc}") from exc
    if volume.n_times < MIN_TIME_POINTS:
        raise PipelineInputError(
            f"series {series.description or series.series_uid!r} has {volume.n_times} time points; "
            f"DSC perfusion needs at least {MIN_TIME_POINTS}")
    return volume


def _first_frame_datasets(volume: DynamicVolume, series: SeriesInput) -> list[Dataset]:
    """The source images of the first time point in slice order, for the writers to reference."""
    wanted = [ref.sop_instance_uid for ref in volume.source_refs[0]]
    by_uid: dict[str, Dataset] = {}
    for path in series.paths:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        if str(header.SOPInstanceUID) in wanted:
            by_uid[str(header.SOPInstanceUID)] = dcmread(path)
    return [by_uid[uid] for uid in wanted]


def _stnet_maps(delta_r2: np.ndarray, aif: ArterialInputFunction, mask: np.ndarray, times: np.ndarray,
                tr_s: float, relaxivity: float | None, weights: Path) -> PerfusionMaps:
    """CBF, CBV, MTT, Tmax from the ST-Net-like model, in the same form as deconvolution's maps."""
    try:
        predictor = STNetPredictor.load(weights)
    except STNetError as exc:
        raise PipelineInputError(f"ST-Net weights cannot be used: {exc}") from exc
    out = predictor.predict(delta_r2, aif.curve, mask, times,
                            tissue_to_artery_relaxivity=None if relaxivity is None else float(relaxivity))
    return PerfusionMaps(cbf=out["cbf"], cbv=out["cbv"], mtt=out["mtt"], tmax=out["tmax"], mask=mask,
                         method="ST-Net", threshold=None, oi_limit=None, svd_threshold=None, tr_s=tr_s,
                         haematocrit=DEFAULT_HAEMATOCRIT,
                         tissue_to_artery_relaxivity=float(relaxivity or 1.0), aif=aif)


@dataclass(frozen=True)
class PerfusionSettings:
    """The pipeline options that decide the numbers: method, lesion thresholds, DEFUSE 3 criteria, calibration."""

    method_key: str = "osvd"
    thresholds: LesionThresholds = LesionThresholds()
    criteria: Defuse3Criteria = Defuse3Criteria()
    #: κ_tissue/κ_artery of a site calibration; None: CBF and CBV are relative (SVD) or the training's (ST-Net).
    tissue_to_artery_relaxivity: float | None = None
    stnet_weights: Path = DEFAULT_STNET_WEIGHTS

    @property
    def method(self) -> str:
        """The method's display name (oSVD, cSVD, sSVD, ST-Net)."""
        return METHODS[self.method_key]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PerfusionSettings:
        """Settings from route options, refusing an unknown method."""
        method_key = str(options.get("method", "osvd")).lower()
        if method_key not in METHODS:
            raise PipelineInputError(
                f"perfusion method {method_key!r} is not available; choose one of {sorted(METHODS)}")
        relaxivity = options.get("tissue_to_artery_relaxivity")
        return cls(
            method_key=method_key,
            thresholds=LesionThresholds(
                tmax_hypoperfusion_s=float(options.get("tmax_threshold_s", 6.0)),
                tmax_severe_s=float(options.get("tmax_severe_s", 10.0)),
                core_relative_cbf=float(options.get("core_relative_cbf", 0.30)),
            ),
            criteria=Defuse3Criteria(
                max_core_ml=float(options.get("defuse3_max_core_ml", 70.0)),
                min_mismatch_ratio=float(options.get("defuse3_min_ratio", 1.8)),
                min_mismatch_ml=float(options.get("defuse3_min_mismatch_ml", 15.0)),
            ),
            tissue_to_artery_relaxivity=None if relaxivity is None else float(relaxivity),
            stnet_weights=Path(options.get("stnet_weights", DEFAULT_STNET_WEIGHTS)),
        )


@dataclass(frozen=True)
class PerfusionAnalysis:
    """Everything the pipeline computes from a DSC series before it writes DICOM."""

    delta: DeltaR2Star
    aif: ArterialInputFunction
    maps: PerfusionMaps
    lesions: LesionReport
    settings: PerfusionSettings


def compute_maps(delta: DeltaR2Star, aif: ArterialInputFunction, times_s: np.ndarray,
                 settings: PerfusionSettings) -> PerfusionMaps:
    """CBF, CBV, MTT and Tmax by the settings' method (SVD deconvolution or ST-Net)."""
    times = np.asarray(times_s, float)
    tr_s = float(np.median(np.diff(times)))
    # Tissue and blood relax differently; without a site calibration CBF/CBV are relative.
    relaxivity = settings.tissue_to_artery_relaxivity
    if settings.method == "ST-Net":
        return _stnet_maps(delta.values, aif, delta.mask, times, tr_s, relaxivity, settings.stnet_weights)
    return deconvolve(delta.values, aif.curve, tr_s, method=settings.method, mask=delta.mask,  # type: ignore[arg-type]
                      aif_info=aif, tissue_to_artery_relaxivity=float(relaxivity or 1.0))


def assess_lesions(maps: PerfusionMaps, spacing_mm: Sequence[float], settings: PerfusionSettings) -> LesionReport:
    """Hypoperfusion, core, mismatch and the DEFUSE 3 decision from the maps, with the settings' thresholds."""
    return segment_lesions(maps.cbf, maps.tmax, maps.mask, spacing_mm,
                           thresholds=settings.thresholds, criteria=settings.criteria)


def analyse_dsc(signal: np.ndarray, times_s: np.ndarray, echo_time_s: float | None,
                spacing_mm: Sequence[float], settings: PerfusionSettings) -> PerfusionAnalysis:
    """A DSC series ``(t, z, y, x)`` to maps and lesions: ΔR2*, automatic AIF, maps, lesion assessment.

    This is the pipeline's whole computation; :mod:`inference.perfusion.evaluation`
    calls it too, so that what is evaluated is what the pipeline reports.
    """
    times = np.asarray(times_s, float)
    delta = signal_to_delta_r2star(signal, echo_time_s)
    aif = select_aif(delta.values, times, delta.mask, baseline=delta.bolus.baseline)
    maps = compute_maps(delta, aif, times, settings)
    lesions = assess_lesions(maps, spacing_mm, settings)
    return PerfusionAnalysis(delta=delta, aif=aif, maps=maps, lesions=lesions, settings=settings)


def defuse3_rule(criteria: Defuse3Criteria) -> str:
    """The DEFUSE 3 criteria as applied, in ASCII (it goes into LT/UT text of the SEG and SR)."""
    core = "<=" if criteria.core_limit_inclusive else "<"
    ratio = ">=" if criteria.ratio_limit_inclusive else ">"
    volume = ">=" if criteria.volume_limit_inclusive else ">"
    return (f"core {core} {criteria.max_core_ml:g} ml, mismatch ratio {ratio} {criteria.min_mismatch_ratio:g}, "
            f"mismatch volume {volume} {criteria.min_mismatch_ml:g} ml")


def report_groups(lesions: LesionReport, aif: ArterialInputFunction) -> list[Group]:
    """The SR's measurement groups: the two lesion segments, the AIF's voxels, the DEFUSE 3 decision.

    Segment 1 (Tmax above threshold) carries its volume, the mismatch volume
    and ratio and the hypoperfusion intensity ratio; segment 2 (core) its
    volume. The AIF is reported as the voxels it was averaged over (points on
    their source slices) with its voxel count, time of peak (s from the first
    frame), peak ΔR2* (1/s), VOF scaling factor and quality score. The DEFUSE 3
    group answers yes/no and states the three limits applied (the comparison
    operators are in the algorithm parameters).
    """
    criteria = lesions.criteria
    return [
        SegmentFindings(1, measurements=[
            VolumeMeasurement(lesions.hypoperfusion_ml),
            mismatch_volume(max(0.0, lesions.mismatch_ml)),
            *([mismatch_ratio(lesions.mismatch_ratio)] if np.isfinite(lesions.mismatch_ratio) else []),
            *([hypoperfusion_intensity_ratio(lesions.hypoperfusion_intensity_ratio)]
              if np.isfinite(lesions.hypoperfusion_intensity_ratio) else []),
        ]),
        SegmentFindings(2, measurements=[VolumeMeasurement(lesions.core_ml)]),
        ImageRegionFindings(
            "Arterial input function", [tuple(int(i) for i in v) for v in aif.voxels], ARTERIAL_INPUT_FUNCTION,
            measurements=[
                ScalarMeasurement(VOXELS_AVERAGED, len(aif.voxels), VOXELS),
                ScalarMeasurement(TIME_OF_PEAK_CONCENTRATION, aif.time_to_peak_s, SECOND),
                ScalarMeasurement(PEAK_DELTA_R2STAR, aif.peak, PER_SECOND),
                ScalarMeasurement(VOF_SCALING_FACTOR, aif.vof_scale, NO_UNITS),
                ScalarMeasurement(AIF_QUALITY, aif.quality, NO_UNITS),
            ],
            finding_site=codes.SCT.CerebralArtery,
        ),
        ImageFindings(
            "DEFUSE 3 target mismatch",
            measurements=[
                ScalarMeasurement(DEFUSE3_CORE_LIMIT, criteria.max_core_ml, MILLILITRE),
                ScalarMeasurement(DEFUSE3_RATIO_LIMIT, criteria.min_mismatch_ratio, RATIO),
                ScalarMeasurement(DEFUSE3_MISMATCH_LIMIT, criteria.min_mismatch_ml, MILLILITRE),
            ],
            findings=[CodedFinding(yes_no(lesions.defuse3_eligible), name=DEFUSE3_TARGET_MISMATCH)],
        ),
    ]


class PerfusionPipeline(Pipeline):
    """DSC-MRI brain perfusion for acute stroke (SVD deconvolution or the ST-Net-like model)."""

    name = "perfusion"
    queue = "cpu"
    version = "0.1"
    summary = "DSC-MRI perfusion: CBF/CBV/MTT/Tmax maps, Tmax>6 s and core masks, volumes, mismatch (research use)"

    def run(self, study: StudyInput, options: Mapping[str, Any]) -> Sequence[Dataset]:
        settings = PerfusionSettings.from_options(options)
        method, thresholds = settings.method, settings.thresholds
        series = choose_dsc_series(study)
        volume = read_dsc(series)
        analysis = analyse_dsc(volume.array, volume.times_s, volume.echo_time_s, volume.spacing, settings)
        aif, maps, lesions = analysis.aif, analysis.maps, analysis.lesions
        log.info("perfusion computed", extra={
            "method": method, "hypoperfusion_ml": round(lesions.hypoperfusion_ml, 1),
            "core_ml": round(lesions.core_ml, 1), "defuse3": lesions.defuse3_eligible,
            "aif_voxels": len(aif.voxels)})

        source = _first_frame_datasets(volume, series)
        algorithm = AlgorithmInfo(
            name=f"pacsnode perfusion {method}", version=self.version,
            parameters={"method": method, "Tmax threshold": f"{thresholds.tmax_hypoperfusion_s:g} s",
                        "core": f"rCBF < {thresholds.core_relative_cbf:.0%}",
                        "AIF voxels": str(len(aif.voxels)),
                        "DEFUSE 3": defuse3_rule(settings.criteria)},
        )
        filled = maps.filled(0.0)
        outputs: list[Dataset] = []
        pmap_writer = ParametricMapWriter()
        for parameter, values in ((MapParameter.CBF, filled.cbf), (MapParameter.CBV, filled.cbv),
                                  (MapParameter.MTT, filled.mtt), (MapParameter.TMAX, filled.tmax)):
            outputs.append(pmap_writer.write(
                source, values.astype(np.float32), parameter, algorithm, SERIES[parameter.short],
                f"{parameter.short} ({method}) research use"))

        hypo_spec = hypoperfusion_segment(thresholds.tmax_hypoperfusion_s)
        core_spec = core_segment(f"rCBF < {thresholds.core_relative_cbf:.0%}")
        masks = {hypo_spec: lesions.hypoperfusion_mask, core_spec: lesions.core_mask}
        seg = SegmentationWriter().write(source, masks, algorithm, SERIES["SEG"],
                                         "Perfusion lesions research use", content_label="PERFUSION")
        outputs.append(seg)
        outputs.append(MeasurementReportWriter().write(
            source, seg, report_groups(lesions, aif), algorithm, SERIES["SR"], "Perfusion report research use"))

        summary = SummaryImageWriter()
        outputs += summary.write_colour_map(source, filled.tmax, MapParameter.TMAX, algorithm,
                                            SERIES["summary_tmax"])
        outputs += summary.write_colour_map(source, filled.cbf, MapParameter.CBF, algorithm,
                                            SERIES["summary_cbf"])
        outputs += summary.write_mask_overlay(source, masks, algorithm, SERIES["summary_lesions"])
        return outputs
