"""`audit`: the four questions about a sample set, asked together, and the JSON payload.

Inputs are three sets of trials with the same neurons and bin size: the model's *training*
trials, real *held-out* trials it never saw (a test split, or another recording of the same
kind), and the *samples*. With the model folder (`ModelSet`) the autoencoder's latents become a
second memorisation space and the membership attack runs.

Every random choice comes from generators spawned from one `seed`, one per section, so changing
one section's draws never moves another's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldns_cli.auditing.distances import (
    SMOOTH_BINS,
    STRIDE_BINS,
    count_features,
    latent_features,
)
from ldns_cli.auditing.membership import (
    NOISE_DRAWS,
    NOISE_FRACTIONS,
    denoiser_scores,
    membership_summary,
    reconstruction_scores,
)
from ldns_cli.auditing.memorisation import ALPHA, MemorisationArrays, memorisation
from ldns_cli.auditing.realism import FOLDS, L2, two_sample_test
from ldns_cli.auditing.utility import decoding_targets, utility
from ldns_cli.auditing.verdict import verdict
from ldns_cli.core.checkpoint import check_data_matches
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed, single_threaded_torch
from ldns_cli.nn.autoencoder import infer
from ldns_cli.scoring.evaluation import check_same_units, draw_naive, jsonable
from ldns_cli.store import ModelSet

MAX_MEMBER_TRIALS = 500  # trials per set scored by the membership attack (random subset)
DUPLICATE_ERROR_FRACTION = 0.1  # held-out trials found verbatim in training: error above this


@dataclass
class Audit:
    """Everything `audit` computed: the JSON payload plus the arrays the report draws."""

    payload: dict[str, Any]
    memorisation: dict[str, MemorisationArrays] = field(default_factory=dict)
    membership: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _describe(data: SpikeData) -> dict[str, Any]:
    return {
        "trials": data.n_trials,
        "neurons": data.n_neurons,
        "bin_size_s": data.bin_size_s,
        "mean_bins": float(data.lengths.mean()),
        "max_bins": data.n_bins,
        "mean_rate_hz": float(data.mean_rate_hz().mean()),
    }


def _check_sets(train: SpikeData, heldout: SpikeData, samples: SpikeData) -> None:
    for name, d in (("held-out", heldout), ("sample", samples)):
        check_same_units(
            train,
            d,
            ("training set", f"{name} set"),
            "audit samples against the recording their model was trained on",
            "re-bin with --bin-ms so all three sets use the same bin size",
        )
    for name, d in (("training", train), ("held-out", heldout), ("sample", samples)):
        if d.n_trials < 2:
            raise LdnsError(f"the {name} set has {d.n_trials} trial", "the audit needs at least 2")


def _trial_keys(data: SpikeData) -> list[bytes]:
    """Exact content of each trial's valid bins (counts as int64 bytes)."""
    return [
        np.ascontiguousarray(data.counts[i, : data.lengths[i]], dtype=np.int64).tobytes()
        for i in range(data.n_trials)
    ]


def check_disjoint(train: SpikeData, heldout: SpikeData) -> int:
    """Held-out trials that are verbatim training trials (non-empty ones); an error when they
    are more than DUPLICATE_ERROR_FRACTION of the held-out set (the same trials twice)."""
    seen = set(_trial_keys(train))
    shared = sum(
        1
        for key, n_spikes in zip(_trial_keys(heldout), heldout.counts.sum(axis=(1, 2)), strict=True)
        if n_spikes > 0 and key in seen
    )
    if shared > DUPLICATE_ERROR_FRACTION * heldout.n_trials:
        raise LdnsError(
            f"{shared} of {heldout.n_trials} held-out trials are also training trials",
            "the held-out trials must be ones the model never saw, e.g. --train-trials train "
            "--heldout-trials test on one file",
        )
    return shared


def _latents(models: ModelSet, data: SpikeData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    device = next(models.ae.parameters()).device
    return infer(models.ae, data, batch_size, device)


def audit_full(
    train: SpikeData,
    heldout: SpikeData,
    samples: SpikeData,
    *,
    models: ModelSet | None = None,
    seed: int = 0,
    alpha: float = ALPHA,
    max_member_trials: int = MAX_MEMBER_TRIALS,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> Audit:
    """Audit `samples` against the `train` trials their model saw and `heldout` ones it did not.

    Returns the payload (see `ldns audit --json`) and the report's arrays. `models`: the model
    folder's `ModelSet` (the latent space and the membership attack); `alpha`: the held-out flag
    rate the memorisation threshold is set for; `max_member_trials`: trials per set the
    membership attack scores.
    """
    log = log or (lambda _msg: None)
    check_seed(seed)
    _check_sets(train, heldout, samples)
    if not 0 < alpha < 0.5:
        raise LdnsError(f"alpha must be in (0, 0.5), got {alpha}", "e.g. 0.01")
    if batch_size < 1:
        raise LdnsError(f"--batch-size must be >= 1, got {batch_size}", "e.g. --batch-size 64")
    if models is not None:  # before any work: a model for other data is a clear error
        check_data_matches(models.ae_checkpoint.fingerprint, train.fingerprint(), "autoencoder")
    duplicates = check_disjoint(train, heldout)
    rng_mem, rng_member, rng_real, rng_util = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    sets = {"train": train, "heldout": heldout, "samples": samples}
    ids = {k: d.trial_ids for k, d in sets.items()}
    audit = Audit(payload={})
    # model-free sections first; with a model, its latent space and the membership attack follow
    log(
        f"memorisation: {samples.n_trials} samples against {train.n_trials} training and "
        f"{heldout.n_trials} held-out trials"
    )
    mem_payload: dict[str, Any] = {}
    mem_payload["counts"], audit.memorisation["counts"] = memorisation(
        *(count_features(d) for d in sets.values()), ids, rng_mem, alpha
    )

    log("realism: two-sample classifier tests")
    rate_per_bin = train.counts.sum(axis=(0, 1), dtype=np.float64) / train.lengths.sum()
    naive = draw_naive(rate_per_bin, samples.lengths, samples.n_bins, rng_real)
    real = (heldout.counts, heldout.lengths)
    realism = {
        "model": two_sample_test(real, (samples.counts, samples.lengths), rng_real),
        "naive": two_sample_test(real, (naive, samples.lengths), rng_real),
        "floor": two_sample_test(real, (train.counts, train.lengths), rng_real),
    }

    names = None if models is None else [c["name"] for c in models.diffusion.conditions]
    targets, skipped = decoding_targets(train, heldout, samples, names)
    if targets:
        listed = ", ".join(t.name for t in targets)
        log(f"utility: decoding {listed} (trained on synthetic, tested on real)")
    util = {"targets": utility(train, heldout, samples, targets, rng_util), "skipped": skipped}

    membership_payload = None
    if models is not None:
        log("encoding the three sets with the autoencoder")
        # one CPU thread for the networks: on 2 cores the autoencoder encoded reach trials at
        # 0.85 ms each on one thread and 7-10 ms on two (batches this small do not pay for the
        # threads' synchronisation); a GPU is unaffected
        with single_threaded_torch():
            enc = {k: _latents(models, d, batch_size) for k, d in sets.items()}
        scale = np.maximum(enc["train"][0][train.mask()].std(axis=0), 1e-6)  # [Z]
        lat_feats = [latent_features(enc[k][0], d.lengths, scale) for k, d in sets.items()]
        mem_payload["latents"], audit.memorisation["latents"] = memorisation(
            *lat_feats, ids, rng_mem, alpha
        )
        log("membership inference: scoring training and held-out trials with the model")
        with single_threaded_torch():
            membership_payload, audit.membership = _membership(
                models, train, heldout, enc, rng_member, seed, max_member_trials, batch_size
            )

    spaces = {
        "counts": f"sqrt of Gaussian-smoothed counts (sigma {SMOOTH_BINS:g} bins), every "
        f"{STRIDE_BINS} bins; RMS difference per step and neuron over the common prefix of two "
        "trials",
    }
    if models is not None:
        spaces["latents"] = (
            f"autoencoder latents / training std per channel, every {STRIDE_BINS} bins; RMS "
            "difference over the common prefix"
        )
    member_settings = None
    if models is not None:
        member_settings = {
            "noise_fractions": list(NOISE_FRACTIONS),
            "noise_draws": NOISE_DRAWS,
            "max_trials_per_set": max_member_trials,
        }
    payload: dict[str, Any] = {
        "sets": {k: _describe(d) for k, d in sets.items()},
        "settings": {
            "seed": seed,
            "alpha": alpha,
            "feature_space": spaces,
            "classifier": f"L2 logistic regression (penalty {L2:g}), {FOLDS}-fold CV, "
            "length-invariant per-trial summaries",
            "membership": member_settings,
        },
        "heldout_trials_also_in_train": duplicates,
        "memorisation": mem_payload,
        "membership": membership_payload,
        "realism": realism,
        "utility": util,
    }
    if models is not None:
        payload["models"] = str(models.folder)
    payload["verdict"] = verdict(jsonable(payload))
    audit.payload = payload
    return audit


def _membership(
    models: ModelSet,
    train: SpikeData,
    heldout: SpikeData,
    enc: dict[str, tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    seed: int,
    max_trials: int,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Attack scores on (a random subset of) training and held-out trials, and their AUCs."""
    null_rate = train.counts.sum(axis=(0, 1), dtype=np.float64) / train.lengths.sum()  # [N]
    device = next(models.diffusion.denoiser.parameters()).device
    scores: dict[str, dict[str, np.ndarray]] = {}
    missing: list[str] = []
    for key, data in (("train", train), ("heldout", heldout)):
        pick = np.sort(rng.permutation(data.n_trials)[: max(2, max_trials)])
        sub = data.select(pick)
        latents, rates = enc[key][0][pick], enc[key][1][pick]
        recon = reconstruction_scores(sub.counts, rates, sub.lengths, null_rate)
        den, missing = denoiser_scores(models.diffusion, latents, sub, seed, batch_size, device)
        scores[key] = {"autoencoder": recon, "denoiser": den}
    summary, pairs = membership_summary(scores["train"], scores["heldout"], rng)
    payload = {
        "scores": summary,
        "members": len(scores["train"]["autoencoder"]),
        "non_members": len(scores["heldout"]["autoencoder"]),
        "conditions_missing": missing,
    }
    return payload, pairs


def audit(
    train: SpikeData,
    heldout: SpikeData,
    samples: SpikeData,
    *,
    models: ModelSet | None = None,
    seed: int = 0,
    alpha: float = ALPHA,
    max_member_trials: int = MAX_MEMBER_TRIALS,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The JSON-ready payload of `audit_full`."""
    result = audit_full(
        train,
        heldout,
        samples,
        models=models,
        seed=seed,
        alpha=alpha,
        max_member_trials=max_member_trials,
        batch_size=batch_size,
    )
    return jsonable(result.payload)
