"""Sampler overhead per step and sampler accuracy vs steps on exactly solvable denoisers.

1. Overhead: `sample_loop` with a trivial denoiser on a monkey-sized batch (B=256, Z=16, L=140,
   fp32), per step, next to an in-run GEMM calibration. This is the cost the samplers add on top
   of the network; it should be negligible against one network call (the `sampling` case of
   `python bench/bench_pipeline.py` times those).
2. Accuracy: the optimal denoiser is known in closed form for
   - Gaussian data N(μ, s²) (the test suite's oracle; affine, so exact output moments are computed
     without Monte Carlo: deterministic samplers by probing x_T = 0 and 1, DDPM by propagating
     mean and variance through its Gaussian steps), for unit-variance data (the normalised-latent
     regime) and for μ = 0.7, s = 1.3;
   - a bimodal 1-D Gaussian mixture (0.3·N(-1.5, 0.3²) + 0.7·N(1.2, 0.5²)), where the denoiser
     mixes the per-component posteriors with their responsibilities; scored by Monte Carlo
     (Wasserstein-1 to the true distribution via quantiles, the mass of the left mode, mean/var).
   DDPM-1000 (the paper's) is the reference; DDPM-250 (strided), DDIM-{10,25,50},
   DPM-Solver++-{10,20,25,50}; DPM-Solver++ also with "linspace" spacing on the Gaussian.

Run: `OMP_NUM_THREADS=2 nice python bench/bench_samplers.py` (minutes; most of it is the
100k-sample DDPM-1000 run on the mixture); writes
bench/results/bench_samplers.json and prints the tables.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops, write_results
from ldns_cli.diffusion.samplers import make_sampler, make_timesteps
from ldns_cli.diffusion.sampling import sample_loop
from ldns_cli.diffusion.schedule import NoiseSchedule, ScheduleConfig

torch.set_num_threads(2)

SAMPLERS = [
    ("ddpm", 1000),
    ("ddpm", 250),
    ("ddim", 10),
    ("ddim", 25),
    ("ddim", 50),
    ("dpm++", 10),
    ("dpm++", 20),
    ("dpm++", 25),
    ("dpm++", 50),
]


# --------------------------------------------------------------------------------------------
# 1. overhead
# --------------------------------------------------------------------------------------------


def overhead(shape=(256, 16, 140), steps: int = 50, repeats: int = 5) -> dict:
    """Per-step cost with a trivial denoiser (`0.1·x`, one pass), timed step by step through the
    loop's callback, next to one fused a·x + y pass over the same tensor. On a shared, loaded
    machine the medians swing by 10x or more, so the minima (the uncontended cost) and their
    ratio are the figures to read."""
    sch = NoiseSchedule()
    gen0 = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=gen0), torch.randn(shape, generator=gen0)

    def axpy_times(n: int = 20) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            torch.add(b, a, alpha=0.1)
            times.append(time.perf_counter() - t0)
        return times

    out = {}
    for name in ("ddpm", "ddim", "dpm++"):
        sampler = make_sampler(name, sch, steps)
        step_times: list[float] = []
        axpy: list[float] = []
        for r in range(repeats):
            axpy += axpy_times()
            stamps = [time.perf_counter()]
            gen = torch.Generator().manual_seed(r)
            sample_loop(
                lambda x, t: 0.1 * x,
                shape,
                sampler,
                gen,
                "cpu",
                lambda i, t, o, stamps=stamps: stamps.append(time.perf_counter()),
            )
            step_times += list(np.diff(stamps)[1:])  # the first interval includes x_T's draw
        out[name] = {
            "ms_per_step_min": 1e3 * float(np.min(step_times)),
            "ms_per_step_median": 1e3 * float(np.median(step_times)),
            "axpy_ms_min": 1e3 * float(np.min(axpy)),
            "axpy_ms_median": 1e3 * float(np.median(axpy)),
            "step_over_axpy_min": float(np.min(step_times) / np.min(axpy)),
            "steps": steps,
        }
    out["shape"] = list(shape)
    out["gemm_gflops_1024"] = matmul_gflops()
    return out


# --------------------------------------------------------------------------------------------
# 2. accuracy on oracles
# --------------------------------------------------------------------------------------------


def gaussian_denoiser(sch: NoiseSchedule, mu: float, s: float):
    def denoise(x: torch.Tensor, t_batch: torch.Tensor) -> torch.Tensor:
        abar = float(sch.alpha_cumprod(int(t_batch[0])))
        a, sigma = math.sqrt(abar), math.sqrt(1 - abar)
        eps = sigma * (x - a * mu) / (abar * s * s + 1 - abar)
        if sch.prediction_type == "epsilon":
            return eps
        x0 = mu + a * s * s * (x - a * mu) / (abar * s * s + 1 - abar)
        return a * eps - sigma * x0

    return denoise


def exact_gaussian_moments(sch, name, steps, mu, s, spacing=None):
    """Exact output mean/var of a sampler driven by the Gaussian oracle (affine maps)."""
    if name == "ddpm":
        ab = sch.alphas_cumprod.numpy()
        ts = make_timesteps(steps, sch.num_train_timesteps, spacing or "trailing")
        m, v = 0.0, 1.0
        for t, p in zip(ts, [*ts[1:], -1], strict=True):
            a_t, a_s = ab[t], (ab[p] if p >= 0 else 1.0)
            k = math.sqrt(a_t) * s * s / (a_t * s * s + 1 - a_t)
            c0 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
            ct = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
            A, B = c0 * k + ct, c0 * (mu - k * math.sqrt(a_t) * mu)
            m, v = A * m + B, A * A * v + (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        return m, v
    sampler = make_sampler(name, sch, steps, timestep_spacing=spacing)
    probe = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = sample_loop(
        gaussian_denoiser(sch, mu, s),
        (2, 1),
        sampler,
        None,
        "cpu",
        dtype=torch.float64,
        initial_noise=probe,
    )
    d, c = out[0, 0].item(), (out[1, 0] - out[0, 0]).item()
    return d, c * c


MIX_W = np.array([0.3, 0.7])
MIX_MU = np.array([-1.5, 1.2])
MIX_S = np.array([0.3, 0.5])


def mixture_denoiser(sch: NoiseSchedule):
    """E[x_0 | x_t] for a Gaussian mixture: responsibilities × per-component posterior means."""
    w = torch.tensor(MIX_W, dtype=torch.float64)
    mus = torch.tensor(MIX_MU, dtype=torch.float64)
    ss = torch.tensor(MIX_S, dtype=torch.float64)

    def denoise(x: torch.Tensor, t_batch: torch.Tensor) -> torch.Tensor:
        abar = float(sch.alpha_cumprod(int(t_batch[0])))
        a, sigma = math.sqrt(abar), math.sqrt(1 - abar)
        var_t = abar * ss**2 + 1 - abar  # [K] marginal variance of x_t under each component
        xk = x[..., None]  # [B, 1, 1] against [K]
        logp = torch.log(w) - 0.5 * torch.log(var_t) - 0.5 * (xk - a * mus) ** 2 / var_t
        resp = torch.softmax(logp, dim=-1)
        x0k = mus + a * ss**2 * (xk - a * mus) / var_t
        x0 = (resp * x0k).sum(-1)
        eps = (x - a * x0) / sigma
        if sch.prediction_type == "epsilon":
            return eps
        return a * eps - sigma * x0

    return denoise


def mixture_quantiles(q: np.ndarray) -> np.ndarray:
    """Inverse CDF of the mixture by bisection-free interpolation on a fine grid."""
    grid = np.linspace(-6, 6, 200_001)
    cdf = sum(w * stats.norm.cdf(grid, m, s) for w, m, s in zip(MIX_W, MIX_MU, MIX_S, strict=True))
    return np.interp(q, cdf, grid)


def mixture_scores(n: int = 100_000) -> list[dict]:
    sch = NoiseSchedule()
    den = mixture_denoiser(sch)
    true_q = mixture_quantiles((np.arange(n) + 0.5) / n)
    true_mean = float((MIX_W * MIX_MU).sum())
    true_var = float((MIX_W * (MIX_S**2 + MIX_MU**2)).sum() - true_mean**2)
    true_left = float((MIX_W * stats.norm.cdf(0.0, MIX_MU, MIX_S)).sum())  # P(x < 0) ≈ 0.3057
    rows = []
    for name, steps in SAMPLERS:
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        x = sample_loop(
            den, (n, 1), make_sampler(name, sch, steps), gen, "cpu", dtype=torch.float64
        )
        x = np.sort(x[:, 0].numpy())
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                "w1": float(np.mean(np.abs(x - true_q))),
                "left_mode_mass": float((x < 0).mean()),
                "true_left_mode_mass": true_left,
                "mean_err": float(x.mean() - true_mean),
                "var_rel_err": float(x.var() / true_var - 1),
                "seconds": time.perf_counter() - t0,
            }
        )
    # Monte Carlo floor: W1 of an i.i.d. sample of the same size from the true distribution
    rng = np.random.default_rng(0)
    comp = rng.random(n) < MIX_W[0]
    ref = np.where(comp, rng.normal(MIX_MU[0], MIX_S[0], n), rng.normal(MIX_MU[1], MIX_S[1], n))
    floor = float(np.mean(np.abs(np.sort(ref) - true_q)))
    rows.append(
        {
            "sampler": "iid-true",
            "steps": 0,
            "w1": floor,
            "left_mode_mass": float((ref < 0).mean()),
            "true_left_mode_mass": true_left,
        }
    )
    return rows


def gaussian_table() -> list[dict]:
    rows = []
    for beta_schedule in ("linear", "cosine"):
        sch = NoiseSchedule(ScheduleConfig(beta_schedule=beta_schedule))
        for mu, s in ((0.0, 1.0), (0.7, 1.3)):
            for name, steps in SAMPLERS:
                spacings = ["trailing", "linspace"] if name == "dpm++" else ["trailing"]
                for spacing in spacings:
                    m, v = exact_gaussian_moments(sch, name, steps, mu, s, spacing)
                    rows.append(
                        {
                            "beta_schedule": beta_schedule,
                            "data": f"N({mu}, {s}^2)",
                            "sampler": name,
                            "steps": steps,
                            "spacing": spacing,
                            "mean_err_over_s": (m - mu) / s,
                            "var_rel_err": v / s**2 - 1,
                        }
                    )
    return rows


def main() -> None:
    t0 = time.perf_counter()
    results = {"overhead": overhead()}
    print("sampler overhead (trivial denoiser, B=256 Z=16 L=140 fp32, 2 threads):")
    for name in ("ddpm", "ddim", "dpm++"):
        o = results["overhead"][name]
        print(
            f"  {name:6s} min {o['ms_per_step_min']:.2f} ms/step (median "
            f"{o['ms_per_step_median']:.2f}) = {o['step_over_axpy_min']:.1f}x the min of one "
            f"a*x+y pass ({o['axpy_ms_min']:.3f} ms, median {o['axpy_ms_median']:.3f})"
        )
    print(f"  GEMM 1024: {results['overhead']['gemm_gflops_1024']:.1f} GFLOP/s")

    results["gaussian_exact"] = gaussian_table()
    print("\nexact output moments on the Gaussian oracle (error of mean in units of s; rel. var):")
    for r in results["gaussian_exact"]:
        print(
            f"  {r['beta_schedule']:6s} {r['data']:13s} {r['sampler']:5s} {r['steps']:5d} "
            f"{r['spacing']:8s} mean {r['mean_err_over_s']:+.4f}  var {r['var_rel_err']:+.4f}"
        )

    results["mixture_mc"] = mixture_scores()
    print("\nbimodal mixture, 100k Monte Carlo samples, linear schedule, ε-prediction:")
    for r in results["mixture_mc"]:
        extra = (
            f" mean {r['mean_err']:+.4f} var {r['var_rel_err']:+.4f} ({r['seconds']:.1f}s)"
            if "mean_err" in r
            else " (Monte Carlo floor)"
        )
        print(
            f"  {r['sampler']:8s} {r['steps']:5d}  W1 {r['w1']:.4f}  "
            f"P(x<0) {r['left_mode_mass']:.4f} (true {r['true_left_mode_mass']:.4f}){extra}"
        )
    results["wall_s"] = time.perf_counter() - t0
    path = write_results("bench_samplers", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
