"""Quality of unconditional generation on the Lorenz benchmark: evaluate scores, long samples.

    simulate lorenz -> fit-ae -> fit-diffusion -> sample -> evaluate against held-out trials

Measures, in one run:
1. `scoring.evaluation.evaluate` of `--n-samples` DPM-Solver++ samples against the held-out (test) trials:
   the normalised score (model − floor)/(naive − floor) of every metric (bar: ≤ 0.15), with the
   latent calibration fitted by `fit-diffusion` (the default) and, for comparison, without it;
2. samples 16x the training length: the latent power spectrum (Welch, per latent channel) of the
   generated latents against the AE latents of held-out trials, next to the same comparison for
   normal-length samples and for held-out latents against training latents (the floor);
3. DPM-Solver++ (`--fast-steps`) against 1000-step DDPM on the same trial indices: evaluate scores
   with their fold spread, and the sampling throughput ratio (trials/s) measured back to back;
   each sampler with its own latent calibration (DDPM's fitted here on
   `--ddpm-calibration-trials`), and both without.

Runs on CPU with reduced sizes by default (the shared 2-core machine cannot train the paper's
5000 x 256 x 128 Lorenz setup in the time available); every size is a flag and is recorded in
the results JSON (bench/results/quality_diffusion.json). Run it in the background:

    nice python bench/quality_diffusion.py --threads 2 > bench/results/quality_diffusion.log 2>&1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.signal import welch

sys.path.insert(0, str(Path(__file__).parent))

from common import log, run, write_results
from ldns_cli.diffusion.sampling import SampleSettings
from ldns_cli.fit.diffusion import calibrate_diffusion
from ldns_cli.generate import generate
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import simulate_lorenz
from ldns_cli.nn.autoencoder import infer
from ldns_cli.nn.observation import PoissonObservation
from ldns_cli.scoring.evaluation import evaluate
from ldns_cli.store import load_autoencoder, load_diffusion

KEY_METRICS = ("psc_kl", "corr_rmse", "mean_isi_rmse_s", "std_isi_rmse_s", "autocorr_rmse")


def latent_log_psd(latents: np.ndarray, lengths: np.ndarray, nperseg: int) -> np.ndarray:
    """Mean Welch power spectrum per latent channel, log10, `[Z, F]` (valid bins only)."""
    psds = []
    for z, n in zip(latents, lengths, strict=True):
        if n >= nperseg:
            _, p = welch(z[:n], nperseg=nperseg, axis=0)  # [F, Z]
            psds.append(p.T)
    return np.log10(np.mean(psds, axis=0) + 1e-12)


def psd_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of log10 spectra over channels and non-DC frequencies."""
    return float(np.mean((a[:, 1:] - b[:, 1:]) ** 2))


def scores(payload: dict) -> dict[str, dict]:
    return {
        name: {"score": m["score"], "model_mean": m["model"]["mean"], "model_sd": m["model"]["sd"]}
        for name, m in payload["metrics"].items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/results/quality_diffusion_work"))
    ap.add_argument("--trials", type=int, default=1500)
    ap.add_argument("--neurons", type=int, default=128)
    ap.add_argument("--bins", type=int, default=128)
    ap.add_argument("--ae-epochs", type=int, default=30)
    ap.add_argument("--diff-epochs", type=int, default=150)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--n-compare", type=int, default=200, help="trials for DDPM vs DPM++")
    ap.add_argument("--fast-steps", type=int, default=20)
    ap.add_argument(
        "--ddpm-calibration-trials", type=int, default=200, help="0: compare DDPM uncalibrated"
    )
    ap.add_argument("--n-long", type=int, default=24)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prediction", default="v", help="eps (the paper's) or v (our small preset)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work, models = args.work, args.work / "models"
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "lorenz.h5"
    results: dict = {"settings": vars(args) | {"work": str(work)}}

    if not data_path.exists():
        data = simulate_lorenz(args.trials, args.neurons, args.bins, seed=0)
        write_spikes(data, data_path, force=True)
    data = read_spikes(data_path)
    ldns = [sys.executable, "-m", "ldns_cli"]
    common = ["-m", str(models), "--device", "cpu", "--seed", "0"]
    ae_flags = ["--preset", "small", "--epochs", str(args.ae_epochs), "--no-spike-history"]
    diff_flags = ["--preset", "lorenz", "--width", str(args.width), "--blocks", str(args.blocks)]
    diff_flags += ["--epochs", str(args.diff_epochs), "--batch-size", str(args.batch_size)]
    diff_flags += ["--prediction", args.prediction]
    # short CPU runs: a short warm-up and an EMA window (~200 steps) well inside the run
    cfg_file = work / "diffusion_config.json"
    cfg_file.write_text(
        json.dumps({"warmup_epochs": 2, "ema_decay": args.ema_decay, "lr": args.lr})
    )
    diff_flags += ["--config", str(cfg_file)]
    if not (models / "ae.safetensors").exists():
        results["fit_ae_s"] = run([*ldns, "fit-ae", str(data_path), *common, *ae_flags])
    if not (models / "diffusion.safetensors").exists():
        results["fit_diffusion_s"] = run(
            [*ldns, "fit-diffusion", str(data_path), *common, *diff_flags]
        )

    ae, ae_ckpt = load_autoencoder(models, "cpu")
    model = load_diffusion(models, "cpu", ae_ckpt)
    results["ae_train"] = {
        "epochs_done": len(ae_ckpt.extra["train"]["history"]),
        "best_val": ae_ckpt.extra["train"]["best_val"],
    }
    results["diffusion_train"] = {
        "epochs_done": len(model.checkpoint.extra["train"]["history"]),
        "best_val": model.checkpoint.extra["train"]["best_val"],
    }
    results["diffusion_extra"] = {
        k: model.checkpoint.extra[k] for k in ("n_train", "n_val") if model.checkpoint
    }
    test = data.select(data.split == "test")
    train = data.select(data.split == "train")
    obs = PoissonObservation()
    n_bins = args.bins

    # 1. n-samples DPM-Solver++ samples vs held-out trials
    fast = SampleSettings(sampler="dpm++", steps=args.fast_steps, seed=1, batch_size=128)
    log(f"sampling {args.n_samples} x {n_bins} bins, dpm++ {args.fast_steps} steps")
    t0 = time.perf_counter()
    samples = generate(ae, model, obs, np.full(args.n_samples, n_bins), fast, "cpu")
    results["sample_main_s"] = time.perf_counter() - t0
    write_spikes(samples, work / "samples_dpm.h5", force=True)
    log("evaluating")
    main_eval = evaluate(test, samples, folds=5, seed=0)
    results["main"] = scores(main_eval)
    results["latent_calibration"] = model.checkpoint.extra.get("latent_calibration")
    if model.calibrations:  # the same samples without the latent calibration
        raw = generate(
            ae, model, obs, np.full(args.n_samples, n_bins),
            dataclasses.replace(fast, calibrate=False), "cpu",
        )  # fmt: skip
        results["main_uncalibrated"] = scores(evaluate(test, raw, folds=5, seed=0))
        results["main_uncalibrated_rate_hz"] = float(raw.mean_rate_hz().mean())
        log("uncalibrated: " + json.dumps(
            {k: v["score"] for k, v in results["main_uncalibrated"].items()}))  # fmt: skip
    results["main_rate_hz"] = float(samples.mean_rate_hz().mean())
    ae_only = generate_reconstruction(ae, test)
    results["ae_reconstruction"] = scores(evaluate(test, ae_only, folds=5, seed=0))
    worst = max(abs(v["score"]) for v in results["main"].values() if v["score"] is not None)
    results["main_max_abs_score"] = worst
    log("scores: " + json.dumps({k: v["score"] for k, v in results["main"].items()}))

    # 2. DDPM-1000 vs DPM++ on the same trials, throughput measured back to back: each sampler
    # with its own latent calibration (a calibration belongs to one sampler setting), and both raw
    if args.ddpm_calibration_trials > 0 and model.calibration_for("ddpm", 1000) is None:
        log(f"calibrating ddpm 1000 on {args.ddpm_calibration_trials} trials")
        t0 = time.perf_counter()
        calibrate_diffusion(data, models, args.ddpm_calibration_trials, 0, "cpu", "ddpm", 1000)
        results["ddpm_calibration_s"] = time.perf_counter() - t0
        model = load_diffusion(models, "cpu", ae_ckpt)
    results["compare"] = compare_samplers(ae, model, obs, test, args, calibrate=True)
    results["compare_raw"] = compare_samplers(ae, model, obs, test, args, calibrate=False)
    log(f"speedup ddpm/dpm++: {results['compare']['speedup']:.1f}x")

    # 3. 16x longer samples keep the latent power spectrum
    long_len = 16 * n_bins
    log(f"sampling {args.n_long} x {long_len} bins")
    long_settings = SampleSettings(
        sampler="dpm++", steps=args.fast_steps, seed=3, batch_size=8, save_latents=True
    )
    long = generate(ae, model, obs, np.full(args.n_long, long_len), long_settings, "cpu")
    normal_settings = dataclasses.replace(long_settings, batch_size=128)
    normal = generate(ae, model, obs, np.full(200, n_bins), normal_settings, "cpu")
    lat_test, _ = infer(ae, test, 128, "cpu")
    lat_train, _ = infer(ae, train, 128, "cpu")
    nper = min(64, n_bins)
    p_test = latent_log_psd(lat_test, test.lengths, nper)
    results["latent_psd"] = {
        "nperseg": nper,
        "long_vs_test": psd_error(latent_log_psd(long.latents, long.lengths, nper), p_test),
        "normal_vs_test": psd_error(latent_log_psd(normal.latents, normal.lengths, nper), p_test),
        "train_vs_test_floor": psd_error(latent_log_psd(lat_train, train.lengths, nper), p_test),
        "long_rate_hz": float(long.mean_rate_hz().mean()),
        "normal_rate_hz": float(normal.mean_rate_hz().mean()),
        "test_rate_hz": float(test.mean_rate_hz().mean()),
    }
    log("latent psd: " + json.dumps(results["latent_psd"]))
    path = write_results("quality_diffusion", results)
    log(f"wrote {path}")


def compare_samplers(ae, model, obs, test, args, calibrate: bool) -> dict:
    """DPM++ (`--fast-steps`) against DDPM-1000 on the same trial indices: scores with their
    fold spread and wall time back to back."""
    n_cmp = args.n_compare
    lengths = np.full(n_cmp, args.bins)
    timing, runs = {}, {}
    for name, settings in (
        ("dpm++", SampleSettings(sampler="dpm++", steps=args.fast_steps, seed=2, batch_size=128)),
        ("ddpm", SampleSettings(sampler="ddpm", steps=1000, seed=2, batch_size=128)),
    ):
        settings = dataclasses.replace(settings, calibrate=calibrate)
        log(f"sampling {n_cmp} trials with {name} (calibration: {calibrate})")
        t0 = time.perf_counter()
        runs[name] = generate(ae, model, obs, lengths, settings, "cpu")
        timing[name] = time.perf_counter() - t0
    out = {
        "trials": n_cmp,
        "calibration": {k: v.provenance["latent_calibration"] for k, v in runs.items()},
        "seconds": timing,
        "trials_per_s": {k: n_cmp / v for k, v in timing.items()},
        "speedup": timing["ddpm"] / timing["dpm++"],
    }
    for name, run_ in runs.items():
        out[name] = scores(evaluate(test, run_, folds=5, seed=0))
    within = {}
    for metric in out["dpm++"]:
        a, b = out["dpm++"][metric], out["ddpm"][metric]
        if a["model_mean"] is None or b["model_mean"] is None:
            continue
        diff = abs(a["model_mean"] - b["model_mean"])
        spread = (a["model_sd"] or 0) + (b["model_sd"] or 0)
        within[metric] = {"abs_diff": diff, "sd_sum": spread, "within": diff <= spread}
    out["within_fold_spread"] = within
    return out


def generate_reconstruction(ae, data):
    """Poisson spikes from the AE's own rates of `data` (the AE's ceiling for the metrics)."""
    _, rates = infer(ae, data, 128, "cpu")
    gen = torch.Generator().manual_seed(5)
    counts = torch.poisson(torch.from_numpy(rates), generator=gen).numpy().astype(np.int32)
    counts[~data.mask()] = 0
    return dataclasses.replace(data, counts=counts, rates=None, latents=None)


if __name__ == "__main__":
    main()
