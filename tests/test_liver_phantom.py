"""The liver phantom: anatomy and truth agree, lesion kinds enhance as described, DICOM is real.

Most tests use a coarse grid (5 x 4 x 4 mm) so a case costs well under a
second; the DICOM tests check one slice of every series and the truth SEG
with dciodvfy and read the series back with dicom_io.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from pydicom import dcmread

from dicom_io.reader import read_dynamic_series, read_series
from inference.liver.phantom import (
    DCE_PHASES,
    MR_SEQUENCES,
    LesionKind,
    PhantomParameterError,
    simulate_liver_ct,
    simulate_liver_mr,
)
from inference.liver.phantom_clinical import sample_clinical
from inference.liver.phantom_dicom import (
    MR_PIXEL_SCALE,
    write_liver_ct_study,
    write_liver_dce_study,
)
from node.clinical import ClinicalData
from tests.dicom_validate import assert_valid_dicom

COARSE = {"shape": (32, 96, 96), "spacing": (5.0, 4.0, 4.0)}


def _core(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` whose six neighbours are in it too (away from partial volume)."""
    core = mask.copy()
    for axis in range(3):
        for step in (-1, 1):
            core &= np.roll(mask, step, axis=axis)
    return core


def _feret_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing[::-1])
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeFeretDiameterOn()
    stats.Execute(image)
    return stats.GetFeretDiameter(1) if stats.HasLabel(1) else 0.0


# --------------------------------------------------------------------------- simulation


def test_same_seed_gives_the_same_case_and_seeds_differ() -> None:
    a = simulate_liver_mr(11, **COARSE)
    b = simulate_liver_mr(11, **COARSE)
    c = simulate_liver_mr(12, **COARSE)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.lesions == b.lesions and a.clinical == b.clinical
    assert np.array_equal(a.motion_mm, b.motion_mm)
    assert not np.array_equal(a.labels, c.labels)
    assert a.images.shape == (4, 32, 96, 96) and a.images.dtype == np.float32
    assert a.channels == DCE_PHASES and a.spacing == (5.0, 4.0, 4.0)


def test_labels_agree_with_the_lesion_truth() -> None:
    seen = 0
    for seed, kinds in ((1, [LesionKind.HCC, LesionKind.CYST, LesionKind.METASTASIS]),
                        (2, [LesionKind.HEMANGIOMA, LesionKind.FNH]), (3, [LesionKind.OTHER_MALIGNANT] * 3)):
        p = simulate_liver_mr(seed, lesion_kinds=kinds)
        voxel_ml = float(np.prod(p.spacing)) / 1000
        assert p.labels.dtype == np.uint8 and set(np.unique(p.labels)) <= {0, 1, 2}
        assert p.lesion_labels.dtype == np.int16
        assert np.array_equal(p.labels == 2, p.lesion_labels > 0), "tumour label and lesion labels disagree"
        assert sorted(np.unique(p.lesion_labels[p.lesion_labels > 0])) == [les.index for les in p.lesions]
        assert [les.kind for les in p.lesions] == kinds[: len(p.lesions)] and len(p.lesions) >= len(kinds) - 1
        for lesion in p.lesions:
            mask = p.lesion_labels == lesion.index
            assert lesion.volume_ml == pytest.approx(mask.sum() * voxel_ml, rel=1e-6)
            centre = np.argwhere(mask).mean(axis=0) * np.array(p.spacing)
            assert np.allclose(lesion.centre_zyx_mm, centre, atol=0.01)
            assert lesion.longest_diameter_mm == pytest.approx(_feret_mm(mask, p.spacing), abs=0.01)
            assert lesion.longest_axial_diameter_mm <= lesion.longest_diameter_mm + 1e-6
            # Designed 5-45 mm; on the label map within a voxel diagonal (lesions may be clipped by the liver edge).
            assert 5.0 <= lesion.design_diameter_mm <= 45.0
            assert lesion.longest_diameter_mm <= lesion.design_diameter_mm * 1.45 + np.linalg.norm(p.spacing)
            # Tumour lies inside the liver: every lesion voxel has liver (label 1 or 2) on most sides.
            grown = mask | np.roll(mask, 1, 2) | np.roll(mask, -1, 2)
            assert np.mean(p.labels[grown] > 0) > 0.8
            seen += 1
        for i, a in enumerate(p.lesions):
            for b in p.lesions[i + 1:]:
                assert np.linalg.norm(np.subtract(a.centre_zyx_mm, b.centre_zyx_mm)) > 5.0
    assert seen >= 7


def test_default_cases_vary_in_lesion_count_and_cover_the_liver_from_dome_to_tip() -> None:
    counts = []
    for seed in range(10):
        p = simulate_liver_mr(seed, channels=("portal",), **COARSE)
        counts.append(len(p.lesions))
        per_slice = (p.labels > 0).sum(axis=(1, 2))
        assert per_slice[0] == 0 and per_slice[-1] == 0, "the stack must start below the tip and end above the dome"
        liver_ml = (p.labels > 0).sum() * np.prod(p.spacing) / 1000
        assert 700 < liver_ml < 2600
    assert min(counts) == 0 and max(counts) >= 3 and max(counts) <= 5


def _ratios(kind: LesionKind, seeds: range) -> dict[str, float]:
    """Mean over cases of (lesion core signal / liver parenchyma signal) per MR channel."""
    ratios: dict[str, list[float]] = {c: [] for c in MR_SEQUENCES}
    for seed in seeds:
        p = simulate_liver_mr(seed, channels=MR_SEQUENCES, lesion_kinds=[kind], motion_mm=0.0, snr=100.0,
                              bias_field=False)
        if not p.lesions:
            continue
        lesion = p.lesion_labels == 1
        core = _core(lesion) if _core(lesion).sum() >= 3 else lesion
        liver = _core(p.labels == 1)
        for c in MR_SEQUENCES:
            image = p.channel(c)
            ratios[c].append(float(image[core].mean() / np.median(image[liver])))
    assert ratios["portal"], f"no {kind.name} lesion was placed"
    return {c: float(np.mean(v)) for c, v in ratios.items()}


def test_each_lesion_kind_enhances_as_textbooks_describe() -> None:
    seeds = range(40, 43)
    hcc = _ratios(LesionKind.HCC, seeds)
    assert hcc["arterial"] > 1.0 and hcc["portal"] < 0.95 and hcc["arterial"] / hcc["portal"] > 1.2  # APHE + washout
    cyst = _ratios(LesionKind.CYST, seeds)
    assert cyst["t2"] > 2.0 and cyst["portal"] < 0.7 * cyst["pre"] + 0.05  # fluid: T2 bright, no enhancement
    hem = _ratios(LesionKind.HEMANGIOMA, seeds)
    assert hem["t2"] > 2.0 and hem["delayed"] > hem["arterial"] and hem["delayed"] > 1.0  # centripetal fill-in
    fnh = _ratios(LesionKind.FNH, seeds)
    assert fnh["arterial"] > 1.25 and 0.75 < fnh["portal"] < 1.2 and fnh["t2"] < 1.8  # APHE, iso later
    benign = _ratios(LesionKind.OTHER_BENIGN, seeds)
    assert all(0.7 < benign[c] < 1.45 for c in DCE_PHASES)  # near-iso
    met = _ratios(LesionKind.METASTASIS, seeds)
    assert met["dwi"] > 1.4 and met["portal"] < 0.95 and met["t2"] > 1.3  # restricted diffusion, hypo-enhancing
    cca = _ratios(LesionKind.OTHER_MALIGNANT, seeds)
    assert cca["delayed"] > cca["portal"] and cca["delayed"] > 0.9  # progressive delayed enhancement


def test_motion_is_recorded_and_present_in_the_images() -> None:
    kwargs = {"channels": ("portal", "delayed"), "snr": 200.0, "bias_field": False, **COARSE}
    moved = simulate_liver_mr(5, motion_mm=10.0, **kwargs)
    still = simulate_liver_mr(5, motion_mm=0.0, **kwargs)
    assert np.array_equal(moved.labels, still.labels)
    assert np.all(moved.motion_mm[0] == 0) and np.all(still.motion_mm == 0)
    shift = moved.motion_mm[1]
    assert np.abs(shift).max() > 1.0 and np.all(np.abs(shift) <= 10.0 * np.array([1.0, 0.5, 0.2]) + 1e-9)
    # The delayed image with motion matches the motion-free one best when displaced by the recorded shift.
    a, b = moved.channel("delayed"), still.channel("delayed")
    best, best_err = None, np.inf
    for dz in range(-2, 3):
        for dy in range(-2, 3):
            err = float(np.mean((a[3:-3, 3:-3, 3:-3] - np.roll(b, (dz, dy), (0, 1))[3:-3, 3:-3, 3:-3]) ** 2))
            if err < best_err:
                best, best_err = (dz, dy), err
    expected = np.rint(shift[:2] / np.array(moved.spacing[:2]))
    assert np.all(np.abs(np.array(best) - expected) <= 1), (best, shift)


def test_mr_and_ct_intensities_are_plausible() -> None:
    mr = simulate_liver_mr(21, channels=MR_SEQUENCES, **COARSE)
    assert np.all(np.isfinite(mr.images)) and mr.images.min() >= 0
    liver = _core(mr.labels == 1)
    level = {c: float(np.median(mr.channel(c)[liver])) for c in MR_SEQUENCES}
    assert 50 < level["pre"] < 160 and level["portal"] > 1.2 * level["pre"] and level["arterial"] < level["portal"]
    assert np.percentile(mr.channel("arterial"), 99.95) > 2.0 * level["arterial"], "no bright aorta in the arterial phase"
    ct = simulate_liver_ct(21, **COARSE)
    hu = ct.images[0]
    assert ct.modality == "CT" and ct.channels == ("ct",)
    assert 95 < np.median(hu[_core(ct.labels == 1)]) < 140
    assert -1024 <= hu.min() and np.mean(hu[:, :4, :4]) < -950, "air outside the body"
    assert 8 < np.std(hu[:, :4, :4]) < 25, "noise 10-20 HU"
    assert np.percentile(hu, 99.9) > 350, "no bone"
    assert np.mean((hu > -130) & (hu < -70)) > 0.03, "no fat"
    cyst = simulate_liver_ct(44, lesion_kinds=[LesionKind.CYST])
    core = _core(cyst.lesion_labels == 1)
    if core.sum() >= 3:
        assert -15 < np.mean(cyst.images[0][core]) < 35


def test_multiphase_ct_is_the_same_case_seen_at_each_phase_with_motion_between_them() -> None:
    kinds = [LesionKind.FNH, LesionKind.HCC]
    single = simulate_liver_ct(45, lesion_kinds=kinds, **COARSE)
    multi = simulate_liver_ct(45, lesion_kinds=kinds, phases=("pre", "arterial", "portal"), **COARSE)
    still = simulate_liver_ct(45, lesion_kinds=kinds, phases=("pre", "arterial", "portal"), motion_mm=0.0, **COARSE)
    assert multi.channels == ("pre", "arterial", "portal") and multi.modality == "CT"
    assert np.array_equal(single.labels, multi.labels) and single.lesions == multi.lesions
    assert multi.channel_index("ct") == 2, "a single-series CT model reads the portal-venous image"
    assert np.all(multi.motion_mm[2] == 0) and np.abs(multi.motion_mm[:2]).max() > 0.5
    assert np.all(still.motion_mm == 0)
    # The portal image is the single-phase CT up to noise (10-20 HU each).
    assert np.median(np.abs(still.channel("portal") - single.images[0])) < 25
    liver = _core(still.labels == 1)
    level = {c: float(np.median(still.channel(c)[liver])) for c in still.channels}
    assert 40 < level["pre"] < 75 < level["portal"], level  # unenhanced liver ~55 HU, enhanced ~110 HU
    assert np.percentile(still.channel("arterial"), 99.9) > np.percentile(still.channel("portal"), 99.9), \
        "the aorta is brightest in the arterial phase"
    # FNH: arterial hyper-enhancement that the portal phase hides (iso), HCC: arterial enhancement, portal washout.
    for lesion in still.lesions:
        core = _core(still.lesion_labels == lesion.index)
        if core.sum() < 3:
            continue
        contrast = {c: float(np.median(still.channel(c)[core])) - level[c] for c in ("arterial", "portal")}
        if lesion.kind is LesionKind.FNH:
            assert contrast["arterial"] > 20 and abs(contrast["portal"]) < contrast["arterial"] / 2, contrast
        else:
            assert contrast["arterial"] > contrast["portal"], contrast
    with pytest.raises(PhantomParameterError, match="CT phases"):
        simulate_liver_ct(45, phases=("arterial", "t2"), **COARSE)


def test_clinical_data_follow_the_lesion_kind() -> None:
    rng = np.random.default_rng(0)

    def draw(kind: LesionKind, cirrhosis: bool, key: str) -> np.ndarray:
        return np.array([sample_clinical(rng, [kind], cirrhosis)[key] for _ in range(300)], dtype=float)

    assert np.median(draw(LesionKind.HCC, True, "afp_ng_ml")) > 5 * np.median(draw(LesionKind.CYST, False, "afp_ng_ml"))
    assert np.mean(draw(LesionKind.METASTASIS, False, "other_cancer_history")) > 0.7
    assert np.median(draw(LesionKind.OTHER_MALIGNANT, False, "ca19_9_u_ml")) > 3 * np.median(
        draw(LesionKind.HEMANGIOMA, False, "ca19_9_u_ml"))
    assert np.mean(draw(LesionKind.FNH, False, "age_years")) < np.mean(draw(LesionKind.HCC, True, "age_years"))
    # Overlap: some HCCs have a normal AFP (< 20 ng/ml).
    assert 0.1 < np.mean(draw(LesionKind.HCC, True, "afp_ng_ml") < 20) < 0.6
    case = simulate_liver_mr(3, channels=("portal",), **COARSE)
    assert {"age_years", "sex", "cirrhosis", "afp_ng_ml", "cea_ng_ml", "ca125_u_ml", "ca19_9_u_ml", "psa_ng_ml",
            "ferritin_ng_ml", "albumin_g_l", "bilirubin_umol_l", "prothrombin_time_s", "hepatic_encephalopathy",
            "ascites"} <= set(case.clinical)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(PhantomParameterError, match="channels"):
        simulate_liver_mr(0, channels=("pre", "t1"), **COARSE)
    with pytest.raises(PhantomParameterError, match="field of view"):
        simulate_liver_mr(0, shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(PhantomParameterError, match="n_lesions"):
        simulate_liver_ct(0, n_lesions=2, lesion_kinds=[LesionKind.CYST], **COARSE)


# --------------------------------------------------------------------------- DICOM


@pytest.fixture(scope="module")
def mr_study(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    phantom = simulate_liver_mr(8, channels=MR_SEQUENCES, lesion_kinds=[LesionKind.HCC, LesionKind.CYST], **COARSE)
    out = write_liver_dce_study(phantom, tmp_path_factory.mktemp("mr"))
    return phantom, out, json.loads((out / "ground_truth" / "truth.json").read_text())


def test_mr_series_are_valid_dicom_and_read_back_on_the_phantom_grid(mr_study: tuple) -> None:
    phantom, out, truth = mr_study
    series = truth["series"]
    assert set(series) == set(MR_SEQUENCES)
    headers = {}
    for channel, info in series.items():
        files = sorted((out / info["folder"]).glob("*.dcm"))
        assert len(files) == phantom.labels.shape[0]
        assert_valid_dicom(files[len(files) // 2], expected_iod="MRImage")
        volume = read_series(files)
        assert volume.shape == phantom.labels.shape and volume.spacing == phantom.spacing
        assert np.allclose(volume.direction, np.eye(3))
        expected = np.clip(np.rint(phantom.channel(channel) * MR_PIXEL_SCALE), 0, 65535)
        assert np.array_equal(volume.array, expected)
        headers[channel] = dcmread(files[0], stop_before_pixels=True)
    assert len({h.StudyInstanceUID for h in headers.values()}) == 1
    assert len({h.FrameOfReferenceUID for h in headers.values()}) == 1
    assert len({h.SeriesInstanceUID for h in headers.values()}) == 6
    assert len({int(h.SeriesNumber) for h in headers.values()}) == 6
    assert headers["pre"].PatientName == "PHANTOM^LIVER" and headers["pre"].PatientID == "LIVER-8"
    assert "ContrastBolusAgent" not in headers["pre"]
    assert all(headers[p].ContrastBolusAgent and headers[p].ContrastBolusStartTime for p in DCE_PHASES[1:])
    times = [float(headers[p].AcquisitionTime) for p in DCE_PHASES]
    assert times == sorted(times) and len(set(times)) == 4
    for phase in DCE_PHASES:
        assert phase in headers[phase].SeriesDescription
    assert float(headers["dwi"].DiffusionBValue) == 800.0
    assert float(headers["t2"].EchoTime) > 60 and float(headers["arterial"].RepetitionTime) < 10


def test_truth_files_and_seg_match_the_phantom(mr_study: tuple) -> None:
    phantom, out, truth = mr_study
    labels = np.load(out / "ground_truth" / "labels.npz")
    assert np.array_equal(labels["labels"], phantom.labels)
    assert np.array_equal(labels["lesion_labels"], phantom.lesion_labels)
    assert [les["kind"] for les in truth["lesions"]] == [les.kind.name.lower() for les in phantom.lesions]
    assert truth["motion_mm_zyx"]["portal"] == [0.0, 0.0, 0.0] and truth["seed"] == 8
    seg_path = out / "ground_truth" / "truth-seg.dcm"
    assert_valid_dicom(seg_path, expected_iod="Segmentation")
    seg = dcmread(seg_path)
    labels_in_seg = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels_in_seg == ["Liver", "Liver tumours"] + [f"Liver lesion {les.index}" for les in phantom.lesions]
    reference = dcmread(sorted((out / truth["series"]["portal"]["folder"]).glob("*.dcm"))[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.SeriesInstanceUID
    # Liver frames: one per slice, their pixels sum to the liver voxel count.
    frames = seg.pixel_array.reshape(-1, *phantom.labels.shape[1:])
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for f in seg.PerFrameFunctionalGroupsSequence]
    liver_voxels = sum(int(frames[i].sum()) for i, n in enumerate(numbers) if n == 1)
    assert liver_voxels == int((phantom.labels > 0).sum())


def test_4d_series_carries_the_phases_as_temporal_positions(tmp_path: Path) -> None:
    phantom = simulate_liver_mr(9, **COARSE)
    out = write_liver_dce_study(phantom, tmp_path, as_4d=True)
    folders = [p for p in out.iterdir() if p.is_dir() and p.name != "ground_truth"]
    assert len(folders) == 1
    files = sorted(folders[0].glob("*.dcm"))
    assert_valid_dicom(files[0], expected_iod="MRImage")
    dynamic = read_dynamic_series(files)
    assert dynamic.shape == (4, *phantom.labels.shape)
    assert np.all(np.diff(dynamic.times_s) > 0)
    assert np.array_equal(dynamic.array[2], np.clip(np.rint(phantom.channel("portal") * MR_PIXEL_SCALE), 0, 65535))
    header = dcmread(files[-1], stop_before_pixels=True)
    assert int(header.NumberOfTemporalPositions) == 4 and int(header.TemporalPositionIdentifier) == 4
    assert "TriggerTime" not in header  # only allowed with cardiac/pulse gating
    assert_valid_dicom(out / "ground_truth" / "truth-seg.dcm", expected_iod="Segmentation")


def test_ct_study_reads_back_in_hounsfield_units(tmp_path: Path) -> None:
    phantom = simulate_liver_ct(10, **COARSE)
    out = write_liver_ct_study(phantom, tmp_path)
    truth = json.loads((out / "ground_truth" / "truth.json").read_text())
    files = sorted((out / truth["series"]["ct"]["folder"]).glob("*.dcm"))
    assert_valid_dicom(files[0], expected_iod="CTImage")
    volume = read_series(files)
    assert volume.shape == phantom.labels.shape and volume.spacing == phantom.spacing
    assert np.abs(volume.array - np.clip(phantom.images[0], -1024, 3071)).max() <= 0.5 + 1e-4
    assert dcmread(files[0], stop_before_pixels=True).PatientID == "LIVER-10"
    assert_valid_dicom(out / "ground_truth" / "truth-seg.dcm", expected_iod="Segmentation")


def test_multiphase_ct_study_has_a_series_per_phase_timed_after_the_injection(tmp_path: Path) -> None:
    phantom = simulate_liver_ct(11, phases=("pre", "arterial", "portal"), **COARSE)
    out = write_liver_ct_study(phantom, tmp_path)
    truth = json.loads((out / "ground_truth" / "truth.json").read_text())
    assert truth["reference_channel"] == "portal" and set(truth["series"]) == {"pre", "arterial", "portal"}
    headers = {}
    for phase, series in truth["series"].items():
        files = sorted((out / series["folder"]).glob("*.dcm"))
        assert_valid_dicom(files[0], expected_iod="CTImage")
        headers[phase] = dcmread(files[0], stop_before_pixels=True)
        volume = read_series(files)
        k = phantom.channel_index(phase)
        assert np.abs(volume.array - np.clip(phantom.images[k], -1024, 3071)).max() <= 0.5 + 1e-4
    assert "ContrastBolusAgent" not in headers["pre"] and "ContrastBolusAgent" in headers["arterial"]
    assert len({str(h.SeriesInstanceUID) for h in headers.values()}) == 3
    assert len({str(h.FrameOfReferenceUID) for h in headers.values()}) == 1
    assert headers["pre"].AcquisitionTime < headers["arterial"].AcquisitionTime < headers["portal"].AcquisitionTime
    bolus = headers["arterial"].ContrastBolusStartTime
    assert bolus == headers["portal"].ContrastBolusStartTime and headers["pre"].AcquisitionTime < bolus
    assert_valid_dicom(out / "ground_truth" / "truth-seg.dcm", expected_iod="Segmentation")


def test_cli_writes_phantom_studies(tmp_path: Path) -> None:
    from node.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["synth", "liver-dce", str(tmp_path / "dce"), "--seed", "2", "--as-4d",
                                  "--shape", "32,96,96", "--spacing", "5,4,4"])
    assert result.exit_code == 0, result.output
    assert "ground truth" in result.output and (tmp_path / "dce" / "ground_truth" / "truth-seg.dcm").exists()
    assert len(list((tmp_path / "dce").glob("*/IM_*.dcm"))) == 4 * 32
    result = runner.invoke(main, ["synth", "liver-ct", str(tmp_path / "ct"), "--seed", "2",
                                  "--shape", "32,96,96", "--spacing", "5,4,4"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ct").glob("*/IM_*.dcm"))) == 32
    result = runner.invoke(main, ["synth", "liver-ct", str(tmp_path / "ct2"), "--seed", "2", "--phases",
                                  "arterial,portal", "--shape", "32,96,96", "--spacing", "5,4,4"])
    assert result.exit_code == 0, result.output
    assert "arterial" in result.output and len(list((tmp_path / "ct2").glob("*/IM_*.dcm"))) == 2 * 32
    result = runner.invoke(main, ["synth", "liver-ct", str(tmp_path / "bad-phase"), "--phases", "arterial,hbp"])
    assert result.exit_code != 0 and "CT phases" in result.output
    result = runner.invoke(main, ["synth", "liver-ct", str(tmp_path / "bad"), "--shape", "8,16,16"])
    assert result.exit_code != 0 and "field of view" in result.output
    result = runner.invoke(main, ["synth", "liver-lesions", str(tmp_path / "lesions"), "--seed", "4",
                                  "--kinds", "hcc,fnh", "--shape", "16,64,80", "--spacing", "6,4,4"])
    assert result.exit_code == 0, result.output
    assert len({p.parent for p in (tmp_path / "lesions").glob("*/IM_*.dcm")}) == 6  # T2, DWI, four T1 phases
    truth = json.loads((tmp_path / "lesions" / "ground_truth" / "truth.json").read_text())
    assert {lesion["kind"] for lesion in truth["lesions"]} <= {"hcc", "fnh"}
    assert "pacsnode clinical put" in result.output
    ClinicalData.parse(json.loads((tmp_path / "lesions" / "ground_truth" / "clinical.json").read_text()))
    result = runner.invoke(main, ["synth", "liver-lesions", str(tmp_path / "bad-kind"), "--kinds", "adenoma"])
    assert result.exit_code != 0 and "unknown lesion kind" in result.output
