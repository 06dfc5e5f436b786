"""The liver-segmentation pipeline: phase identification, registration, the phantom studies offline, and
end to end through a node into Orthanc."""

from __future__ import annotations

import io
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.reader import read_dynamic_series, read_series
from dicom_io.seg_reader import read_segmentation
from dicom_io.study import group_study
from inference.base import PipelineInputError, SeriesInput, StudyInput
from inference.liver.ensemble import read_model_manifest
from inference.liver.phantom import simulate_liver_ct, simulate_liver_mr
from inference.liver.phantom_dicom import write_liver_ct_study, write_liver_dce_study
from inference.liver.phases import (
    CT_MULTIPHASE_PHASES,
    PhaseIdentificationError,
    PhaseRules,
    identify_liver_study,
)
from inference.liver.pipeline import (
    FINER_MODELS,
    SERIES,
    LiverOptions,
    LiverSegmentationPipeline,
    model_for_grid,
    prepare_study,
)
from inference.liver.postprocess import MIN_LESION_VOLUME_ML
from inference.liver.weights import default_weights
from tests.dicom_factories import make_ct_datasets, make_mr_datasets, write_series
from tests.dicom_validate import assert_valid_dicom

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MR_WEIGHTS = default_weights("mr")
MR_FINE_WEIGHTS = default_weights("mr-fine")
CT_WEIGHTS = default_weights("ct")
CT_MULTIPHASE_WEIGHTS = default_weights("ct-multiphase")
CT_MULTIPHASE_FINE_WEIGHTS = default_weights("ct-multiphase-fine")
CT_FINE_WEIGHTS = default_weights("ct-fine")


def _tm(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}{int(minutes):02d}{secs:09.6f}"


class _Study:
    """Writes small header-realistic series of one study, as the phase rules read them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.study_uid = generate_uid()
        self.frame_of_reference = generate_uid()
        self.series: list[SeriesInput] = []

    def add(self, description: str, *, modality: str = "MR", acquisition_s: float | None = None,
            bolus_start_s: float | None = None, agent: str | None = None, n_times: int = 1,
            time_step_s: float = 40.0, slices: int = 3) -> SeriesInput:
        number = len(self.series) + 1
        make = make_ct_datasets if modality == "CT" else make_mr_datasets
        datasets = make((slices, 8, 8), n_times=n_times, series_description=description, series_number=number,
                        study_uid=self.study_uid, frame_of_reference_uid=self.frame_of_reference)
        for k, ds in enumerate(datasets):
            t = k // slices
            if acquisition_s is not None:
                ds.AcquisitionTime = _tm(acquisition_s + t * time_step_s)
            elif "AcquisitionTime" in ds:
                del ds.AcquisitionTime
            if bolus_start_s is not None:
                ds.ContrastBolusStartTime = _tm(bolus_start_s)
            if agent is not None:
                ds.ContrastBolusAgent = agent
        paths = write_series(datasets, self.folder / f"S{number}")
        series = SeriesInput(str(datasets[0].SeriesInstanceUID), modality, description, number, tuple(paths))
        self.series.append(series)
        return series


def _phase_descriptions(found) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {phase: source.series.description for phase, source in found.phases.items()}


def test_phases_from_series_descriptions_ignore_other_sequences(tmp_path):
    study = _Study(tmp_path)
    study.add("T2 HASTE tra")
    study.add("DWI b50 b800")
    study.add("t1_vibe_fs_tra_delayed 3min", acquisition_s=36300)
    study.add("T1 VIBE arterial", acquisition_s=36030)
    study.add("T1 VIBE pre", acquisition_s=35900)
    study.add("T1 VIBE portal venous", acquisition_s=36070)
    study.add("T1 VIBE art SUB")  # a subtraction: never a phase
    found = identify_liver_study(study.series)
    assert found.modality == "MR" and not found.is_4d
    assert _phase_descriptions(found) == {"pre": "T1 VIBE pre", "arterial": "T1 VIBE arterial",
                                          "portal": "T1 VIBE portal venous",
                                          "delayed": "t1_vibe_fs_tra_delayed 3min"}


def test_phases_from_contrast_timing_when_descriptions_say_nothing(tmp_path):
    study = _Study(tmp_path)
    bolus = 36000.0
    # Written out of order, all with the same description: only the timing tells them apart.
    study.add("t1_vibe_dyn", acquisition_s=bolus + 190, bolus_start_s=bolus, agent="Gadovist")
    study.add("t1_vibe_dyn", acquisition_s=bolus + 30, bolus_start_s=bolus, agent="Gadovist")
    study.add("t1_vibe_dyn", acquisition_s=bolus - 60)
    study.add("t1_vibe_dyn", acquisition_s=bolus + 75, bolus_start_s=bolus, agent="Gadovist")
    found = identify_liver_study(study.series)
    numbers = {phase: source.series.number for phase, source in found.phases.items()}
    assert numbers == {"pre": 3, "arterial": 2, "portal": 4, "delayed": 1}
    assert "after ContrastBolusStartTime" in found.phases["arterial"].reason


def test_phases_from_acquisition_order_without_contrast_attributes(tmp_path):
    study = _Study(tmp_path)
    for number, offset in enumerate((240, 0, 100, 40)):
        study.add(f"Dyn {number}", acquisition_s=36000 + offset)
    found = identify_liver_study(study.series, PhaseRules(t1=r"(?i)dyn"))
    order = [found.phases[p].series.description for p in ("pre", "arterial", "portal", "delayed")]
    assert order == ["Dyn 1", "Dyn 3", "Dyn 2", "Dyn 0"]


def test_one_4d_series_gives_every_phase_as_a_time_point(tmp_path):
    study = _Study(tmp_path)
    study.add("T2 HASTE")
    dce = study.add("t1_vibe_dynamic 4D", n_times=4)
    found = identify_liver_study(study.series)
    assert found.is_4d
    assert {p: (s.series.series_uid, s.time_point) for p, s in found.phases.items()} == {
        "pre": (dce.series_uid, 0), "arterial": (dce.series_uid, 1), "portal": (dce.series_uid, 2),
        "delayed": (dce.series_uid, 3)}


def test_site_rules_from_options_recognise_local_names(tmp_path):
    study = _Study(tmp_path)
    for name in ("Leber nativ", "Leber HAP", "Leber PVP", "Leber Spaet"):
        study.add(name)
    with pytest.raises(PhaseIdentificationError, match="no delayed phase"):
        identify_liver_study(study.series)
    rules = PhaseRules.from_options({"phase_regex": {"delayed": "(?i)sp(ae|ä)t"}})
    assert identify_liver_study(study.series, rules).phases["delayed"].series.description == "Leber Spaet"
    with pytest.raises(PipelineInputError, match="unknown phase"):
        PhaseRules.from_options({"phase_regex": {"hepatobiliary": "hbp"}})
    with pytest.raises(PipelineInputError, match="not a valid regular expression"):
        PhaseRules.from_options({"phase_regex": {"arterial": "(unclosed"}})


def test_a_study_without_an_arterial_phase_is_refused_naming_it(tmp_path):
    study = _Study(tmp_path)
    study.add("T1 VIBE pre")
    study.add("T1 VIBE portal")
    study.add("T1 VIBE delayed")
    study.add("T2 HASTE")
    with pytest.raises(PhaseIdentificationError) as raised:
        identify_liver_study(study.series)
    message = str(raised.value)
    assert message.startswith("no arterial phase found among series:")
    assert "'T2 HASTE' #4" in message and "'T1 VIBE portal' #2" in message
    assert "phase_regex" in message


def test_ct_study_takes_the_portal_venous_series(tmp_path):
    study = _Study(tmp_path)
    study.add("Topogram", modality="CT", slices=1)
    study.add("Abdomen arterial 1.5mm", modality="CT", slices=4)
    portal = study.add("Abdomen PV 3mm", modality="CT", slices=3)
    found = identify_liver_study(study.series)
    assert found.modality == "CT" and found.phases["ct"].series == portal
    with pytest.raises(PhaseIdentificationError, match="no CT image series"):
        identify_liver_study(study.series[:0] + [study.add("T1 VIBE pre")], modality="ct")


def test_multiphase_ct_phases_are_found_by_description_or_by_contrast_timing(tmp_path):
    study = _Study(tmp_path / "described")
    study.add("Topogram", modality="CT", slices=1)
    study.add("Abdomen native 5mm", modality="CT", acquisition_s=35900)
    study.add("Abdomen arterial 1.5mm", modality="CT", acquisition_s=36035)
    study.add("Abdomen PV 3mm", modality="CT", acquisition_s=36070)
    study.add("Dose Report", modality="CT", slices=1)
    found = identify_liver_study(study.series, phases=CT_MULTIPHASE_PHASES)
    assert found.modality == "CT"
    assert _phase_descriptions(found) == {"arterial": "Abdomen arterial 1.5mm", "portal": "Abdomen PV 3mm"}
    timed = _Study(tmp_path / "timed")
    bolus = 36000.0
    for delay in (70, -90, 35):  # one description for all: only ContrastBolusStartTime tells them apart
        timed.add("Abdomen 3.0 Br40", modality="CT", acquisition_s=bolus + delay,
                  bolus_start_s=None if delay < 0 else bolus, agent=None if delay < 0 else "Iohexol")
    found = identify_liver_study(timed.series, phases=("pre", *CT_MULTIPHASE_PHASES))
    assert {phase: source.series.number for phase, source in found.phases.items()} == \
        {"pre": 2, "arterial": 3, "portal": 1}
    with pytest.raises(PhaseIdentificationError, match="no arterial phase"):
        identify_liver_study([timed.series[0]], phases=CT_MULTIPHASE_PHASES)


# --------------------------------------------------------------------------- the pipeline on phantom studies



def _needs(weights: Path):  # type: ignore[no-untyped-def]
    return pytest.mark.skipif(not weights.is_file(), reason=f"{weights.name} is not in this checkout: the committed "
                                                            "liver weights are needed to run the model")


def _study_input(folder: Path) -> StudyInput:
    """What the node hands the pipeline: every image series of the study (the ground truth stays behind)."""
    paths = [p for p in folder.rglob("*") if p.is_file() and "ground_truth" not in p.parts]
    summaries = list(group_study(paths).values())
    return StudyInput(str(summaries[0].study_uid), tuple(
        SeriesInput(s.series_uid, s.modality, s.series_description, s.series_number, s.paths) for s in summaries))


def _series_described(study: StudyInput, pattern: str) -> SeriesInput:
    [series] = [s for s in study.series if re.search(pattern, s.description or "", re.IGNORECASE)]
    return series


@pytest.fixture(scope="module")
def dce_phantom():  # type: ignore[no-untyped-def]
    return simulate_liver_mr(5, n_lesions=2, motion_mm=4.0)


@pytest.fixture(scope="module")
def dce_folder(dce_phantom, tmp_path_factory) -> Path:
    return Path(write_liver_dce_study(dce_phantom, tmp_path_factory.mktemp("dce"), seed=5))


@pytest.fixture(scope="module")
def dce_results(dce_folder):  # type: ignore[no-untyped-def]
    return LiverSegmentationPipeline().run(_study_input(dce_folder), {})


def _by_class(outputs, sop_class: str):  # type: ignore[no-untyped-def]
    return [ds for ds in outputs if ds.SOPClassUID == sop_class]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _sr_volumes(sr) -> dict[int, float]:  # type: ignore[no-untyped-def]
    """Segment number → the volume (ml) the SR reports for it, read back with highdicom."""
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    volumes = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        [number] = group.referenced_segment.referenced_segment_numbers
        [volume] = [m for m in group.get_measurements() if m.name.meaning == "Volume"]
        assert volume.unit.value == "ml"
        volumes[number] = float(volume.value)
    return volumes


def _check_seg_and_sr(outputs, reference_series: SeriesInput, truth_labels: np.ndarray,  # type: ignore[no-untyped-def]
                      overlay: bool = True) -> dict[str, float]:
    """dciodvfy-clean SEG and SR, liver Dice against the truth, SR volumes = SEG voxels × voxel volume."""
    [seg] = _by_class(outputs, SEG_CLASS)
    [sr] = _by_class(outputs, SR_CLASS)
    assert int(seg.SeriesNumber) == SERIES["SEG"] and int(sr.SeriesNumber) == SERIES["SR"]
    assert_valid_dicom(seg, expected_iod="Segmentation")
    assert_valid_dicom(sr)
    assert bool(_by_class(outputs, SC_CLASS)) == overlay, "the colour overlay series is missing or unwanted"
    reference = read_series(reference_series.paths)
    on_grid = read_segmentation(seg, reference)
    assert on_grid.placed_by == "source instances"
    [liver_number] = on_grid.find(label="^Liver$")
    liver_dice = _dice(on_grid.masks[liver_number], truth_labels > 0)
    assert liver_dice >= 0.9, f"liver Dice {liver_dice:.3f}"
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    reported = _sr_volumes(sr)
    assert set(reported) == set(on_grid.masks)
    for number, mask in on_grid.masks.items():
        assert reported[number] == pytest.approx(np.count_nonzero(mask) * voxel_ml, rel=1e-9), number
    return {"liver_dice": liver_dice}


@_needs(MR_WEIGHTS)
def test_dce_phases_as_separate_series_give_a_valid_seg_and_sr_matching_the_truth(dce_results, dce_folder,
                                                                               dce_phantom):
    study = _study_input(dce_folder)
    _check_seg_and_sr(dce_results, _series_described(study, "portal"), dce_phantom.labels)
    [sr] = _by_class(dce_results, SR_CLASS)
    assert "research" in str(sr.SeriesDescription).lower()


@_needs(MR_WEIGHTS)
def test_sr_reports_tumour_burden_and_each_lesion_diameter(dce_results):
    [sr] = _by_class(dce_results, SR_CLASS)
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    names: dict[str, list[float]] = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            names.setdefault(measurement.name.meaning, []).append(float(measurement.value))
    [seg] = _by_class(dce_results, SEG_CLASS)
    lesions = [s for s in seg.SegmentSequence if str(s.SegmentLabel).startswith("Liver lesion")]
    assert len(names.get("Long axis", [])) == len(lesions)
    [burden] = names["Liver tumour burden"]
    volumes = _sr_volumes(sr)
    assert str(seg.SegmentSequence[1].SegmentLabel) == "Liver tumours"
    assert burden == pytest.approx(100 * volumes[2] / volumes[1], rel=1e-6)
    assert volumes[2] == pytest.approx(sum(volumes[s.SegmentNumber] for s in lesions), rel=1e-6)


@_needs(MR_WEIGHTS)
def test_a_4d_dce_series_gives_the_same_kind_of_result(tmp_path):
    # A smaller field of view than the other phantom's (the model must not depend on one), and faster.
    phantom = simulate_liver_mr(8, shape=(28, 96, 112), n_lesions=2, motion_mm=4.0)
    folder = Path(write_liver_dce_study(phantom, tmp_path / "dce4d", as_4d=True, seed=8))
    study = _study_input(folder)
    [dynamic] = [s for s in study.series if s.modality == "MR"]
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False})
    [seg] = _by_class(outputs, SEG_CLASS)
    assert_valid_dicom(seg, expected_iod="Segmentation")
    # The SEG lies on the portal time point of the 4D series.
    portal = read_dynamic_series(dynamic.paths).frame(2)
    on_grid = read_segmentation(seg, portal)
    [liver_number] = on_grid.find(label="^Liver$")
    assert _dice(on_grid.masks[liver_number], phantom.labels > 0) >= 0.9


@_needs(CT_WEIGHTS)
def test_ct_study_gives_a_valid_seg_and_sr_matching_the_truth(tmp_path):
    phantom = simulate_liver_ct(6, n_lesions=2)
    folder = Path(write_liver_ct_study(phantom, tmp_path / "ct", seed=6))
    study = _study_input(folder)
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False, "modality": "ct"})
    [ct] = [s for s in study.series if s.modality == "CT"]
    _check_seg_and_sr(outputs, ct, phantom.labels, overlay=False)


@pytest.fixture(scope="module")
def multiphase_ct_phantom():  # type: ignore[no-untyped-def]
    return simulate_liver_ct(6, n_lesions=2, phases=CT_MULTIPHASE_PHASES, motion_mm=5.0)


@pytest.fixture(scope="module")
def multiphase_ct_folder(multiphase_ct_phantom, tmp_path_factory) -> Path:
    return Path(write_liver_ct_study(multiphase_ct_phantom, tmp_path_factory.mktemp("ct-multiphase"), seed=6))


def test_a_multiphase_ct_goes_to_the_multiphase_model_with_its_phases_registered(multiphase_ct_phantom,
                                                                                 multiphase_ct_folder):
    study = _study_input(multiphase_ct_folder)
    prepared = prepare_study(study, LiverOptions.from_options({}))
    assert prepared.modality == "CT" and prepared.weights == CT_MULTIPHASE_WEIGHTS
    assert prepared.names == ("arterial", "portal") and prepared.reference_name == "portal"
    assert prepared.images.shape == (2, *multiphase_ct_phantom.labels.shape)
    truth = multiphase_ct_phantom.motion_mm[0] - multiphase_ct_phantom.motion_mm[1]
    found = np.asarray(prepared.registrations["arterial"].shift_zyx_mm)
    assert np.linalg.norm(truth) > 1.0 and np.abs(found - truth).max() < 1.0, (found, truth)
    # The site chooses the portal-venous model, or insists on the multi-phase one.
    single = prepare_study(study, LiverOptions.from_options({"ct_method": "single"}))
    assert single.weights == CT_WEIGHTS and single.names == ("ct",) and not single.registrations
    assert single.inputs.phases["ct"].series.description == "Abdomen PV 3.0 Br40"
    with pytest.raises(PipelineInputError, match="ct_method 'both'"):
        LiverOptions.from_options({"ct_method": "both"})


_CT_FINE = (2.0, 1.5, 1.5), ((2.05, 1.52, 1.52), (1.25, 0.7, 0.7), (2.5, 0.8, 0.8), (0.625, 0.5, 0.5)), (
    (4.0, 3.0, 3.0), (2.0, 1.5, 2.0), (2.0, 1.6, 1.6), (3.0, 0.7, 0.7), (5.0, 0.7, 0.7))
_MR_FINE = (3.0, 1.5, 1.5), ((3.5, 1.52, 1.52), (2.0, 0.75, 0.75), (4.0, 1.5, 1.5), (3.0, 2.0, 2.0),
                             (4.0, 2.0, 2.0)), (
    (4.0, 3.0, 3.0), (3.0, 2.2, 2.2), (4.0, 2.5, 2.5), (4.5, 1.5, 1.5), (5.0, 0.8, 0.8), (3.0, 1.5, 3.0))


@pytest.mark.parametrize(("name", "grids"), [("ct-multiphase", _CT_FINE), ("ct", _CT_FINE), ("mr", _MR_FINE)])
def test_a_study_of_fine_pixels_and_slices_goes_to_the_fine_grid_model(name, grids):
    fine_grid, finer_studies, coarser_studies = grids
    [finer] = FINER_MODELS[name]
    fine, coarse = default_weights(finer), default_weights(name)
    assert tuple(read_model_manifest(fine)["input"]["spacing_zyx_mm"]) == fine_grid
    assert read_model_manifest(fine)["input"]["channels"] == read_model_manifest(coarse)["input"]["channels"]
    for spacing in (fine_grid, *finer_studies):
        assert model_for_grid(name, spacing) == fine, spacing
    # pixels or slices coarser than the model's slack allows (CT 1.5 mm pixels and slices 1.25 times the
    # grid's, MR 2 mm pixels and 4 mm slices): brought up to the fine grid the study would be misread
    for spacing in coarser_studies:
        assert model_for_grid(name, spacing) == coarse, spacing


@_needs(MR_FINE_WEIGHTS)
def test_a_fine_dce_study_is_segmented_by_the_fine_grid_4d_model_unless_the_route_names_one(tmp_path):
    # 120 x 288 x 336 mm at 3 x 1.5 x 1.5 mm: the 4D test's field of view above, on the fine model's grid
    phantom = simulate_liver_mr(8, shape=(40, 192, 224), spacing=(3.0, 1.5, 1.5), n_lesions=2)
    study = _study_input(Path(write_liver_dce_study(phantom, tmp_path / "fine", seed=8)))
    assert prepare_study(study, LiverOptions.from_options({})).weights == MR_FINE_WEIGHTS
    assert prepare_study(study, LiverOptions.from_options({"weights": str(MR_WEIGHTS)})).weights == MR_WEIGHTS
    # the single-phase baseline keeps its coarse grid: liver-seg-mr-baseline-v10 reads the spleen as liver
    baseline = default_weights("mr-baseline")
    assert prepare_study(study, LiverOptions.from_options({"method": "baseline"})).weights == baseline
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False})
    _check_seg_and_sr(outputs, _series_described(study, "portal"), phantom.labels, overlay=False)
    [seg] = _by_class(outputs, SEG_CLASS)
    parameters = str(seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert f"model={MR_FINE_WEIGHTS.stem}," in parameters, parameters


@_needs(CT_MULTIPHASE_FINE_WEIGHTS)
def test_a_fine_multiphase_ct_is_segmented_by_the_fine_grid_model_unless_the_site_names_one(tmp_path):
    from inference.liver.training import phantom_grid

    shape, spacing = phantom_grid((2.0, 1.5, 1.5))
    phantom = simulate_liver_ct(6, n_lesions=2, phases=CT_MULTIPHASE_PHASES, shape=shape, spacing=spacing)
    study = _study_input(Path(write_liver_ct_study(phantom, tmp_path / "fine", seed=6)))
    assert prepare_study(study, LiverOptions.from_options({})).weights == CT_MULTIPHASE_FINE_WEIGHTS
    assert prepare_study(study, LiverOptions.from_options(
        {"ct_weights": str(CT_MULTIPHASE_WEIGHTS)})).weights == CT_MULTIPHASE_WEIGHTS
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False})
    _check_seg_and_sr(outputs, _series_described(study, " PV "), phantom.labels, overlay=False)
    [seg] = _by_class(outputs, SEG_CLASS)
    used = {p for segment in seg.SegmentSequence
            for algorithm in segment.SegmentationAlgorithmIdentificationSequence
            for p in str(algorithm.get("AlgorithmParameters", "")).split(",")}
    assert f"model={CT_MULTIPHASE_FINE_WEIGHTS.stem}" in used, used


@_needs(CT_FINE_WEIGHTS)
def test_a_fine_single_phase_ct_is_segmented_by_the_portal_venous_cascade_unless_the_site_names_a_model(tmp_path):
    from inference.liver.training import phantom_grid

    shape, spacing = phantom_grid((2.0, 1.5, 1.5))
    phantom = simulate_liver_ct(6, n_lesions=2, shape=shape, spacing=spacing)
    study = _study_input(Path(write_liver_ct_study(phantom, tmp_path / "fine", seed=6)))
    assert prepare_study(study, LiverOptions.from_options({})).weights == CT_FINE_WEIGHTS
    assert prepare_study(study, LiverOptions.from_options({"ct_weights": str(CT_WEIGHTS)})).weights == CT_WEIGHTS
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False})
    _check_seg_and_sr(outputs, _series_described(study, " PV "), phantom.labels, overlay=False)
    [seg] = _by_class(outputs, SEG_CLASS)
    parameters = str(seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert f"model={CT_FINE_WEIGHTS.stem}," in parameters, parameters


def test_a_single_phase_ct_goes_to_the_portal_venous_model_unless_the_multiphase_one_is_required(tmp_path):
    folder = Path(write_liver_ct_study(simulate_liver_ct(6, n_lesions=2, shape=(24, 96, 112)), tmp_path, seed=6))
    study = _study_input(folder)
    prepared = prepare_study(study, LiverOptions.from_options({}))
    assert prepared.weights == CT_WEIGHTS and prepared.names == ("ct",)
    with pytest.raises(PhaseIdentificationError, match="no arterial phase found among series: 'Abdomen PV"):
        prepare_study(study, LiverOptions.from_options({"ct_method": "multiphase"}))


@_needs(CT_MULTIPHASE_WEIGHTS)
def test_multiphase_ct_study_gives_a_valid_seg_and_sr_on_the_portal_series(multiphase_ct_phantom,
                                                                           multiphase_ct_folder):
    study = _study_input(multiphase_ct_folder)
    outputs = LiverSegmentationPipeline().run(study, {"overlay": False})
    _check_seg_and_sr(outputs, _series_described(study, "PV"), multiphase_ct_phantom.labels, overlay=False)
    [seg] = _by_class(outputs, SEG_CLASS)
    parameters = str(seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    assert f"model={CT_MULTIPHASE_WEIGHTS.stem}," in parameters and "registration=arterial" in parameters, parameters


@pytest.mark.parametrize("as_4d", [False, True], ids=["separate-series", "4d-series"])
def test_the_pipeline_registers_every_phase_onto_the_portal_phase(dce_phantom, tmp_path, as_4d):
    folder = Path(write_liver_dce_study(dce_phantom, tmp_path / "dce", as_4d=as_4d, seed=5))
    prepared = prepare_study(_study_input(folder), LiverOptions.from_options({}))
    assert prepared.modality == "MR" and prepared.reference_name == "portal" and prepared.inputs.is_4d == as_4d
    assert prepared.images.shape == (4, *dce_phantom.labels.shape)
    portal = dce_phantom.channels.index("portal")
    assert set(prepared.registrations) == {"pre", "arterial", "delayed"}
    for name, result in prepared.registrations.items():
        truth = dce_phantom.motion_mm[dce_phantom.channels.index(name)] - dce_phantom.motion_mm[portal]
        assert np.all(np.abs(np.array(result.shift_zyx_mm) - truth) <= 0.5 * np.array(dce_phantom.spacing)), name
    # The aligned phases are the phantom's phases moved back by the true motion (up to noise and pixel scaling);
    # without registration they keep their motion.
    from inference.liver.training import align_channels

    truth = align_channels(dce_phantom.images, dce_phantom.motion_mm - dce_phantom.motion_mm[portal],
                           dce_phantom.spacing)
    unaligned = prepare_study(_study_input(folder), LiverOptions.from_options({"registration": "none"}))
    assert not unaligned.registrations
    liver = dce_phantom.labels > 0
    scale = float(prepared.images[prepared.names.index("portal")][liver].mean() / truth[portal][liver].mean())
    for name in prepared.registrations:
        k, j = prepared.names.index(name), dce_phantom.channels.index(name)
        aligned_error = np.abs(prepared.images[k] - scale * truth[j])[liver].mean()
        unaligned_error = np.abs(unaligned.images[k] - scale * truth[j])[liver].mean()
        assert aligned_error < 0.5 * unaligned_error, (name, aligned_error, unaligned_error)


def test_a_study_without_its_arterial_phase_fails_naming_it(dce_folder):
    study = _study_input(dce_folder)
    arterial = _series_described(study, "arterial")
    without = StudyInput(study.study_uid, tuple(s for s in study.series if s is not arterial))
    with pytest.raises(PipelineInputError, match="no arterial phase found among series"):
        LiverSegmentationPipeline().run(without, {})


def test_phases_that_cannot_be_aligned_fail_with_the_reason(dce_folder, tmp_path):
    """The arterial series as if from another examination: another frame of reference, far away."""
    study = _study_input(dce_folder)
    arterial = _series_described(study, "arterial")
    frame = generate_uid()
    moved = []
    for k, path in enumerate(arterial.paths):
        ds = dcmread(path)
        ds.FrameOfReferenceUID = frame
        ds.ImagePositionPatient = [float(v) + (900.0 if i == 2 else 0.0) for i, v in enumerate(ds.ImagePositionPatient)]
        moved.append(tmp_path / f"A{k:04d}.dcm")
        ds.save_as(moved[-1])
    series = tuple(SeriesInput(s.series_uid, s.modality, s.description, s.number, tuple(moved))
                   if s is arterial else s for s in study.series)
    with pytest.raises(PipelineInputError, match="cannot be aligned: .*arterial phase .*do not overlap"):
        LiverSegmentationPipeline().run(StudyInput(study.study_uid, series), {})


def test_a_shift_beyond_max_shift_mm_fails_with_the_reason(dce_folder, dce_phantom):
    portal = dce_phantom.channels.index("portal")
    largest = float(np.max(np.linalg.norm(dce_phantom.motion_mm - dce_phantom.motion_mm[portal], axis=1)))
    assert largest > 1.0
    with pytest.raises(PipelineInputError, match="more than max_shift_mm = 0.5 mm"):
        LiverSegmentationPipeline().run(_study_input(dce_folder), {"max_shift_mm": 0.5})


def test_unknown_options_values_are_refused(dce_folder):
    with pytest.raises(PipelineInputError, match="liver method 'magic'"):
        LiverSegmentationPipeline().run(_study_input(dce_folder), {"method": "magic"})
    with pytest.raises(PipelineInputError, match="registration 'affine'"):
        LiverSegmentationPipeline().run(_study_input(dce_folder), {"registration": "affine"})


@pytest.mark.e2e
@pytest.mark.parametrize("modality, folder_fixture, weights", [
    pytest.param("MR", "dce_folder", MR_WEIGHTS, id="dce-mr", marks=_needs(MR_WEIGHTS)),
    pytest.param("CT", "multiphase_ct_folder", CT_MULTIPHASE_WEIGHTS, id="ct-2-phase",
                 marks=_needs(CT_MULTIPHASE_WEIGHTS))])
def test_phantom_pushed_with_storescu_arrives_in_orthanc_as_seg_and_sr(tmp_path, request, modality, folder_fixture,
                                                                       weights):
    """A study of several series (DCE phases, or arterial + portal CT) sent in one association is
    segmented once, and the SEG drawn on its portal series reaches Orthanc with an SR of the same volumes."""
    from tests.node_harness import NodeProcess, wait_until
    from tests.orthanc_peer import OrthancPeer

    folder = request.getfixturevalue(folder_fixture)
    orthanc = OrthancPeer(tmp_path / "orthanc")
    route = {"name": "liver", "level": "study", "match": {"Modality": modality},
             "pipelines": ["liver-segmentation"], "destinations": ["PACS"], "options": {"overlay": False}}
    node = NodeProcess(tmp_path / "node", routes=[route], study={"stable_seconds": 2},
                       destinations={"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                              "port": orthanc.dicom_port}})
    node.start()
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and "ground_truth" not in p.parts)
        result = node.storescu(*files)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: node.status()["outbox"] and all(r["state"] == "sent" for r in node.status()["outbox"]),
                   timeout=400, interval=2, what="liver results in Orthanc")
        [study] = node.status()["studies"]
        [job] = study["jobs"]
        assert job["pipeline"] == "liver-segmentation" and job["state"] == "succeeded"
        arrived = {}
        for instance_id in orthanc.instances():
            ds = dcmread(io.BytesIO(orthanc.download(instance_id)))
            if ds.SOPClassUID in (SEG_CLASS, SR_CLASS):
                arrived[str(ds.SOPClassUID)] = ds
        assert set(arrived) == {SEG_CLASS, SR_CLASS}
        assert_valid_dicom(arrived[SEG_CLASS], expected_iod="Segmentation")
        assert_valid_dicom(arrived[SR_CLASS])
        algorithm = arrived[SEG_CLASS].SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert f"model={weights.stem}" in algorithm.AlgorithmParameters
        portal = read_series(_series_described(_study_input(folder), r"portal|\bPV\b").paths)
        on_grid = read_segmentation(arrived[SEG_CLASS], portal)
        voxel_ml = float(np.prod(portal.spacing)) / 1000.0
        reported = _sr_volumes(arrived[SR_CLASS])
        assert {n: pytest.approx(np.count_nonzero(m) * voxel_ml, rel=1e-9) for n, m in on_grid.masks.items()} \
            == reported
    finally:
        node.stop()
        orthanc.stop()


@_needs(MR_WEIGHTS)
def test_evaluate_command_compares_the_4d_model_with_the_baseline_on_held_out_phantoms():
    import json

    from click.testing import CliRunner

    from node.cli import main

    result = CliRunner().invoke(main, ["evaluate", "liver-seg", "--cases", "1", "--seed", "19", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["seeds"] == [19]
    models = report["models"]
    # the 4D model and the single-phase baseline, side by side
    assert {entry["model"] for entry in models.values()} == {MR_WEIGHTS.stem, default_weights("mr-baseline").stem}
    for entry in models.values():
        summary = entry["summary"]
        assert summary["cases"] == 1
        for cls in ("liver", "tumour"):
            for metric in ("dice", "iou", "precision", "recall"):
                assert 0.0 <= summary[cls][metric] <= 1.0
        assert summary["liver"]["dice"] >= 0.9
        assert summary["lesions"]["count"] >= summary["lesions"]["detected"] >= 0
        # every true lesion is counted under its kind exactly once
        by_kind = summary["lesions"]["by_kind"]
        assert sum(k["count"] for k in by_kind.values()) == summary["lesions"]["count"]
        assert sum(k["detected_ge_10mm"] for k in by_kind.values()) == round(
            summary["lesions"]["sensitivity_ge_10mm"] * summary["lesions"]["count_ge_10mm"])
    refused = CliRunner().invoke(main, ["evaluate", "liver-seg", "--cases", "1", "--seed", "1000"])
    assert refused.exit_code != 0 and "training" in refused.output


@_needs(CT_MULTIPHASE_WEIGHTS)
def test_evaluate_command_compares_the_multiphase_ct_model_with_the_portal_venous_one():
    import json

    from click.testing import CliRunner

    from inference.liver.comparison import format_comparison
    from node.cli import main

    result = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--cases", "1", "--seed", "18",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["modality"] == "CT" and report["seeds"] == [18]
    models = report["models"]
    assert {entry["model"] for entry in models.values()} == {CT_MULTIPHASE_WEIGHTS.stem, CT_WEIGHTS.stem}
    for entry in models.values():  # the same phantom for both: the same lesions to find
        assert entry["summary"]["lesions"]["count"] == models["portal-venous CT U-Net"]["summary"]["lesions"]["count"]
        assert entry["summary"]["liver"]["dice"] >= 0.9
        assert 0.0 <= entry["summary"]["tumour"]["dice_ceiling"] <= 1.0
        shown = entry["summary"]["tumour"]["dice_conspicuous"]
        assert shown is None or 0.0 <= shown <= 1.0
    assert "tumour dice_conspicuous" in format_comparison(report)
    assert report["min_lesion_ml"] == MIN_LESION_VOLUME_ML  # the pipeline's default, recorded with the figures
    # A route's larger minimum lesion volume, scored as such: every predicted lesion under it becomes liver.
    larger = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--cases", "1", "--seed", "18",
                                       "--no-baseline", "--min-lesion-ml", "1000", "--json"])
    assert larger.exit_code == 0, larger.output
    larger_report = json.loads(larger.output)
    assert larger_report["min_lesion_ml"] == 1000
    assert "lesions under 1000 ml made liver" in format_comparison(larger_report)
    scored = larger_report["models"]["multi-phase CT model"]
    assert [case["predicted_lesions"] for case in scored["cases"]] == [0]
    assert scored["summary"]["lesions"]["detected"] == 0
    assert scored["summary"]["liver"]["dice"] >= 0.9
    refused = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--min-lesion-ml", "-0.1"])
    assert refused.exit_code != 0 and "--min-lesion-ml" in refused.output


@_needs(CT_MULTIPHASE_WEIGHTS)
def test_evaluate_command_scores_models_on_phantoms_of_another_grid_with_further_models_beside_them():
    import json

    from click.testing import CliRunner

    from inference.liver.comparison import format_comparison
    from node.cli import main

    result = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--cases", "1", "--seed", "17",
                                       "--spacing", "8", "6", "6", "--compare", str(CT_WEIGHTS), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["phantom_spacing_mm"] == [8.0, 6.0, 6.0]
    assert list(report["models"]) == ["multi-phase CT model", "portal-venous CT U-Net", CT_WEIGHTS.stem]
    assert report["models"]["multi-phase CT model"]["model"] == CT_MULTIPHASE_WEIGHTS.stem  # coarse: v9's
    counts = {entry["summary"]["lesions"]["count"] for entry in report["models"].values()}
    assert len(counts) == 1  # one phantom, scored on its own grid, for all three
    assert report["models"][CT_WEIGHTS.stem]["summary"] == report["models"]["portal-venous CT U-Net"]["summary"]
    assert (f"(seeds 17–17, 8 × 6 × 6 mm voxels, lesions under {MIN_LESION_VOLUME_ML:g} ml made liver)"
            in format_comparison(report))
    refused = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--spacing", "0", "6", "6"])
    assert refused.exit_code != 0 and "three positive" in refused.output


@_needs(CT_MULTIPHASE_FINE_WEIGHTS)
@_needs(CT_FINE_WEIGHTS)
def test_evaluate_command_scores_the_models_the_pipeline_picks_for_the_grid_and_can_leave_the_baseline_out():
    import json

    from click.testing import CliRunner

    from node.cli import main

    result = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--cases", "1", "--seed", "17",
                                       "--spacing", "2", "1.5", "1.5", "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    # on a fine grid both are the pipeline's fine-grid choices: v15, and the portal-venous cascade
    assert models["multi-phase CT model"]["model"] == CT_MULTIPHASE_FINE_WEIGHTS.stem
    assert models["portal-venous CT U-Net"]["model"] == CT_FINE_WEIGHTS.stem
    assert all(entry["summary"]["liver"]["dice"] >= 0.9 for entry in models.values())
    result = CliRunner().invoke(main, ["evaluate", "liver-seg", "--modality", "ct", "--cases", "1", "--seed", "17",
                                       "--spacing", "8", "6", "6", "--no-baseline", "--model", str(CT_WEIGHTS),
                                       "--json"])
    assert result.exit_code == 0, result.output
    # no portal-venous column beside it, and a model given by --model is labelled by its version
    assert list(json.loads(result.output)["models"]) == [CT_WEIGHTS.stem]
    contradictory = CliRunner().invoke(main, ["evaluate", "liver-seg", "--no-baseline", "--baseline",
                                              str(CT_WEIGHTS)])
    assert contradictory.exit_code != 0 and "--no-baseline" in contradictory.output
