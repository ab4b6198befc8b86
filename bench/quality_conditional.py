"""Quality of conditional generation on the simulated reach task: decoded angle and velocity.

    simulate reach -> fit-ae -> fit-diffusion --condition angle   (model A)
                             -> fit-diffusion --condition hand_vel (model B)

Decoders are ridge regressions on Gaussian-smoothed counts, trained on real *training* trials:
- angle: features = smoothed counts at every 7th bin, flattened; targets (cos θ, sin θ);
  decoded angle = atan2. Error = circular distance to the requested angle, in degrees.
- velocity: features = smoothed counts at each bin; target = hand velocity at that bin.

Reported: the decoders' error on real held-out (test) trials; on samples conditioned on the test
trials' angles (model A, guidance W in {1, 2, 4}) the median circular error and the evaluate scores
against the test trials (fidelity); on samples conditioned on the test trials' velocity traces
(model B) the decoded-velocity R² against the conditioning traces. Bars: median error <= 15 deg
and <= 1.5x the real-trial error; velocity R² >= 0.8x the real-trial R².

    nice python bench/quality_conditional.py --threads 2 > bench/results/quality_conditional.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, str(Path(__file__).parent))

from common import log, run, write_results
from ldns_cli.conditions.spec import check_conditions
from ldns_cli.core.data import SpikeData
from ldns_cli.diffusion.sampling import SampleSettings
from ldns_cli.generate import generate
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import simulate_reach
from ldns_cli.nn.observation import PoissonObservation
from ldns_cli.scoring.evaluation import evaluate
from ldns_cli.store import load_autoencoder, load_diffusion

SMOOTH_BINS = 3.0  # Gaussian smoothing of counts (15 ms at 5 ms bins)
ANGLE_STRIDE = 7  # bins between angle-decoder feature times
RIDGE = 1.0


def smoothed(data: SpikeData) -> np.ndarray:
    return gaussian_filter1d(data.counts.astype(np.float64), SMOOTH_BINS, axis=1)  # [B, L, N]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE):
    """Closed-form ridge with standardised features; returns a predict function."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    xs1 = np.hstack([xs, np.ones((len(xs), 1))])
    reg = alpha * np.eye(xs1.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(xs1.T @ xs1 + reg, xs1.T @ y)
    return lambda z: np.hstack([(z - mu) / sd, np.ones((len(z), 1))]) @ w


def angle_features(data: SpikeData) -> np.ndarray:
    return smoothed(data)[:, ::ANGLE_STRIDE].reshape(data.n_trials, -1)


def circ_err_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.abs(np.angle(np.exp(1j * (a - b)))))


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    """R² pooled over both velocity components (1 − SSE/SST, SST about each component's mean)."""
    sse = np.sum((pred - true) ** 2)
    sst = np.sum((true - true.mean(0)) ** 2)
    return float(1 - sse / sst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/results/quality_conditional_work"))
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--neurons", type=int, default=64)
    ap.add_argument("--bins", type=int, default=140)
    ap.add_argument("--ae-epochs", type=int, default=30)
    ap.add_argument("--diff-epochs", type=int, default=100)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--per-condition", type=int, default=2)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prediction", default="v", help="eps (the paper's) or v (our small preset)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "reach.h5"
    results: dict = {"settings": vars(args) | {"work": str(work)}}
    if not data_path.exists():
        write_spikes(simulate_reach(args.trials, args.neurons, args.bins, seed=0), data_path)
    data = read_spikes(data_path)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")

    ldns = [sys.executable, "-m", "ldns_cli"]
    ae_dir = work / "models_angle"
    common = ["--device", "cpu", "--seed", "0"]
    if not (ae_dir / "ae.safetensors").exists():
        ae_flags = ["--preset", "small", "--epochs", str(args.ae_epochs), "--no-spike-history"]
        results["fit_ae_s"] = run(
            [*ldns, "fit-ae", str(data_path), "-m", str(ae_dir), *common, *ae_flags]
        )
    cfg_file = work / "diffusion_config.json"
    cfg_file.write_text(
        json.dumps({"warmup_epochs": 2, "ema_decay": args.ema_decay, "lr": args.lr})
    )
    diff_flags = [
        "--width",
        str(args.width),
        "--blocks",
        str(args.blocks),
        "--config",
        str(cfg_file),
    ]
    diff_flags += ["--epochs", str(args.diff_epochs), "--batch-size", str(args.batch_size)]
    diff_flags += ["--prediction", args.prediction]
    vel_dir = work / "models_vel"
    vel_dir.mkdir(exist_ok=True)
    shutil.copy(ae_dir / "ae.safetensors", vel_dir / "ae.safetensors")
    for folder, cond in ((ae_dir, "angle"), (vel_dir, "hand_vel")):
        if not (folder / "diffusion.safetensors").exists():
            results[f"fit_diffusion_{cond}_s"] = run(
                [
                    *ldns,
                    "fit-diffusion",
                    str(data_path),
                    "-m",
                    str(folder),
                    *common,
                    *diff_flags,
                    "--condition",
                    cond,
                ]
            )

    # ---- decoders on real trials
    angle_dec = ridge_fit(
        angle_features(train),
        np.c_[np.cos(train.covariates["angle"]), np.sin(train.covariates["angle"])],
    )

    def decode_angle(d: SpikeData) -> np.ndarray:
        p = angle_dec(angle_features(d))
        return np.arctan2(p[:, 1], p[:, 0])

    real_angle_err = circ_err_deg(decode_angle(test), test.covariates["angle"])
    vel_dec = ridge_fit(
        smoothed(train).reshape(-1, data.n_neurons), train.behavior["hand_vel"].reshape(-1, 2)
    )

    def decode_vel(d: SpikeData) -> np.ndarray:
        return vel_dec(smoothed(d).reshape(-1, d.n_neurons)).reshape(d.n_trials, d.n_bins, 2)

    real_vel_r2 = r2(decode_vel(test), test.behavior["hand_vel"])
    results["real"] = {
        "angle_median_err_deg": float(np.median(real_angle_err)),
        "velocity_r2": real_vel_r2,
        "test_trials": test.n_trials,
    }
    log("real: " + json.dumps(results["real"]))

    obs = PoissonObservation()
    k = args.per_condition
    lengths = np.full(test.n_trials * k, args.bins)

    # ---- angle-conditioned samples, guidance sweep
    ae, ae_ckpt = load_autoencoder(ae_dir, "cpu")
    model_a = load_diffusion(ae_dir, "cpu", ae_ckpt)
    results["ae_train_epochs"] = len(ae_ckpt.extra["train"]["history"])
    results["diffusion_angle_epochs"] = len(model_a.checkpoint.extra["train"]["history"])
    target = np.repeat(test.covariates["angle"], k)
    cond = check_conditions(model_a, {"angle": target}, lengths)
    results["angle"] = {}
    for w in (1.0, 1.5, 2.0, 4.0):
        settings = SampleSettings(steps=args.steps, guidance=w, seed=11, batch_size=128)
        log(f"angle-conditioned samples, W={w:g}")
        t0 = time.perf_counter()
        samples = generate(ae, model_a, obs, lengths, settings, "cpu", conditions=cond)
        err = circ_err_deg(decode_angle(samples), target)
        ev = evaluate(test, samples, folds=5, seed=0)["metrics"]
        results["angle"][f"W={w:g}"] = {
            "median_err_deg": float(np.median(err)),
            "mean_err_deg": float(np.mean(err)),
            "ratio_to_real": float(np.median(err) / np.median(real_angle_err)),
            "seconds": time.perf_counter() - t0,
            "scores": {name: m["score"] for name, m in ev.items()},
        }
        log(json.dumps(results["angle"][f"W={w:g}"]))
    uncond = generate(
        ae, model_a, obs, lengths, SampleSettings(steps=args.steps, seed=11, batch_size=128), "cpu"
    )
    results["angle"]["unconditional_median_err_deg"] = float(
        np.median(circ_err_deg(decode_angle(uncond), target))
    )

    # ---- velocity-conditioned samples
    ae_v, ae_v_ckpt = load_autoencoder(vel_dir, "cpu")
    model_v = load_diffusion(vel_dir, "cpu", ae_v_ckpt)
    traces = np.repeat(test.behavior["hand_vel"], k, axis=0)
    cond_v = check_conditions(model_v, {"hand_vel": traces}, lengths)
    results["velocity"] = {}
    for w in (1.0, 2.0):
        settings = SampleSettings(steps=args.steps, guidance=w, seed=12, batch_size=128)
        log(f"velocity-conditioned samples, W={w:g}")
        samples = generate(ae_v, model_v, obs, lengths, settings, "cpu", conditions=cond_v)
        sample_r2 = r2(decode_vel(samples), traces)
        ev = evaluate(test, samples, folds=5, seed=0)["metrics"]
        results["velocity"][f"W={w:g}"] = {
            "r2": sample_r2,
            "ratio_to_real": sample_r2 / real_vel_r2,
            "scores": {name: m["score"] for name, m in ev.items()},
        }
        log(json.dumps(results["velocity"][f"W={w:g}"]))
    path = write_results("quality_conditional", results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
