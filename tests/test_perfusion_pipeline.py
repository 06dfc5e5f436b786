"""The perfusion pipeline on the DSC stroke phantom: offline, and end to end through the node into Orthanc."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from inference.base import PipelineInputError, SeriesInput, StudyInput
from inference.perfusion.phantom_dicom import write_stroke_phantom
from inference.perfusion.pipeline import PerfusionPipeline
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
    source = dcmread(next((phantom / "DSC").glob("*.dcm")))
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
