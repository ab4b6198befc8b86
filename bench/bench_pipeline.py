"""Whole-pipeline throughput, memory and output size, with an in-run GEMM baseline.

Cases (all seeded; models are RANDOMLY INITIALISED: throughput does not depend on the weights):
  ae_train     fwd+bwd+AdamW trial-bins/s at B=64: (L=140, N=182) MC_Maze-like and (L=256,
               N=128) Lorenz, presets small and mc_maze; model FLOPs (FlopCounterMode GEMMs +
               analytic FFT FLOPs) as a fraction of the in-run fp32 GEMM rate.
  diff_train   diffusion training steps/s and sequences/s (B=64, L=256, small preset).
  sampling     denoiser seq-NFE/s per length (256, 4096, 16384) with and without
               `cached_kernels`; trials/s per sampler = seq-NFE/s / NFE (dpm++ 20, ddim 50,
               ddpm 1000 derived); plus a measured end-to-end `generate` (dpm++ 20) at L=256.
  sample_rss   peak RSS of `generate` per length in a fresh process (2 sampler steps: memory
               does not depend on the step count), cached and uncached kernels.
  evaluate     `evaluate_full` on 2,000 x 140 x 182 (400 x 140 x 64 with --quick).
  output       NWB/HDF5 write size and time of a Lorenz simulation, the shipped writer against
               the previous one (no compression, full-precision rates; by monkeypatch).
  fixes        denoiser NFE with candidate fixes monkeypatched in (matmul pointwise layers at
               inference; all-valid masks take the unmasked path): CPU-time speedups.
  profile      top ops of an AE training step, a denoiser NFE at L=4096 and `evaluate`.
  demo         `scripts/demo.sh` end to end (full mode only).

Usage: nice python bench/bench_pipeline.py --quick   (what `make bench` runs; a few minutes)
       nice python bench/bench_pipeline.py           (full shapes and the demo; long)
Writes bench/results/pipeline.json and prints a table. Threads: --threads (default 1: one-thread
ratios to the GEMM baseline are the stable ones on a shared machine).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import matmul_gflops, run_isolated, timeit, write_results  # noqa: E402
from ldns_cli.diffusion.model import (  # noqa: E402
    PRESETS,
    DiffusionConfig,
    DiffusionModel,
    denoiser_config,
)
from ldns_cli.diffusion.samplers import DEFAULT_STEPS  # noqa: E402
from ldns_cli.diffusion.schedule import NoiseSchedule  # noqa: E402
from ldns_cli.fit.autoencoder import ae_loss, resolve_ae_configs  # noqa: E402
from ldns_cli.fit.diffusion import make_loss_fn  # noqa: E402
from ldns_cli.nn.autoencoder import Autoencoder  # noqa: E402
from ldns_cli.nn.denoiser import Denoiser  # noqa: E402
from ldns_cli.nn.s4 import cached_kernels, fast_fft_size, ssm_param_groups  # noqa: E402

LOG: list[str] = []


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def diffusion_fields(preset: str) -> dict[str, Any]:
    keys = DiffusionConfig.__dataclass_fields__
    return {k: v for k, v in PRESETS[preset].items() if k in keys}


def random_diffusion(preset: str, latent_dim: int, seed: int = 0) -> DiffusionModel:
    cfg = DiffusionConfig(**diffusion_fields(preset))
    torch.manual_seed(seed)  # Denoiser init has no generator argument
    net = Denoiser(denoiser_config(cfg, latent_dim, [], n_bins=256)).eval()  # trained at 256
    return DiffusionModel(
        denoiser=net,
        config=cfg,
        schedule=NoiseSchedule(cfg.schedule_config()),
        latent_mean=np.zeros(latent_dim, np.float32),
        latent_std=np.ones(latent_dim, np.float32),
        fingerprint={"bin_size_s": 0.01},
    )


def fft_flops(n_layers_passes: float, channels: int, batch: int, length: int) -> float:
    """rfft + irfft of n = fast_fft_size(2L) per layer pass: 2 · 2.5 n log2 n per channel."""
    n = fast_fft_size(2 * length)
    return n_layers_passes * 2 * 2.5 * n * math.log2(n) * channels * batch


# ------------------------------------------------------------------------------ AE training
def ae_train(presets: list[str], shapes: list[tuple[int, int]], batch: int, reps: int) -> list:
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for length, n_neurons in shapes:
        gen = torch.Generator().manual_seed(0)
        counts = torch.poisson(torch.full((batch, length, n_neurons), 0.15), generator=gen)
        data = {"counts": counts, "mask": torch.ones(batch, length, dtype=torch.bool)}
        for preset in presets:
            cfg, _ = resolve_ae_configs(preset, None, {}, n_neurons)
            model = Autoencoder(cfg, torch.Generator().manual_seed(0))
            opt = torch.optim.AdamW(ssm_param_groups(model, 1e-3, 0.01))

            def step(model=model, opt=opt, data=data, gen=gen) -> None:
                loss, _ = ae_loss(model, data, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            with FlopCounterMode(display=False) as counter:
                loss, _ = ae_loss(model, data, gen)
                loss.backward()
            opt.zero_grad(set_to_none=True)
            n_s4 = sum(1 for m in model.modules() if type(m).__name__ == "S4Layer")
            flops = counter.get_total_flops() + fft_flops(3 * n_s4, cfg.width, batch, length)
            t = timeit(step, repeats=reps)
            bins_s = batch * length / t["median_s"]
            row = {
                "preset": preset, "L": length, "N": n_neurons, "B": batch,
                "width": cfg.width, "blocks": cfg.blocks,
                "params": sum(p.numel() for p in model.parameters()),
                "step_s_median": t["median_s"], "step_s_min": t["min_s"],
                "trial_bins_per_s": bins_s, "gflop_per_step": flops / 1e9,
                "gemm_gflops": t["gemm_gflops"],
                "fraction_of_gemm": flops / t["median_s"] / (t["gemm_gflops"] * 1e9),
                "step_in_gemm_equivalents": t["median_s"] * t["gemm_gflops"] * 1e9 / flops,
                "load": load(),
            }  # fmt: skip
            rows.append(row)
            say(f"ae_train {preset} L={length} N={n_neurons}: {bins_s:,.0f} trial-bins/s, "
                f"{row['fraction_of_gemm']:.1%} of GEMM ({t['gemm_gflops']:.0f} GFLOP/s)")  # fmt: skip
    return rows


# ------------------------------------------------------------------------ diffusion training
def diffusion_train(batch: int, length: int, reps: int, latent_dim: int = 8) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model = random_diffusion("small", latent_dim)
    net = model.denoiser.train()
    loss_fn = make_loss_fn(model.schedule, model.config)
    opt = torch.optim.AdamW(ssm_param_groups(net, 1e-3, 0.01))
    gen = torch.Generator().manual_seed(0)
    data = {
        "x": torch.randn(batch, length, latent_dim, generator=gen),
        "mask": torch.ones(batch, length, dtype=torch.bool),
    }

    def step() -> None:
        loss, _ = loss_fn(net, data, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_fn(net, data, gen)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops() + fft_flops(
        3 * model.config.blocks, model.config.width, batch, length
    )
    t = timeit(step, repeats=reps)
    row = {
        "preset": "small", "B": batch, "L": length, "steps_per_s": 1 / t["median_s"],
        "sequences_per_s": batch / t["median_s"], "step_s_min": t["min_s"],
        "gflop_per_step": flops / 1e9, "gemm_gflops": t["gemm_gflops"],
        "fraction_of_gemm": flops / t["median_s"] / (t["gemm_gflops"] * 1e9), "load": load(),
    }  # fmt: skip
    say(f"diff_train: {row['steps_per_s']:.2f} steps/s, {row['sequences_per_s']:.1f} seq/s")
    return row


# --------------------------------------------------------------------------------- sampling
def sampling(cases: list[tuple[int, int]], reps: int, latent_dim: int = 8) -> list:
    """Per-NFE cost of the small denoiser, cached vs uncached kernels; trials/s per sampler."""
    model = random_diffusion("small", latent_dim)
    net = model.denoiser
    rows = []
    for length, batch in cases:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, length, latent_dim, generator=gen)
        t_step = torch.full((batch,), 500, dtype=torch.long)
        mask = torch.ones(batch, length, dtype=torch.bool)
        row: dict[str, Any] = {"L": length, "B": batch, "load": load()}
        for mode in ("uncached", "cached"):
            with torch.no_grad():
                if mode == "cached":
                    with cached_kernels(net):
                        t = timeit(lambda: net(x, t_step, mask), repeats=reps)  # noqa: B023
                else:
                    t = timeit(lambda: net(x, t_step, mask), repeats=reps)  # noqa: B023
            seq_nfe = batch / t["median_s"]
            row[mode] = {
                "nfe_s_median": t["median_s"], "nfe_s_min": t["min_s"],
                "seq_nfe_per_s": seq_nfe, "gemm_gflops": t["gemm_gflops"],
                "trials_per_s": {f"{k}-{v}": seq_nfe / v for k, v in DEFAULT_STEPS.items()},
            }  # fmt: skip
        row["cache_speedup"] = row["uncached"]["nfe_s_median"] / row["cached"]["nfe_s_median"]
        rows.append(row)
        c = row["cached"]
        say(f"sampling L={length} B={batch}: {c['seq_nfe_per_s']:.1f} seq-NFE/s cached, "
            f"cache speedup {row['cache_speedup']:.2f}x; dpm++20 "
            f"{c['trials_per_s']['dpm++-20']:.2f} trials/s")  # fmt: skip
    return rows


def generate_end_to_end(n: int, length: int, steps: int, latent_dim: int = 8) -> dict:
    """`generate` (noise -> latents -> rates -> Poisson counts) with dpm++: measured trials/s."""
    from ldns_cli.diffusion.sampling import SampleSettings
    from ldns_cli.generate import generate
    from ldns_cli.nn.observation import PoissonObservation

    model = random_diffusion("small", latent_dim)
    cfg, _ = resolve_ae_configs("small", None, {}, 128)
    ae = Autoencoder(cfg, torch.Generator().manual_seed(0)).eval()
    settings = SampleSettings(sampler="dpm++", steps=steps, seed=0)
    lengths = np.full(n, length)
    t0 = time.perf_counter()
    generate(ae, model, PoissonObservation(), lengths, settings, "cpu")
    wall = time.perf_counter() - t0
    row = {"n": n, "L": length, "sampler": f"dpm++-{steps}", "wall_s": wall,
           "trials_per_s": n / wall, "load": load()}  # fmt: skip
    say(f"generate dpm++{steps} n={n} L={length}: {wall:.1f} s, {n / wall:.2f} trials/s")
    return row


RSS_SNIPPET = """
import json, sys, numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
import bench_pipeline as bp
from ldns_cli.nn.autoencoder import Autoencoder  # noqa: E402
from ldns_cli.fit.autoencoder import resolve_ae_configs
from ldns_cli.generate import SampleSettings, generate
from ldns_cli.nn.observation import PoissonObservation
import ldns_cli.diffusion.sampling as g
if not {cached}:
    import contextlib
    g.cached_kernels = lambda net: contextlib.nullcontext()
model = bp.random_diffusion("small", 8)
cfg, _ = resolve_ae_configs("small", None, {{}}, 128)
ae = Autoencoder(cfg, torch.Generator().manual_seed(0)).eval()
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base = status_mb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) so it measures generate alone
out = generate(ae, model, PoissonObservation(), np.full({n}, {length}), SampleSettings(steps=2), "cpu")
print(json.dumps({{"peak_rss_mb": status_mb("VmHWM:"),
                  "rss_before_generate_mb": base, "counts_mb": out.counts.nbytes / 1e6}}))
"""


def sample_rss(cases: list[tuple[int, int]], threads: int) -> list:
    rows = []
    for length, n in cases:
        for cached in (True, False):
            code = RSS_SNIPPET.format(
                threads=threads, here=str(HERE), cached=cached, n=n, length=length
            )
            res = run_isolated(code)
            res.update(L=length, n=n, cached=cached, load=load())
            rows.append(res)
            say(f"sample_rss L={length} n={n} cached={cached}: {res['peak_rss_mb']:.0f} MB peak")
    return rows


# --------------------------------------------------------------------------------- evaluate
def evaluate_case(n_trials: int, n_bins: int, n_neurons: int) -> dict:
    from bench_evaluate import make_set
    from ldns_cli.scoring.evaluation import evaluate_full

    rng = np.random.default_rng(0)
    readout = rng.standard_normal((8, n_neurons)) * 0.4
    ref = make_set(rng, n_trials, n_bins, readout)
    gen = make_set(rng, n_trials, n_bins, readout)
    t = timeit(lambda: evaluate_full(ref, gen, folds=5, seed=0), repeats=1, warmup=0)
    row = {"shape": [n_trials, n_bins, n_neurons], "wall_s": t["median_s"],
           "gemm_gflops": t["gemm_gflops"], "load": load()}  # fmt: skip
    say(f"evaluate {n_trials}x{n_bins}x{n_neurons}: {t['median_s']:.1f} s")
    return row


# ----------------------------------------------------------------------------- output size
def output_size(n_trials: int) -> list:
    """Shipped writer vs the previous one (plain float64/float32 arrays, full-precision rates)."""
    import ldns_cli.io.hdf5 as h5io
    import ldns_cli.io.nwb_write as nwbio
    from ldns_cli.io.formats import read_spikes, write_spikes
    from ldns_cli.io.simulate import simulate_lorenz

    data = simulate_lorenz(n_trials=n_trials, seed=0)
    rows = []
    saved = (nwbio._compressed, nwbio.round_mantissa, h5io._write_floats)

    def plain_floats(f, name, values, keep_bits):  # the previous HDF5 writer: plain datasets
        return f.create_dataset(name, data=values)

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: the first NWB write pays pynwb's one-off type-map set-up
        write_spikes(data.select(np.arange(2)), Path(tmp) / "warm.nwb", save_rates=True)
        for variant in ("previous", "shipped"):
            if variant == "previous":  # no compression, full-precision rates
                nwbio._compressed = lambda v: v
                nwbio.round_mantissa = lambda v, *a: v
                h5io._write_floats = plain_floats
            else:
                nwbio._compressed, nwbio.round_mantissa, h5io._write_floats = saved
            for ext in ("nwb", "h5"):
                path = Path(tmp) / f"{variant}.{ext}"
                c0, t0 = time.process_time(), time.perf_counter()
                write_spikes(data, path, save_latents=True, save_rates=True, force=True)
                write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
                c0 = time.process_time()
                back = read_spikes(path)
                read_cpu = time.process_time() - c0
                rel = float(np.max(np.abs(back.rates - data.rates) / np.maximum(data.rates, 1e-30)))
                row = {
                    "variant": variant, "format": ext, "trials": n_trials,
                    "size_mb": path.stat().st_size / 1e6, "write_wall_s": write_s,
                    "write_cpu_s": write_cpu, "read_cpu_s": read_cpu,
                    "rates_max_rel_err": rel, "load": load(),
                }  # fmt: skip
                rows.append(row)
                say(f"output {variant} {ext}: {row['size_mb']:.1f} MB, write {write_cpu:.1f} "
                    f"CPU-s, read {read_cpu:.1f} CPU-s")  # fmt: skip
    nwbio._compressed, nwbio.round_mantissa, h5io._write_floats = saved
    return rows


# --------------------------------------------------------------------------------- profiles
def top_ops(fn, n: int = 8) -> list:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:n]
    ]


def profiles(quick: bool) -> dict:
    out: dict[str, Any] = {}
    cfg, _ = resolve_ae_configs("small", None, {}, 128)
    ae = Autoencoder(cfg, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    data = {
        "counts": torch.poisson(torch.full((64, 256, 128), 0.15), generator=gen),
        "mask": torch.ones(64, 256, dtype=torch.bool),
    }

    def ae_step() -> None:
        loss, _ = ae_loss(ae, data, gen)
        loss.backward()

    out["ae_train_step_small_L256"] = top_ops(ae_step)
    model = random_diffusion("small", 8)
    net = model.denoiser
    length, batch = (4096, 4) if quick else (4096, 8)
    x = torch.randn(batch, length, 8, generator=gen)
    tt = torch.full((batch,), 500, dtype=torch.long)
    mask = torch.ones(batch, length, dtype=torch.bool)
    with torch.no_grad(), cached_kernels(net):
        out["denoiser_nfe_cached_L4096"] = top_ops(lambda: net(x, tt, mask))
    with torch.no_grad():
        out["denoiser_nfe_uncached_L4096"] = top_ops(lambda: net(x, tt, mask))

    import ldns_cli.scoring.evaluation as evaluation
    from bench_evaluate import make_set
    from ldns_cli.scoring.evaluation import evaluate_full

    class SerialPool:  # evaluate's per-set thread pool, run inline so cProfile sees the work
        def __init__(self, max_workers: int = 1) -> None:
            pass

        def __enter__(self) -> SerialPool:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def submit(self, fn, *args):
            value = fn(*args)
            return type("Done", (), {"result": lambda self: value})()

    rng = np.random.default_rng(0)
    readout = rng.standard_normal((8, 64)) * 0.4
    ref, gen_set = (make_set(rng, 300, 140, readout) for _ in range(2))
    pool = evaluation.ThreadPoolExecutor
    evaluation.ThreadPoolExecutor = SerialPool
    prof = cProfile.Profile()
    try:
        prof.enable()
        evaluate_full(ref, gen_set, folds=2, seed=0)
        prof.disable()
    finally:
        evaluation.ThreadPoolExecutor = pool
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]  # tottime
    out["evaluate_300x140x64_cprofile"] = [
        {
            "func": f"{Path(k[0]).name}:{k[1]}:{k[2]}",
            "tottime_s": v[2],
            "cumtime_s": v[3],
            "calls": v[1],
        }
        for k, v in rows
    ]
    return out


# ------------------------------------------------------------------- candidate fixes (A/B)
def _pointwise_matmul(self, x):
    """Fix candidate for layers.Pointwise.forward at inference: a (grouped) batched matmul."""
    if torch.is_grad_enabled():
        return _ORIG["pointwise"](self, x)
    g, c_out_g, c_in_g = self.weight.shape
    b, _, length = x.shape
    y = torch.matmul(self.weight, x.reshape(b, g, c_in_g, length))  # [B, G, out/G, L]
    y = y.reshape(b, g * c_out_g, length)
    return y if self.bias is None else y + self.bias[:, None]


def _denoiser_all_valid(self, x, t, mask=None, cond=None, drop_cond=None):
    """Fix candidate for Denoiser.forward: an all-True mask takes the unmasked (mask=None) path."""
    if mask is not None and bool(mask.all()):
        mask = None
    return _ORIG["denoiser"](self, x, t, mask, cond, drop_cond)


_ORIG: dict[str, Any] = {}


def fixes(cases: list[tuple[int, int]], reps: int) -> list:
    """Denoiser NFE (cached kernels, no grad) with fix candidates patched in, interleaved.

    Timed in process CPU time (min over reps; robust to other processes on a shared machine).
    """
    from ldns_cli.nn.layers import Pointwise

    _ORIG.setdefault("pointwise", Pointwise.forward)
    _ORIG.setdefault("denoiser", Denoiser.forward)
    variants = {
        "baseline": (_ORIG["pointwise"], _ORIG["denoiser"]),
        "pointwise_matmul": (_pointwise_matmul, _ORIG["denoiser"]),
        "all_valid_mask": (_ORIG["pointwise"], _denoiser_all_valid),
        "both": (_pointwise_matmul, _denoiser_all_valid),
    }
    model = random_diffusion("small", 8)
    net = model.denoiser
    rows = []
    for length, batch in cases:
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(batch, length, 8, generator=gen)
        tt = torch.full((batch,), 500, dtype=torch.long)
        mask = torch.ones(batch, length, dtype=torch.bool)
        times: dict[str, list[float]] = {k: [] for k in variants}
        outs = {}
        with torch.no_grad(), cached_kernels(net):
            for rep in range(reps + 1):
                for name, (pw, dn) in variants.items():
                    Pointwise.forward, Denoiser.forward = pw, dn
                    c0 = time.process_time()
                    out = net(x, tt, mask)
                    if rep:  # rep 0 is the warm-up
                        times[name].append(time.process_time() - c0)
                    outs[name] = out
        Pointwise.forward, Denoiser.forward = _ORIG["pointwise"], _ORIG["denoiser"]
        base = min(times["baseline"])
        row = {"L": length, "B": batch, "load": load()}
        for name in variants:
            row[name] = {
                "nfe_cpu_s_min": min(times[name]),
                "speedup_vs_baseline": base / min(times[name]),
                "max_abs_diff_vs_baseline": float((outs[name] - outs["baseline"]).abs().max()),
            }
        rows.append(row)
        say(f"fixes L={length} B={batch}: " + ", ".join(
            f"{k} {row[k]['speedup_vs_baseline']:.2f}x" for k in variants))  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------- demo
def demo(trials: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DEMO_OUT=tmp, DEMO_TRIALS=str(trials))
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["bash", str(HERE.parent / "scripts" / "demo.sh")],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    say(f"demo ({trials} trials): {wall:.0f} s, exit {proc.returncode}")
    return {"trials": trials, "wall_s": wall, "returncode": proc.returncode, "load": load(),
            "stderr_tail": proc.stderr[-2000:]}  # fmt: skip


# ------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes, no demo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="subset of cases (names as in the docstring)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    want = set(args.only or ["ae_train", "diff_train", "sampling", "fixes", "sample_rss",
                             "evaluate", "output", "profile", "demo"])  # fmt: skip
    res: dict[str, Any] = {
        "quick": q,
        "note": "models randomly initialised (throughput does not depend on weights)",
        "gemm_gflops_1024_start": matmul_gflops(1024),
        "load_start": load(),
    }
    reps = 2 if q else 3
    if "ae_train" in want:
        presets = ["small"] if q else ["small", "mc_maze"]
        res["ae_train"] = ae_train(presets, [(140, 182), (256, 128)], 16 if q else 64, reps)
    if "diff_train" in want:
        res["diff_train"] = diffusion_train(16 if q else 64, 256, reps)
    if "sampling" in want:
        cases = [(256, 16), (4096, 2), (16384, 1)] if q else [(256, 64), (4096, 8), (16384, 2)]
        res["sampling"] = sampling(cases, reps)
        res["generate"] = generate_end_to_end(16 if q else 64, 256, 20)
    if "fixes" in want:
        cases = [(256, 16), (4096, 2)] if q else [(256, 64), (4096, 8)]
        res["fixes"] = fixes(cases, 5 if q else 9)
    if "sample_rss" in want:
        cases = [(256, 256), (16384, 2)] if q else [(256, 2000), (4096, 8), (16384, 8)]
        res["sample_rss"] = sample_rss(cases, args.threads)
    if "evaluate" in want:
        res["evaluate"] = evaluate_case(*((400, 140, 64) if q else (2000, 140, 182)))
    if "output" in want:
        res["output"] = output_size(100 if q else 1000)
    if "profile" in want:
        res["profile"] = profiles(q)
    if "demo" in want and not q:
        res["demo"] = demo(1000)
    res["gemm_gflops_1024_end"] = matmul_gflops(1024)
    previous = HERE / "results" / "pipeline.json"
    if args.only and previous.exists():  # a partial rerun updates the cases it ran
        old = json.loads(previous.read_text()).get("results", {})
        if old.get("quick") == q:
            res = {**old, **res}
    path = write_results("pipeline", res)
    print_table(res)
    print(f"\nwrote {path}")
    return 0


def print_table(res: dict) -> None:
    print(f"\n{'case':<44} {'figure':>22} {'vs GEMM':>10} {'load':>6}")
    for r in res.get("ae_train", []):
        name = f"ae_train {r['preset']} B={r['B']} L={r['L']} N={r['N']}"
        print(f"{name:<44} {r['trial_bins_per_s']:>14,.0f} bins/s {r['fraction_of_gemm']:>10.1%} "
              f"{r['load']:>6}")  # fmt: skip
    if r := res.get("diff_train"):
        name = f"diff_train small B={r['B']} L={r['L']}"
        print(f"{name:<44} {r['steps_per_s']:>13.2f} steps/s {r['fraction_of_gemm']:>10.1%} "
              f"{r['load']:>6}")  # fmt: skip
    for r in res.get("sampling", []):
        for mode in ("uncached", "cached"):
            c = r[mode]
            name = f"sample NFE L={r['L']} B={r['B']} {mode}"
            print(f"{name:<44} {c['seq_nfe_per_s']:>11.1f} seq-NFE/s {'':>10} {r['load']:>6}")
        for k, v in r["cached"]["trials_per_s"].items():
            print(f"{'  trials/s ' + k + ' L=' + str(r['L']):<44} {v:>13.4f} tr/s")
    if r := res.get("generate"):
        name = f"generate {r['sampler']} n={r['n']} L={r['L']}"
        print(f"{name:<44} {r['trials_per_s']:>17.2f} tr/s {'':>10} {r['load']:>6}")
    for r in res.get("fixes", []):
        for k, v in r.items():
            if isinstance(v, dict):
                name = f"fix {k} NFE L={r['L']} B={r['B']}"
                print(f"{name:<44} {v['speedup_vs_baseline']:>16.2f}x CPU {'':>10} {r['load']:>6}")
    for r in res.get("sample_rss", []):
        name = f"peak RSS generate L={r['L']} n={r['n']} cached={r['cached']}"
        grow = r["peak_rss_mb"] - r["rss_before_generate_mb"]
        print(f"{name:<44} {r['peak_rss_mb']:>10.0f} MB (+{grow:.0f}) {'':>10} {r['load']:>6}")
    if r := res.get("evaluate"):
        name = f"evaluate {'x'.join(map(str, r['shape']))}"
        print(f"{name:<44} {r['wall_s']:>20.1f} s {'':>10} {r['load']:>6}")
    for r in res.get("output", []):
        name = f"output {r['variant']} .{r['format']} ({r['trials']} lorenz trials)"
        print(f"{name:<44} {r['size_mb']:>12.1f} MB {r['write_cpu_s']:>5.1f}s {'':>10} "
              f"{r['load']:>6}")  # fmt: skip
    if r := res.get("demo"):
        print(f"{'demo (' + str(r['trials']) + ' trials)':<44} {r['wall_s']:>20.0f} s")
    for name, ops in res.get("profile", {}).items():
        print(f"\nprofile {name}:")
        for o in ops[:6]:
            label = o.get("op") or o.get("func")
            share = f"{o['share']:.0%}" if "share" in o else f"{o['tottime_s']:.2f}s"
            print(f"  {label[:60]:<60} {share:>8}")
    print(json.dumps({"gemm_start": res["gemm_gflops_1024_start"],
                      "gemm_end": res["gemm_gflops_1024_end"]}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
