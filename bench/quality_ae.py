"""Autoencoder quality and training throughput on the LDNS Lorenz benchmark (not a timed test).

Fits the AE with a preset (default `small`, the CPU demo preset) on `simulate_lorenz` at the
paper's size (5000 trials × 256 bins × 128 neurons, split 70/10/20) and scores the held-out test
trials against the simulator's ground truth:

- latents: ridge regression from inferred latents to the true Lorenz state, fitted on train
  trials, R² on test trials (bar: ≥ 0.95);
- rates: Pearson r between inferred and true rates on test trials (bar: ≥ 0.9);
- bits/spike over a per-neuron mean-rate null on test trials, as a fraction of the true-rate
  oracle's (bar: ≥ 90%);
- wall time of the fit (target ≤ 5 min for `small`), training throughput in bins/s, and model
  FLOP/s as a fraction of the fp32 GEMM rate measured in the same run (target ≥ 30%). On a
  shared machine wall time depends on the neighbours: the process CPU time and the load average
  are recorded next to it.

Usage: nice python bench/quality_ae.py [--preset small] [--threads 2] [--trials 5000]
Writes bench/results/quality_ae[_PRESET].json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops, peak_rss_mb, write_results
from ldns_cli.fit.autoencoder import (
    ae_loss,
    ae_val_loss,
    bits_per_spike,
    resolve_ae_configs,
    tensors_from_data,
)
from ldns_cli.fit.trainer import fit
from ldns_cli.io.simulate import simulate_lorenz
from ldns_cli.nn.autoencoder import Autoencoder, infer


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             alpha: float = 1e-3) -> float:  # fmt: skip
    """R² (1 − SSE/SST over all output dims) of a ridge map with bias, fitted on train."""
    xa = np.hstack([x_train, np.ones((len(x_train), 1))])
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(xa.T @ xa + reg, xa.T @ y_train)
    pred = np.hstack([x_test, np.ones((len(x_test), 1))]) @ w
    sse = np.sum((y_test - pred) ** 2)
    sst = np.sum((y_test - y_test.mean(axis=0)) ** 2)
    return float(1.0 - sse / sst)


def model_flops_per_bin(model: Autoencoder, n_neurons: int, length: int, batch: int) -> float:
    """Useful fwd+bwd FLOPs per time bin of a training step at this batch size.

    GEMM FLOPs are counted by torch's FlopCounterMode on one real step (at the real batch size,
    so the per-step S4 kernel construction is spread over the right number of bins); FFTs are
    not seen by the counter and are added analytically: per S4 layer, rfft(u) and irfft forward,
    rfft(g) and irfft backward (`s4.FFTConv`; the kernel's own [H, n] transforms are ignored),
    2.5·n·log2(n) FLOPs per real transform of size n = fast_fft_size(2L). Elementwise work
    (norms, GELU, softplus, the grouped bottleneck's products) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ldns_cli.nn.s4 import fast_fft_size

    counts = torch.zeros(batch, length, n_neurons)
    data = {"counts": counts, "mask": torch.ones(batch, length, dtype=torch.bool)}
    with FlopCounterMode(display=False) as counter:
        loss, _ = ae_loss(model, data, torch.Generator().manual_seed(0))
        loss.backward()
    model.zero_grad(set_to_none=True)
    gemm = counter.get_total_flops()
    n = fast_fft_size(2 * length)
    cfg = model.config
    fft = cfg.blocks * 4 * 2.5 * n * np.log2(n) * cfg.width * batch
    return float((gemm + fft) / (batch * length))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = simulate_lorenz(args.trials, 128, 256, seed=args.seed)
    sim_s = time.perf_counter() - t0
    train, val, test = (data.select(data.split == s) for s in ("train", "val", "test"))
    ae_cfg, train_cfg = resolve_ae_configs(
        args.preset, None, {"epochs": args.epochs, "seed": args.seed}, data.n_neurons
    )
    print(f"simulated in {sim_s:.1f} s; {ae_cfg}\n{train_cfg}", flush=True)
    gemm_before = matmul_gflops(1024)

    model = Autoencoder(ae_cfg, torch.Generator().manual_seed(train_cfg.seed))
    train_t = tensors_from_data(train)
    model.init_rate_bias(train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum())
    flops_bin = model_flops_per_bin(model, data.n_neurons, data.n_bins, train_cfg.batch_size)
    t1, c1 = time.perf_counter(), time.process_time()
    result = fit(
        model, train_t, tensors_from_data(val), ae_loss, train_cfg, val_loss_fn=ae_val_loss,
        description=f"fit-ae[{args.preset}]",
    )  # fmt: skip
    fit_s, fit_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    load = os.getloadavg()
    gemm_after = matmul_gflops(1024)
    gemm = 0.5 * (gemm_before + gemm_after)

    t2 = time.perf_counter()
    z_train, _ = infer(result.model, train, 256)
    z_test, r_test = infer(result.model, test, 256)
    infer_s = time.perf_counter() - t2
    zdim = z_test.shape[-1]
    r2 = ridge_r2(
        z_train.reshape(-1, zdim), train.latents.reshape(-1, 3),
        z_test.reshape(-1, zdim), test.latents.reshape(-1, 3),
    )  # fmt: skip
    rate_r = float(np.corrcoef(r_test.ravel(), test.rates.ravel())[0, 1])
    null = train.counts.sum(axis=(0, 1)) / float(train.lengths.sum())
    mask = test.mask()
    bps = bits_per_spike(r_test, test.counts, mask, null)
    bps_oracle = bits_per_spike(test.rates, test.counts, mask, null)

    bins_per_s = result.trials_seen * data.n_bins / result.train_seconds
    flops_per_s = flops_bin * bins_per_s
    results = {
        "preset": args.preset,
        "threads": args.threads,
        "trials": args.trials,
        "ae_config": ae_cfg.__dict__,
        "train_config": train_cfg.__dict__,
        "params": sum(p.numel() for p in result.model.parameters()),
        "simulate_s": sim_s,
        "fit_wall_s": fit_s,
        "fit_cpu_s": fit_cpu_s,  # all threads; wall ≈ cpu/threads on an idle machine
        "loadavg_after_fit": load,
        "train_bins_per_cpu_s": result.trials_seen * data.n_bins / fit_cpu_s,
        "train_s": result.train_seconds,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "infer_s": infer_s,
        "train_bins_per_s": bins_per_s,
        "model_flops_per_bin_fwd_bwd": flops_bin,
        "model_gflops_per_s": flops_per_s / 1e9,
        "gemm_gflops_in_run": gemm,
        "fraction_of_gemm": flops_per_s / (gemm * 1e9),
        "latent_r2_test": r2,
        "rate_corr_test": rate_r,
        "bits_per_spike_test": bps,
        "bits_per_spike_oracle": bps_oracle,
        "bps_fraction_of_oracle": bps / bps_oracle,
        "peak_rss_mb": peak_rss_mb(),
        "bars": {
            "latent_r2>=0.95": r2 >= 0.95,
            "rate_r>=0.9": rate_r >= 0.9,
            "bps>=0.9*oracle": bps >= 0.9 * bps_oracle,
            "fit<=300s": fit_s <= 300,
            "fraction_of_gemm>=0.3": flops_per_s / (gemm * 1e9) >= 0.3,
        },
        "history": result.history,
    }
    name = "quality_ae" if args.preset == "small" else f"quality_ae_{args.preset}"
    path = write_results(name, results)
    for k, v in results.items():
        if k not in ("history", "ae_config", "train_config"):
            print(f"{k}: {v}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
