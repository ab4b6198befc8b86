"""Speed of `ldns evaluate` at MC_Maze scale: 2,000 trials x 140 bins x 182 neurons per set.

Measures the library call (`evaluate_full`: floor, naive, 5 folds, paper protocol) and the report
(7 PNGs + index.html) separately and together; target: under 10 s in total on the dev machine.
Also prints the ratio to the unavoidable dense work (the per-unit Gram matrices of the three sets,
timed as GEMM FLOPs at the in-run calibrated rate).

Usage: python bench/bench_evaluate.py [--trials 2000] [--bins 140] [--neurons 182] [--repeats 2]
       python bench/bench_evaluate.py --quick   (smoke-size run for `make bench`)
Set OMP_NUM_THREADS / --threads before comparing numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops, matmul_seconds, peak_rss_mb, timeit, write_results
from ldns_cli.core.data import SpikeData
from ldns_cli.scoring.evaluation import evaluate_full
from ldns_cli.scoring.report import write_report


def make_set(rng: np.random.Generator, n_trials: int, n_bins: int, readout: np.ndarray):
    """Poisson counts from smooth latent-driven rates (~0.15 spikes/bin, like MC_Maze at 5 ms)."""
    z = gaussian_filter1d(rng.standard_normal((n_trials, n_bins, readout.shape[0])), 6, axis=1)
    rates = np.log1p(np.exp(4 * z @ readout - 2.3))  # [B, L, N]
    counts = rng.poisson(rates).astype(np.int32)
    return SpikeData(counts, np.full(n_trials, n_bins), 0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--bins", type=int, default=140)
    parser.add_argument("--neurons", type=int, default=182)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="400 trials x 64 neurons, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.neurons, args.repeats = 400, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    readout = rng.standard_normal((8, args.neurons)) * 0.4
    ref = make_set(rng, args.trials, args.bins, readout)
    gen = make_set(rng, args.trials, args.bins, readout)
    print(
        f"data: 2 x {args.trials} trials x {args.bins} bins x {args.neurons} neurons, "
        f"mean {ref.counts.mean():.3f} spikes/bin; torch threads {torch.get_num_threads()}"
    )

    holder = {}

    def library() -> None:
        holder["ev"] = evaluate_full(ref, gen, folds=args.folds, seed=0)

    def report() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write_report(holder["ev"], Path(tmp))

    def both() -> None:
        library()
        report()

    t0, c0 = time.perf_counter(), time.process_time()
    both()  # cold: includes importing matplotlib and font setup, as a CLI run would
    cold_s, cold_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    lib = timeit(library, repeats=args.repeats, warmup=0)
    rep = timeit(report, repeats=args.repeats, warmup=0)
    total = timeit(both, repeats=args.repeats, warmup=0)
    gflops = matmul_gflops()
    gram_flops = 3 * 2.0 * args.trials * args.bins * args.neurons**2  # ref, gen, naive
    gram_s = matmul_seconds(gram_flops, gflops)
    results = {
        "shape": [args.trials, args.bins, args.neurons],
        "folds": args.folds,
        "cold_total_s": cold_s,
        "cold_total_cpu_s": cold_cpu_s,  # CPU time of all threads: robust to other users' load
        "loadavg_1min": os.getloadavg()[0],
        "library": lib,
        "report": rep,
        "total": total,
        "gemm_gflops": gflops,
        "gram_gemm_s": gram_s,
        "total_over_gram_gemm": total["median_s"] / gram_s,
        "total_gflop_equivalent": total["median_s"] * total["gemm_gflops"],
        "peak_rss_mb": peak_rss_mb(),
        "target_s": 10.0,
    }
    path = write_results("evaluate", results)
    print(
        f"library {lib['median_s']:.2f} s (min {lib['min_s']:.2f}), report "
        f"{rep['median_s']:.2f} s (min {rep['min_s']:.2f}), total {total['median_s']:.2f} s "
        f"(min {total['min_s']:.2f}; cold first run {cold_s:.2f} s wall, {cold_cpu_s:.2f} s CPU); "
        f"target < 10 s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"GEMM {gflops:.1f} GFLOP/s in-run; the 3 sets' Gram matrices alone = {gram_s:.2f} s of "
        f"GEMM; total / that = {results['total_over_gram_gemm']:.1f}x; peak RSS "
        f"{results['peak_rss_mb']:.0f} MB"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
