"""The perfusion pipeline on the DSC stroke phantom: offline, and end to end through the node into Orthanc."""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.sr import (
    AIF_QUALITY,
    DEFUSE3_CORE_LIMIT,
    DEFUSE3_MISMATCH_LIMIT,
    DEFUSE3_RATIO_LIMIT,
    DEFUSE3_TARGET_MISMATCH,
    PEAK_DELTA_R2STAR,
    TIME_OF_PEAK_CONCENTRATION,
    VOF_SCALING_FACTOR,
    VOXELS_AVERAGED,
)
from inference.base import PipelineInputError, SeriesInput, StudyInput
from inference.perfusion.lesions import Defuse3Criteria
from inference.perfusion.phantom_dicom import write_phantom_series, write_stroke_phantom
from inference.perfusion.pipeline import PerfusionPipeline
from inference.perfusion.simulation import (
    AcquisitionTiming,
    StrokePhantomDesign,
    add_rician_noise,
    make_stroke_phantom,
)
from node.index import Index, NewJob
from node.jobs import JobRunner
from node.service import reindex_spool
from node.spool import Spool
from tests.dicom_validate import assert_valid_dicom
from tests.node_harness import NodeProcess, wait_until, write_mr_series
from tests.orthanc_peer import OrthancPeer


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_stroke_phantom(out, seed=3, snr=50)
    return out


def _study(folder) -> StudyInput:
    paths = sorted(folder.glob("*.dcm"))
    first = dcmread(paths[0], stop_before_pixels=True)
    return StudyInput(str(first.StudyInstanceUID), (SeriesInput(
        str(first.SeriesInstanceUID), "MR", str(first.SeriesDescription), int(first.SeriesNumber), tuple(paths)),))


@pytest.fixture(scope="module")
def results(phantom):
    return PerfusionPipeline().run(_study(phantom / "DSC"), {"method": "osvd"})


def _by_class(outputs, sop_class: str):
    return [ds for ds in outputs if ds.SOPClassUID == sop_class]


def test_outputs_are_valid_dicom_in_the_source_study(results, phantom):
    source_path = next((phantom / "DSC").glob("*.dcm"))
    assert_valid_dicom(source_path, expected_iod="MRImage")  # what `pacsnode synth perfusion` writes
    source = dcmread(source_path)
    classes = {str(ds.SOPClassUID) for ds in results}
    assert classes == {"1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4",
                       "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"}
    for ds in results:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
    seen = set()
    for ds in results:  # one of each object type through dciodvfy
        if ds.SOPClassUID not in seen:
            seen.add(ds.SOPClassUID)
            assert_valid_dicom(ds)
    pmaps = _by_class(results, "1.2.840.10008.5.1.4.1.1.30")
    assert sorted(int(ds.SeriesNumber) for ds in pmaps) == [9001, 9002, 9003, 9004]


def test_tmax_lesion_matches_the_phantom_truth(results, phantom):
    truth = np.load(phantom / "ground_truth.npz")
    [seg_ds] = _by_class(results, "1.2.840.10008.5.1.4.1.1.66.4")
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert len(labels) == 2
    # Frames are in source-slice order (empty frames kept): rebuild the (z, y, x) masks.
    frames = seg_ds.pixel_array.reshape(len(labels), -1, seg_ds.Rows, seg_ds.Columns)
    hypo = frames[0].astype(bool)
    expected = truth["hypoperfusion_mask"].astype(bool)
    dice = 2 * (hypo & expected).sum() / (hypo.sum() + expected.sum())
    assert dice >= 0.90, f"Tmax>6 s Dice {dice:.3f}"


def test_report_carries_volumes_and_the_mismatch(results, phantom):
    truth = json.loads((phantom / "ground_truth.json").read_text())["lesion_truth"]
    [sr] = _by_class(results, "1.2.840.10008.5.1.4.1.1.88.33")
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    values = {}
    for group in groups:
        for measurement in group.get_measurements():
            values.setdefault(measurement.name.meaning, []).append(measurement.value)
    volumes = sorted(values["Volume"])
    # Core and Tmax > 6 s volumes within 15 % of the truth.
    assert volumes[0] == pytest.approx(truth["core_ml"], rel=0.15)
    assert volumes[1] == pytest.approx(truth["hypoperfusion_ml"], rel=0.15)
    assert any("ismatch" in name for name in values)


def _report(outputs) -> hd.sr.ComprehensiveSR:
    [sr] = _by_class(outputs, "1.2.840.10008.5.1.4.1.1.88.33")
    return hd.sr.ComprehensiveSR.from_dataset(sr)


def _defuse3_group(report: hd.sr.ComprehensiveSR):
    [group] = [g for g in report.content.get_image_measurement_groups()
               if g.tracking_identifier == "DEFUSE 3 target mismatch"]
    [answer] = group.get_qualitative_evaluations()
    limits = {(m.name.value, m.name.scheme_designator): m.value for m in group.get_measurements()}
    return answer, limits


def _segment_volumes(report: hd.sr.ComprehensiveSR) -> tuple[float, float]:
    """(Tmax > 6 s volume, core volume) as the SR states them."""
    hypo, core = (next(m.value for m in g.get_measurements() if m.name.meaning == "Volume")
                  for g in report.content.get_volumetric_roi_measurement_groups()[:2])
    return hypo, core


def test_report_answers_defuse3_with_a_coded_yes_or_no(results, phantom):
    truth = json.loads((phantom / "ground_truth.json").read_text())["lesion_truth"]
    report = _report(results)
    answer, limits = _defuse3_group(report)
    assert (answer.name.value, answer.name.scheme_designator) == (DEFUSE3_TARGET_MISMATCH.value, "99PACSNODE")
    assert answer.value.scheme_designator == "SCT"
    decided = {"373066001": True, "373067005": False}[answer.value.value]
    assert decided == truth["defuse3_eligible"]
    hypo_ml, core_ml = _segment_volumes(report)
    assert decided == Defuse3Criteria().eligible(core_ml, hypo_ml)     # the answer follows the reported volumes
    assert limits == {(DEFUSE3_CORE_LIMIT.value, "99PACSNODE"): 70.0, (DEFUSE3_RATIO_LIMIT.value, "99PACSNODE"): 1.8,
                      (DEFUSE3_MISMATCH_LIMIT.value, "99PACSNODE"): 15.0}
    parameters = {item.TextValue for item in hd.sr.utils.find_content_items(
        report, name=hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters"), recursive=True)}
    assert "DEFUSE 3=core < 70 ml, mismatch ratio >= 1.8, mismatch volume >= 15 ml" in parameters


def test_report_states_no_when_the_core_exceeds_a_stricter_limit(phantom):
    outputs = PerfusionPipeline().run(_study(phantom / "DSC"), {"method": "osvd", "defuse3_max_core_ml": 10})
    report = _report(outputs)
    answer, limits = _defuse3_group(report)
    _, core_ml = _segment_volumes(report)
    assert core_ml > 10
    assert (answer.value.value, answer.value.meaning) == ("373067005", "No")
    assert limits[(DEFUSE3_CORE_LIMIT.value, "99PACSNODE")] == 10.0


def test_report_locates_the_aif_in_the_phantom_artery(results, phantom):
    truth = np.load(phantom / "ground_truth.npz")
    report = _report(results)
    [aif] = [g for g in report.content.get_volumetric_roi_measurement_groups()
             if g.tracking_identifier == "Arterial input function"]
    assert aif.reference_type == hd.sr.CodedConcept("111030", "DCM", "Image Region")
    # The slice each point was selected from: the phantom's first time point, z ascending with position.
    first_frame = [dcmread(p, stop_before_pixels=True) for p in sorted((phantom / "DSC").glob("*.dcm"))]
    first_frame = sorted((ds for ds in first_frame if int(ds.TemporalPositionIdentifier) == 1),
                         key=lambda ds: float(ds.ImagePositionPatient[2]))
    slice_of = {ds.SOPInstanceUID: z for z, ds in enumerate(first_frame)}
    voxels = []
    for region in aif.roi:
        assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
        [[column, row]] = region.value
        uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        voxels.append((slice_of[uid], int(row), int(column)))
    assert len(set(voxels)) == len(voxels) >= 5
    artery = truth["artery_mask"].astype(bool)
    assert all(artery[v] for v in voxels), voxels
    summary = {(m.name.value, m.name.scheme_designator): (m.value, m.unit.value) for m in aif.get_measurements()}
    assert summary[(VOXELS_AVERAGED.value, "99PACSNODE")] == (len(voxels), "{voxels}")
    times, curve = truth["times_s"], truth["aif_concentration"]
    peak_s, unit = summary[(TIME_OF_PEAK_CONCENTRATION.value, "DCM")]
    assert unit == "s" and abs(peak_s - times[np.argmax(curve)]) <= np.diff(times).mean() + 1e-6
    assert summary[(PEAK_DELTA_R2STAR.value, "99PACSNODE")][0] > 0
    assert 1.0 <= summary[(VOF_SCALING_FACTOR.value, "99PACSNODE")][0] <= 3.0
    assert 0.5 <= summary[(AIF_QUALITY.value, "99PACSNODE")][0] <= 1.0


def test_too_few_time_points_fail_with_the_reason(tmp_path):
    study_uid = generate_uid()
    paths = write_mr_series(tmp_path, count=6, study_uid=study_uid, temporal_positions=3)
    series = SeriesInput(str(dcmread(paths[0]).SeriesInstanceUID), "MR", "short", 1, tuple(paths))
    with pytest.raises(PipelineInputError, match="time points"):
        PerfusionPipeline().run(StudyInput(study_uid, (series,)), {})


def test_unknown_method_is_refused(phantom):
    with pytest.raises(PipelineInputError, match="not available"):
        PerfusionPipeline().run(_study(phantom / "DSC"), {"method": "magic"})


@pytest.mark.e2e
def test_phantom_pushed_with_storescu_arrives_in_orthanc_as_maps_seg_sr_and_summary(tmp_path, phantom):
    orthanc = OrthancPeer(tmp_path / "orthanc")
    route = {"name": "stroke-perfusion", "level": "series",
             "match": {"Modality": "MR", "min_temporal_positions": 10},
             "pipelines": ["perfusion"], "destinations": ["PACS"], "options": {"method": "osvd"}}
    node = NodeProcess(tmp_path / "node", routes=[route], study={"stable_seconds": 2},
                       destinations={"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                              "port": orthanc.dicom_port}})
    node.start()
    try:
        result = node.storescu(*sorted((phantom / "DSC").glob("*.dcm")))
        assert result.returncode == 0, result.stderr
        wait_until(lambda: [r["state"] for r in node.status()["outbox"]] == ["sent"],
                   timeout=240, interval=1, what="perfusion results in Orthanc")
        [study] = node.status()["studies"]
        [job] = study["jobs"]
        assert job["pipeline"] == "perfusion" and job["state"] == "succeeded"
        modalities = {}
        for instance_id in orthanc.instances():
            ds = dcmread(io.BytesIO(orthanc.download(instance_id)), stop_before_pixels=True)
            modalities.setdefault(str(ds.SOPClassUID), 0)
            modalities[str(ds.SOPClassUID)] += 1
        assert modalities["1.2.840.10008.5.1.4.1.1.30"] == 4        # CBF, CBV, MTT, Tmax
        assert modalities["1.2.840.10008.5.1.4.1.1.66.4"] == 1      # SEG
        assert modalities["1.2.840.10008.5.1.4.1.1.88.33"] == 1     # SR
        assert modalities["1.2.840.10008.5.1.4.1.1.7"] >= 3         # colour summaries
    finally:
        node.stop()
        orthanc.stop()


def test_stnet_method_runs_with_the_committed_weights(phantom):
    outputs = PerfusionPipeline().run(_study(phantom / "DSC"), {"method": "stnet"})
    [seg_ds] = _by_class(outputs, "1.2.840.10008.5.1.4.1.1.66.4")
    truth = np.load(phantom / "ground_truth.npz")["hypoperfusion_mask"].astype(bool)
    hypo = seg_ds.pixel_array.reshape(2, -1, seg_ds.Rows, seg_ds.Columns)[0].astype(bool)
    dice = 2 * (hypo & truth).sum() / (hypo.sum() + truth.sum())
    assert dice >= 0.90, f"ST-Net Tmax>6 s Dice {dice:.3f}"
    assert "ST-Net" in str(_by_class(outputs, "1.2.840.10008.5.1.4.1.1.30")[0].ManufacturerModelName)


def test_missing_stnet_weights_fail_with_the_reason(phantom, tmp_path):
    with pytest.raises(PipelineInputError, match="ST-Net weights"):
        PerfusionPipeline().run(_study(phantom / "DSC"), {"method": "stnet",
                                                          "stnet_weights": str(tmp_path / "none.json")})


# --------------------------------------------------------------------------- bad input through the job runner

#: A coarse, short phantom: bad-input series only need to look like DSC, not to be accurate.
SMALL = StrokePhantomDesign(matrix=(48, 48), pixel_mm=4.0, n_slices=3)
SHORT = AcquisitionTiming(n_timepoints=30)


@pytest.fixture(scope="module")
def small_phantom():
    return make_stroke_phantom(seed=11, snr=50, design=SMALL, timing=SHORT)


def _too_few_time_points(phantom, folder: Path) -> None:
    short = replace(phantom.timing, n_timepoints=12)
    write_phantom_series(replace(phantom, signal=phantom.signal[:12], timing=short), folder, 11)


def _no_baseline(phantom, folder: Path) -> None:
    early = make_stroke_phantom(seed=12, snr=50, design=SMALL, timing=replace(SHORT, baseline_frames=1))
    write_phantom_series(early, folder, 12)


def _no_echo_time(phantom, folder: Path) -> None:
    for path in write_phantom_series(phantom, folder, 13):
        ds = dcmread(path)
        del ds.EchoTime
        ds.save_as(path, enforce_file_format=True)


def _no_bolus(phantom, folder: Path) -> None:
    # The pre-contrast image repeated, with fresh noise in every frame: no contrast ever arrives.
    baseline = np.repeat(phantom.signal[1:2], phantom.signal.shape[0], axis=0)
    flat = add_rician_noise(baseline, 100 / 50, np.random.default_rng(14)).astype(np.float32)
    write_phantom_series(replace(phantom, signal=flat), folder, 14)


@pytest.mark.parametrize(("make_series", "reason"), [
    (_too_few_time_points, "has 12 time points; DSC analysis needs at least 15"),
    (_no_baseline, "pre-contrast images; at least 3"),
    (_no_echo_time, "EchoTime (0018,0081) is missing"),
    (_no_bolus, "no contrast bolus passage was found"),
], ids=["too-few-time-points", "no-baseline", "no-echo-time", "no-bolus"])
def test_bad_series_fail_the_job_with_the_reason_in_the_index_and_the_log(
        make_series, reason, small_phantom, tmp_path, caplog):
    make_series(small_phantom, tmp_path / "staging")
    spool = Spool(tmp_path / "spool", fsync=False)
    index = Index(spool.paths.index)
    for path in sorted((tmp_path / "staging").glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        spool.write_durably(spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                            path.read_bytes())
    assert reindex_spool(spool, index) > 0
    job_id = index.create_job(NewJob(key=f"{ds.StudyInstanceUID}|stroke|perfusion", study_uid=ds.StudyInstanceUID,
                                     route="stroke", pipeline="perfusion", queue="cpu",
                                     series_uids=[ds.SeriesInstanceUID], destinations=["PACS"],
                                     last_instance_at=time.time()))
    index.set_dispatch_token(job_id, "t")
    with caplog.at_level(logging.INFO, logger="pacsnode"):
        outcome = JobRunner(index, spool).run(job_id, "t")
    assert outcome is not None and outcome.state == "failed"
    job = index.job(job_id)
    assert job.state == "failed" and reason in job.reason
    [logged] = [r for r in caplog.records if r.name == "pacsnode.jobs" and r.getMessage() == "job failed"]
    assert reason in logged.reason and logged.job_id == job_id
    assert index.outbox_items() == []
