"""How low can the autoencoder stage go? The best single-trial reconstruction, under the truth.

The autoencoder stage of the condition checks decodes the angle from Poisson draws of the
autoencoder's rates of held-out trials, with a decoder fitted on real training trials, and
divides by the error on the real trials. Any autoencoder infers its rates from one trial's
spikes, so its rates carry the angle no better than that trial does; a fresh Poisson draw of
them then adds the draw's own noise. If the decoder's error on real trials is mostly Poisson
noise, the stage cannot fall much below sqrt(2) whatever the network does.

This bench measures that floor on `ldns simulate reach` without any fitting. For each test
trial it finds the maximum a posteriori parameters of the simulator's own generative model
(angle, speed gain, the 6 latent offsets with their N(0, 0.1²) prior; the readout and base
rates recovered exactly from the stored truth) given the trial's spikes, and takes the rates
those parameters give: the reconstruction an autoencoder that knew the simulator would make.
Reported, over the real test trials' error (mean of DRAWS Poisson draws, with the range):

- `true_rates`: draws of the simulator's true rates of the test trials (not inferable from
  the spikes: the ceiling of a perfect model, about 1x);
- `oracle_reconstruction`: draws of the MAP reconstruction's rates: the floor of the stage;
- the MAP angle's own median error, next to the decoder's on the real trials;
- the reconstruction's RMS rate error over the true rates (relative to the mean true rate),
  comparable with `bench/quality_ae_conditions.py`'s figure for fitted autoencoders.

    python bench/quality_ae_floor.py [--trials 400,600,1000] [--length 140] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.core.data import SpikeData
from ldns_cli.io.simulate import reach_latents, simulate
from ldns_cli.scoring.conditions import stage_checks
from ldns_cli.scoring.decoding import circular_error_deg

DRAWS = 5
OFFSET_SD = 0.1  # the simulator's per-trial latent offset (`simulate_reach`)
GAIN_RANGE = (0.8, 1.2)  # the simulator's speed gain range
ANGLE_GRID = 36  # starting angles tried per trial before the local search


def observation_truth(data: SpikeData) -> tuple[np.ndarray, np.ndarray, float]:
    """Base log rate `[N]`, readout `[N, 6]` and rate cap (spikes/bin) of the simulator, by least
    squares of log(true rates) on [1, true latents] over the bins below the cap (exact there)."""
    lat = np.concatenate([data.latents[i, : data.lengths[i]] for i in range(data.n_trials)])
    log_r = np.log(np.concatenate([data.rates[i, : data.lengths[i]] for i in range(data.n_trials)]))
    cap = float(np.exp(log_r.max()))
    x = np.concatenate([np.ones((len(lat), 1)), lat], axis=1).astype(np.float64)  # [T, 7]
    base, readout = np.zeros(log_r.shape[1]), np.zeros((log_r.shape[1], lat.shape[1]))
    for n in range(log_r.shape[1]):
        ok = log_r[:, n] < np.log(cap) - 1e-4
        coef = np.linalg.lstsq(x[ok], log_r[ok, n].astype(np.float64), rcond=None)[0]
        base[n], readout[n] = coef[0], coef[1:]
    return base, readout, cap


def map_reconstruction(
    counts: np.ndarray, t_s: np.ndarray, base: np.ndarray, readout: np.ndarray, cap: float
) -> tuple[np.ndarray, float]:
    """MAP rates `[L, N]` and angle of one trial's counts `[L, N]` under the reach simulator."""
    s = counts.astype(np.float64)

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lat0, _ = reach_latents(np.array([p[0]]), np.array([p[1]]), t_s)
        return lat0[0], p[2:]  # [L, 6] without the offsets, offsets [6]

    def nll(p: np.ndarray) -> tuple[float, np.ndarray]:
        lat0, offset = unpack(p)
        log_r = base + (lat0 + offset) @ readout.T  # [L, N]
        r = np.exp(log_r)
        capped = r > cap
        r = np.where(capped, cap, r)
        value = float((r - s * np.log(r)).sum()) + 0.5 * float((offset**2).sum()) / OFFSET_SD**2
        d_log_r = np.where(capped, 0.0, r - s)  # [L, N]
        d_lat = d_log_r @ readout  # [L, 6]
        # every latent pair is (a cos φ, a sin φ) with φ = angle + const: d/dangle rotates it
        rotated = np.stack([-lat0[:, 1::2], lat0[:, ::2]], axis=-1).reshape(lat0.shape)
        grad = np.empty_like(p)
        grad[0] = float((d_lat * rotated).sum())
        grad[1] = float((d_lat[:, 4:6] * lat0[:, 4:6]).sum()) / p[1]  # speed ∝ gain
        grad[2:] = d_lat.sum(axis=0) + offset / OFFSET_SD**2
        return value, grad

    starts = [
        np.array([a, 1.0, *np.zeros(6)]) for a in np.linspace(0, 2 * np.pi, ANGLE_GRID, False)
    ]
    best = min(starts, key=lambda p: nll(p)[0])
    bounds = [(None, None), GAIN_RANGE] + [(None, None)] * 6
    p = minimize(nll, best, jac=True, method="L-BFGS-B", bounds=bounds).x
    lat0, offset = unpack(p)
    rates = np.minimum(np.exp(base + (lat0 + offset) @ readout.T), cap)
    return rates, float(p[0] % (2 * np.pi))


def run(trials: int, length: str, seed: int) -> dict:
    data = simulate("reach", trials=trials, length=length, seed=seed)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")
    base, readout, cap = observation_truth(data)
    rates = np.zeros(test.counts.shape)
    map_angle = np.zeros(test.n_trials)
    for i in range(test.n_trials):
        n = int(test.lengths[i])
        t_s = test.align_offset_s + (np.arange(n) + 0.5) * test.bin_size_s
        rates[i, :n], map_angle[i] = map_reconstruction(test.counts[i, :n], t_s, base, readout, cap)
    sets: dict[str, SpikeData] = {"real": test}
    for k in range(DRAWS):
        rng = np.random.default_rng([seed, 7, k])
        for key, r in (("true_rates", test.rates), ("oracle_reconstruction", rates)):
            counts = rng.poisson(r.astype(np.float64)).astype(np.int32) * test.mask()[..., None]
            sets[f"{key}/{k}"] = dataclasses.replace(test, counts=counts.astype(np.int32))
    check = stage_checks(train, sets, ["angle"])["angle"]
    real = check["stages"]["real"]
    out: dict = {"trials": trials, "test_trials": test.n_trials, "real_deg": real}
    for key in ("true_rates", "oracle_reconstruction"):
        ratios = np.array([v for k, v in check["stages"].items() if k.startswith(key)]) / real
        out[f"ratio_{key}"] = float(ratios.mean())
        out[f"ratio_{key}_range"] = [float(ratios.min()), float(ratios.max())]
    valid = test.mask()[..., None]  # [B, L, 1]
    err = ((rates - test.rates) ** 2 * valid).sum() / (valid.sum() * test.n_neurons)
    out["rate_rmse_rel"] = float(np.sqrt(err) / test.rates[test.mask()].mean())
    out["map_angle_deg"] = float(np.median(circular_error_deg(map_angle, test.covariates["angle"])))
    log(
        f"reach {trials} trials, length {length}: real {real:.2f} deg, MAP angle "
        f"{out['map_angle_deg']:.2f} deg; true rates {out['ratio_true_rates']:.2f}x, oracle "
        f"reconstruction {out['ratio_oracle_reconstruction']:.2f}x "
        f"(rate RMS error {out['rate_rmse_rel']:.2f} of the mean rate) "
        f"({out['ratio_oracle_reconstruction_range'][0]:.2f}-"
        f"{out['ratio_oracle_reconstruction_range'][1]:.2f})"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", default="400,600,1000")
    ap.add_argument("--length", default="140", help="bins, or a range such as 150:400")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="simulator seeds (one dataset each)")
    args = ap.parse_args()
    results = {}
    tag = "quality_ae_floor" + ("" if args.length == "140" else "_" + args.length.replace(":", "-"))
    for trials in (int(t) for t in args.trials.split(",")):
        runs = [run(trials, args.length, int(seed)) for seed in args.seeds.split(",")]
        row: dict = {"runs": runs}
        for key in ("ratio_true_rates", "ratio_oracle_reconstruction", "map_angle_deg", "real_deg"):
            values = [r[key] for r in runs]
            row[key] = float(np.mean(values))
            row[f"{key}_range"] = [float(np.min(values)), float(np.max(values))]
        # the real test trials are one Poisson draw: over the true rates' draws, the floor of
        # a reconstruction relative to what a perfect model's draws score
        row["oracle_over_true_rates"] = float(
            np.mean([r["ratio_oracle_reconstruction"] / r["ratio_true_rates"] for r in runs])
        )
        results[f"reach{trials}"] = row
        log(
            f"reach{trials} over {len(runs)} datasets: oracle reconstruction "
            f"{row['ratio_oracle_reconstruction']:.2f}x "
            f"({row['ratio_oracle_reconstruction_range'][0]:.2f}-"
            f"{row['ratio_oracle_reconstruction_range'][1]:.2f}), true rates "
            f"{row['ratio_true_rates']:.2f}x; oracle over true rates "
            f"{row['oracle_over_true_rates']:.2f}x"
        )
        write_results(tag, results)


if __name__ == "__main__":
    main()
