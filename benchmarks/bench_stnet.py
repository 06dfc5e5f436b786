"""ST-Net-like inference speed: seconds per 10,000 brain voxels, beside oSVD on the same input.

Input: a simulated DSC study of 128×128×20 voxels × 50 frames (TR 1.5 s) with
an elliptical brain mask in every slice; the curves are drawn from a pool of
simulated tissue curves with independent Rician noise, so content is realistic
and the timing is what a site would see. Both methods run in the same process
on the same arrays; the ratio is ST-Net time / oSVD time.

    .venv/bin/python benchmarks/bench_stnet.py [--threads 2] [--repeats 3] [--device cpu]

The seed paper reports 0.77 s per 10,000 voxels for ST-Net on an A100 (batch 512).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from inference.perfusion import simulation as sim
from inference.perfusion import stnet as st

WEIGHTS = Path(__file__).resolve().parents[1] / "inference" / "perfusion" / "weights" / "stnet-v2.pt"


def make_study(seed: int = 0, shape: tuple[int, int, int] = (20, 128, 128), frames: int = 50,
               tr_s: float = 1.5, snr: float = 50.0):
    """(ΔR2* (t, z, y, x) float32, AIF (t,), mask (z, y, x), times (t,), κ ratio)."""
    rng = np.random.default_rng(seed)
    timing = sim.AcquisitionTiming(tr_s=tr_s, n_timepoints=frames, baseline_frames=8)
    pool = sim.random_tissue_parameters(4096, rng)
    dsc = sim.simulate_dsc(pool, timing=timing)
    _, ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ellipse = ((yy - ny / 2) / (0.45 * ny)) ** 2 + ((xx - nx / 2) / (0.38 * nx)) ** 2 < 1.0
    mask = np.broadcast_to(ellipse, shape).copy()
    pick = rng.integers(0, 4096, shape)
    clean = dsc.signal_noise_free[:, pick]  # (t, z, y, x)
    clean[:, ~mask] = sim.S0_REF
    noisy = sim.add_rician_noise(clean, sim.S0_REF / snr, rng)
    tissue = (-np.log(noisy / noisy[:6].mean(axis=0)) / timing.te_s).astype(np.float32)
    _, aif = dsc.delta_r2star(noisy=False)
    return tissue, aif, mask, dsc.times_s, dsc.relaxivity.tissue_to_artery_ratio


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (numpy's BLAS keeps its default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda for ST-Net")
    parser.add_argument("--no-osvd", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tissue, aif, mask, times, ratio = make_study()
    n_vox = int(mask.sum())
    print(f"input {tissue.shape} (t, z, y, x), {n_vox} brain voxels; torch {torch.__version__}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}")

    predictor = st.STNetPredictor.load(WEIGHTS, device=args.device)
    run_stnet = lambda: predictor.predict(tissue, aif, mask, times, tissue_to_artery_relaxivity=ratio)
    run_stnet()  # warm-up (allocator, oneDNN / cuDNN kernel choice)
    stnet_s = _best_of(args.repeats, run_stnet)
    stnet_per_10k = stnet_s / n_vox * 1e4
    print(f"ST-Net ({args.device}): {stnet_s:.2f} s per study, {stnet_per_10k:.3f} s per 10k voxels "
          f"(target <= 0.5; seed paper 0.77 on an A100)")

    if not args.no_osvd:
        try:
            from inference.perfusion.deconvolution import deconvolve
        except ImportError:
            print("oSVD: inference.perfusion.deconvolution not available")
            return 0
        tr_s = float(times[1] - times[0])
        run_osvd = lambda: deconvolve(tissue, aif, tr_s, "oSVD", mask=mask,
                                      tissue_to_artery_relaxivity=ratio)
        run_osvd()
        osvd_s = _best_of(args.repeats, run_osvd)
        osvd_per_10k = osvd_s / n_vox * 1e4
        print(f"oSVD (numpy): {osvd_s:.2f} s per study, {osvd_per_10k:.3f} s per 10k voxels")
        print(f"ratio ST-Net / oSVD time: {stnet_s / osvd_s:.2f} "
              f"({'ST-Net' if stnet_s < osvd_s else 'oSVD'} faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
