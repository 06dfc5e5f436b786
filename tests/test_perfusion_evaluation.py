"""``pacsnode evaluate perfusion``: held-out phantoms, every figure consistent, corrupted maps score worse."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from inference.perfusion.evaluation import (
    MAP_METRICS,
    MAP_NAMES,
    EvaluationError,
    evaluate_perfusion,
    format_report,
    held_out_seeds,
    load_case,
    rescore_with_maps,
    score_analysis,
    score_map,
    training_seeds,
)
from inference.perfusion.pipeline import PerfusionSettings, analyse_dsc
from inference.perfusion.simulation import StrokePhantomDesign
from node.cli import main

#: A coarser phantom (64×64×6 instead of 128×128×12) so that a case simulates in a few seconds.
SMALL = StrokePhantomDesign(matrix=(64, 64), pixel_mm=3.2, n_slices=6)


@pytest.fixture(scope="module")
def cli_report() -> dict:
    result = CliRunner().invoke(main, ["evaluate", "perfusion", "--cases", "1", "--methods", "osvd,ssvd", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def small_case():
    case = load_case(1001, 50.0, SMALL)
    settings = PerfusionSettings.from_options(
        {"method": "osvd", "tissue_to_artery_relaxivity": case.phantom.relaxivity.tissue_to_artery_ratio})
    analysis = analyse_dsc(case.volume.array, case.volume.times_s, case.volume.echo_time_s, case.volume.spacing,
                           settings)
    return case, analysis


def test_the_command_reports_every_method_on_held_out_phantoms(cli_report: dict) -> None:
    assert cli_report["settings"]["seeds"] == [1001]
    assert not set(cli_report["settings"]["seeds"]) & set(cli_report["settings"]["training_seeds_excluded"])
    assert list(cli_report["methods"]) == ["osvd", "ssvd"]
    truth = cli_report["phantoms"][0]["truth"]
    for key, result in cli_report["methods"].items():
        [case] = result["cases"]
        for region in ("tissue", "hypoperfused"):
            for name in MAP_NAMES:
                scores = case["maps"][region][name]
                assert set(scores) == set(MAP_METRICS)
                assert -1.0 <= scores["pcc"] <= 1.0 and -1.0 <= scores["scc"] <= 1.0, (key, region, name)
                assert scores["ssim"] <= 1.0 and scores["nrmse"] > 0 and math.isfinite(scores["psnr"])
        tmax6 = case["tmax6"]
        for metric in ("auc", "dice", "iou"):
            assert 0.0 <= tmax6[metric] <= 1.0
        assert tmax6["iou"] <= tmax6["dice"]                       # IoU = D / (2 − D) ≤ D
        assert tmax6["iou"] == pytest.approx(tmax6["dice"] / (2 - tmax6["dice"]))
        assert tmax6["hd95_mm"] >= 0
        volumes = case["volumes"]
        assert volumes["true_core_ml"] == pytest.approx(truth["core_ml"])
        assert volumes["true_hypoperfusion_ml"] == pytest.approx(truth["hypoperfusion_ml"])
        assert volumes["mismatch_ml"] == pytest.approx(volumes["hypoperfusion_ml"] - volumes["core_ml"])
        assert case["defuse3"]["truth"] == truth["defuse3_eligible"]
        assert case["defuse3"]["agrees"] == (case["defuse3"]["estimate"] == case["defuse3"]["truth"])
        assert set(case["cbf_cells"]) >= {"grey matter / normal", "grey matter / core", "white matter / penumbra"}
        assert result["mean"]["tmax6"]["dice"] == pytest.approx(tmax6["dice"])   # one case: mean = the case
    osvd = cli_report["methods"]["osvd"]["cases"][0]
    assert osvd["tmax6"]["dice"] >= 0.90
    assert osvd["defuse3"]["agrees"]
    assert osvd["aif"]["in_artery_fraction"] >= 0.8
    assert osvd["volumes"]["hypoperfusion_ml"] == pytest.approx(truth["hypoperfusion_ml"], rel=0.15)
    # Known behaviour: all SVD variants underestimate grey-matter CBF (short MTT, dispersion).
    assert osvd["cbf_cells"]["grey matter / normal"] < 0


def test_the_table_shows_the_report_side_by_side(cli_report: dict) -> None:
    table = format_report(cli_report)
    header = next(line for line in table.splitlines() if "oSVD" in line)
    assert header.index("oSVD") < header.index("sSVD")
    dice_row = next(line for line in table.splitlines() if line.strip().startswith("DICE"))
    assert f"{cli_report['methods']['osvd']['cases'][0]['tmax6']['dice']:.3f}" in dice_row
    assert "DEFUSE 3 decision = truth's" in table and "Research use only" in table


def test_a_perfect_map_scores_perfectly(small_case) -> None:
    case, _ = small_case
    truth = case.phantom.truth.cbf
    scores = score_map(np.nan_to_num(truth), truth, case.phantom.tissue_mask)
    assert scores["psnr"] is None                                   # infinite: no error at all
    assert scores["pcc"] == pytest.approx(1.0) and scores["scc"] == pytest.approx(1.0)
    assert scores["ssim"] == pytest.approx(1.0) and scores["nrmse"] == 0.0


def test_a_corrupted_map_scores_worse(small_case) -> None:
    case, analysis = small_case
    honest = score_analysis(analysis, case.phantom)
    rng = np.random.default_rng(7)
    maps = analysis.maps
    noisy_cbf = maps.cbf * rng.lognormal(0.0, 0.5, maps.cbf.shape).astype(np.float32)
    late_tmax = maps.tmax + rng.normal(2.5, 2.0, maps.tmax.shape).astype(np.float32)
    corrupted = rescore_with_maps(analysis, replace(maps, cbf=noisy_cbf, tmax=late_tmax), case.phantom)
    for region in ("tissue", "hypoperfused"):
        good, bad = honest["maps"][region], corrupted["maps"][region]
        assert bad["cbf"]["psnr"] < good["cbf"]["psnr"]
        assert bad["cbf"]["nrmse"] > good["cbf"]["nrmse"]
        assert bad["cbf"]["pcc"] < good["cbf"]["pcc"]
        assert bad["tmax"]["nrmse"] > good["tmax"]["nrmse"]
    assert corrupted["maps"]["tissue"]["cbf"]["ssim"] < honest["maps"]["tissue"]["cbf"]["ssim"]
    assert corrupted["maps"]["tissue"]["cbv"] == honest["maps"]["tissue"]["cbv"]  # CBV untouched
    assert corrupted["tmax6"]["dice"] < honest["tmax6"]["dice"] - 0.05
    assert corrupted["tmax6"]["auc"] < honest["tmax6"]["auc"]
    assert corrupted["volumes"]["hypoperfusion_ml"] > honest["volumes"]["hypoperfusion_ml"]


def test_training_seeds_are_refused() -> None:
    assert {0, 101} <= training_seeds()
    assert held_out_seeds(1001, 3) == [1001, 1002, 1003]
    with pytest.raises(EvaluationError, match=r"\[101\]"):
        held_out_seeds(100, 3)
    with pytest.raises(EvaluationError, match="unknown perfusion method"):
        evaluate_perfusion(1, 50.0, 1001, ["magic"])
    result = CliRunner().invoke(main, ["evaluate", "perfusion", "--seed", "0", "--cases", "1"])
    assert result.exit_code != 0 and "never saw" in result.output
