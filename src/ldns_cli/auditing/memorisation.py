"""Did the model copy its training trials? Distances to the closest record, calibrated.

For every sample: its distance to the nearest training trial (its DCR) and to the nearest
held-out trial, in a fixed feature space (`distances`). Held-out trials were never seen by the
model, so their own distances to the training trials show how close an honest new trial comes.
Given the training set, held-out trials and samples from a model that copies nothing are
independent draws of one distribution, so their DCRs are exchangeable; everything below is
calibrated by that alone:

- threshold τ: the k-th smallest held-out DCR, k = max(1, ⌊α (n_heldout + 1)⌋). A new trial
  drawn like the held-out ones falls below τ with probability exactly k/(n_heldout + 1) ≤ α
  (the conformal argument), the flag rate expected when nothing is copied; a sample below τ is
  *flagged*. The flagged fraction comes with a Wilson interval (the samples' own noise) and a
  p-value from the exact null of the count, beta-binomial(n_samples, k, n_heldout + 1 − k): τ is
  itself random, so a binomial test would cry wolf whenever τ happens to fall high.
- closer-than-held-out AUC: P(a sample's DCR < a held-out trial's DCR) over all pairs, with a
  DeLong interval: 0.5 when samples come no closer to the training trials than new real trials
  do, above 0.5 when they follow the training set more closely than the data's own variability.
- nearer-training share (descriptive): with the training and held-out sets cut to the same size
  at random, the fraction of samples whose nearest trial is a training one (≈ 0.5 without
  copying). All samples share the same two sets, so its noise is larger than a binomial's and
  no interval is given.
- the closest sample/training pairs, by trial id, for inspection.

What it can see is what is specific to a trial. A latent diffusion model that memorised its
training latents returns their rates with fresh spikes: on Lorenz data, where every trial is its
own chaotic trajectory, such rate copies are flagged (32 neurons, 128 bins: 7.5% flagged against
1% expected, closer-than-held-out AUC 0.69); on the reach task, where trials differ only by their
angle and speed, a rate copy is as close as a fresh trial at the same angle, and it also reveals
no more than one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import betabinom

from ldns_cli.auditing.distances import Nearest, TrialFeatures, nearest
from ldns_cli.auditing.stats import auc_delong, normal_interval, wilson_interval

ALPHA = 0.01  # the held-out flag rate the threshold is set for
N_CLOSEST = 10  # closest pairs listed
QUANTILES = (0.01, 0.05, 0.25, 0.5)


@dataclass
class MemorisationArrays:
    """What the report draws: the three DCR distributions and the threshold."""

    samples_to_train: np.ndarray  # [S]
    samples_to_heldout: np.ndarray  # [S]
    heldout_to_train: np.ndarray  # [H]
    threshold: float


def conformal_threshold(heldout_dcr: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """(τ, expected flag rate k/(n+1), k) from the held-out trials' distances to training."""
    n = len(heldout_dcr)
    k = max(1, int(np.floor(alpha * (n + 1))))
    tau = float(np.sort(heldout_dcr)[k - 1])
    return tau, k / (n + 1), k


def _quantiles(x: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100):02d}": float(np.quantile(x, q)) for q in QUANTILES}


def memorisation(
    train: TrialFeatures,
    heldout: TrialFeatures,
    samples: TrialFeatures,
    ids: dict[str, np.ndarray],
    rng: np.random.Generator,
    alpha: float = ALPHA,
) -> tuple[dict[str, Any], MemorisationArrays]:
    """The memorisation section of the payload (one feature space) and the arrays behind it.

    `ids`: trial ids `{"train", "heldout", "samples"}` for the closest-pairs list.
    """
    n_tr, n_ho, n_s = train.n_trials, heldout.n_trials, samples.n_trials
    m = min(n_tr, n_ho)  # equal-size sets for the nearer-training share
    train_eq = np.sort(rng.permutation(n_tr)[:m])
    heldout_eq = np.sort(rng.permutation(n_ho)[:m])
    s_tr_all, s_tr_eq = nearest(samples, train, (None, train_eq))
    s_ho_all, s_ho_eq = nearest(samples, heldout, (None, heldout_eq))
    (ho_tr,) = nearest(heldout, train)

    tau, expected, k = conformal_threshold(ho_tr.distance, alpha)
    flagged = s_tr_all.distance < tau
    n_flagged = int(flagged.sum())
    # P(count >= observed) when the samples' and held-out DCRs are exchangeable
    p_value = float(betabinom.sf(n_flagged - 1, n_s, k, n_ho + 1 - k))
    closer_auc, closer_se = auc_delong(-s_tr_all.distance, -ho_tr.distance)
    # ties (a sample exactly as far from both) count half
    nearer = (s_tr_eq.distance < s_ho_eq.distance) + 0.5 * (s_tr_eq.distance == s_ho_eq.distance)
    payload = {
        "threshold": tau,
        "threshold_rank": k,
        "expected_flagged": expected,
        "flagged": n_flagged / n_s,
        "flagged_ci": list(wilson_interval(n_flagged, n_s)),
        "flagged_count": n_flagged,
        "flagged_p_value": p_value,
        "closer_than_heldout_auc": closer_auc,
        "closer_than_heldout_auc_ci": normal_interval(closer_auc, closer_se),
        "nearer_train_share": float(nearer.mean()),
        "equal_set_size": m,
        "dcr": {
            "samples_to_train": _quantiles(s_tr_all.distance),
            "samples_to_heldout": _quantiles(s_ho_all.distance),
            "heldout_to_train": _quantiles(ho_tr.distance),
        },
        "closest_pairs": _closest_pairs(s_tr_all, s_ho_all, ids, tau),
    }
    arrays = MemorisationArrays(s_tr_all.distance, s_ho_all.distance, ho_tr.distance, tau)
    return payload, arrays


def _closest_pairs(
    to_train: Nearest, to_heldout: Nearest, ids: dict[str, np.ndarray], tau: float
) -> list[dict[str, Any]]:
    order = np.argsort(to_train.distance, kind="stable")[:N_CLOSEST]
    pairs = []
    for i in order:
        d_tr, d_ho = float(to_train.distance[i]), float(to_heldout.distance[i])
        pairs.append(
            {
                "sample_trial_id": ids["samples"][i],
                "train_trial_id": ids["train"][to_train.index[i]],
                "distance": d_tr,
                "nearest_heldout_trial_id": ids["heldout"][to_heldout.index[i]],
                "heldout_distance": d_ho,
                "ratio": d_tr / d_ho if d_ho > 0 else None,
                "flagged": bool(d_tr < tau),
            }
        )
    return pairs
