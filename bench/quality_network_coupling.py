"""Would a dense neuron-to-neuron coupling give the E/I network's pairwise correlations back?

`ldns simulate network` has no latent variables: its units drive one another through a sparse
E/I connectivity, so part of its zero-lag count correlations is specific to each pair. The
autoencoder's rates carry the shared, low-dimensional part; an observation model with independent
units cannot add the rest. The classic remedy is a coupled GLM (Pillow et al. 2008): each unit's
log intensity also reads the filtered past spikes of every other unit,

    η_{n,t} = (the fitted history model's η) + Σ_b Σ_m J_{b,n,m} (g_b ⋆ x_m)(t),

with g_b exponential kernels (decay `--taus` bins, lag k weighted e^{−(k−1)/τ}) and x = the past
counts s̃ ("spikes") or their deviations from the rates s̃ − r ("residuals": only what the rates
do not explain is passed on). J [B, N, N] is fitted by L-BFGS on the training trials' Poisson
likelihood under teacher forcing, with the fitted history model fixed and an L2 penalty
(`--l2`, per squared weight, against the mean log-likelihood per neuron-bin). The loss is
convex in J. The free-running intercepts are then matched to the data's rates again.

Each variant samples the test trials free-running from their own autoencoder rates (as `ldns
sample` draws spikes, one generator per trial) and is scored with `ldns.evaluate` against those
trials. Also reported: the teacher-forced training NLL, the correlation of the fitted J (summed
over kernels) with the simulator's true coupling, off the diagonal, and the same scores for
the fitted history model alone (and without its copula, when it has one), with its count
dispersion switched off, and for Poisson draws; and, for comparison, the history model with a
copula between its units' counts estimated on the training trials (`fit_count_correlation`),
which leaves every unit's own law as it is.

Any further `--models` folders (e.g. autoencoders fitted with another `--latent-dim` on the same
data) are scored with their own history model and Poisson only.

    python bench/quality_network_coupling.py --data DATA.h5 --test TEST.h5 --models M [M ...]
        [--l2 1e-4,1e-6] [--taus 1,4] [--inputs spikes,residuals]

DATA and TEST are `bench/quality_pipeline_conditions.py --work` files (`<work>/<bed>/data.h5`,
`test.h5`): the recording the models were fitted on and the one whose "test" trials score them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.core.data import SpikeData
from ldns_cli.fit.checks import observation_draws
from ldns_cli.fit.history import (
    fit_count_correlation,
    match_free_running_rates,
    tensor_batches,
)
from ldns_cli.fit.splits import split_train_val
from ldns_cli.io.formats import read_spikes
from ldns_cli.nn.autoencoder import infer
from ldns_cli.nn.observation import (
    RESIDUALS,
    SPIKES,
    SpikeHistoryObservation,
    auto_selected,
    kernel_input,
)
from ldns_cli.scoring.evaluation import evaluate
from ldns_cli.store import load_autoencoder, load_observation

SCORES = ("corr_rmse", "autocorr_rmse", "fano_rmse", "mean_isi_rmse_s", "psc_w1", "psd_log_mse")
RATE_MATCH_ROUNDS = 2
LBFGS_ROUNDS = 3  # of up to 200 iterations each


class DenselyCoupled(SpikeHistoryObservation):
    """A fitted history model plus a dense coupling J [K, N, N] over kernels g [K, H], held in the
    parent's low-rank coupling with rank K·N: V = [I … I], κ = each kernel repeated N times,
    U = [J_1 … J_K]. With `coupling_input` "residuals" the coupling reads s̃ − r while the
    neuron's own history keeps its input: the parent's loop pushes s̃ through the coupling, so
    the deterministic part −Σ J (g ⋆ r) is added to the drive here (rates before bin 0 held at
    the first bin's, the loop's stationary start)."""

    def __init__(
        self, base: SpikeHistoryObservation, J: Tensor, kernels: Tensor, coupling_input: str
    ):
        K, N, _ = J.shape
        super().__init__(
            N,
            base.history_bins,
            base.max_count,
            coupling_rank=K * N,
            max_excitation=base.max_excitation,
            history_input=base.history_input,
        )
        with torch.no_grad():
            self.load_state_dict(base.state_dict(), strict=False)
            self.coupling_in.copy_(torch.cat([torch.eye(N)] * K, 1))  # [N, K·N]
            self.coupling_kernel.copy_(kernels.repeat_interleave(N, 0))  # [K·N, H]
            self.coupling_out.copy_(torch.cat(list(J), 1))  # [N, K·N]
        for name in ("excitation_bound", "count_dispersion", "count_cap", "use_history"):
            setattr(self, name, getattr(base, name))
        self.kernels = kernels
        self.J = J
        self.coupling_input = coupling_input

    def drive(self, rates: Tensor) -> Tensor:
        d = super().drive(rates)  # [B, L, N]
        if self.coupling_input != RESIDUALS:
            return d
        return d - coupling_features(rates, rates[:, :1], self.kernels, self.J)


def coupling_features(x: Tensor, start: Tensor, kernels: Tensor, J: Tensor) -> Tensor:
    """Σ_k J_k (g_k ⋆ x) [B, L, N]: x [B, L, N] filtered causally by each kernel (lag 1 first),
    with `start` [B, 1, N] standing for every bin before bin 0."""
    B, L, N = x.shape
    H = kernels.shape[1]
    xt = torch.cat([start.expand(B, H, N), x], 1).transpose(1, 2).to(J.dtype)  # [B, N, H+L]
    out = torch.zeros(B, L, N, dtype=J.dtype)
    for k in range(kernels.shape[0]):
        w = kernels[k].flip(-1).repeat(N, 1, 1)  # [N, 1, H]
        filt = F.conv1d(xt, w, groups=N)[..., :L].transpose(1, 2)  # [B, L, N], bin t sees < t
        out = out + filt @ J[k].t()
    return out


def fit_coupling(
    base: SpikeHistoryObservation,
    train: SpikeData,
    rates: np.ndarray,
    kernels: Tensor,
    coupling_input: str,
    l2: float,
) -> tuple[Tensor, float, float]:
    """J [K, N, N] by L-BFGS under teacher forcing, the rest of `base` fixed; returns J and the
    training NLL (nats per neuron-bin, without the log s! term) before and after."""
    counts = torch.as_tensor(train.counts, dtype=torch.float32)  # [B, L, N]
    r = torch.as_tensor(rates, dtype=torch.float32)
    mask = torch.as_tensor(train.mask())  # [B, L]
    N = counts.shape[2]
    with torch.no_grad():
        eta0 = (base.history_term(counts, r) + base.drive(r))[mask]  # [M, N]
        x = kernel_input(base._cap(counts), r, coupling_input) * mask[..., None]
        zero = torch.zeros_like(x[:, :1])
        feats = [
            coupling_features(x, zero, kernels[k : k + 1], torch.eye(N)[None])[mask]
            for k in range(kernels.shape[0])
        ]  # K x [M, N]
    y = counts[mask]  # [M, N]
    J = torch.zeros(kernels.shape[0], N, N, requires_grad=True)

    def nll(J: Tensor) -> Tensor:
        eta = eta0 + sum(f @ J[k].t() for k, f in enumerate(feats))
        lam = F.softplus(eta).clamp_min(1e-8)
        return (lam - y * torch.log(lam)).mean()

    opt = torch.optim.LBFGS(
        [J], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll(J) + l2 * (J**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(nll(torch.zeros_like(J)))
    for _ in range(LBFGS_ROUNDS):
        opt.step(closure)
    with torch.no_grad():
        after = float(nll(J))
    return J.detach(), before, after


def scores(model: Any, rates: np.ndarray, test: SpikeData) -> dict[str, float]:
    counts = observation_draws(rates, test.lengths, model, 0, 0)
    metrics = evaluate(test, dataclasses.replace(test, counts=counts), conditions=[])["metrics"]
    return {k: round(metrics[k]["score"], 3) for k in SCORES if metrics[k]["score"] is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--l2", default="1e-4,1e-6")
    ap.add_argument("--taus", default="1,4", help="kernel decays, bins")
    ap.add_argument("--inputs", default=f"{SPIKES},{RESIDUALS}")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = read_spikes(args.data)
    test = read_spikes(args.test)
    test = test.select(test.split == "test")
    results: dict[str, Any] = {"test_trials": test.n_trials}
    for i, folder in enumerate(args.models):
        ae, ckpt = load_autoencoder(folder, "cpu")
        base = auto_selected(load_observation(folder, "history", "cpu"))
        test_rates = infer(ae, test)[1]
        row: dict[str, Any] = {"latent_dim": int(ae.config.latent_dim)}
        row["history"] = scores(base, test_rates, test)
        if base.count_correlation is not None:  # as stored, and with its units drawn independently
            base = copy.deepcopy(base)
            base.set_count_correlation(None)
            row["history_independent"] = scores(base, test_rates, test)
        plain = copy.deepcopy(base)
        plain.count_dispersion = None
        row["history_without_dispersion"] = scores(plain, test_rates, test)
        row["poisson"] = scores(None, test_rates, test)
        log(f"{folder} (Z={row['latent_dim']}): {row}")
        if i == 0:
            seed = int(ckpt.config.get("train", {}).get("seed", 0))
            val_frac = float(ckpt.extra.get("data", {}).get("val_frac", 0.1))
            train = split_train_val(data, val_frac, seed)[0]
            train_rates = infer(ae, train)[1]
            H = base.history_bins
            taus = [float(t) for t in args.taus.split(",")]
            kernels = torch.stack([torch.exp(-torch.arange(H) / t) for t in taus])  # [K, H]
            truth = (test.unit_info or {}).get("coupling")
            off = ~np.eye(base.n_neurons, dtype=bool)
            batches = tensor_batches(
                torch.as_tensor(train.counts, dtype=torch.float32),
                torch.as_tensor(train_rates, dtype=torch.float32),
                torch.as_tensor(train.mask()),
            )
            for coupling_input in args.inputs.split(","):
                for l2 in (float(v) for v in args.l2.split(",")):
                    t0 = time.perf_counter()
                    J, before, after = fit_coupling(
                        base, train, train_rates, kernels, coupling_input, l2
                    )
                    model = DenselyCoupled(base, J, kernels, coupling_input)
                    match_free_running_rates(
                        model, batches, train.n_trials, RATE_MATCH_ROUNDS, seed
                    )
                    entry: dict[str, Any] = {
                        "train_nll_uncoupled": round(before, 5),
                        "train_nll_coupled": round(after, 5),
                        "fit_s": round(time.perf_counter() - t0, 1),
                        "scores": scores(model, test_rates, test),
                    }
                    if truth is not None:
                        fitted = J.sum(0).numpy()[off]
                        entry["corr_with_true_coupling"] = round(
                            float(np.corrcoef(fitted, np.asarray(truth)[off])[0, 1]), 3
                        )
                    key = f"coupled_{coupling_input}_l2_{l2:g}"
                    row[key] = entry
                    log(f"  {key}: {entry}")
            # the alternative that leaves each unit's own law alone: a copula between the counts
            t0 = time.perf_counter()
            R, figures = fit_count_correlation(base, batches, train.n_trials, seed)
            if R is not None:
                copula = copy.deepcopy(base)
                copula.set_count_correlation(R)
                figures["scores"] = scores(copula, test_rates, test)
            figures["fit_s"] = round(time.perf_counter() - t0, 1)
            row["copula"] = figures
            log(f"  copula: {figures}")
        results[str(folder)] = row
    write_results("quality_network_coupling", results)


if __name__ == "__main__":
    main()
