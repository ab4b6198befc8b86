"""AE training throughput per preset: bins/s and model FLOP/s as a fraction of the GEMM rate.

Times optimiser steps (fwd + bwd + AdamW) on Lorenz-shaped batches (B = 64, L = 256, N = 128) at
one thread. Both the steps and the 1024³ fp32 GEMM calibration are timed in *process CPU time*,
interleaved, so the ratio survives a shared, oversubscribed machine (wall time does not).
Model FLOPs: `quality_ae.model_flops_per_bin` (GEMMs counted on one step, FFTs analytic).

Usage: nice python bench/throughput_ae.py [--presets small lorenz] [--steps 6]
Writes bench/results/throughput_ae.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from ldns_cli.core.runtime import keep_freed_memory
from ldns_cli.fit.autoencoder import ae_loss, resolve_ae_configs
from ldns_cli.nn.autoencoder import Autoencoder
from ldns_cli.nn.s4 import ssm_param_groups
from quality_ae import model_flops_per_bin


def gemm_gflops_cpu(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.process_time()
    a @ b
    return 2 * n**3 / max(time.process_time() - t0, 1e-9) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["small", "lorenz"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as `ldns fit-ae` does (fit.trainer.fit)
    length, n_neurons = 256, 128
    gen = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((args.batch, length, n_neurons), 0.15), generator=gen)
    batch = {"counts": counts, "mask": torch.ones(args.batch, length, dtype=torch.bool)}
    rows = {}
    for preset in args.presets:
        ae_cfg, _ = resolve_ae_configs(preset, None, {}, n_neurons)
        model = Autoencoder(ae_cfg, torch.Generator().manual_seed(0))
        flops_bin = model_flops_per_bin(model, n_neurons, length, args.batch)
        opt = torch.optim.AdamW(ssm_param_groups(model, 1e-3, 0.01))

        def step() -> None:
            loss, _ = ae_loss(model, batch, gen)  # noqa: B023
            opt.zero_grad(set_to_none=True)  # noqa: B023
            loss.backward()
            opt.step()  # noqa: B023

        step()
        step_s, gemm = [], []
        for _ in range(args.steps):
            gemm.append(gemm_gflops_cpu())
            t0 = time.process_time()
            step()
            step_s.append(time.process_time() - t0)
        s, g = statistics.median(step_s), statistics.median(gemm)
        bins_per_s = args.batch * length / s
        rows[preset] = {
            "params": sum(p.numel() for p in model.parameters()),
            "width": ae_cfg.width,
            "blocks": ae_cfg.blocks,
            "step_cpu_s_median": s,
            "step_cpu_s_min": min(step_s),
            "bins_per_cpu_s": bins_per_s,
            "model_flops_per_bin_fwd_bwd": flops_bin,
            "gemm_gflops_1thread": g,
            "fraction_of_gemm": flops_bin * bins_per_s / (g * 1e9),
        }
        print(preset, rows[preset], flush=True)
    path = write_results("throughput_ae", {"batch": args.batch, "length": length, "presets": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
