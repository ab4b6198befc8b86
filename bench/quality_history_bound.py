"""What limits bursting units: the spike-history model given the simulator's true rates.

The realism bench fits the history model on the autoencoder's rates, so a shortfall there mixes
the autoencoder's errors with the observation model's. Here the history model is fitted on the
*true* rates of `ldns simulate reach --history bursting` (every unit with the simulator's
bursting kernel) and sampled free-running from the true rates of the test trials, for each bound
on the excitatory part of its history term (`HistoryConfig.max_excitation`: E·tanh(x/E), None =
unbounded); reported: the mean Fano factor and lag-1..3 autocorrelation of the test trials and
of the samples, and the rate (`scoring.metrics.summary_of`). The dispersion matching, which may
raise a unit's bound, is off unless `--match-dispersion`: the bench measures the bound itself.

    python bench/quality_history_bound.py [--bounds 2.5,5,10,none] [--history bursting]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.fit.history import fit_history
from ldns_cli.io.simulate import simulate
from ldns_cli.nn.observation import HistoryConfig
from ldns_cli.scoring.metrics import summary_of


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bounds", default="2.5,5,10,none")
    ap.add_argument("--match-dispersion", action="store_true")
    ap.add_argument("--history", default="bursting")
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = simulate("reach", trials=args.trials, neurons=64, history=args.history, seed=args.seed)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")
    real = summary_of(test.counts, test.lengths, test.bin_size_s)
    results: dict = {
        "data": {
            "fano": float(np.nanmean(real.fano)),
            "autocorr_lag1_3": np.nanmean(real.autocorr, axis=0)[:3].tolist(),
            "rate_hz": float(real.rates_hz.mean()),
        }
    }
    for bound in args.bounds.split(","):
        e = None if bound == "none" else float(bound)
        cfg = HistoryConfig(max_excitation=e, match_dispersion=args.match_dispersion)
        cfg = cfg.resolve(train.bin_size_s)
        t0 = time.perf_counter()
        model = fit_history(
            _tensor(train.counts), _tensor(train.rates), _tensor(train.mask()).bool(), cfg,
            torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
        gens = [torch.Generator().manual_seed(args.seed + i) for i in range(test.n_trials)]
        with torch.no_grad():
            counts = model.sample(_tensor(test.rates), gens, torch.as_tensor(test.lengths))
        s = summary_of(counts.numpy().astype(np.int32), test.lengths, test.bin_size_s)
        row = {
            "fano": float(np.nanmean(s.fano)),
            "autocorr_lag1_3": np.nanmean(s.autocorr, axis=0)[:3].tolist(),
            "rate_hz": float(s.rates_hz.mean()),
            "fit_s": time.perf_counter() - t0,
        }
        if args.match_dispersion and e is not None:
            raised = np.asarray(model.fit_summary.get("excitation_bound", [])) > e
            row["units_with_raised_bound"] = int(raised.sum())
        results[f"max_excitation={bound}"] = row
        log(
            f"max_excitation {bound}: Fano {row['fano']:.2f} (data {results['data']['fano']:.2f}), "
            f"autocorr lags 1-3 {np.round(row['autocorr_lag1_3'], 3).tolist()} (data "
            f"{np.round(results['data']['autocorr_lag1_3'], 3).tolist()}), rate "
            f"{row['rate_hz']:.2f} Hz (data {results['data']['rate_hz']:.2f})"
        )
        tag = "_matched" if args.match_dispersion else ""
        write_results(f"quality_history_bound_{args.history}{tag}", results)


if __name__ == "__main__":
    main()
