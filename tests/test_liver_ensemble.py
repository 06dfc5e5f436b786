"""Liver model ensembles: the mean of the members' probabilities, pinned members, the command and the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.base import PipelineInputError
from inference.liver import ensemble as le
from inference.liver import models, preprocess
from inference.liver import weights as lw
from inference.liver.pipeline import load_segmenter

torch.set_num_threads(1)


def _member(folder: Path, name: str, seed: int, channels: tuple[str, ...] = ("ct",), modality: str = "CT",
            recipe: str = "liver-seg-ct", spacing: tuple[float, float, float] = (4.0, 3.0, 3.0)) -> Path:
    """A small untrained U-Net written as a model of *recipe* (different *seed*, different weights)."""
    torch.manual_seed(seed)
    model = models.UNet3D(models.UNet3DConfig(in_channels=len(channels), widths=(4, 8))).eval()
    folder.mkdir(parents=True, exist_ok=True)
    sha = lw.save_weights(model, folder / f"{name}.pt")
    manifest = lw.build_manifest(
        model_version=name, model_kind="unet-3d", architecture=models.config_to_json(model.config),
        weights_file=f"{name}.pt", weights_sha256=sha, channels=channels, modality=modality,
        spacing_zyx_mm=spacing, normalisation=preprocess.default_normalisation(modality),
        patch_size_zyx=(8, 16, 16), training={"recipe": recipe, "description": "test member"},
    )
    path = folder / f"{name}.json"
    lw.write_manifest(manifest, path)
    return path


def test_an_ensemble_segments_with_the_mean_of_its_members_probabilities(tmp_path):
    a, b = _member(tmp_path, "a-v1", 0), _member(tmp_path, "b-v1", 1)
    path = le.write_ensemble("test-ensemble-v1", [a, b])
    assert path == tmp_path / "test-ensemble-v1.json"
    model = le.load_liver_model(path, device="cpu")
    assert isinstance(model, le.LiverEnsemble) and model.version == "test-ensemble-v1"
    assert model.channels == ("ct",) and model.modality == "CT"
    assert isinstance(le.load_liver_model(a, device="cpu"), lw.LiverSegmenter)

    hu = np.random.default_rng(3).normal(40, 80, size=(1, 12, 30, 34)).astype(np.float32)
    spacing = (5.0, 2.5, 2.5)
    first = lw.LiverSegmenter.load(a, device="cpu").segment(hu, spacing)
    second = lw.LiverSegmenter.load(b, device="cpu").segment(hu, spacing)
    combined = model.segment(hu, spacing)
    np.testing.assert_allclose(combined, (first + second) / 2, atol=1e-6)
    assert np.abs(first - second).max() > 1e-3  # the members differ, so the mean is neither of them
    np.testing.assert_allclose(combined.sum(axis=0), 1.0, atol=1e-5)
    assert le.read_model_manifest(path)["input"]["channels"] == ["ct"]


def test_an_ensemble_refuses_members_that_read_or_prepare_other_inputs_or_lie_in_other_folders(tmp_path):
    ct = _member(tmp_path, "ct-v1", 0)
    phases = _member(tmp_path, "phases-v1", 1, channels=("arterial", "portal"))
    with pytest.raises(le.LiverEnsembleError, match="members read different inputs"):
        le.write_ensemble("test-ensemble-v1", [ct, phases])
    finer = _member(tmp_path, "finer-v1", 3, spacing=(2.0, 1.5, 1.5))
    with pytest.raises(le.LiverEnsembleError, match="share model spacing and normalisation"):
        le.write_ensemble("test-ensemble-v1", [ct, finer])
    elsewhere = _member(tmp_path / "other", "ct-v2", 2)
    with pytest.raises(le.LiverEnsembleError, match="must lie in one folder"):
        le.write_ensemble("test-ensemble-v1", [ct, elsewhere])
    with pytest.raises(le.LiverEnsembleError, match="at least two members"):
        le.write_ensemble("test-ensemble-v1", [ct])
    assert not (tmp_path / "test-ensemble-v1.json").exists()


def test_an_ensemble_refuses_a_member_swapped_for_other_weights_or_tampered(tmp_path):
    a, b = _member(tmp_path, "a-v1", 0), _member(tmp_path, "b-v1", 1)
    path = le.write_ensemble("test-ensemble-v1", [a, b])
    # b's files replaced by other, self-consistent weights: b alone loads, the ensemble does not
    _member(tmp_path, "b-v1", 5)
    lw.LiverSegmenter.load(b, device="cpu")
    with pytest.raises(le.LiverEnsembleError, match="pins b-v1.json as b-v1"):
        le.load_liver_model(path, device="cpu")
    # a member whose weights no longer match its own manifest
    _member(tmp_path, "b-v1", 1)
    le.load_liver_model(path, device="cpu")
    data = bytearray(a.with_suffix(".pt").read_bytes())
    data[-20] ^= 0xFF
    a.with_suffix(".pt").write_bytes(bytes(data))
    with pytest.raises(lw.LiverWeightsTamperedError, match="sha256"):
        le.load_liver_model(path, device="cpu")
    # a manifest that lists one member only
    manifest = json.loads(path.read_text())
    manifest["members"] = manifest["members"][:1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(le.LiverEnsembleError, match="at least two members"):
        le.load_liver_model(path, device="cpu")


def test_a_cascade_takes_the_liver_from_its_first_member_and_the_tumours_from_the_others(tmp_path):
    coarse = _member(tmp_path, "coarse-v1", 0)
    fine = [_member(tmp_path, f"fine{i}-v1", i, spacing=(2.0, 1.5, 1.5)) for i in (1, 2)]
    path = le.write_ensemble("test-ensemble-v1", [coarse, *fine], combination=le.CASCADE)
    model = le.load_liver_model(path, device="cpu")
    # members on different grids: the cascade reads the study on the finer ones' (phantoms, routing)
    assert isinstance(model, le.LiverEnsemble) and model.combination == le.CASCADE
    assert model.spacing == (2.0, 1.5, 1.5)
    assert le.read_model_manifest(path)["input"]["spacing_zyx_mm"] == [2.0, 1.5, 1.5]

    hu = np.random.default_rng(4).normal(40, 80, size=(1, 12, 30, 34)).astype(np.float32)
    spacing = (5.0, 2.5, 2.5)
    first = lw.LiverSegmenter.load(coarse, device="cpu").segment(hu, spacing)
    others = [lw.LiverSegmenter.load(f, device="cpu").segment(hu, spacing) for f in fine]
    mean = (others[0] + others[1]) / 2
    combined = model.segment(hu, spacing)
    np.testing.assert_allclose(combined.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(combined[0], first[0], atol=1e-6)  # where the liver is: the first member
    share = combined[2] / (combined[1] + combined[2])  # how it splits: the others' mean
    np.testing.assert_allclose(share, mean[2] / (mean[1] + mean[2]), atol=1e-4)
    for alone in others:  # neither tumour model alone
        assert np.abs(share - alone[2] / (alone[1] + alone[2])).max() > 1e-3
    assert np.abs(combined - first).max() > 1e-3


def test_cascade_probabilities_make_liver_where_the_tumour_model_sees_only_background():
    liver = np.array([[0.2, 0.9], [0.5, 0.05], [0.3, 0.05]], np.float32).reshape(3, 1, 1, 2)
    tumour = np.array([[0.0, 0.1], [0.0, 0.3], [1.0, 0.6]], np.float32).reshape(3, 1, 1, 2)
    tumour[:, 0, 0, 0] = (1.0, 0.0, 0.0)  # the tumour model is sure the first voxel is background
    combined = le.cascade_probabilities(liver, tumour)
    np.testing.assert_allclose(combined[:, 0, 0, 0], (0.2, 0.8, 0.0), atol=1e-6)
    np.testing.assert_allclose(combined[:, 0, 0, 1], (0.9, 0.1 * 1 / 3, 0.1 * 2 / 3), atol=1e-6)


def test_an_unknown_combination_is_refused(tmp_path):
    a, b = (_member(tmp_path, f"{n}-v1", i) for i, n in enumerate("ab"))
    path = le.write_ensemble("test-ensemble-v1", [a, b], combination=le.CASCADE)
    manifest = json.loads(path.read_text())
    manifest["combination"] = "median of the members' probabilities"
    path.write_text(json.dumps(manifest))
    with pytest.raises(le.LiverEnsembleError, match="unknown combination .median of the members"):
        le.load_liver_model(path, device="cpu")


def test_the_pipeline_loads_an_ensemble_and_refuses_one_of_another_modality(tmp_path):
    a, b = _member(tmp_path, "a-v1", 0), _member(tmp_path, "b-v1", 1)
    path = le.write_ensemble("test-ensemble-v1", [a, b])
    assert load_segmenter(path, "CT").version == "test-ensemble-v1"
    with pytest.raises(PipelineInputError, match="test-ensemble-v1 .* is for CT, but the study is MR"):
        load_segmenter(path, "MR")


def test_pacsnode_ensemble_writes_evaluates_and_cards_the_ensemble(tmp_path):
    from click.testing import CliRunner

    from inference.liver import segmentation_card, training
    from node.cli import main

    a, b = _member(tmp_path, "a-v1", 0), _member(tmp_path, "b-v1", 1)  # of recipe liver-seg-ct
    runner = CliRunner()
    refused = runner.invoke(main, ["ensemble", "liver-seg", "liver-seg-ct-v3", str(a), str(b)])
    assert refused.exit_code == 2 and "must contain '-ensemble-'" in refused.output
    result = runner.invoke(main, ["ensemble", "liver-seg", "liver-seg-ct-ensemble-v1", str(a), str(b),
                                  "--evaluation-cases", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "liver-seg-ct-ensemble-v1.json").read_text())
    held_out = manifest["metrics"]["held_out_phantoms"]
    assert held_out["seeds"] == [0, 0] and held_out["cases"] == 1
    assert [m["model_version"] for m in manifest["members"]] == ["a-v1", "b-v1"]

    confirmed = runner.invoke(main, ["ensemble", "liver-seg", "liver-seg-ct-ensemble-v1", "--evaluate-only",
                                     "--confirm", "--evaluation-cases", "1", "--out", str(tmp_path)])
    assert confirmed.exit_code == 0, confirmed.output
    manifest = json.loads((tmp_path / "liver-seg-ct-ensemble-v1.json").read_text())
    assert manifest["metrics"]["held_out_phantoms"] == held_out
    assert manifest["metrics"]["confirmation_phantoms"]["seeds"] == [training.CONFIRMATION_SEEDS[0]] * 2

    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert "## Ensembles" in card
    assert "| `liver-seg-ct-ensemble-v1` | mean | `a-v1`, `b-v1` | ct (CT) |" in card
    assert "| `liver-seg-ct-ensemble-v1` | 0–0 |" in card  # a held-out row beside the trained models'
    assert ("pacsnode ensemble liver-seg liver-seg-ct-ensemble-v1 inference/liver/weights/a-v1.json "
            "inference/liver/weights/b-v1.json --evaluation-cases 1") in card

    # a cascade of a coarse liver model and a fine tumour model: written, evaluated on the fine grid, carded
    fine = _member(tmp_path, "fine-v1", 2, spacing=(2.0, 1.5, 1.5))
    result = runner.invoke(main, ["ensemble", "liver-seg", "liver-seg-ct-ensemble-v2", str(a), str(fine), "--cascade",
                                  "--evaluation-cases", "1"])
    assert result.exit_code == 0, result.output
    cascade = json.loads((tmp_path / "liver-seg-ct-ensemble-v2.json").read_text())
    assert cascade["combination"] == le.CASCADE
    assert cascade["metrics"]["held_out_phantoms"]["phantom_spacing_mm"] == [2.0, 1.5, 1.5]
    card = (tmp_path / segmentation_card.MODEL_CARD).read_text()
    assert "| `liver-seg-ct-ensemble-v2` | cascade (liver, then tumour) | `a-v1`, `fine-v1` | ct (CT) |" in card
    assert ("pacsnode ensemble liver-seg liver-seg-ct-ensemble-v2 inference/liver/weights/a-v1.json "
            "inference/liver/weights/fine-v1.json --cascade --evaluation-cases 1") in card
