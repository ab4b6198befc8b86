"""Quality and speed of the spike-history observation model against Poisson on the same rates.

For `ldns simulate lorenz --history refractory|bursting` data, spikes are generated from the SAME
rates twice — Poisson(r) and the fitted spike-history model — and compared with held-out (test)
trials using `ldns_cli.scoring.metrics.compare_counts`: mean-ISI, std-ISI and short-lag autocorrelation
RMSE (the targets: ≥ 40% lower with history) and population-count KL / correlation RMSE (must not
get worse beyond the fold spread). Folds: 5 bootstrap resamples of the generated trials, shared by
both models (the LDNS paper's protocol). A "data floor" row compares real training trials with
the test trials.

Rates used for generation (`--rates`):
- `true`: the simulator's latent-driven rates of the test trials (history fitted on the training
  trials' true rates) — isolates the observation model;
- `ae`: the pipeline: `ldns fit-ae` (small preset; it fits the history model on the AE's rates at
  its end), then the AE's rates of the test trials.

Also times autoregressive sampling at long lengths (default 64 trials × 16,384 bins × 128 neurons).

Run (background, low priority):
    nice python bench/quality_history.py --rates true ae > bench/results/quality_history.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, write_results
from ldns_cli.fit.history import fit_history
from ldns_cli.io.formats import write_spikes
from ldns_cli.io.simulate import history_kernel, simulate_lorenz
from ldns_cli.nn.observation import HistoryConfig, PoissonObservation, SpikeHistoryObservation
from ldns_cli.scoring.metrics import compare_counts
from ldns_cli.store import load_observation

TARGETS = ("mean_isi_rmse_s", "std_isi_rmse_s", "autocorr_rmse")
GUARDS = ("psc_kl", "corr_rmse")


def fold_metrics(
    gen_counts: np.ndarray, ref_counts: np.ndarray, bin_size_s: float, folds: np.ndarray
) -> dict[str, list[float]]:
    """compare_counts on each bootstrap fold of the generated trials against the reference."""
    out: dict[str, list[float]] = {}
    ref_len = np.full(ref_counts.shape[0], ref_counts.shape[1])
    for idx in folds:
        c = gen_counts[idx]
        m = compare_counts(c, np.full(len(idx), c.shape[1]), ref_counts, ref_len, bin_size_s)
        for k, v in m.items():
            out.setdefault(k, []).append(float(v))
    return out


def summarise(metrics: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))} for k, v in metrics.items()
    }


def ae_rates(
    data_path: Path, models: Path, test, epochs: int, seed: int
) -> tuple[np.ndarray, SpikeHistoryObservation, float]:
    """Fit the AE (+ history, as `ldns fit-ae` does) through the CLI; AE rates of the test trials."""
    from ldns_cli.nn.autoencoder import infer
    from ldns_cli.store import load_autoencoder

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ldns_cli", "fit-ae", str(data_path), "-m", str(models),
           "--preset", "small", "--epochs", str(epochs), "--device", "cpu", "--seed", str(seed),
           "--force"]  # fmt: skip
    subprocess.run(cmd, check=True)
    fit_s = time.perf_counter() - t0
    ae, _ = load_autoencoder(models, "cpu")
    _, rates = infer(ae, test, 64, "cpu")
    hist = load_observation(models, "history", "cpu")
    assert isinstance(hist, SpikeHistoryObservation)
    return rates, hist, fit_s


def run_case(history: str, mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)  # nothing below uses the global RNG; belt and braces
    data = simulate_lorenz(
        n_trials=args.trials, n_neurons=args.neurons, n_bins=args.bins, seed=args.seed,
        history=history,
    )  # fmt: skip
    train = data.select(data.split == "train")
    test = data.select(data.split == "test")
    extra: dict = {}
    coupled = plain = None
    if mode == "true":
        t0 = time.perf_counter()
        model = fit_history(
            torch.as_tensor(train.counts, dtype=torch.float32),
            torch.as_tensor(train.rates),
            None,
            HistoryConfig(),
            torch.Generator().manual_seed(args.seed),
        )
        extra["history_fit"] = dict(model.fit_summary)
        # the simulator's kernel (exp link, 10 lags) against the fitted one (softplus link, 20)
        true_k = np.zeros(model.history_bins)
        sim_k = history_kernel(history)
        true_k[: len(sim_k)] = sim_k
        w = model.history.detach().numpy()  # [N, H]
        per_neuron = [np.corrcoef(row, true_k)[0, 1] for row in w]
        extra["kernel_corr_median"] = float(np.nanmedian(per_neuron))
        extra["kernel_corr_of_mean"] = float(np.corrcoef(w.mean(0), true_k)[0, 1])
        extra["kernel_fitted_mean"] = w.mean(0).astype(float).round(3).tolist()
        extra["history_fit_wall_s"] = time.perf_counter() - t0
        rates = test.rates
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.h5"
            write_spikes(data, path)
            models = Path(tmp) / "models"
            rates, model, fit_s = ae_rates(path, models, test, args.ae_epochs, args.seed)
            # the same fit without the free-running rate matching, on the same AE's rates of the
            # training trials: isolates what the matching step does
            from ldns_cli.nn.autoencoder import infer
            from ldns_cli.store import load_autoencoder

            ae, _ = load_autoencoder(models, "cpu")
            _, train_rates = infer(ae, train, 64, "cpu")
            plain = fit_history(
                torch.as_tensor(train.counts, dtype=torch.float32),
                torch.as_tensor(train_rates),
                None,
                HistoryConfig(rate_match_rounds=0),
                torch.Generator().manual_seed(args.seed),
            )
            if args.coupling_rank > 0:
                coupled_dir = Path(tmp) / "coupled"
                coupled_dir.mkdir()
                shutil.copy(models / "ae.safetensors", coupled_dir / "ae.safetensors")
                cmd = [sys.executable, "-m", "ldns_cli", "fit-history", str(path),
                       "-m", str(coupled_dir), "--coupling-rank", str(args.coupling_rank),
                       "--device", "cpu", "--seed", str(args.seed)]  # fmt: skip
                subprocess.run(cmd, check=True)
                coupled = load_observation(coupled_dir, "history", "cpu")
        extra["fit_ae_wall_s"] = fit_s
    r = torch.as_tensor(np.asarray(rates, dtype=np.float32))
    gen = torch.Generator().manual_seed(args.seed + 1)
    pois = PoissonObservation().sample(r, gen).numpy().astype(np.int32)
    t0 = time.perf_counter()
    hist = model.sample(r, torch.Generator().manual_seed(args.seed + 2)).numpy().astype(np.int32)
    extra["history_sample_s"] = time.perf_counter() - t0

    if plain is not None:
        gen_p = torch.Generator().manual_seed(args.seed + 2)
        hist_p = plain.sample(r, gen_p).numpy().astype(np.int32)
    if coupled is not None:
        gen_c = torch.Generator().manual_seed(args.seed + 2)
        hist_c = coupled.sample(r, gen_c).numpy().astype(np.int32)

    rng = np.random.default_rng(args.seed)
    folds = rng.integers(0, test.n_trials, size=(args.folds, test.n_trials))
    floor_src = train.counts[: test.n_trials]
    res = {
        "poisson": summarise(fold_metrics(pois, test.counts, data.bin_size_s, folds)),
        "history": summarise(fold_metrics(hist, test.counts, data.bin_size_s, folds)),
        "data_floor": summarise(
            fold_metrics(floor_src, test.counts, data.bin_size_s, folds % len(floor_src))
        ),
    }
    if plain is not None:
        res["history_no_rate_matching"] = summarise(
            fold_metrics(hist_p, test.counts, data.bin_size_s, folds)
        )
    if coupled is not None:
        res["history_coupled"] = summarise(
            fold_metrics(hist_c, test.counts, data.bin_size_s, folds)
        )
    verdict = {}
    for k in TARGETS:
        p, h = res["poisson"][k]["mean"], res["history"][k]["mean"]
        verdict[k] = {"reduction": 1 - h / p, "pass": bool(1 - h / p >= 0.4)}
    for k in GUARDS:
        p, h = res["poisson"][k], res["history"][k]
        spread = max(p["sd"], h["sd"])
        verdict[k] = {"delta": h["mean"] - p["mean"], "spread": spread,
                      "pass": bool(h["mean"] - p["mean"] <= spread)}  # fmt: skip
    mean_rate = {
        "data_test": float(test.counts.mean()),
        "poisson": float(pois.mean()),
        "history": float(hist.mean()),
        **({"history_no_rate_matching": float(hist_p.mean())} if plain is not None else {}),
    }
    return {"metrics": res, "verdict": verdict, "mean_counts_per_bin": mean_rate, **extra}


def time_sampling(args: argparse.Namespace) -> dict:
    """Autoregressive sampling speed at long lengths (random fitted-like parameters)."""
    B, L, N = args.speed_shape
    gen = torch.Generator().manual_seed(0)
    model = SpikeHistoryObservation(N, 20, 5)
    with torch.no_grad():
        k = torch.arange(1, 21, dtype=torch.float32)
        model.history.copy_(-3.0 * torch.exp(-k / 2.0).expand(N, 20))
    rates = 0.02 + 0.2 * torch.rand(B, L, N, generator=gen)
    model.sample(rates[:, :256], gen)  # warm-up
    t0 = time.perf_counter()
    s = model.sample(rates, gen)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    PoissonObservation().sample(rates, gen)
    dp = time.perf_counter() - t1
    # one generator per trial (batch-independent streams), still one loop for the batch
    gens = [torch.Generator().manual_seed(b) for b in range(B)]
    t2 = time.perf_counter()
    model.sample(rates, gens)
    dg = time.perf_counter() - t2
    return {
        "shape_BLN": [B, L, N],
        "history_seconds": dt,
        "history_time_steps_per_s": L / dt,
        "history_trial_bins_per_s": B * L / dt,
        "history_neuron_bins_per_s": B * L * N / dt,
        "poisson_seconds": dp,
        "history_per_trial_generators_seconds": dg,
        "history_per_trial_generators_trial_bins_per_s": B * L / dg,
        "mean_count": float(s.mean()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", nargs="*", default=["true"], choices=["true", "ae"])
    ap.add_argument("--histories", nargs="+", default=["refractory", "bursting"])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--neurons", type=int, default=64)
    ap.add_argument("--bins", type=int, default=256)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--ae-epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-shape", type=int, nargs=3, default=[64, 16384, 128])
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--coupling-rank", type=int, default=0, help="also fit a coupled model (ae)")
    ap.add_argument("--name", default="quality_history")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"args": vars(args), "cases": {}}
    for mode in args.rates:
        for history in args.histories:
            key = f"{history}/{mode}"
            t0 = time.perf_counter()
            results["cases"][key] = case = run_case(history, mode, args)
            case["wall_s"] = time.perf_counter() - t0
            print(key, json.dumps(case["verdict"]), flush=True)
            if "kernel_corr_median" in case:
                print(
                    "  kernel", case["kernel_corr_median"], case["kernel_fitted_mean"], flush=True
                )
            for name, row in case["metrics"].items():
                print(f"  {name:10s}", "  ".join(
                    f"{k}={row[k]['mean']:.4g}±{row[k]['sd']:.2g}" for k in (*TARGETS, *GUARDS)
                ), flush=True)  # fmt: skip
    if not args.no_speed:
        results["speed"] = time_sampling(args)
        print("speed", json.dumps(results["speed"]), flush=True)
    print("env", json.dumps(environment()), flush=True)
    print("wrote", write_results(args.name, results))


if __name__ == "__main__":
    main()
