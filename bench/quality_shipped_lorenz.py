# ruff: noqa: E402, E731  (a linear measurement script, kept as it was run)
"""Unconditional quality of the SHIPPED Lorenz model (models/lorenz), issue 5's bars.

Re-simulates the Lorenz data `make models` trained on (1000 trials, seed 0), samples 1000 trials
(DPM-Solver++ 20, Poisson and spike-history observations) and scores them against the 200
held-out test trials; compares DPM++ 20 with DDPM-1000 (quality and wall time, same run); checks
the latent power spectrum of 16x longer samples against the AE latents of held-out trials.

    python bench/quality_shipped_lorenz.py       # ~5 min on 2 cores
"""

import json
import time

import numpy as np
import torch
from scipy.signal import welch

torch.set_num_threads(2)
from pathlib import Path

from ldns_cli.autoencoder import infer, load_autoencoder
from ldns_cli.diffusion import load_diffusion
from ldns_cli.evaluation import evaluate
from ldns_cli.generate import SampleSettings, generate, sample_latents
from ldns_cli.history import load_observation
from ldns_cli.observation import PoissonObservation
from ldns_cli.simulate import simulate_lorenz

M = Path(__file__).parents[1] / "models" / "lorenz"
data = simulate_lorenz(n_trials=1000, seed=0)  # what make_models trained on
test = data.select(data.split == "test")
ae, ck = load_autoencoder(M, "cpu")
model = load_diffusion(M, "cpu", ck)
out = {}


def run(n, sampler, steps, obs, seed=1, L=256):
    t0 = time.perf_counter()
    s = generate(
        ae,
        model,
        obs,
        np.full(n, L),
        SampleSettings(sampler=sampler, steps=steps, seed=seed),
        "cpu",
        bin_size_s=data.bin_size_s,
    )
    return s, time.perf_counter() - t0


def scores(s):
    ev = evaluate(test, s, folds=5, seed=0)
    return {
        k: (None if v.get("score") is None else round(v["score"], 3))
        for k, v in ev["metrics"].items()
    }, {k: v["model"] for k, v in ev["metrics"].items()}


hist = load_observation(M, "history", "cpu")
for name, obs in (("poisson", PoissonObservation()), ("history", hist)):
    s, dt = run(1000, "dpm++", 20, obs)
    sc, raw = scores(s)
    print(f"1000 samples dpm++20 {name}: {dt:.1f}s; scores {sc}", flush=True)
    out[f"dpm20_{name}"] = {"seconds": dt, "scores": sc, "model": raw}
n = 100
s_fast, t_fast = run(n, "dpm++", 20, PoissonObservation(), seed=2)
s_ddpm, t_ddpm = run(n, "ddpm", 1000, PoissonObservation(), seed=2)
for nm, s, t in (("dpm++20", s_fast, t_fast), ("ddpm1000", s_ddpm, t_ddpm)):
    sc, raw = scores(s)
    print(
        f"{n} samples {nm}: {t:.1f}s ({n / t:.2f} trials/s); model mean±sd {{k: (round(v['mean'],5), round(v['sd'],5)) for k,v in raw.items()}}".replace(
            "{{k: (round(v['mean'],5), round(v['sd'],5)) for k,v in raw.items()}}",
            str({k: (round(v["mean"], 5), round(v["sd"], 5)) for k, v in raw.items()}),
        ),
        flush=True,
    )
    out[nm] = {"seconds": t, "trials_per_s": n / t, "scores": sc, "model": raw}
print("speed ratio dpm++20 vs ddpm1000:", round(t_ddpm / t_fast, 1))
out["speed_ratio"] = t_ddpm / t_fast
# 16x longer latents: PSD of normalised latents vs the AE latents of held-out trials
lat_test, _ = infer(ae, test, 64, "cpu")
z_test = (lat_test - model.latent_mean) / model.latent_std
zl, mask = sample_latents(model, np.full(8, 4096), None, SampleSettings(seed=3), "cpu")
zs, _ = sample_latents(model, np.full(64, 256), None, SampleSettings(seed=4), "cpu")
f, p_ref = welch(z_test, nperseg=128, axis=1)
p_ref = p_ref.mean(axis=(0, 2))
_, p_long = welch(zl.numpy(), nperseg=128, axis=1)
p_long = p_long.mean(axis=(0, 2))
_, p_short = welch(zs.numpy(), nperseg=128, axis=1)
p_short = p_short.mean(axis=(0, 2))
lm = lambda a, b: float(np.mean((np.log10(a) - np.log10(b)) ** 2))
print(
    "latent log-PSD MSE vs AE latents: 16x long",
    round(lm(p_long, p_ref), 4),
    "| training length",
    round(lm(p_short, p_ref), 4),
    "| long latent std",
    zl.std().item(),
)
out["psd_long_vs_ae"] = lm(p_long, p_ref)
out["psd_short_vs_ae"] = lm(p_short, p_ref)
json.dump(
    out,
    open(Path(__file__).parent / "results" / "quality_shipped_lorenz.json", "w"),
    indent=1,
    default=float,
)
