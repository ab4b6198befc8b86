"""Why the condition checks draw through the observation model: Poisson draws misjudge spikes.

The autoencoder stage of the condition checks decodes each condition from spikes drawn from the
autoencoder's rates. On recordings whose spiking is not Poisson, plain Poisson draws of even
the *true* rates decode differently from the real trials. This bench simulates `ldns simulate
reach --history H` (every unit with the simulator's refractory or bursting self-history kernel),
fits the decoders of the angle and of hand velocity on the real training trials, and applies
them to the real test trials, to Poisson draws of the true rates of those trials, and to draws
of the true rates through the simulator's own spiking process (`io.simulate.draw_spikes`):
what a perfect autoencoder scores under each way of drawing (mean of DRAWS draws, with the
range).

    python bench/quality_check_observation.py [--histories refractory,bursting] [--trials 600]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.io.simulate import draw_spikes, simulate
from ldns_cli.scoring.conditions import stage_checks

DRAWS = 5
CONDITIONS = ["angle", "hand_vel"]


def run(history: str, trials: int, seed: int) -> dict:
    data = simulate("reach", trials=trials, history=history, seed=seed)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")
    rates = test.rates.astype(np.float64)
    sets = {"real": test}
    for k in range(DRAWS):
        rng = np.random.default_rng([seed, 11, k])
        poisson = rng.poisson(rates).astype(np.int32)
        sets[f"poisson/{k}"] = dataclasses.replace(test, counts=poisson)
        spiking = draw_spikes(rates, history, rng).astype(np.int32)
        sets[f"spiking/{k}"] = dataclasses.replace(test, counts=spiking)
    checks = stage_checks(train, sets, CONDITIONS)
    out: dict = {"trials": trials, "test_trials": test.n_trials}
    for name, c in checks.items():
        row = {"metric": c["metric"], "real": c["stages"]["real"], "chance": c["chance"]}
        for key in ("poisson", "spiking"):
            values = [v for s, v in c["stages"].items() if s.startswith(key + "/")]
            row[key] = float(np.mean(values))
            row[f"{key}_range"] = [float(np.min(values)), float(np.max(values))]
        out[name] = row
        log(
            f"reach --history {history}, {name} {row['metric']}: real {row['real']:.3g}, Poisson "
            f"draws of the true rates {row['poisson']:.3g} ({row['poisson_range'][0]:.3g}-"
            f"{row['poisson_range'][1]:.3g}), draws through the simulator's spiking "
            f"{row['spiking']:.3g} ({row['spiking_range'][0]:.3g}-{row['spiking_range'][1]:.3g})"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--histories", default="refractory,bursting")
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {h: run(h, args.trials, args.seed) for h in args.histories.split(",")}
    write_results("quality_check_observation", results)


if __name__ == "__main__":
    main()
