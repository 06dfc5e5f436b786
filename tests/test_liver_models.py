"""Liver segmentation models: networks, weights and manifest, pre/post-processing, metrics, committed weights."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.liver import evaluation as ev
from inference.liver import models, postprocess, preprocess
from inference.liver import weights as lw

torch.set_num_threads(1)

DCE = ("pre", "arterial", "portal", "delayed")


def _small_fused() -> models.FusedUNet4D:
    torch.manual_seed(0)
    return models.FusedUNet4D(models.FusedUNet4DConfig(widths=(4, 8, 8), lstm_kernels=(1, 3, 3))).eval()


def _write_model(tmp: Path, model: torch.nn.Module, kind: str, channels: tuple[str, ...], modality: str,
                 patch: tuple[int, int, int] = (16, 32, 32), name: str = "test-v1",
                 mirroring: tuple[tuple[str, ...], ...] = ()) -> Path:
    sha = lw.save_weights(model, tmp / f"{name}.pt")
    manifest = lw.build_manifest(
        model_version=name, model_kind=kind, architecture=models.config_to_json(model.config),
        weights_file=f"{name}.pt", weights_sha256=sha, channels=channels, modality=modality,
        spacing_zyx_mm=(4.0, 3.0, 3.0), normalisation=preprocess.default_normalisation(modality),
        patch_size_zyx=patch, training={"note": "test"}, mirroring=mirroring,
    )
    path = tmp / f"{name}.json"
    lw.write_manifest(manifest, path)
    return path


# --------------------------------------------------------------------------- networks


def test_models_map_channels_to_three_class_logits_of_the_input_size():
    fused = _small_fused()
    unet = models.UNet3D(models.UNet3DConfig(in_channels=1, widths=(4, 8, 8))).eval()
    with torch.no_grad():
        assert fused(torch.randn(2, 4, 8, 16, 24)).shape == (2, 3, 8, 16, 24)
        assert unet(torch.randn(1, 1, 8, 16, 24)).shape == (1, 3, 8, 16, 24)
    with pytest.raises(ValueError, match="expected"):
        fused(torch.randn(1, 3, 8, 16, 16))


def test_default_models_are_small_enough_to_commit():
    for kind, arch in (("fused-unet-4d", {}), ("unet-3d", {})):
        model = models.build_model(kind, arch)
        assert models.count_parameters(model) * 4 < 4_000_000  # float32 bytes


def test_convlstm_fusion_depends_on_the_phase_order():
    model = _small_fused()
    x = torch.randn(1, 4, 8, 16, 16)
    with torch.no_grad():
        forward = model(x)
        permuted = model(x[:, [2, 0, 3, 1]])
        again = model(x)
    assert torch.equal(forward, again)
    assert (forward - permuted).abs().max() > 1e-4


def test_build_model_rejects_unknown_kinds_and_fields():
    with pytest.raises(models.ModelConfigError, match="unknown model kind"):
        models.build_model("resnet", {})
    with pytest.raises(models.ModelConfigError, match="unknown fields"):
        models.build_model("unet-3d", {"depth": 3})


# --------------------------------------------------------------------------- weights, manifest, sliding window


def test_sliding_window_equals_whole_volume_inference_when_one_window_fits(tmp_path):
    model = _small_fused()
    path = _write_model(tmp_path, model, "fused-unet-4d", DCE, "MR", patch=(8, 16, 16))
    segmenter = lw.LiverSegmenter.load(path, device="cpu")
    x = np.random.default_rng(1).normal(size=(4, 8, 16, 16)).astype(np.float32)
    probabilities = segmenter.predict(x, normalised=True)
    with torch.no_grad():
        direct = torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probabilities, direct, atol=1e-5)


def test_sliding_window_handles_volumes_larger_and_smaller_than_the_patch(tmp_path):
    model = models.UNet3D(models.UNet3DConfig(widths=(4, 8, 8))).eval()
    path = _write_model(tmp_path, model, "unet-3d", ("ct",), "CT", patch=(8, 16, 16))
    segmenter = lw.LiverSegmenter.load(path, device="cpu")
    rng = np.random.default_rng(2)
    for shape in ((1, 21, 45, 38), (1, 5, 9, 30)):
        hu = rng.normal(40, 80, size=shape).astype(np.float32)
        probabilities = segmenter.predict(hu)
        assert probabilities.shape == (3, *shape[1:])
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    # Far from the borders of a large volume, tiling does not change the answer much:
    # a window-sized crop around the centre gives nearly the same probabilities there.
    big = rng.normal(40, 80, size=(1, 24, 48, 48)).astype(np.float32)
    whole = segmenter.predict(big)
    crop = segmenter.predict(big[:, 8:16, 16:32, 16:32])
    assert np.abs(whole[:, 10:14, 20:28, 20:28] - crop[:, 2:6, 4:12, 4:12]).mean() < 0.05
    with pytest.raises(lw.LiverInputError, match="expects"):
        segmenter.predict(np.zeros((2, 8, 16, 16), np.float32))


def test_mirrored_views_are_averaged_with_the_study_itself(tmp_path):
    torch.manual_seed(3)
    model = models.UNet3D(models.UNet3DConfig(widths=(4, 8, 8))).eval()
    plain = lw.LiverSegmenter.load(_write_model(tmp_path, model, "unet-3d", ("ct",), "CT", patch=(8, 16, 16)),
                                   device="cpu")
    mirrored = lw.LiverSegmenter.load(
        _write_model(tmp_path, model, "unet-3d", ("ct",), "CT", patch=(8, 16, 16), name="test-v2",
                     mirroring=lw.MIRRORED_VIEWS), device="cpu")
    assert plain.mirroring == () and mirrored.mirroring == ((0,), (1,), (2,))
    x = np.random.default_rng(4).normal(size=(1, 11, 21, 19)).astype(np.float32)
    views = [plain.predict(x, normalised=True)]
    for axis in (1, 2, 3):  # z, y, x of [P, z, y, x]
        views.append(np.flip(plain.predict(np.flip(x, axis).copy(), normalised=True), axis))
    probabilities = mirrored.predict(x, normalised=True)
    np.testing.assert_allclose(probabilities, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(probabilities - views[0]).max() > 1e-3  # an untrained network is not mirror-symmetric
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)

    manifest = json.loads((tmp_path / "test-v2.json").read_text())
    manifest["inference"]["mirroring"] = [["x"], ["left"]]
    (tmp_path / "test-v2.json").write_text(json.dumps(manifest))
    with pytest.raises(lw.LiverManifestError, match="inference.mirroring"):
        lw.LiverSegmenter.load(tmp_path / "test-v2.json")


def test_the_sliding_window_overlap_is_the_manifests(tmp_path):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(5)
    model = models.UNet3D(models.UNet3DConfig(widths=(4, 8, 8))).eval()
    path = _write_model(tmp_path, model, "unet-3d", ("ct",), "CT", patch=(8, 16, 16))
    assert lw.LiverSegmenter.load(path, device="cpu").overlap == lw.SLIDING_WINDOW_OVERLAP
    manifest = json.loads(path.read_text())
    manifest["inference"]["sliding_window_overlap"] = 0.25
    path.write_text(json.dumps(manifest))
    sparse = lw.LiverSegmenter.load(path, device="cpu")
    x = np.random.default_rng(6).normal(size=(1, 19, 37, 29)).astype(np.float32)
    with torch.inference_mode():
        expected = {overlap: torch.softmax(sliding_window_inference(
            torch.from_numpy(x)[None], (8, 16, 16), 1, model, overlap=overlap, mode="gaussian"), dim=1)[0].numpy()
            for overlap in (0.25, 0.5)}
    probabilities = sparse.predict(x, normalised=True)
    np.testing.assert_allclose(probabilities, expected[0.25], atol=1e-5)
    assert np.abs(probabilities - expected[0.5]).max() > 1e-3  # the tiles, and so the blend, differ
    for bad in (1.0, -0.1, "half", True):
        manifest["inference"]["sliding_window_overlap"] = bad
        path.write_text(json.dumps(manifest))
        with pytest.raises(lw.LiverManifestError, match="sliding_window_overlap"):
            lw.LiverSegmenter.load(path)


def test_load_refuses_tampered_missing_and_malformed_weights(tmp_path):
    path = _write_model(tmp_path, models.UNet3D(models.UNet3DConfig(widths=(4, 8))), "unet-3d", ("ct",), "CT",
                        patch=(8, 8, 8))
    assert lw.LiverSegmenter.load(path, device="cpu").version == "test-v1"
    assert lw.LiverSegmenter.load(path.with_suffix(".pt"), device="cpu").channels == ("ct",)

    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path, tampered, ignore=shutil.ignore_patterns("tampered"))
    data = bytearray((tampered / "test-v1.pt").read_bytes())
    data[-20] ^= 0xFF
    (tampered / "test-v1.pt").write_bytes(bytes(data))
    with pytest.raises(lw.LiverWeightsTamperedError, match="sha256"):
        lw.LiverSegmenter.load(tampered / "test-v1.json")

    with pytest.raises(lw.LiverWeightsMissingError, match="no liver model manifest"):
        lw.LiverSegmenter.load(tmp_path / "absent.json")
    (tampered / "test-v1.pt").unlink()
    with pytest.raises(lw.LiverWeightsMissingError, match="are missing"):
        lw.LiverSegmenter.load(tampered / "test-v1.json")

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(lw.LiverManifestError, match="cannot read"):
        lw.LiverSegmenter.load(broken)
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    broken.write_text(json.dumps(manifest))
    with pytest.raises(lw.LiverManifestError, match="format version"):
        lw.LiverSegmenter.load(broken)
    manifest["format_version"] = lw.MANIFEST_FORMAT_VERSION
    del manifest["input"]["spacing_zyx_mm"]
    broken.write_text(json.dumps(manifest))
    with pytest.raises(lw.LiverManifestError, match="spacing_zyx_mm"):
        lw.LiverSegmenter.load(broken)


# --------------------------------------------------------------------------- preprocessing


def test_resampling_round_trip_keeps_a_smooth_image_and_exact_labels():
    z, y, x = np.meshgrid(np.arange(20) * 4.0, np.arange(40) * 3.0, np.arange(36) * 3.0, indexing="ij")
    image = (np.sin(z / 25) + np.cos(y / 30) * np.sin(x / 20)).astype(np.float32)
    fine = preprocess.resample(image, (4, 3, 3), (2.0, 1.5, 1.5))
    assert fine.shape == (40, 80, 72)
    back = preprocess.resample(fine, (2.0, 1.5, 1.5), (4, 3, 3), shape=image.shape)
    assert back.shape == image.shape
    assert np.abs(back - image)[1:-1, 1:-1, 1:-1].max() < 0.02
    labels = (image > 0.5).astype(np.uint8)
    up = preprocess.resample(labels, (4, 3, 3), (2.0, 1.5, 1.5), interpolation="nearest")
    assert up.dtype == np.uint8 and set(np.unique(up)) <= {0, 1}
    assert np.array_equal(preprocess.resample(up, (2.0, 1.5, 1.5), (4, 3, 3), shape=labels.shape,
                                              interpolation="nearest"), labels)
    probabilities = np.stack([1 - labels, labels, np.zeros_like(labels)]).astype(np.float32)
    onto = preprocess.probabilities_to_grid(probabilities, (4, 3, 3), (30, 60, 54), (8 / 3, 2.0, 2.0))
    np.testing.assert_allclose(onto.sum(axis=0), 1.0, atol=1e-5)


def test_normalisation_ct_window_and_mr_percentiles_inside_the_body():
    hu = np.array([[[[-1000.0, -150.0, 50.0, 250.0, 3000.0]]]], np.float32)
    np.testing.assert_allclose(preprocess.normalise(hu, preprocess.default_normalisation("CT"))[0, 0, 0],
                               [-1, -1, 0, 1, 1])
    rng = np.random.default_rng(3)
    mr = rng.normal(2.0, 0.5, size=(2, 10, 40, 40)).clip(0)  # air
    mr[:, :, 10:30, 10:30] = rng.uniform(100, 200, size=(2, 10, 20, 20))  # body
    mr[1] *= 7.0  # another phase, another scale
    out = preprocess.normalise(mr, preprocess.default_normalisation("MR"))
    for channel in out:
        body = channel[:, 10:30, 10:30]
        assert abs(np.percentile(body, 1)) < 0.02 and abs(np.percentile(body, 99) - 1) < 0.02
        assert channel[:, :5, :5].max() < -0.4  # air is far below the body's 1st percentile
    with pytest.raises(preprocess.PreprocessError, match="unknown normalisation"):
        preprocess.normalise(mr, {"method": "z-score"})


# --------------------------------------------------------------------------- post-processing


SPACING = (4.0, 3.0, 3.0)


def _grid(shape=(30, 60, 60)):
    return np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING, strict=True)), indexing="ij")


def test_postprocessing_keeps_the_largest_liver_and_drops_tumours_outside_it():
    z, y, x = _grid()
    labels = np.zeros(z.shape, np.uint8)
    liver = ((z - 60) / 40) ** 2 + ((y - 90) / 60) ** 2 + ((x - 70) / 50) ** 2 < 1
    labels[liver] = 1
    inside = (z - 60) ** 2 + (y - 90) ** 2 + (x - 70) ** 2 < 12**2
    labels[inside] = 2
    spleen = ((z - 60) / 20) ** 2 + ((y - 90) / 20) ** 2 + ((x - 155) / 12) ** 2 < 1  # separate, with a "tumour"
    labels[spleen] = 1
    labels[(z - 60) ** 2 + (y - 90) ** 2 + (x - 155) ** 2 < 6**2] = 2
    attached = (z - 60) ** 2 + (y - 90) ** 2 + (x - 130) ** 2 < 10**2  # touches the liver, mostly outside
    labels[attached & ~liver] = 2
    seg = postprocess.postprocess_labels(labels, SPACING)
    assert not seg.labels[spleen].any()
    assert (seg.labels[inside] == 2).all()
    assert not (seg.labels[attached & ~liver] == 2).any()
    assert len(seg.lesions) == 1
    assert np.array_equal(seg.lesion_labels > 0, seg.labels == 2)
    assert seg.liver_volume_ml == pytest.approx(np.count_nonzero(liver) * 0.036, rel=1e-6)


def test_lesion_volume_and_diameters_of_a_sphere_and_an_ellipsoid():
    z, y, x = _grid((40, 80, 80))
    labels = np.zeros(z.shape, np.uint8)
    labels[((z - 80) / 70) ** 2 + ((y - 120) / 110) ** 2 + ((x - 120) / 110) ** 2 < 1] = 1
    sphere = (z - 80) ** 2 + (y - 70) ** 2 + (x - 90) ** 2 < 15**2
    ellipsoid = ((z - 80) / 10) ** 2 + ((y - 170) / 12) ** 2 + ((x - 150) / 24) ** 2 < 1
    labels[sphere | ellipsoid] = 2
    small = (z - 120) ** 2 + (y - 120) ** 2 + (x - 60) ** 2 < 2**2  # a 1-voxel speck
    labels[small] = 2
    seg = postprocess.postprocess_labels(labels, SPACING, min_volume_ml=0.1)
    assert len(seg.lesions) == 2
    by_size = {round(les.volume_ml): les for les in seg.lesions}
    # Diameters are distances between voxel centres: up to one in-plane voxel (3 mm) short at each end.
    ball = seg.lesions[0]
    assert ball.volume_ml == pytest.approx(4 / 3 * np.pi * 15**3 / 1000, rel=0.1)
    assert 30 - 6 <= ball.longest_diameter_mm <= 30 + 1
    assert 30 - 6 <= ball.longest_axial_diameter_mm <= 30 + 1
    np.testing.assert_allclose(ball.centre_zyx_mm, (80, 70, 90), atol=0.5)
    egg = seg.lesions[1]
    assert egg.volume_ml == pytest.approx(4 / 3 * np.pi * 10 * 12 * 24 / 1000, rel=0.15)
    assert 48 - 6 <= egg.longest_diameter_mm <= 48 + 1
    assert egg.longest_axial_diameter_mm == pytest.approx(egg.longest_diameter_mm, abs=3)
    assert len(by_size) == 2
    assert seg.labels[small].tolist() == [1] * int(small.sum())  # too small: became liver
    assert postprocess.postprocess_labels(labels, SPACING, min_diameter_mm=35).lesions[0].longest_diameter_mm > 35


def test_labels_from_probabilities_takes_the_most_probable_class():
    p = np.zeros((3, 1, 1, 3), np.float32)
    p[:, 0, 0, 0] = (0.5, 0.3, 0.2)
    p[:, 0, 0, 1] = (0.2, 0.5, 0.3)
    p[:, 0, 0, 2] = (0.1, 0.4, 0.5)
    assert postprocess.labels_from_probabilities(p).ravel().tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- metrics


def test_overlap_and_surface_metrics_on_known_masks():
    a = np.zeros((20, 30, 30), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.zeros_like(a)
    b[5:15, 5:15, 8:18] = True  # shifted 3 voxels along x
    m = ev.mask_metrics(b, a, (4.0, 3.0, 2.0))
    assert m["dice"] == pytest.approx(0.7)
    assert m["iou"] == pytest.approx(700 / 1300)
    assert m["precision"] == pytest.approx(0.7) and m["recall"] == pytest.approx(0.7)
    assert m["hd95_mm"] == pytest.approx(6.0)
    assert ev.hd95(a, a, (1, 1, 1)) == 0.0
    assert np.isnan(ev.hd95(a, np.zeros_like(a), (1, 1, 1)))
    # A mask filling the whole image has no contour of its own; HD95 is still defined.
    full = np.ones_like(a)
    assert ev.hd95(full, a, (1, 1, 1)) == pytest.approx(np.percentile(
        ev._surface_distances(full, a, (1, 1, 1)), 95))
    assert np.isfinite(ev.hd95(full, a, (1, 1, 1))) and ev.hd95(full, a, (1, 1, 1)) > 0
    assert np.isnan(ev.dice(np.zeros_like(a), np.zeros_like(a)))
    labels_pred = a.astype(np.uint8)
    labels_true = a.astype(np.uint8)
    labels_true[8:12, 8:12, 8:12] = 2
    per_class = ev.segmentation_metrics(labels_pred, labels_true, (1, 1, 1))
    assert per_class["liver"]["dice"] == 1.0
    assert per_class["tumour"]["recall"] == 0.0


def test_lesion_detection_counts_detections_and_false_positives():
    truth = np.zeros((10, 40, 40), np.int16)
    truth[2:6, 2:10, 2:10] = 1  # large, found
    truth[2:4, 20:22, 20:22] = 2  # small, missed
    truth[7:9, 33:36, 5:8] = 3  # found only through the centre of a much larger predicted blob (Dice 0.04)
    pred = np.zeros_like(truth)
    pred[2:6, 3:11, 3:11] = 1
    pred[5:10, 28:40, 0:14] = 2
    pred[2:4, 30:36, 30:36] = 3  # touches nothing: false positive
    matches, false_positives = ev.lesion_detection(pred, truth, {1: 25.0, 2: 6.0, 3: 24.0},
                                                   kinds={1: "cyst", 2: "HCC", 3: "HCC"})
    assert [m.detected for m in matches] == [True, False, True]
    assert [m.kind for m in matches] == ["cyst", "HCC", "HCC"]
    assert matches[2].best_dice < ev.DETECTION_DICE
    assert false_positives == 1
    cases = [{"metrics": ev.segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1, 1)),
              "lesions": [m.__dict__ for m in matches], "false_positives": false_positives}]
    summary = ev.summarise(cases)["lesions"]
    assert summary["sensitivity"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["sensitivity_ge_10mm"] == 1.0
    assert summary["false_positives_per_case"] == 1.0
    bands = summary["by_size"]
    assert bands["under 10 mm"] == {"count": 1, "detected": 0, "sensitivity": 0.0, "dice_detected": None}
    assert bands["10-20 mm"]["count"] == 0 and bands["10-20 mm"]["sensitivity"] is None
    assert bands["20 mm and over"]["count"] == 2 and bands["20 mm and over"]["sensitivity"] == 1.0
    assert summary["by_kind"]["HCC"] == {"count": 2, "detected": 1, "count_ge_10mm": 1, "detected_ge_10mm": 1,
                                         "sensitivity_ge_10mm": 1.0}
    assert summary["by_kind"]["cyst"]["count_ge_10mm"] == 1
    dice_large = (matches[0].best_dice + matches[2].best_dice) / 2
    assert bands["20 mm and over"]["dice_detected"] == pytest.approx(dice_large, abs=1e-4)


def test_conspicuity_tells_a_lesion_the_images_show_from_one_they_do_not():
    rng = np.random.default_rng(0)
    labels = np.ones((12, 40, 40), np.uint8)
    lesions = np.zeros(labels.shape, np.int16)
    lesions[4:8, 5:12, 5:12] = 1  # 30 units darker than the liver: shown
    lesions[4:8, 25:32, 25:32] = 2  # same mean as the liver: not shown
    labels[lesions > 0] = postprocess.TUMOUR
    portal = 100 + rng.normal(0, 10, labels.shape).astype(np.float32)
    portal[lesions == 1] -= 30
    arterial = 100 + rng.normal(0, 10, labels.shape).astype(np.float32)
    arterial[lesions == 2] += 40  # ... unless a second phase shows it (hyper-enhancing)
    cnr = ev.lesion_contrast_to_noise(portal[None], labels, lesions)
    assert cnr[1] == pytest.approx(3.0, rel=0.2) and cnr[2] < 0.5
    both = ev.lesion_contrast_to_noise(np.stack([portal, arterial]), labels, lesions)
    assert both[1] == pytest.approx(cnr[1]) and both[2] == pytest.approx(4.0, rel=0.2)
    matches, _ = ev.lesion_detection(np.where(lesions == 1, 1, 0), lesions, {1: 21.0, 2: 21.0}, cnr)
    cases = [{"metrics": ev.segmentation_metrics(labels, labels, (1, 1, 1)),
              "lesions": [m.__dict__ for m in matches], "false_positives": 0}]
    summary = ev.summarise(cases)["lesions"]
    assert summary["sensitivity_ge_10mm"] == 0.5
    assert summary["count_ge_10mm_conspicuous"] == 1 and summary["sensitivity_ge_10mm_conspicuous"] == 1.0


def _one_shown_one_hidden_lesion() -> tuple[np.ndarray, np.ndarray]:
    """Truth labels and lesion labels of a liver with lesion 1 (196 voxels) and lesion 2 (98 voxels)."""
    labels = np.ones((12, 40, 40), np.uint8)
    lesions = np.zeros(labels.shape, np.int16)
    lesions[4:8, 5:12, 5:12] = 1  # 196 voxels, shown
    lesions[4:6, 25:32, 25:32] = 2  # 98 voxels, not shown
    labels[lesions > 0] = postprocess.TUMOUR
    return labels, lesions


def test_tumour_dice_ceiling_leaves_out_the_lesions_the_images_do_not_show():
    labels, lesions = _one_shown_one_hidden_lesion()
    # outlining lesion 1 exactly and missing lesion 2: Dice 2 * 196 / (196 + 294)
    assert ev.tumour_dice_ceiling(labels, lesions, {1: 3.0, 2: 0.4}) == pytest.approx(0.8)
    assert ev.tumour_dice_ceiling(labels, lesions, {1: 3.0, 2: 4.0}) == 1.0
    assert ev.tumour_dice_ceiling(labels, lesions, {1: 3.0}) == pytest.approx(0.8)  # unmeasured: not shown
    assert ev.tumour_dice_ceiling(np.ones_like(labels), np.zeros_like(lesions), {}) is None
    # the ceiling is the images' and the truth's, not the model's: a model that finds nothing has the same one
    images = np.full((1, *labels.shape), 100.0, np.float32) + np.random.default_rng(1).normal(0, 5, labels.shape)
    images[0][lesions == 1] -= 30
    empty = postprocess.postprocess_labels(np.where(labels > 0, 1, 0).astype(np.uint8), (1, 1, 1))
    exact = postprocess.postprocess_labels(labels, (1, 1, 1), min_volume_ml=0)
    cases = [ev.evaluate_case(seg, labels, lesions, {1: 7.0, 2: 7.0}, (1, 1, 1), images) for seg in (empty, exact)]
    assert [c["tumour_dice_ceiling"] for c in cases] == [pytest.approx(0.8, abs=1e-4)] * 2
    assert [c["metrics"]["tumour"]["dice"] for c in cases] == [0.0, 1.0]  # finding a hidden lesion beats it
    assert ev.summarise(cases)["tumour"]["dice_ceiling"] == pytest.approx(0.8, abs=1e-4)
    assert "dice_ceiling" not in ev.summarise([ev.evaluate_case(exact, labels, lesions, {}, (1, 1, 1))])["tumour"]


def test_tumour_dice_on_conspicuous_lesions_sets_the_hidden_ones_aside():
    labels, lesions = _one_shown_one_hidden_lesion()
    cnr = {1: 3.0, 2: 0.4}
    found = np.where(lesions == 1, postprocess.TUMOUR, 1).astype(np.uint8)  # lesion 1 outlined, lesion 2 missed
    assert ev.tumour_dice_on_conspicuous(found, labels, lesions, cnr) == 1.0
    assert ev.tumour_dice_on_conspicuous(labels, labels, lesions, cnr) == 1.0  # marking the hidden one costs nothing
    half = found.copy()
    half[4:6] = np.where(lesions[4:6] == 1, 1, half[4:6])  # half of lesion 1 missed: 2 * 98 / (98 + 196)
    assert ev.tumour_dice_on_conspicuous(half, labels, lesions, cnr) == pytest.approx(2 / 3)
    spill = found.copy()
    spill[0, 0:14, 0:14] = postprocess.TUMOUR  # 196 false-positive voxels outside every lesion: 2 * 196 / 588
    assert ev.tumour_dice_on_conspicuous(spill, labels, lesions, cnr) == pytest.approx(2 / 3)
    # against all lesions, finding only lesion 1 scores below 1; the all-hidden case has no such truth
    assert ev.dice(found == postprocess.TUMOUR, labels == postprocess.TUMOUR) == pytest.approx(0.8)
    assert ev.tumour_dice_on_conspicuous(found, labels, lesions, {1: 0.2, 2: 0.4}) is None
    assert ev.tumour_dice_on_conspicuous(found, labels, lesions, {2: 9.0}) == 0.0  # unmeasured lesion 1: set aside

    images = np.full((1, *labels.shape), 100.0, np.float32) + np.random.default_rng(2).normal(0, 5, labels.shape)
    images[0][lesions == 1] -= 30
    hidden_only = np.where(lesions == 2, 2, np.where(labels > 0, 1, 0)).astype(np.uint8)
    seg_found = postprocess.postprocess_labels(found, (1, 1, 1), min_volume_ml=0)
    cases = [ev.evaluate_case(seg_found, labels, lesions, {1: 7.0, 2: 7.0}, (1, 1, 1), images),
             ev.evaluate_case(seg_found, hidden_only, np.where(lesions == 2, 1, 0).astype(np.int16), {1: 7.0},
                              (1, 1, 1), images)]
    assert cases[0]["tumour_dice_conspicuous"] == 1.0 and cases[1]["tumour_dice_conspicuous"] is None
    tumour = ev.summarise(cases)["tumour"]
    assert tumour["dice_conspicuous"] == 1.0 and tumour["cases_with_conspicuous_truth"] == 1
    assert tumour["dice"] == pytest.approx((0.8 + 0.0) / 2, abs=1e-4)  # the all-lesions case mean is unchanged


# --------------------------------------------------------------------------- committed weights


@pytest.mark.parametrize("name, recipe", [("mr", "liver-seg-mr"), ("ct", "liver-seg-ct"),
                                          ("ct-multiphase", "liver-seg-ct-multiphase")])
def test_committed_weights_segment_a_held_out_phantom(name, recipe):
    from inference.liver import training
    from inference.liver.ensemble import load_liver_model

    path = lw.default_weights(name)
    segmenter = load_liver_model(path, device="cpu")
    recipe = training.MODEL_RECIPES[recipe]
    assert segmenter.channels == recipe.channels
    phantom = training.simulate_phantom(recipe, 7)  # evaluation seed, never trained on
    seg = training.phantom_segmenter(segmenter, recipe)(phantom)
    assert ev.dice(seg.labels > 0, phantom.labels > 0) >= 0.9


# --------------------------------------------------------------------------- training


def test_training_is_seeded_and_writes_a_loadable_model(tmp_path):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=2, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1,
                                         device="cpu")
    first = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "a", settings, log=lambda _: None)
    again = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "b", settings, log=lambda _: None)
    other = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "c",
                                       training.TrainingSettings(**{**settings.__dict__, "seed": 1}),
                                       log=lambda _: None)
    assert first["weights_sha256"] == again["weights_sha256"] != other["weights_sha256"]
    assert first["training"]["phantom_seeds"] == [training.FIRST_TRAINING_SEED, training.FIRST_TRAINING_SEED]
    # another seed trains on phantoms of its own, not on the ones seed 0 saw again
    assert other["training"]["phantom_seeds"] == [training.first_phantom_seed(1)] * 2
    assert training.first_phantom_seed(1) > first["training"]["phantom_seeds"][1]
    segmenter = lw.LiverSegmenter.load(tmp_path / "a" / "liver-seg-mr-baseline-v1.json", device="cpu")
    assert segmenter.channels == ("portal",) and segmenter.patch_size == (16, 32, 32)
    assert segmenter.mirroring == ()
    card = (tmp_path / "a" / segmentation_card.MODEL_CARD).read_text()
    assert "Research use only" in card and "pacsnode train liver-seg-mr-baseline --seed 0 --steps 2 " in card
    # the device is recorded, and the card's command pins it: only a CPU run is bit-reproducible
    assert first["training"]["device"] == "cpu" and first["training"]["bit_reproducible"]
    assert first["training"]["settings"]["device"] == "cpu"
    assert "--device cpu --out" in segmentation_card.reproduce_command("liver-seg-mr-baseline", first)
    # trained on mirrored crops: a different network, run on its mirrored views too, and the card says how
    mirrored = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "d",
                                          training.TrainingSettings(**{**settings.__dict__, "mirror": True}),
                                          log=lambda _: None)
    assert mirrored["weights_sha256"] != first["weights_sha256"]
    assert mirrored["inference"]["mirroring"] == [["z"], ["y"], ["x"]]
    assert lw.LiverSegmenter.load(tmp_path / "d" / "liver-seg-mr-baseline-v1.json").mirroring == ((0,), (1,), (2,))
    assert "--mirror" in segmentation_card.reproduce_command("liver-seg-mr-baseline", mirrored)
    assert "--mirror" not in segmentation_card.reproduce_command("liver-seg-mr-baseline", first)
    # Dice per crop: with two crops a batch it trains another network than the batch Dice, and the card says how
    pair = training.TrainingSettings(**{**settings.__dict__, "batch_size": 2})
    pooled = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "e", pair, log=lambda _: None)
    per_crop = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "f",
                                          training.TrainingSettings(**{**pair.__dict__, "dice_per_crop": True}),
                                          log=lambda _: None)
    assert per_crop["weights_sha256"] != pooled["weights_sha256"]
    assert per_crop["training"]["settings"]["dice_per_crop"] and not pooled["training"]["settings"]["dice_per_crop"]
    command = segmentation_card.reproduce_command("liver-seg-mr-baseline", per_crop)
    assert "--dice-per-crop" in command and command in (tmp_path / "f" / segmentation_card.MODEL_CARD).read_text()
    assert "--dice-per-crop" not in segmentation_card.reproduce_command("liver-seg-mr-baseline", pooled)


def test_a_run_stopped_early_is_reproduced_step_for_step_on_its_schedule(tmp_path, capsys):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=3, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1,
                                         device="cpu")
    stopped = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "a",
                                         training.TrainingSettings(**{**settings.__dict__, "stop_after": 2}),
                                         log=lambda _: None)
    assert stopped["training"]["steps_run"] == 2 and not stopped["training"]["stopped_by_time_budget"]
    # two steps of a three-step schedule: not the network two steps of a two-step schedule give
    short = training.train_liver_model("liver-seg-mr-baseline", tmp_path / "b",
                                       training.TrainingSettings(**{**settings.__dict__, "steps": 2}),
                                       log=lambda _: None)
    assert short["weights_sha256"] != stopped["weights_sha256"]
    assert "--steps 3 --evaluation-cases 0 --stop-after 2 " in segmentation_card.reproduce_command(
        "liver-seg-mr-baseline", stopped)
    # a run --minutes stopped is rebuilt by its steps, not by a time another machine would fill differently
    by_time = {**stopped, "training": {**stopped["training"], "stopped_by_time_budget": True,
                                       "settings": {**stopped["training"]["settings"], "stop_after": None,
                                                    "minutes": 0.01}}}
    command = segmentation_card.reproduce_command("liver-seg-mr-baseline", by_time)
    assert "--stop-after 2 " in command and "--minutes" not in command
    assert "--stop-after" not in segmentation_card.reproduce_command("liver-seg-mr-baseline", short)
    with pytest.raises(SystemExit) as refused:
        training.main(["liver-seg-mr-baseline", "--stop-after", "0", "--out", str(tmp_path / "c")])
    assert refused.value.code == 2 and "--stop-after must be a positive" in capsys.readouterr().err


def test_training_device_is_cuda_when_torch_sees_a_gpu_and_a_missing_one_is_refused_with_the_way_out(capsys):
    from inference.liver import training
    from inference.model_files import default_device

    assert training.training_device("auto") == default_device()
    assert training.training_device("cpu") == torch.device("cpu")
    with pytest.raises(training.TrainingDeviceError, match="not one of auto, cpu, cuda"):
        training.training_device("tpu")
    if torch.cuda.is_available():
        assert training.training_device("cuda").type == "cuda"
        return
    with pytest.raises(training.TrainingDeviceError, match="sees no CUDA GPU; train with --device cpu"):
        training.training_device("cuda")
    # the command line refuses before simulating or training anything
    with pytest.raises(SystemExit) as exit_info:
        training.main(["--device", "cuda", "--steps", "1", "--evaluation-cases", "0"], name="liver-seg-ct")
    assert exit_info.value.code == 2 and "sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_model_trained_on_cuda_says_so_and_runs_on_the_cpu(tmp_path):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=2, pool_size=1, refresh_every=0, evaluation_cases=1,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1,
                                         device="cuda")
    manifest = training.train_liver_model("liver-seg-ct", tmp_path, settings, log=lambda _: None)
    assert manifest["training"]["device"].startswith("cuda (") and not manifest["training"]["bit_reproducible"]
    assert manifest["metrics"]["held_out_phantoms"]["cases"] == 1
    assert "--device cuda --out" in segmentation_card.reproduce_command("liver-seg-ct", manifest)
    segmenter = lw.LiverSegmenter.load(tmp_path / "liver-seg-ct-v1.json", device="cpu")
    probabilities = segmenter.predict(np.zeros((1, 16, 32, 32), np.float32))
    assert probabilities.shape == (3, 16, 32, 32) and np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)


def test_phantoms_are_simulated_on_the_model_grid_over_the_same_field_of_view():
    from inference.liver import phantom as ph
    from inference.liver import training

    assert training.phantom_grid(ph.DEFAULT_SPACING) == (ph.DEFAULT_SHAPE, ph.DEFAULT_SPACING)
    assert training.phantom_grid((2, 1.5, 1.5)) == ((96, 256, 256), (2.0, 1.5, 1.5))
    with pytest.raises(ValueError, match="three positive"):
        training.phantom_grid((2, 0, 1.5))
    # on the default grid a recipe's phantom is the simulator's own, voxel for voxel
    recipe = training.MODEL_RECIPES["liver-seg-ct-multiphase"]
    default = training.simulate_phantom(recipe, 3)
    same = ph.simulate_liver_ct(3, phases=recipe.channels)
    assert np.array_equal(default.images, same.images) and np.array_equal(default.labels, same.labels)
    coarse = training.simulate_phantom(recipe, 3, (8, 6, 6))
    assert coarse.spacing == (8.0, 6.0, 6.0) and coarse.labels.shape == (24, 64, 64)
    # the same case: its liver volume agrees to within the coarser grid's partial volume
    ml = [np.count_nonzero(p.labels > 0) * np.prod(p.spacing) / 1000 for p in (default, coarse)]
    assert ml[1] == pytest.approx(ml[0], rel=0.1)


def test_a_model_of_another_spacing_is_trained_and_scored_on_phantoms_of_its_grid(tmp_path):
    from inference.liver import segmentation_card, training

    assert training.main(["--spacing", "8", "6", "6", "--overlap", "0.25", "--steps", "1", "--pool-size", "1", "--refresh-every", "0",
                          "--batch-size", "1", "--evaluation-cases", "1", "--device", "cpu",
                          "--out", str(tmp_path)], name="liver-seg-ct") == 0
    manifest = lw.read_manifest(tmp_path / "liver-seg-ct-v1.json")
    assert manifest["input"]["spacing_zyx_mm"] == [8.0, 6.0, 6.0]
    assert manifest["training"]["settings"]["model_spacing"] == [8.0, 6.0, 6.0]
    assert manifest["training"]["settings"]["refresh_every"] == 0
    assert manifest["inference"]["sliding_window_overlap"] == 0.25
    assert lw.LiverSegmenter.load(tmp_path / "liver-seg-ct-v1.json", device="cpu").overlap == 0.25
    assert manifest["metrics"]["held_out_phantoms"]["phantom_spacing_mm"] == [8.0, 6.0, 6.0]
    with pytest.raises(SystemExit) as refused:  # before any phantom is simulated
        training.main(["--overlap", "1", "--out", str(tmp_path / "x")], name="liver-seg-ct")
    assert refused.value.code == 2 and not (tmp_path / "x" / "liver-seg-ct-v1.json").exists()
    command = segmentation_card.reproduce_command("liver-seg-ct", manifest)
    assert "--refresh-every 0 --overlap 0.25 --spacing 8 6 6 " in command
    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert command in card and "| `liver-seg-ct-v1` | 0–0 (phantoms at 8 × 6 × 6 mm) |" in card
    assert "* `liver-seg-ct-v1` (phantoms at 8 × 6 × 6 mm): liver Dice ≥ 0.95:" in card


def test_a_coarser_scan_averages_each_voxel_and_keeps_the_image_noise_level():
    from inference.liver import training

    image = np.zeros((1, 64, 32, 32), np.float32)
    image[:, 32:] = 100.0  # a step in z at 64 mm
    noisy = image + np.random.default_rng(1).normal(0.0, 10.0, image.shape).astype(np.float32)
    scan = training.acquired_on(noisy, (2.0, 1.0, 1.0), (8.0, 1.0, 1.0), np.random.default_rng(2))
    assert scan.shape == (1, 16, 32, 32)
    means = scan[0].mean(axis=(1, 2))
    assert abs(means[:6]).max() < 3 and abs(means[-6:] - 100).max() < 3
    assert ((means > 15) & (means < 85)).any()  # the slice across the step averages both sides
    assert np.std(scan[0, :6]) == pytest.approx(10.0, rel=0.25)  # averaged away, then added back at 8 mm


def test_phantoms_of_further_grids_are_simulated_in_turn_and_brought_onto_the_model_grid(tmp_path):
    from inference.liver import segmentation_card, training

    recipe = training.MODEL_RECIPES["liver-seg-ct"]
    settings = training.TrainingSettings(phantom_spacings=((8.0, 6.0, 6.0),))
    assert [settings.phantom_grid_for(s) for s in (10, 11, 12)] == [(4.0, 3.0, 3.0), (8.0, 6.0, 6.0), (4.0, 3.0, 3.0)]
    own, coarse = training.phantom_case(recipe, 10, settings), training.phantom_case(recipe, 11, settings)
    assert own.labels.shape == coarse.labels.shape == (48, 128, 128)
    # seed 11: its images as an 8 x 6 x 6 mm scan shows them, brought back; its labels the truth on the model grid
    phantom = training.simulate_phantom(recipe, 11)
    assert np.count_nonzero(coarse.labels == 1) and np.array_equal(coarse.labels, phantom.labels)
    assert np.array_equal(own.labels, training.simulate_phantom(recipe, 10).labels)
    assert coarse.channels.shape == own.channels.shape
    sharp = training.phantom_case(recipe, 11, training.TrainingSettings()).channels
    assert not np.allclose(coarse.channels, sharp, atol=0.05)

    assert training.main(["--phantom-spacing", "8", "6", "6", "--steps", "1", "--pool-size", "2", "--refresh-every", "0",
                          "--batch-size", "1", "--evaluation-cases", "0", "--device", "cpu",
                          "--out", str(tmp_path)], name="liver-seg-ct") == 0
    manifest = lw.read_manifest(tmp_path / "liver-seg-ct-v1.json")
    assert manifest["training"]["settings"]["phantom_spacings"] == [[8.0, 6.0, 6.0]]
    assert manifest["input"]["spacing_zyx_mm"] == [4.0, 3.0, 3.0]
    assert " --phantom-spacing 8 6 6 " in segmentation_card.reproduce_command("liver-seg-ct", manifest)
    with pytest.raises(SystemExit) as refused:  # before any phantom is simulated
        training.main(["--phantom-spacing", "0", "6", "6", "--out", str(tmp_path / "x")], name="liver-seg-ct")
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_confirmation_evaluation_is_kept_beside_the_held_out_one_on_seeds_no_choice_saw(tmp_path):
    from inference.liver import segmentation_card, training

    held_out, confirmation = training.evaluation_seeds(50), training.evaluation_seeds(50, confirmation=True)
    assert not set(held_out) & set(confirmation) and held_out[0] == 0
    for cases, confirm in ((51, False), (0, True), (51, True)):
        with pytest.raises(ValueError, match="evaluation takes 1 to 50 cases"):
            training.evaluation_seeds(cases, confirmation=confirm)
    settings = training.TrainingSettings(steps=1, pool_size=1, refresh_every=0, evaluation_cases=1,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1)
    trained = training.train_liver_model("liver-seg-mr-baseline", tmp_path, settings, log=lambda _: None)
    confirmed = training.record_evaluation("liver-seg-mr-baseline", tmp_path, 1, log=None, confirmation=True,
                                           min_lesion_ml=0.5)
    assert confirmed["metrics"]["held_out_phantoms"] == trained["metrics"]["held_out_phantoms"]
    assert trained["metrics"]["held_out_phantoms"]["min_lesion_ml"] == postprocess.MIN_LESION_VOLUME_ML
    assert confirmed["metrics"]["confirmation_phantoms"]["min_lesion_ml"] == 0.5
    assert confirmed["metrics"]["held_out_phantoms"]["seeds"] == [0, 0]
    assert confirmed["metrics"]["confirmation_phantoms"]["seeds"] == [confirmation[0]] * 2
    assert confirmed["weights_sha256"] == trained["weights_sha256"]
    segmentation_card.write_model_card(tmp_path)
    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert "## Confirmation on phantoms kept back" in card
    assert (f"| `liver-seg-mr-baseline-v1` | {confirmation[0]}–{confirmation[0]} (lesions under 0.5 ml made liver) |"
            in card)  # scored otherwise than the pipeline's default, and said so
    assert "| `liver-seg-mr-baseline-v1` | 0–0 |" in card
    tumour = confirmed["metrics"]["held_out_phantoms"]["tumour"]
    target_line = next(line for line in card.splitlines() if line.startswith("* `liver-seg-mr-baseline-v1`: liver"))
    assert f"tumour Dice ceiling of these images: {tumour['dice_ceiling']:.3f}" in target_line
    shown = tumour["dice_conspicuous"]
    assert (f"on the conspicuous lesions: {shown:.3f})" in target_line) == (shown is not None)
    with pytest.raises(SystemExit):
        training.main(["liver-seg-mr-baseline", "--confirm", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as refused:
        training.main(["liver-seg-mr-baseline", "--evaluate-only", "--min-lesion-ml", "-1", "--out", str(tmp_path)])
    assert refused.value.code == 2

    # A held-out evaluation running beside another that stores its entry meanwhile keeps that entry.
    manifest_path = tmp_path / "liver-seg-mr-baseline-v1.json"
    stored_meanwhile = {"seeds": [99, 99], "note": "stored by another evaluation meanwhile"}

    def other_evaluation_finishes(_line: str) -> None:
        manifest = json.loads(manifest_path.read_text())
        manifest["metrics"]["confirmation_phantoms"] = stored_meanwhile
        manifest_path.write_text(json.dumps(manifest))

    both = training.record_evaluation("liver-seg-mr-baseline", tmp_path, 1, log=other_evaluation_finishes)
    assert both["metrics"]["confirmation_phantoms"] == stored_meanwhile
    assert json.loads(manifest_path.read_text())["metrics"]["confirmation_phantoms"] == stored_meanwhile
    assert both["metrics"]["held_out_phantoms"]["seeds"] == [0, 0]


def test_fine_tuning_starts_from_the_given_model_and_refuses_another_recipes(tmp_path):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=1, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1)
    training.train_liver_model("liver-seg-mr-baseline", tmp_path, settings, log=lambda _: None)
    start = lw.LiverSegmenter.load(tmp_path / "liver-seg-mr-baseline-v1.json", device="cpu")
    tuned_settings = training.TrainingSettings(**{**settings.__dict__, "steps": 1, "learning_rate": 0.0,
                                                  "init_from": str(tmp_path / "liver-seg-mr-baseline-v1.json"),
                                                  "model_version": "liver-seg-mr-baseline-v2"})
    tuned = training.train_liver_model("liver-seg-mr-baseline", tmp_path, tuned_settings, log=lambda _: None)
    # Learning rate 0: the fine-tuned parameters are the starting ones, so they were really loaded
    # (normalisation running statistics still move in training mode, so they are not compared).
    after = dict(lw.LiverSegmenter.load(tmp_path / "liver-seg-mr-baseline-v2.json", device="cpu").model.named_parameters())
    for key, value in start.model.named_parameters():
        assert torch.equal(value, after[key]), key
    assert tuned["training"]["initial_weights"] == {"model_version": "liver-seg-mr-baseline-v1",
                                                    "weights_sha256": start.manifest["weights_sha256"]}
    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert "`liver-seg-mr-baseline-v1`" in card and "`liver-seg-mr-baseline-v2`: started from" in card
    assert f"--init {tmp_path / 'liver-seg-mr-baseline-v1.json'} --version liver-seg-mr-baseline-v2" in card
    with pytest.raises(training.TrainingDataError, match="cannot start a liver-seg-mr training: its model_kind"):
        training.train_liver_model("liver-seg-mr", tmp_path / "x", tuned_settings, log=lambda _: None)


def test_a_wider_network_is_trained_recorded_and_reproducible_and_cannot_start_from_a_narrower_one(tmp_path):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=1, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1,
                                         device="cpu")
    narrow = training.train_liver_model("liver-seg-ct", tmp_path, settings, log=lambda _: None)
    wide_settings = training.TrainingSettings(**{**settings.__dict__, "widths": (16, 24, 32, 40),
                                                 "model_version": "liver-seg-ct-v2"})
    wide = training.train_liver_model("liver-seg-ct", tmp_path, wide_settings, log=lambda _: None)
    assert narrow["architecture"]["widths"] == training.MODEL_RECIPES["liver-seg-ct"].architecture["widths"]
    assert wide["architecture"]["widths"] == [16, 24, 32, 40]
    assert wide["training"]["parameters"] > narrow["training"]["parameters"]
    segmenter = lw.LiverSegmenter.load(tmp_path / "liver-seg-ct-v2.json", device="cpu")
    assert segmenter.model.config.widths == (16, 24, 32, 40)
    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert "--widths 16 24 32 40 --version liver-seg-ct-v2" in card
    grid = " × ".join(f"{v:g}" for v in settings.model_spacing)
    assert f"`liver-seg-ct-v2`: trained from scratch, 1 steps on phantoms of {grid} mm with widths 16-24-32-40, " \
           "Adam lr 0.003" in card
    from_narrow = training.TrainingSettings(**{**wide_settings.__dict__, "model_version": "liver-seg-ct-v3",
                                               "init_from": str(tmp_path / "liver-seg-ct-v1.json")})
    with pytest.raises(training.TrainingDataError, match="its architecture widths"):
        training.train_liver_model("liver-seg-ct", tmp_path, from_narrow, log=lambda _: None)


def test_lesion_balanced_crops_centre_small_lesions_as_often_as_large_ones():
    from inference.liver import training

    labels = np.ones((16, 64, 64), np.uint8)
    labels[2:14, 4:40, 4:40] = postprocess.TUMOUR  # a large lesion: thousands of voxels
    labels[8, 52, 52] = postprocess.TUMOUR  # a one-voxel lesion
    marker = np.zeros((1, *labels.shape), np.float32)
    marker[0, 8, 52, 52] = 1.0  # shows which crops hold the small lesion
    case = training.TrainingCase("test", marker, labels)
    assert [len(v) for v in case.lesion_voxels] == [12 * 36 * 36, 1]

    def small_lesion_share(by_lesion: bool) -> float:
        settings = training.TrainingSettings(patch_size=(4, 8, 8), tumour_crop_fraction=1.0,
                                             crop_by_lesion=by_lesion, intensity_jitter=0.0)
        rng = np.random.default_rng(0)
        crops = [training.random_crop(case, settings, rng)[0] for _ in range(400)]
        return float(np.mean([crop.max() > 0.5 for crop in crops]))

    assert small_lesion_share(False) < 0.01
    assert 0.4 < small_lesion_share(True) < 0.6


def test_mirrored_crops_keep_each_label_on_its_voxel_and_flip_every_axis_about_half_the_time():
    from inference.liver import training

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (8, 16, 16)).astype(np.uint8)
    case = training.TrainingCase("test", labels[None].astype(np.float32), labels)
    settings = training.TrainingSettings(patch_size=(8, 16, 16), intensity_jitter=0.0, mirror=True)
    flipped = np.zeros(3)
    for _ in range(200):
        channels, crop = training.random_crop(case, settings, rng)
        assert np.array_equal(channels[0], crop)  # the image and its labels are mirrored together
        mirrorings = [axes for n in range(4) for axes in itertools.combinations(range(3), n)
                      if np.array_equal(np.flip(labels, axes), crop)]
        assert len(mirrorings) == 1  # the crop is the case mirrored along some of its axes
        flipped[list(mirrorings[0])] += 1
    assert np.all((flipped > 70) & (flipped < 130))
    unmirrored = training.TrainingSettings(patch_size=(8, 16, 16), intensity_jitter=0.0)
    assert all(np.array_equal(training.random_crop(case, unmirrored, rng)[1], labels) for _ in range(20))


def test_site_study_with_a_seg_is_read_onto_the_portal_grid_with_its_phases_aligned(tmp_path):
    from inference.liver import phantom as ph
    from inference.liver import training
    from inference.liver.phantom_dicom import write_liver_dce_study

    phantom = ph.simulate_liver_mr(11, n_lesions=2, motion_mm=6.0)
    write_liver_dce_study(phantom, tmp_path / "study-a")
    recipe = training.MODEL_RECIPES["liver-seg-mr"]
    channels, labels, spacing = training.load_site_study(tmp_path / "study-a", recipe)
    assert channels.shape == (4, *phantom.labels.shape)
    assert spacing == pytest.approx(phantom.spacing)
    assert np.array_equal(labels, phantom.labels)
    aligned = training.aligned_phantom_channels(phantom, recipe.channels)  # the known motion undone
    for k in range(4):
        raw = np.corrcoef(channels[k].ravel(), phantom.images[k].ravel())[0, 1]
        registered = np.corrcoef(channels[k].ravel(), aligned[k].ravel())[0, 1]
        assert registered > 0.95 and registered >= raw - 1e-6
    with pytest.raises(training.TrainingDataError, match="no study folders"):
        training.site_cases(tmp_path / "study-a" / "ground_truth", recipe, training.TrainingSettings(), print)


def test_a_multiphase_ct_model_trains_on_registered_phases_and_reads_a_site_study_as_the_pipeline_does(tmp_path):
    from inference.liver import phantom as ph
    from inference.liver import segmentation_card, training
    from inference.liver.phantom_dicom import write_liver_ct_study

    recipe = training.MODEL_RECIPES["liver-seg-ct-multiphase"]
    assert recipe.modality == "CT" and recipe.channels == ("arterial", "portal")
    settings = training.TrainingSettings(steps=2, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1)
    manifest = training.train_liver_model(recipe.name, tmp_path / "model", settings, log=lambda _: None)
    assert manifest["input"]["channels"] == ["arterial", "portal"] and manifest["input"]["modality"] == "CT"
    segmenter = lw.LiverSegmenter.load(tmp_path / "model" / "liver-seg-ct-multiphase-v1.json", device="cpu")
    assert segmenter.channels == ("arterial", "portal") and manifest["architecture"]["in_channels"] == 2
    assert "pacsnode train liver-seg-ct-multiphase --seed 0 --steps 2 " in (
        tmp_path / "model" / segmentation_card.MODEL_CARD).read_text()

    phantom = ph.simulate_liver_ct(12, n_lesions=2, phases=("arterial", "portal"), motion_mm=6.0)
    write_liver_ct_study(phantom, tmp_path / "site" / "study-a")
    channels, labels, spacing = training.load_site_study(tmp_path / "site" / "study-a", recipe)
    assert channels.shape == (2, *phantom.labels.shape) and spacing == pytest.approx(phantom.spacing)
    assert np.array_equal(labels, phantom.labels)
    aligned = training.aligned_phantom_channels(phantom, recipe.channels)
    raw = np.corrcoef(channels[0].ravel(), phantom.images[0].ravel())[0, 1]
    registered = np.corrcoef(channels[0].ravel(), aligned[0].ravel())[0, 1]
    assert registered > 0.95 and registered >= raw - 1e-6, (raw, registered)
    # The same study read for the single-series CT model gives its portal-venous series.
    single, _, _ = training.load_site_study(tmp_path / "site" / "study-a", training.MODEL_RECIPES["liver-seg-ct"])
    assert np.array_equal(single[0], channels[1])


def test_the_ct_4d_model_starts_from_the_mr_4d_model_but_not_from_another_network(tmp_path):
    from inference.liver import segmentation_card, training

    settings = training.TrainingSettings(steps=1, pool_size=1, refresh_every=0, evaluation_cases=0,
                                         patch_size=(8, 32, 32), inference_patch_size=(16, 32, 32), batch_size=1)
    mr = training.train_liver_model("liver-seg-mr", tmp_path / "mr", settings, log=lambda _: None)
    ct = training.train_liver_model("liver-seg-ct", tmp_path / "ct", settings, log=lambda _: None)
    transfer = training.TrainingSettings(**{**settings.__dict__, "learning_rate": 0.0,
                                            "init_from": str(tmp_path / "mr" / "liver-seg-mr-v1.json")})
    manifest = training.train_liver_model("liver-seg-ct-4d", tmp_path / "ct4d", transfer, log=lambda _: None)
    assert manifest["input"]["channels"] == ["arterial", "portal"] and manifest["input"]["modality"] == "CT"
    assert manifest["architecture"]["phases"] == 2 and mr["architecture"]["phases"] == 4
    assert manifest["training"]["initial_weights"]["weights_sha256"] == mr["weights_sha256"]
    # A step at learning rate 0: the CT model carries the MR model's weights, and runs on two phases.
    started = lw.LiverSegmenter.load(tmp_path / "ct4d" / "liver-seg-ct-4d-v1.json", device="cpu")
    source = lw.LiverSegmenter.load(tmp_path / "mr" / "liver-seg-mr-v1.json", device="cpu")
    started_parameters = dict(started.model.named_parameters())  # (normalisation statistics move in a step)
    for key, value in source.model.named_parameters():
        assert torch.equal(started_parameters[key], value), key
    assert started.predict(np.zeros((2, 16, 32, 32), np.float32)).shape == (3, 16, 32, 32)
    assert f"--init {tmp_path / 'mr' / 'liver-seg-mr-v1.json'}" in (tmp_path / "ct4d" / segmentation_card.MODEL_CARD).read_text()
    # A network of another kind cannot start it, nor can the MR model start a CT U-Net.
    from_unet = training.TrainingSettings(**{**transfer.__dict__, "init_from": str(tmp_path / "ct" / "liver-seg-ct-v1.json")})
    with pytest.raises(training.TrainingDataError, match="its model_kind 'unet-3d' is not 'fused-unet-4d'"):
        training.train_liver_model("liver-seg-ct-4d", tmp_path / "x", from_unet, log=lambda _: None)
    with pytest.raises(training.TrainingDataError, match="cannot start a liver-seg-ct training"):
        training.train_liver_model("liver-seg-ct", tmp_path / "y", transfer, log=lambda _: None)
    assert ct["model_kind"] == "unet-3d"
