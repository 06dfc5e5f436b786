"""Liver lesion classifiers (issue 6): patches, clinical encoding, weights loading, model choice, training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.liver.lesion_classifier import (
    LesionClassifier,
    LesionModelError,
    choose_models,
    default_manifest,
)
from inference.liver.lesion_evaluation import evaluate, format_tables
from inference.liver.lesion_evaluation import main as evaluation_main
from inference.liver.lesion_kinds import LesionKind
from inference.liver.lesion_models import (
    CLINICAL_FEATURES,
    MODEL_SPECS,
    SIX,
    encode_clinical,
)
from inference.liver.lesion_patches import (
    CLS_SHAPE,
    CLS_SPACING,
    PATCH_SIZE,
    LesionPatchError,
    extract_lesion_patches,
)
from inference.liver.lesion_training import (
    TrainingSeedError,
    build_dataset,
    main,
    phantom_lesions,
)
from inference.model_files import sha256_of_file

torch.set_num_threads(1)

#: A held-out phantom whose single cyst is 29.5 mm across (seed < 10000: never trained on).
CYST_SEED = 5


def _synthetic_lesion() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Six channels: liver at 100 (50 on channel 1), a 16 mm disc lesion at 200 on channel 0, air outside."""
    shape = (10, 80, 80)
    spacing = (5.0, 1.0, 1.0)
    z, y, x = np.indices(shape)
    liver = ((y - 40) ** 2 + (x - 40) ** 2 < 35 ** 2) & (z >= 1) & (z <= 8)
    lesion = ((y - 38) ** 2 + (x - 43) ** 2 <= 8 ** 2) & (z >= 3) & (z <= 6)
    images = np.zeros((6, *shape), np.float32)
    images[:, liver] = 100.0
    images[1, liver] = 50.0
    images[0, lesion] = 200.0
    return images, lesion, liver, spacing


def test_patches_shape_normalisation_and_paste_round_trip() -> None:
    images, lesion, liver, spacing = _synthetic_lesion()
    patches = extract_lesion_patches(images, spacing, lesion, liver)
    assert patches.patches.shape == (4, 7, PATCH_SIZE, PATCH_SIZE)
    assert patches.slice_indices == (3, 4, 5, 6)
    assert 15.0 <= patches.diameter_mm <= 17.0
    assert patches.size_feature == pytest.approx(np.log(patches.diameter_mm))
    mask = patches.patches[:, -1] > 0.5
    # Normalised to the surrounding liver: liver reads 1 on every channel, the lesion 2 on channel 0.
    assert np.median(patches.patches[:, 0][mask]) == pytest.approx(2.0, abs=0.05)
    assert np.median(patches.patches[:, 1][~mask]) == pytest.approx(1.0, abs=0.05)
    assert np.median(patches.patches[:, 2][mask]) == pytest.approx(1.0, abs=0.05)
    # The crop is centred on the lesion: its mask sits in the middle of the patch.
    centre = np.argwhere(mask[0]).mean(axis=0)
    assert np.allclose(centre, (PATCH_SIZE - 1) / 2, atol=1.0)
    pasted = patches.paste(patches.patches[:, -1], lesion.shape) > 0.5
    overlap = (pasted & lesion).sum() / (pasted | lesion).sum()
    assert overlap > 0.9


def test_patches_refuse_empty_mask_and_mismatched_shapes() -> None:
    images, lesion, liver, spacing = _synthetic_lesion()
    with pytest.raises(LesionPatchError, match="empty"):
        extract_lesion_patches(images, spacing, np.zeros_like(lesion))
    with pytest.raises(LesionPatchError, match="lesion mask shape"):
        extract_lesion_patches(images, spacing, lesion[:, :40])
    with pytest.raises(LesionPatchError, match="liver mask shape"):
        extract_lesion_patches(images, spacing, lesion, liver[1:])
    patches = extract_lesion_patches(images, spacing, lesion)
    with pytest.raises(LesionPatchError, match="maps must have shape"):
        patches.paste(np.zeros((1, PATCH_SIZE, PATCH_SIZE)), lesion.shape)


def test_encode_clinical_is_fixed_length_and_marks_missing_fields() -> None:
    empty = encode_clinical(None)
    full = encode_clinical({"cirrhosis": True, "afp_ng_ml": 400.0, "albumin_g_l": 30.0, "ascites": False,
                            "age_years": 99.0}, age_years=61, sex="M")
    assert empty.shape == full.shape == (len(CLINICAL_FEATURES),)
    names = list(CLINICAL_FEATURES)
    assert empty[names.index("afp_ng_ml:missing")] == 1.0
    assert empty[names.index("sex:missing")] == 1.0
    assert full[names.index("afp_ng_ml:missing")] == 0.0
    assert full[names.index("afp_ng_ml")] > 1.0  # 400 ng/ml is far above the normal range
    assert full[names.index("cirrhosis:yes")] == 1.0 and full[names.index("cirrhosis:missing")] == 0.0
    assert full[names.index("ascites:no")] == 1.0
    assert full[names.index("sex:M")] == 1.0 and full[names.index("sex:F")] == 0.0
    # The DICOM header's age wins over the store's.
    assert full[names.index("age_years")] == pytest.approx((61 - 55) / 15)
    assert full[names.index("ca19_9_u_ml:missing")] == 1.0
    with pytest.raises(ValueError, match="unknown clinical field"):
        encode_clinical({"weight_kg": 80})
    with pytest.raises(ValueError, match="must be true or false"):
        encode_clinical({"cirrhosis": "yes"})


def _copy_model(tmp_path: Path, letter: str = "A") -> Path:
    manifest = default_manifest(letter)
    shutil.copy(manifest, tmp_path / manifest.name)
    shutil.copy(manifest.with_suffix(".pt"), tmp_path / manifest.with_suffix(".pt").name)
    return tmp_path / manifest.name


def test_classifier_refuses_tampered_weights_and_malformed_manifests(tmp_path: Path) -> None:
    manifest = _copy_model(tmp_path)
    assert LesionClassifier.load(manifest, device="cpu").letter == "A"
    weights = manifest.with_suffix(".pt")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LesionModelError, match="sha256"):
        LesionClassifier.load(manifest)
    manifest.write_text("{not json")
    with pytest.raises(LesionModelError, match="cannot read"):
        LesionClassifier.load(manifest)
    content = json.loads(default_manifest("A").read_text())
    del content["weights_sha256"]
    manifest.write_text(json.dumps(content))
    with pytest.raises(LesionModelError, match="weights_sha256"):
        LesionClassifier.load(manifest)
    content = json.loads(default_manifest("A").read_text())
    content["sequences"] = ["t2", "dwi", "pre"]
    manifest.write_text(json.dumps(content))
    with pytest.raises(LesionModelError, match="does not describe model A"):
        LesionClassifier.load(manifest)
    with pytest.raises(LesionModelError, match="no lesion classifier manifest"):
        LesionClassifier.load(tmp_path / "absent.json")


def test_choose_models_falls_back_to_the_unenhanced_models() -> None:
    assert choose_models(set(SIX), True) == {"seven": "A", "binary": "C", "malignant": "F"}
    assert choose_models(set(SIX) | {"adc"}, False) == {"seven": "A", "binary": "C", "malignant": "E"}
    assert choose_models({"t2", "dwi", "pre", "portal"}, True) == {"seven": "B", "binary": "D", "malignant": "G"}
    assert choose_models({"t2", "dwi", "pre"}, False) == {"seven": "B", "binary": "D"}
    with pytest.raises(LesionModelError, match="dwi"):
        choose_models({"t2", "pre", "arterial", "portal"}, True)


def test_committed_weights_are_small_and_all_load() -> None:
    total = 0
    for letter, spec in MODEL_SPECS.items():
        classifier = LesionClassifier.load(default_manifest(letter), device="cpu")
        assert (classifier.task, classifier.sequences, classifier.uses_clinical) == (
            spec.task, spec.sequences, spec.uses_clinical)
        total += default_manifest(letter).with_suffix(".pt").stat().st_size
    assert total < 10 * 1024 * 1024


def test_model_a_classifies_a_held_out_cyst_and_looks_at_it() -> None:
    from inference.liver.phantom import simulate_liver_mr

    phantom = simulate_liver_mr(CYST_SEED, shape=CLS_SHAPE, spacing=CLS_SPACING, channels=SIX, n_lesions=1,
                                lesion_kinds=[LesionKind.CYST])
    [(truth, patches)] = phantom_lesions(phantom)
    assert truth.longest_axial_diameter_mm > 20
    classifier = LesionClassifier.load(default_manifest("A"), device="cpu")
    prediction = classifier.classify(patches)
    assert prediction.probabilities.sum() == pytest.approx(1.0)
    assert prediction.per_slice.shape == (len(patches.slice_indices), 7)
    assert prediction.label == "cyst"
    saliency = classifier.saliency(patches, prediction.predicted)
    assert saliency.shape == (len(patches.slice_indices), PATCH_SIZE, PATCH_SIZE)
    assert 0.0 <= saliency.min() and saliency.max() == pytest.approx(1.0)
    lesion = patches.patches[:, -1] > 0.5
    near = np.zeros_like(lesion)
    for i in range(len(lesion)):  # the lesion and a ring of 3 pixels around it
        from scipy import ndimage
        near[i] = ndimage.binary_dilation(lesion[i], iterations=3)
    corners = np.zeros_like(lesion)
    corners[:, :6, :6] = corners[:, :6, -6:] = corners[:, -6:, :6] = corners[:, -6:, -6:] = True
    assert saliency[near].mean() > 2 * saliency[corners & ~near].mean()


def test_training_refuses_evaluation_seeds(tmp_path: Path) -> None:
    with pytest.raises(TrainingSeedError, match="held-out"):
        build_dataset(3, first_seed=500, cache_dir=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--first-seed", "9999", "--out", str(tmp_path), "--cache", str(tmp_path), "--cases", "1"])
    assert exit_info.value.code == 2


def test_tiny_training_run_is_reproducible(tmp_path: Path) -> None:
    args = ["--models", "AF", "--cases", "6", "--epochs", "1", "--malignant-epochs", "1", "--seed", "3",
            "--cache", str(tmp_path / "cache"), "--evaluation-cases", "0"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    for name in ("liver-cls-a-v1.pt", "liver-cls-f-v1.pt"):
        assert sha256_of_file(tmp_path / "one" / name) == sha256_of_file(tmp_path / "two" / name)
    manifest = json.loads((tmp_path / "one" / "liver-cls-f-v1.json").read_text())
    assert manifest["training"]["data"]["phantom_seeds"] == [10000, 10005]
    assert LesionClassifier.load(tmp_path / "one" / "liver-cls-f-v1.json", device="cpu").uses_clinical


def test_evaluation_gives_the_seed_tables_on_held_out_cases() -> None:
    manifests = {x: default_manifest(x) for x in "ACEF"}
    report = evaluate(manifests, cases=7, first_seed=0, log=lambda _message: None)
    held = report["held_out"]
    assert held["cases"] == 7 and held["last_seed"] < 10000
    assert set(held["cases_per_kind"].values()) == {1}
    assert len(report["models"]["A"]["report"]["per_class"]) == 7
    assert report["models"]["E"]["report"]["n_cases"] == 3  # the malignant cases only
    assert report["models"]["A"]["report"]["accuracy"]["successes"] >= 5
    assert {"F vs E"} <= set(report["comparisons"])
    text = format_tables(report)
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "confusion matrix, model F"):
        assert heading in text
    json.dumps(report)
    with pytest.raises(SystemExit) as exit_info:
        evaluation_main(["--seed", "9990", "--cases", "20"])
    assert exit_info.value.code == 2


def _site_study(root: Path, type_codes: bool = True) -> Path:
    """A six-sequence phantom study as a site would send it for training: its lesion SEG's Segmented
    Property Types are the class codes, clinical.json beside the images."""
    from pydicom import dcmread
    from pydicom.sr.codedict import codes

    from dicom_io.identity import AlgorithmInfo
    from dicom_io.seg import SegmentationWriter, SegmentSpec
    from inference.liver.phantom_dicom import write_liver_lesion_study

    folder = write_liver_lesion_study(root / "study", 4, lesion_kinds=[LesionKind.CYST, LesionKind.HCC])
    truth = json.loads((folder / "ground_truth" / "truth.json").read_text())
    labels = np.load(folder / "ground_truth" / "labels.npz")["lesion_labels"]
    portal = folder / truth["series"]["portal"]["folder"]
    sources = sorted((dcmread(p) for p in portal.glob("*.dcm")), key=lambda ds: float(ds.ImagePositionPatient[2]))
    masks = {SegmentSpec(label=f"Lesion {lesion['index']}", category=codes.SCT.MorphologicallyAbnormalStructure,
                         type=LesionKind(lesion["kind_index"]).code if type_codes else codes.SCT.Neoplasm,
                         tracking_id=f"Lesion {lesion['index']}"): labels == lesion["index"]
             for lesion in truth["lesions"]}
    seg = SegmentationWriter().write(sources, masks, AlgorithmInfo(name="site ROI", version="1"), 95, "Lesion ROI")
    (folder / "95_roi").mkdir()
    seg.save_as(folder / "95_roi" / "seg.dcm", enforce_file_format=True)
    shutil.move(folder / "ground_truth" / "clinical.json", folder / "clinical.json")
    shutil.rmtree(folder / "ground_truth")
    return root


def test_training_reads_a_sites_labelled_studies(tmp_path: Path) -> None:
    from inference.liver.lesion_site_data import SiteDataError, read_site_lesions

    data = _site_study(tmp_path / "site")
    lesions, studies = read_site_lesions(data, log_line=lambda _: None)
    assert len(studies) == 1
    assert sorted(kind for _, kind, _, _ in lesions) == [LesionKind.CYST, LesionKind.HCC]
    assert all(patches.shape[1:] == (7, 32, 32) for patches, _, _, _ in lesions)
    no_data = encode_clinical(None)
    assert all(not np.array_equal(vector, no_data) for _, _, _, vector in lesions)  # clinical.json reached it
    out = tmp_path / "weights"
    assert main(["--data", str(data), "--no-phantoms", "--models", "A", "--epochs", "1", "--evaluation-cases", "0",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "liver-cls-a-v1.json").read_text())
    assert manifest["training"]["data"]["site_studies"] == studies and manifest["training"]["data"]["lesions"] == 2
    unlabelled = _site_study(tmp_path / "unlabelled", type_codes=False)
    messages: list[str] = []
    with pytest.raises(SiteDataError, match="no usable labelled lesion"):
        read_site_lesions(unlabelled, log_line=messages.append)
    assert "Segmented Property Type" in messages[0] and "85057007" in messages[0]
