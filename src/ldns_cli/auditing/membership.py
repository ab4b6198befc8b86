"""Membership inference: can the model itself tell its training trials from held-out ones?

Two attack scores per trial, each "higher = more likely a training trial", computed the same way
for training and held-out trials:

- autoencoder: the reconstruction log-likelihood ratio per valid bin and neuron,
  mean[x log(r/r₀) − (r − r₀)], of the counts x under the autoencoder's rates r (encoded from the
  full trial, no dropout) against r₀, each neuron's mean training rate. The ratio rather than the
  likelihood itself, so that a trial's overall activity, which has nothing to do with
  membership, largely cancels (difficulty calibration);
- denoiser: minus the mean log denoising error of the trial's normalised latents at fixed noise
  levels (`NOISE_FRACTIONS` of the schedule's T steps, `NOISE_DRAWS` fixed noise draws each, the
  trial's own conditions given, nothing dropped): a denoiser that memorised a trial's latents
  removes their noise better. Logs, so every level weighs the same.

Each is summarised by the AUC of training against held-out trials with a DeLong 95% interval:
0.5 = nothing leaks, 1 = the model gives its training set away, and below 0.5 the members score
*lower* (also a leak, of the opposite sign: when the autoencoder memorised its training trials,
their latents carry the trials' noise and are harder to denoise than held-out ones).

`combined`: the attack an auditor holding a few labelled trials would run: an L2 logistic
regression on both scores, `FOLDS`-fold cross-validated (stratified), its out-of-fold log-odds
scored by the same AUC. It learns each score's direction and weight, so opposite signs do not
cancel, and being out-of-fold its AUC stays at 0.5 when nothing leaks. The verdict reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldns_cli.auditing.stats import auc_delong, fit_logistic, normal_interval, stratified_folds
from ldns_cli.conditions.spec import fit_condition_values
from ldns_cli.core.data import SpikeData
from ldns_cli.diffusion.model import DiffusionModel, condition_features, normalise

NOISE_FRACTIONS = (0.05, 0.1, 0.2, 0.4)  # noise levels t/T scored by the denoiser attack
NOISE_DRAWS = 1  # fixed noise draws per level and trial
FOLDS = 5  # cross-validation folds of the combined attack
L2 = 0.01  # its penalty (mean log-loss scale, standardised scores)
MIN_RATE = 1e-8  # spikes/bin, floor of rates inside logs

SCORE_DESCRIPTIONS = {
    "autoencoder": "reconstruction log-likelihood ratio vs each neuron's mean rate, per bin",
    "denoiser": "minus the mean log denoising error at fixed noise levels",
    "combined": "cross-validated logistic regression on both scores (out-of-fold log-odds)",
}


def reconstruction_scores(
    counts: np.ndarray, rates: np.ndarray, lengths: np.ndarray, null_rate: np.ndarray
) -> np.ndarray:
    """Per-trial Poisson log-likelihood ratio per valid bin-neuron `[B]` (see module).

    counts, rates `[B, L, N]` (spikes/bin, rates 0 at padding), null_rate `[N]` spikes/bin.
    """
    n_bins, n_neurons = counts.shape[1:]
    valid = (np.arange(n_bins)[None, :] < lengths[:, None])[:, :, None]  # [B, L, 1]
    r = np.maximum(rates.astype(np.float64), MIN_RATE)
    r0 = np.maximum(null_rate.astype(np.float64), MIN_RATE)[None, None, :]
    llr = counts * np.log(r / r0) - (r - r0)  # [B, L, N]
    total = np.where(valid, llr, 0.0).sum(axis=(1, 2))
    return total / (lengths * n_neurons)


def _condition_inputs(
    model: DiffusionModel, data: SpikeData
) -> tuple[dict[str, torch.Tensor], np.ndarray, list[str]]:
    """(features by name for the conditions `data` carries, usable trials `[B]`, missing names).

    Trials whose value is unusable (NaN, an unseen category) and conditions the data lacks take
    the denoiser's null path, as they would with the condition dropped in training.
    """
    present = [
        s for s in model.conditions if s["name"] in data.covariates or s["name"] in data.behavior
    ]
    missing = [s["name"] for s in model.conditions if s not in present]
    if not present:
        return {}, np.ones(data.n_trials, bool), missing
    values, usable = fit_condition_values(present, data)
    feats = {s["name"]: condition_features(s, values[s["name"]]) for s in present}
    return feats, usable, missing


@torch.no_grad()
def denoiser_scores(
    model: DiffusionModel,
    latents: np.ndarray,
    data: SpikeData,
    seed: int,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, list[str]]:
    """Per-trial denoiser attack score `[B]` (see module) and the conditions left out.

    latents: the autoencoder's `[B, L, Z]` for `data`. Noise is drawn per (level, draw) from its
    own seeded generator in trial order with the full padded length, so a trial's noise does not
    depend on `batch_size`.
    """
    net, schedule = model.denoiser, model.schedule
    net.eval()
    x0_all = normalise(latents, model.latent_mean, model.latent_std, model.config.clip_latents)
    mask_all = data.mask()
    x0_all = (x0_all * mask_all[:, :, None]).astype(np.float32)  # [B, L, Z]
    feats, usable, missing = _condition_inputs(model, data)
    n_trials, n_bins, n_latent = x0_all.shape
    levels = sorted({round(f * (schedule.num_train_timesteps - 1)) for f in NOISE_FRACTIONS})
    gens = [
        torch.Generator().manual_seed(seed * 1_000_003 + 17 * i + j)
        for i in range(len(levels))
        for j in range(NOISE_DRAWS)
    ]
    log_err = np.zeros((n_trials, len(levels)))
    for b0 in range(0, n_trials, batch_size):
        sl = slice(b0, min(b0 + batch_size, n_trials))
        b = sl.stop - sl.start
        longest = int(data.lengths[sl].max())
        x0 = torch.from_numpy(x0_all[sl, :longest]).to(device)  # [b, l, Z]
        mask = torch.from_numpy(mask_all[sl, :longest]).to(device)  # [b, l]
        cond = {}
        for name, f in feats.items():
            f = f[sl]
            cond[name] = (f[:, :longest] if f.ndim == 3 else f).to(device)
        drop = torch.from_numpy(~usable[sl]).to(device) if cond else None
        m = mask[:, :, None].float()  # [b, l, 1]
        denom = m.sum(dim=(1, 2)).clamp_min(1.0) * n_latent  # [b]
        for i, t in enumerate(levels):
            err = torch.zeros(b, device=device)
            for j in range(NOISE_DRAWS):
                noise = torch.randn(b, n_bins, n_latent, generator=gens[i * NOISE_DRAWS + j])
                noise = noise[:, :longest].to(device)
                steps = torch.full((b,), t, dtype=torch.long, device=device)
                x_t = schedule.add_noise(x0, noise, steps)
                target = schedule.training_target(x0, noise, steps)
                pred = net(x_t, steps, mask, cond or None, drop)
                err += ((pred - target) ** 2 * m).sum(dim=(1, 2)) / denom
            log_err[sl, i] = torch.log(err / NOISE_DRAWS + 1e-12).cpu().numpy()
    return -log_err.mean(axis=1), missing


def cross_validated_attack(
    member: np.ndarray, nonmember: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Out-of-fold log-odds of membership `[n_in + n_out]` from scores `[n, k]` (see module)."""
    x = np.concatenate([member, nonmember])
    y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    folds = min(FOLDS, len(member), len(nonmember))
    out = np.zeros(len(y))
    if folds < 2:
        return out
    fold = stratified_folds(y, folds, rng)
    for k in range(folds):
        test = fold == k
        out[test] = fit_logistic(x[~test], y[~test], L2).decision(x[test])
    return out


def membership_summary(
    member_scores: dict[str, np.ndarray],
    nonmember_scores: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """AUCs with DeLong intervals per score and for the cross-validated combined attack.

    Returns the payload's `scores` and, for the report, `{name: (member, non-member scores)}`.
    """
    names = list(member_scores)
    n_in = len(member_scores[names[0]])
    pairs = {k: (member_scores[k], nonmember_scores[k]) for k in names}
    if len(names) > 1:
        stacked = [np.stack([pairs[k][i] for k in names], axis=1) for i in (0, 1)]  # [n, k]
        combined = cross_validated_attack(stacked[0], stacked[1], rng)
        pairs["combined"] = (combined[:n_in], combined[n_in:])
    out = {}
    for name, (inside, outside) in pairs.items():
        auc, se = auc_delong(inside, outside)
        out[name] = {
            "auc": auc,
            "auc_ci": normal_interval(auc, se),
            "se": se,
            "description": SCORE_DESCRIPTIONS[name],
        }
    return out, pairs
