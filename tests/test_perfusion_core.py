"""Numerical core of the perfusion pipeline: simulator, ΔR2*, AIF, SVD deconvolution, lesions, metrics.

Known behaviour pinned here (see /work/shared/notes/perfusion.md): SVD methods
underestimate high CBF at short MTT, sSVD overestimates CBF when the tissue
arrives before the AIF while the circulant methods do not care, circulant
Tmax wraps to negative times, CBV is accurate; on the stroke phantom oSVD's
Tmax > 6 s mask and the DEFUSE 3 decision agree with the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.base import PipelineInputError
from inference.perfusion import metrics
from inference.perfusion.aif import select_aif
from inference.perfusion.deconvolution import deconvolve
from inference.perfusion.errors import (
    MissingEchoTimeError,
    NoBaselineError,
    NoBolusDetectedError,
    TooFewTimePointsError,
)
from inference.perfusion.lesions import Defuse3Criteria, segment_lesions
from inference.perfusion.signal import detect_bolus, signal_to_delta_r2star
from inference.perfusion.simulation import (
    AcquisitionTiming,
    StrokePhantomDesign,
    TissueParameters,
    add_rician_noise,
    make_stroke_phantom,
    parameter_grid,
    residue_function,
    simulate_dsc,
)

TIMING = AcquisitionTiming()


def _maps(params: TissueParameters, method: str, snr: float | None = None, seed: int = 0, **kwargs):
    """Simulate and deconvolve; with ``snr`` the tissue is noisy but the AIF is not (one AIF
    realisation would bias every voxel alike; the phantom tests cover a measured AIF)."""
    sim = simulate_dsc(params, timing=TIMING, snr=snr, seed=seed, **kwargs)
    tissue, _ = sim.delta_r2star(noisy=snr is not None)
    _, aif = sim.delta_r2star(noisy=False)
    maps = deconvolve(tissue, aif, TIMING.tr_s, method,
                      tissue_to_artery_relaxivity=sim.relaxivity.tissue_to_artery_ratio)
    return sim, maps


# --------------------------------------------------------------------------- simulator


@pytest.mark.parametrize("kind", ["exponential", "gamma", "box", "linear"])
def test_residue_functions_start_at_one_and_integrate_to_mtt(kind: str) -> None:
    t = np.arange(0, 300, 0.1)
    mtt = np.array([2.0, 4.0, 9.5])
    residue = residue_function(kind, t, mtt, gamma_lambda=5)
    assert np.allclose(residue[:, 0], 1.0)
    assert np.all(np.diff(residue, axis=1) <= 1e-12)
    area = residue.sum(axis=1) * 0.1 - 0.05 * residue[:, 0]  # trapezoid
    assert np.allclose(area, mtt, rtol=2e-3)


def test_relaxivity_calibration_follows_the_recipe() -> None:
    sim = simulate_dsc(TissueParameters(np.array([60.0]), np.array([4.0])), timing=AcquisitionTiming(tr_s=0.1,
                       n_timepoints=600, baseline_frames=150))
    assert sim.aif_signal.min() / sim.s0 == pytest.approx(0.4, abs=1e-3)
    assert 1 - sim.signal.min() / sim.s0 == pytest.approx(0.4, abs=2e-3)
    assert sim.relaxivity.tissue_to_artery_ratio > 5  # tissue κ ≫ blood κ, as in the OSIPI recipe


def test_simulated_cbv_matches_curve_areas_and_truth_is_consistent() -> None:
    params = parameter_grid(cbf=(10, 30, 60), cbv=(2, 4, 6), delay_s=(-2, 0, 5), dispersion_s=(0, 2))
    sim = simulate_dsc(params, timing=TIMING)
    area_ratio = sim.tissue_concentration.sum(axis=0) / sim.aif_concentration.sum()
    cbv = area_ratio * sim.haematocrit.cbv_scale
    short = params.mtt_s <= 12
    assert np.allclose(cbv[short], params.cbv[short], rtol=0.025)  # sums of samples every TR
    assert np.allclose(sim.truth.mtt, 60 * params.cbv / params.cbf)
    no_dispersion = params.dispersion_s == 0
    assert np.allclose(sim.truth.tmax[no_dispersion], params.delay_s[no_dispersion])
    assert np.all(sim.truth.tmax[~no_dispersion] > params.delay_s[~no_dispersion])


def test_simulation_is_seeded_and_rician() -> None:
    params = parameter_grid(cbf=(60,), cbv=(4,))
    a = simulate_dsc(params, timing=TIMING, snr=20, seed=3).signal
    b = simulate_dsc(params, timing=TIMING, snr=20, seed=3).signal
    assert np.array_equal(a, b)
    noisy = add_rician_noise(np.full(200_000, 100.0), 5.0, seed=1)
    assert noisy.std() == pytest.approx(5.0, rel=0.02)
    background = add_rician_noise(np.zeros(200_000), 5.0, seed=1)
    assert background.mean() == pytest.approx(5.0 * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh floor


# --------------------------------------------------------------------------- deconvolution


def test_ssvd_overestimates_cbf_at_negative_delay_circulant_methods_do_not() -> None:
    params = parameter_grid(cbf=(20, 60), cbv=(4,), delay_s=(-2.0, 0.0))
    for method, low, high in (("sSVD", 1.25, 10.0), ("cSVD", 0.95, 1.05), ("oSVD", 0.9, 1.1)):
        _, maps = _maps(params, method)
        ratio = maps.cbf[:, 0, 0, 0] / maps.cbf[:, 0, 1, 0]  # delay −2 s over delay 0
        assert np.all((ratio > low) & (ratio < high)), (method, ratio)
    _, ssvd = _maps(params, "sSVD")
    assert ssvd.cbf[0, 0, 0, 0] > 20.0  # absolute overestimate at long MTT


def test_circulant_tmax_wraps_negative_delays() -> None:
    params = parameter_grid(cbf=(30, 60), cbv=(4,), delay_s=(-5.0, -2.0))
    for method in ("cSVD", "oSVD"):
        sim, maps = _maps(params, method)
        assert np.all(maps.tmax < 1.0), maps.tmax            # not ~N·TR (hundreds of s)
        assert np.all(maps.tmax > sim.truth.tmax - 0.5)
        assert np.all(maps.tmax[:, :, 0] < maps.tmax[:, :, 1])  # −5 s reads earlier than −2 s
    _, ssvd = _maps(params, "sSVD")
    assert np.all((ssvd.tmax >= 0) & (ssvd.tmax < 1.0))  # causal: pinned at the first frames


def test_noise_free_cbf_bias_is_the_known_underestimate() -> None:
    params = parameter_grid(cbf=(60, 20), cbv=(4,))  # MTT 4 s and 12 s
    for method, band in (("sSVD", (-0.45, -0.25)), ("cSVD", (-0.45, -0.30)), ("oSVD", (-0.45, -0.30))):
        _, maps = _maps(params, method)
        error = maps.cbf[:, 0, 0, 0] / params.cbf[:, 0, 0, 0] - 1
        assert band[0] <= error[0] <= band[1], (method, error)
        assert abs(error[1]) < 0.15 and abs(error[1]) < abs(error[0]), (method, error)


def test_cbv_noise_free_and_within_osipi_tolerance_at_snr_20() -> None:
    params = parameter_grid(cbf=(20, 40, 60), cbv=(2, 4, 6), delay_s=(0.0, 3.0))
    _, maps = _maps(params, "oSVD")
    short = params.mtt_s <= 12  # longer MTT: the curve's tail is cut off by the end of the acquisition
    assert np.allclose(maps.cbv[short], params.cbv[short], rtol=0.01)
    reps = TissueParameters(*(np.repeat(getattr(params, n)[..., None], 40, axis=-1)
                              for n in ("cbf", "cbv", "delay_s", "dispersion_s")))
    _sim, noisy = _maps(reps, "oSVD", snr=20, seed=7)
    within = np.abs(noisy.cbv - reps.cbv) <= 1.0 + 0.1 * reps.cbv
    assert within.mean() > 0.95
    assert np.allclose(np.median(noisy.cbv, axis=-1), params.cbv, rtol=0.05, atol=0.1)


def test_noise_free_tmax_reads_late_by_at_most_two_frames() -> None:
    params = parameter_grid(cbf=(20, 40, 60), cbv=(2, 4), delay_s=(0.0, 1.0, 3.0, 6.0))
    for residue in ("exponential", "gamma", "linear"):  # box: Tmax ill-defined at long MTT
        for method in ("cSVD", "oSVD"):
            sim, maps = _maps(params, method, residue=residue)
            late = maps.tmax - sim.truth.tmax
            assert np.all((late > -0.5) & (late < 2 * TIMING.tr_s)), (residue, method, late)


def test_maps_are_float32_nan_outside_mask() -> None:
    params = parameter_grid(cbf=(20, 60), cbv=(2, 4))
    sim = simulate_dsc(params, timing=TIMING)
    tissue, aif = sim.delta_r2star(noisy=False)
    mask = np.array([[True, False], [True, True]])
    maps = deconvolve(tissue[..., 0, 0], aif, TIMING.tr_s, "oSVD", mask=mask)
    for name in ("cbf", "cbv", "mtt", "tmax"):
        value = getattr(maps, name)
        assert value.dtype == np.float32 and np.isnan(value[0, 1]) and np.all(np.isfinite(value[mask]))
    assert maps.filled().cbf[0, 1] == 0.0
    assert np.nanmin(maps.svd_threshold) > 0


# --------------------------------------------------------------------------- stroke phantom end to end


@pytest.fixture(scope="module")
def phantom_result():
    phantom = make_stroke_phantom(seed=0, snr=50, design=StrokePhantomDesign(n_slices=8))
    dr2s = signal_to_delta_r2star(phantom.signal, phantom.timing.te_s)
    aif = select_aif(dr2s.values, phantom.times_s, dr2s.mask, baseline=dr2s.bolus.baseline)
    tissue = dr2s.mask.copy()
    tissue[tuple(aif.voxels.T)] = False
    if aif.vof is not None:
        tissue &= ~aif.vof.large_vein_mask
    maps = deconvolve(dr2s.values, aif.curve, phantom.timing.tr_s, "oSVD", mask=tissue, aif_info=aif,
                      tissue_to_artery_relaxivity=phantom.relaxivity.tissue_to_artery_ratio)
    report = segment_lesions(maps.cbf, maps.tmax, tissue, phantom.spacing_mm)
    return phantom, dr2s, aif, maps, report


def test_phantom_truth_is_self_consistent(phantom_result) -> None:
    phantom, *_ = phantom_result
    truth = phantom.truth
    on_truth = segment_lesions(truth.cbf, truth.tmax, phantom.tissue_mask, phantom.spacing_mm)
    assert np.array_equal(on_truth.core_mask, phantom.core_mask)
    assert np.array_equal(on_truth.hypoperfusion_mask, phantom.hypoperfusion_mask)
    tmax = truth.tmax[phantom.tissue_mask]
    frame = phantom.timing.tr_s
    assert np.all((np.abs(tmax - 6.0) >= frame - 1e-3) & (np.abs(tmax - 10.0) >= frame - 1e-3))
    lesion = phantom.lesion_truth()
    assert lesion["defuse3_eligible"] and 10 < lesion["core_ml"] < 70


def test_brain_mask_and_baseline_on_phantom(phantom_result) -> None:
    phantom, dr2s, *_ = phantom_result
    assert dr2s.mask[phantom.tissue_mask].all()
    assert not dr2s.mask[phantom.labels == 3].any()   # CSF
    assert not dr2s.mask[phantom.labels == 0].any()   # background
    assert dr2s.bolus.baseline_stop <= phantom.timing.baseline_frames + 1  # frame 10 is at t0: no contrast yet
    assert dr2s.bolus.n_baseline >= 7


def test_automatic_aif_finds_the_arterial_voxels(phantom_result) -> None:
    phantom, _, aif, *_ = phantom_result
    assert len(aif.voxels) == 10
    assert phantom.artery_mask[tuple(aif.voxels.T)].all()
    assert aif.quality > 0.8
    assert aif.vof is not None and phantom.vein_mask[tuple(aif.vof.voxels.T)].all()
    assert 1.0 <= aif.vof_scale < 1.1  # the phantom's AIF has no partial volume
    summary = aif.summary()
    assert summary["n_voxels"] == 10 and len(summary["voxels"][0]) == 3


def test_osvd_hypoperfusion_dice_and_defuse3_on_stroke_phantom(phantom_result) -> None:
    phantom, _, _, maps, report = phantom_result
    truth = phantom.lesion_truth()
    assert metrics.dice(report.hypoperfusion_mask, phantom.hypoperfusion_mask) >= 0.90
    assert report.defuse3_eligible == truth["defuse3_eligible"]
    assert report.hypoperfusion_ml == pytest.approx(truth["hypoperfusion_ml"], rel=0.10)
    assert report.core_ml == pytest.approx(truth["core_ml"], rel=0.35)
    assert report.affected_side == "+x"
    cbv = metrics.pearson(maps.cbv, phantom.truth.cbv, phantom.tissue_mask & maps.mask)
    assert cbv > 0.9


def test_defuse3_criteria_boundaries_are_configurable() -> None:
    criteria = Defuse3Criteria()
    assert criteria.eligible(20, 60)
    assert not criteria.eligible(70, 200)                      # core < 70 strictly
    assert Defuse3Criteria(core_limit_inclusive=True).eligible(70, 200)
    assert criteria.eligible(20, 36)                            # ratio exactly 1.8 passes (≥)
    assert not Defuse3Criteria(ratio_limit_inclusive=False).eligible(20, 36)
    assert not criteria.eligible(5, 19)                         # mismatch 14 ml < 15


# --------------------------------------------------------------------------- bad input


def _series(n_t: int = 40, arrival: int = 10, drop: float = 0.3) -> np.ndarray:
    signal = np.zeros((n_t, 4, 16, 16), np.float32)
    signal[:, :, 4:12, 4:12] = 100.0
    t = np.arange(n_t)
    bolus = np.clip(t - arrival, 0, None) ** 2 * np.exp(-np.clip(t - arrival, 0, None) / 1.5)
    signal[:, :, 4:12, 4:12] *= (1 - drop * bolus / max(bolus.max(), 1e-9))[:, None, None, None]
    return add_rician_noise(signal, 1.0, seed=0).astype(np.float32)


def test_too_few_time_points() -> None:
    with pytest.raises(TooFewTimePointsError, match="8 time points.*at least 15") as info:
        signal_to_delta_r2star(_series(n_t=8, arrival=3), 0.03)
    assert isinstance(info.value, PipelineInputError)


def test_no_baseline() -> None:
    with pytest.raises(NoBaselineError, match="Start the dynamic acquisition"):
        detect_bolus(_series(arrival=1))


def test_no_bolus() -> None:
    with pytest.raises(NoBolusDetectedError, match="no contrast bolus passage"):
        detect_bolus(_series(drop=0.0))


@pytest.mark.parametrize("te, message", [(None, "missing"), (0.0, "EchoTime"), (30.0, "milliseconds"),
                                         (0.001, "too short")])
def test_missing_or_implausible_echo_time(te, message) -> None:
    with pytest.raises(MissingEchoTimeError, match=message) as info:
        signal_to_delta_r2star(_series(), te)
    assert isinstance(info.value, PipelineInputError)


def test_signal_to_delta_r2star_inverts_the_signal_model() -> None:
    signal = _series()
    dr2s = signal_to_delta_r2star(signal, 0.03)
    inside = dr2s.mask
    assert inside.sum() == 4 * 8 * 8
    rebuilt = dr2s.s0 * np.exp(-0.03 * dr2s.values)
    assert np.allclose(rebuilt[:, inside], signal[:, inside], rtol=1e-4)


# --------------------------------------------------------------------------- metrics


def test_mask_metrics_against_hand_values() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True         # 3 voxels
    b[0, 1:] = True         # 3 voxels, overlap 2
    assert metrics.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert metrics.iou(a, b) == pytest.approx(2 / 4)
    p = np.zeros((5, 5), bool)
    q = np.zeros((5, 5), bool)
    p[0, 0] = True
    q[0, 3] = True
    assert metrics.hd95(p, q, spacing_mm=(2.0, 1.5)) == pytest.approx(4.5)
    assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert metrics.roc_auc(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])) == pytest.approx(0.75)  # a tie


def test_map_metrics_against_hand_values() -> None:
    truth = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    estimate = truth + np.array([0.0, 1.0, -1.0, 0.0, 0.0])     # MSE 0.4, range 4
    assert metrics.psnr(estimate, truth) == pytest.approx(10 * np.log10(16 / 0.4))
    assert metrics.nrmse(estimate, truth) == pytest.approx(np.sqrt(0.4) / 4)
    assert metrics.pearson(2 * truth + 1, truth) == pytest.approx(1.0)
    assert metrics.spearman(np.array([1, 2, 2, 3.0]), np.array([1, 3, 2, 4.0])) == pytest.approx(4.5 / np.sqrt(22.5))
    assert metrics.spearman(truth**3, truth) == pytest.approx(1.0)


def test_ssim_against_hand_values() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((7, 7))
    x = 0.5 * y + 0.2
    assert metrics.ssim(y, y, window_size=7) == pytest.approx(1.0)
    # A uniform window as large as the image gives one SSIM value from global statistics.
    L = y.max() - y.min()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    mx, my = x.mean(), y.mean()
    vx, vy, cxy = x.var(), y.var(), ((x - mx) * (y - my)).mean()
    hand = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert metrics.ssim(x, y, window="uniform", window_size=7) == pytest.approx(hand)
    volume = rng.random((12, 12, 12))
    assert 0 < metrics.ssim(volume + 0.1 * rng.random((12, 12, 12)), volume) < 1


def test_tmax_hypoperfusion_auc_on_phantom(phantom_result) -> None:
    phantom, _, _, maps, report = phantom_result
    inside = maps.mask & phantom.tissue_mask
    assert metrics.roc_auc(maps.tmax, phantom.hypoperfusion_mask, inside) > 0.97
    assert metrics.hd95(report.hypoperfusion_mask, phantom.hypoperfusion_mask, phantom.spacing_mm) < 10.0


# --------------------------------------------------------------------------- phantom as DICOM


def test_stroke_phantom_written_as_dicom_reads_back(tmp_path) -> None:
    import json

    from pydicom import dcmread

    from dicom_io.reader import read_dynamic_series
    from inference.perfusion.phantom_dicom import (
        PIXEL_SCALE,
        SERIES_DESCRIPTION,
        write_stroke_phantom,
    )

    timing = AcquisitionTiming(n_timepoints=50)
    out = write_stroke_phantom(tmp_path / "study", seed=1, snr=50, timing=timing,
                               design=StrokePhantomDesign(n_slices=3))
    files = sorted((out / "DSC").glob("*.dcm"))
    assert len(files) == 50 * 3
    ds = dcmread(files[0])
    assert ds.Modality == "MR" and ds.SeriesDescription == SERIES_DESCRIPTION
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert float(ds.EchoTime) == 30 and float(ds.RepetitionTime) == 1500 and ds.NumberOfTemporalPositions == 50
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0 and "RescaleSlope" not in ds
    volume = read_dynamic_series(files)
    assert volume.shape == (50, 3, 128, 128)
    assert np.allclose(np.diff(volume.times_s), 1.5, atol=1e-3)
    assert volume.echo_time_s == pytest.approx(0.03)
    dr2s = signal_to_delta_r2star(volume.array / PIXEL_SCALE, volume.echo_time_s)
    assert dr2s.bolus.baseline_stop <= 11
    truth = np.load(out / "ground_truth.npz")
    assert truth["cbf"].shape == (3, 128, 128) and truth["hypoperfusion_mask"].any()
    csf = volume.array[0][truth["labels"] == 3] / PIXEL_SCALE  # same (z, y, x) order as the truth
    assert np.median(csf) == pytest.approx(150, rel=0.05)
    summary = json.loads((out / "ground_truth.json").read_text())
    assert summary["lesion_truth"]["defuse3_eligible"] in (True, False)
    assert summary["relaxivity_per_s_per_mM"]["tissue_to_artery_ratio"] > 1
