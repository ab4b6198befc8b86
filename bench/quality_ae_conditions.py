"""Does any autoencoder setting keep a weak condition? The autoencoder stage across settings.

On `ldns simulate network` (an E/I spiking network whose stimulus direction tunes 40% of the
excitatory cells' input for 0.3 s of each 0.6 s trial) the default autoencoder loses the angle:
Poisson draws of its rates of held-out trials decode it about 4x worse than the real trials. This
bench refits the autoencoder (the API's `fit_autoencoder`, no spike-history model) with each
setting of `SETTINGS` and reports, on the test trials:

- the autoencoder stage: the angle error of Poisson draws of its rates over the real trials'
  (mean of `fit.checks.AE_DRAWS` draws; `fit.checks.autoencoder_checks`);
- a ridge read-out of the angle from the latents (6 time-averaged chunks per trial), fitted on
  the training trials: whether the latents carry the angle at all;
- how much of the spikes the condition's PSTHs and the rates explain beyond the mean time course
  (`scoring.conditions.explained_bits_per_spike`), the figures `fit-ae`'s warning quotes;
- the rates' RMS error against the simulator's true rates (relative to the mean true rate; for
  the network these are the input rates, before coupling and self-history).

    python bench/quality_ae_conditions.py [--bed network|reach] [--trials 400]
        [--settings default,z6,z6_smooth01,z6_smooth1,z8,z32,smooth1,z8_long,z4,z4_cd04,z4_cd04_long]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.fit.autoencoder import fit_autoencoder
from ldns_cli.fit.checks import autoencoder_checks
from ldns_cli.io.simulate import SIMULATORS
from ldns_cli.nn.autoencoder import infer, infer_latents
from ldns_cli.scoring.decoding import circular_error_deg
from ldns_cli.scoring.ridge import fit_ridge
from ldns_cli.store import load_autoencoder

SETTINGS: dict[str, dict[str, Any]] = {  # fit_autoencoder keyword arguments
    "default": {},  # latent size by co-smoothing, 600 steps
    "z6": {"latent_dim": 6},  # the reach simulator's true latent size
    "z6_smooth01": {"latent_dim": 6, "smooth": 0.1},  # 10x the latent smoothness weight
    "z6_smooth1": {"latent_dim": 6, "smooth": 1.0},
    "z8": {"latent_dim": 8},
    "z32": {"latent_dim": 32},
    "smooth1": {"latent_dim": 8, "smooth": 1.0},  # 100x the latent smoothness weight
    "z8_long": {"latent_dim": 8, "epochs": 600},  # 3000 steps (stops early on validation)
    "z4": {"latent_dim": 4},
    "z4_cd04": {"latent_dim": 4, "dropout_p": 0.4},  # twice the coordinated dropout
    "z4_cd04_long": {"latent_dim": 4, "dropout_p": 0.4, "epochs": 600},
}
LENGTHS = {"network": 120, "reach": 140}
READOUT_CHUNKS = 6


def latent_readout_deg(train_latents: np.ndarray, train_angle: np.ndarray,
                       test_latents: np.ndarray, test_angle: np.ndarray) -> float:  # fmt: skip
    """Median angle error (degrees) of a ridge read-out of (cos, sin) from chunk-averaged latents
    (`scoring.ridge.fit_ridge`, the penalty by leave-one-out error)."""

    def features(z: np.ndarray) -> np.ndarray:  # [B, L, Z] -> [B, chunks·Z]
        b, n_bins, n_z = z.shape
        c = n_bins // READOUT_CHUNKS
        return z[:, : c * READOUT_CHUNKS].reshape(b, READOUT_CHUNKS, c, n_z).mean(2).reshape(b, -1)

    ridge = fit_ridge(features(train_latents), np.c_[np.cos(train_angle), np.sin(train_angle)])
    pred = ridge.predict(features(test_latents))  # [B, 2]
    return float(np.median(circular_error_deg(np.arctan2(pred[:, 1], pred[:, 0]), test_angle)))


def rate_error(model: Any, data: Any) -> float:
    """RMS error of the autoencoder's rates of `data` against the simulator's true rates, over
    the mean true rate (valid bins)."""
    _, rates = infer(model, data)
    valid = data.mask()[..., None]
    sq = ((rates - data.rates) ** 2 * valid).sum() / (valid.sum() * rates.shape[2])
    mean = (data.rates * valid).sum() / (valid.sum() * rates.shape[2])
    return float(np.sqrt(sq) / mean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bed", default="network", choices=sorted(LENGTHS))
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = SIMULATORS[args.bed](n_trials=args.trials, n_bins=LENGTHS[args.bed], seed=args.seed)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")
    results: dict[str, Any] = {}
    names = args.settings.split(",")
    tag = f"quality_ae_conditions_{args.bed}{args.trials}" + (
        "" if names == list(SETTINGS) else "_" + "_".join(names)
    )
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            fit_autoencoder(data, folder, spike_history=False, seed=args.seed, quiet=True,
                            **SETTINGS[name])  # fmt: skip
            fit_s = time.perf_counter() - t0
            model, ckpt = load_autoencoder(folder)
        check = autoencoder_checks(model, train, test, "cpu", args.seed, ["angle"])["angle"]
        real = check["stages"]["real"]
        row = {
            "settings": SETTINGS[name],
            "latent_dim": ckpt.config["ae"]["latent_dim"],
            "fit_s": fit_s,
            "best_epoch": ckpt.extra["summary"]["best_epoch"],
            "real_deg": real,
            "ratio_autoencoder": check["stages"]["autoencoder"] / real,
            "ratio_draws": [v / real for v in check["autoencoder_draws"]],
            "latent_readout_deg": latent_readout_deg(
                infer_latents(model, train),
                train.covariates["angle"],
                infer_latents(model, test),
                test.covariates["angle"],
            ),
            "explained_bits_per_spike": check.get("explained_bits_per_spike"),
            "rate_rmse_rel": rate_error(model, test),
        }
        results[name] = row
        log(
            f"{args.bed}{args.trials} {name}: Z={row['latent_dim']}, autoencoder stage "
            f"{row['ratio_autoencoder']:.2f}x real ({min(row['ratio_draws']):.2f}-"
            f"{max(row['ratio_draws']):.2f}), latent read-out {row['latent_readout_deg']:.1f}° "
            f"(real {real:.1f}°), explained {row['explained_bits_per_spike']}, rates' RMS error "
            f"{row['rate_rmse_rel']:.3f} of the mean true rate; {fit_s:.0f} s"
        )
        write_results(tag, results)


if __name__ == "__main__":
    main()
