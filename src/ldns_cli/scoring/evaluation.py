"""Evaluate generated spikes against a reference recording, with reference points.

A metric value alone says little (a correlation RMSE of 0.01: good or bad?), so every metric is
reported next to two reference points computed by the *same* procedure at the *same* sample sizes:

- floor: the reference compared with itself (a random part A of its trials against the rest B):
  what a perfect model scores, given finite data;
- naive: a homogeneous Poisson model, each neuron firing at its mean reference rate, with the
  generated set's trial count and lengths (drawn with an explicit generator);
- score = (model − floor) / (naive − floor): 0 is as good as the data itself, 1 no better than
  naive; `score_noise` = √2·sd(floor)/(naive − floor), how far sampling alone moves a score (the
  floor's fold sd is the metric's noise at this sample size, and a model's value carries as much).
  A sample of the very process scored 0.74 on mean ISI with a noise of 0.39, and within 0.1 on the
  metrics whose noise is below 0.1 (`tests/test_evaluation.py`).

Protocol (per fold, K folds): the reference is split at random into A (m trials) and B (the rest,
at least half); m generated trials and m naive trials are drawn without replacement; model = metric
(generated_m, B), floor = metric(A, B), naive = metric(naive_m, B), with m = min(⌊B_ref/2⌋,
B_gen). Because all three compare m trials against the same B, a model that samples the data's
distribution has the floor's expected value exactly, for every metric (a bootstrap with
replacement would inflate the model's sampling noise relative to the floor and bias the score).
Reported: mean ± sd over folds. `model_all` (all generated vs all reference trials) and `paper`
(bootstrap resamples of the generated set with replacement vs the full reference, the authors'
protocol) are given for comparison with published numbers.

Trial lengths bound ISIs and spectra, so when the two sets' lengths differ the candidates (A,
generated, naive) are cropped to a common length distribution, min(ℓ_ref, ℓ_gen) of random pairs;
B keeps full reference trials. A score is only given where naive − floor exceeds 3 standard errors
(rates never get one: the naive model has the reference's mean rates by construction).

Trials are resampled in units (random blocks of g trials) whose additive statistics are computed
once (see `metrics.SpikeSums`), so folds cost almost nothing beyond reading the data once; the
sets are summarised in parallel threads.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed, single_threaded_torch
from ldns_cli.core.version import __version__
from ldns_cli.scoring.conditions import ConditionFigures, evaluate_conditions
from ldns_cli.scoring.metrics import (
    METRIC_DESCRIPTIONS,
    METRIC_NAMES,
    MetricSettings,
    Projection,
    SpikeSums,
    Summary,
    compare,
    draw_naive,
    finalise,
    fit_projection,
    fold_stats,
    isi_histogram,
    isi_neurons_used,
    summarise,
)

GRAM_BUDGET_BYTES = 256e6  # per data set, for the per-unit float32 Gram matrices
MIN_UNITS_IN_SPLIT = 64  # a fold's m trials span about this many units (size matching ±1/64)
PCA_MAX_TRIALS = 256  # reference trials used to fit the PCA of the PSD metric (≥ 25k bins)
N_EXAMPLES = 4  # trials kept per set for the report's rasters
ISI_HIST_TRIALS = 512  # trials per set whose ISIs make the report's histogram


@dataclass
class Evaluation:
    """Everything `evaluate` computed: the JSON payload plus data for the report's figures."""

    payload: dict[str, Any]
    reference: Summary
    generated: Summary
    naive: Summary
    projection: Projection
    examples: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bin_size_s: float = 0.0
    isi_hist: dict[str, np.ndarray] = field(default_factory=dict)  # pooled ISI counts per set
    condition_figures: list[ConditionFigures] = field(default_factory=list)
    align_offset_s: float = 0.0  # start of bin 0 relative to the reference's alignment event


def check_same_units(
    first: SpikeData, second: SpikeData, names: tuple[str, str], hint: str, rebin_hint: str
) -> None:
    """Raise `LdnsError` unless two sets have the same number of neurons and bin size; `names`
    say what they are in the message ("reference", "generated set")."""
    if first.n_neurons != second.n_neurons:
        raise LdnsError(
            f"the {names[0]} has {first.n_neurons} neurons but the {names[1]} has "
            f"{second.n_neurons}",
            hint,
        )
    if not math.isclose(first.bin_size_s, second.bin_size_s, rel_tol=1e-6):
        raise LdnsError(
            f"bin sizes differ: {names[0]} {first.bin_size_s * 1e3:g} ms, {names[1]} "
            f"{second.bin_size_s * 1e3:g} ms",
            rebin_hint,
        )


def check_compatible(reference: SpikeData, generated: SpikeData) -> None:
    """Raise `LdnsError` unless the two sets have the same neurons and bin size."""
    check_same_units(
        reference,
        generated,
        ("reference", "generated set"),
        "compare samples with the recording their model was trained on",
        "re-bin one of them with --bin-ms (NWB input) so both use the same bin size",
    )
    if reference.n_trials < 2:
        raise LdnsError(
            f"the reference has {reference.n_trials} trial; the floor needs at least 2",
            "use a reference with more trials",
        )


def unit_trials(n_ref: int, n_gen: int, n_neurons: int) -> int:
    """Trials per resampling unit g: a fold's m trials span about MIN_UNITS_IN_SPLIT units (so
    sizes match to ~1/64 and folds re-weight few rows), larger if the per-unit Gram matrices
    would exceed the memory budget."""
    m = min(n_ref // 2, n_gen)
    per_unit_bytes = 4 * n_neurons * (n_neurons + 1) / 2
    max_units = max(int(GRAM_BUDGET_BYTES / per_unit_bytes), 1)
    by_memory = math.ceil(max(n_ref, n_gen) / max_units)
    by_matching = max(m // MIN_UNITS_IN_SPLIT, 1)
    return int(max(1, by_memory, by_matching))


def _pick_units(sizes: np.ndarray, target: int, rng: np.random.Generator, keep_rest: bool):
    """Random units whose trial count is closest to `target` (boolean mask over units)."""
    order = rng.permutation(len(sizes))
    cum = np.cumsum(sizes[order])
    k = int(np.argmin(np.abs(cum - target))) + 1
    if keep_rest:  # leave at least one unit for the comparison set
        k = min(k, len(sizes) - 1)
    chosen = np.zeros(len(sizes), dtype=bool)
    chosen[order[: max(k, 1)]] = True
    return chosen


def _summarise_set(
    counts: np.ndarray,
    lengths: np.ndarray,
    perm: np.ndarray,
    bin_size_s: float,
    g: int,
    settings: MetricSettings,
    projection: Projection,
    segment_bins: int,
) -> SpikeSums:
    """Per-unit sums of the trials in the order `perm`, grouped into units of ~g trials."""
    n_units = max(1, round(len(lengths) / g))
    return summarise(
        counts[perm], lengths[perm], bin_size_s, settings, projection, n_units, segment_bins
    )


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def evaluate_full(
    reference: SpikeData,
    generated: SpikeData,
    *,
    folds: int = 5,
    seed: int = 0,
    settings: MetricSettings | None = None,
    log: Callable[[str], None] | None = None,
    conditions: list[str] | None = None,
    figures: bool = True,
) -> Evaluation:
    """Compare `generated` with `reference`; see the module docstring for the protocol.

    `conditions`: the conditions to evaluate per value (`scoring.conditions`); None = those the
    generated file says it was sampled with, [] = none. `figures=False` skips what only the
    report draws (ISI histograms, condition PSTHs)."""
    settings = settings or MetricSettings()
    log = log or (lambda _msg: None)
    check_compatible(reference, generated)
    if folds < 1:
        raise LdnsError(f"--folds must be at least 1, got {folds}", "e.g. --folds 5")
    check_seed(seed)
    rng = np.random.default_rng(seed)
    bin_size_s = reference.bin_size_s
    n_neurons = reference.n_neurons
    n_ref, n_gen = reference.n_trials, generated.n_trials

    # Trial lengths bound ISIs and spectra, so candidates must share one length distribution:
    # each reference trial of A and each generated trial is cropped to min(own length, length of
    # a random trial of the other set), which gives both min(ℓ_ref, ℓ_gen) in distribution. The
    # comparison set B keeps full reference trials. Equal lengths everywhere: nothing changes.
    ref_len = np.minimum(reference.lengths, rng.choice(generated.lengths, n_ref))
    gen_len = np.minimum(generated.lengths, rng.choice(reference.lengths, n_gen))
    cropped = not (
        np.array_equal(ref_len, reference.lengths) and np.array_equal(gen_len, generated.lengths)
    )

    # naive reference point: homogeneous Poisson at the reference's mean rates
    rate_per_bin = reference.counts.sum(axis=(0, 1), dtype=np.float64) / reference.lengths.sum()
    naive_counts = draw_naive(rate_per_bin, gen_len, generated.n_bins, rng)

    # the PSD metric's PCA is fitted on (a random subset of) the reference
    pca_idx = np.sort(rng.permutation(n_ref)[:PCA_MAX_TRIALS])
    projection = fit_projection(
        reference.counts[pca_idx], reference.lengths[pca_idx], bin_size_s, settings
    )
    segment_bins = max(4, int(min(settings.psd_segment_bins, np.median(gen_len))))

    g = unit_trials(n_ref, n_gen, n_neurons)
    common = (bin_size_s, g, settings, projection, segment_bins)
    perm_ref, perm_gen, perm_naive = (rng.permutation(n) for n in (n_ref, n_gen, n_gen))
    jobs = {
        "reference": (reference.counts, reference.lengths, perm_ref),
        "generated": (generated.counts, gen_len, perm_gen),
        "naive": (naive_counts, gen_len, perm_naive),
    }
    if cropped:  # floor part A at matched lengths; paper/model_all use uncropped generated trials
        jobs["reference_matched"] = (reference.counts, ref_len, perm_ref)
        jobs["generated_full"] = (generated.counts, generated.lengths, perm_gen)
    log(f"summarising {n_ref} reference, {n_gen} generated and {n_gen} naive trials")
    # the sets are independent and numpy releases the GIL in its array loops: one thread each
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(len(jobs), cores or 1))
    with single_threaded_torch(), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {k: pool.submit(_summarise_set, *job, *common) for k, job in jobs.items()}
        done = {k: f.result() for k, f in futures.items()}
    s_ref, s_gen, s_naive = done["reference"], done["generated"], done["naive"]
    s_ref_a = done.get("reference_matched", s_ref)  # what the floor's part A is drawn from
    s_gen_full = done.get("generated_full", s_gen)
    sets = [s_ref, s_ref_a, s_gen, s_gen_full, s_naive]
    psc_size = max(s.psc_hist.shape[1] for s in sets)
    s_ref, s_ref_a, s_gen, s_gen_full, s_naive = (s.pad_psc(psc_size) for s in sets)

    m = min(n_ref // 2, n_gen)
    per_fold: dict[str, dict[str, list[float]]] = {
        k: {name: [] for name in METRIC_NAMES} for k in ("model", "floor", "naive", "paper")
    }
    sizes = {"model": [], "floor": [], "naive": [], "comparison": []}
    for _ in range(folds):
        in_a = _pick_units(s_ref.n_trials, m, rng, keep_rest=True)
        in_g = _pick_units(s_gen.n_trials, m, rng, keep_rest=False)
        in_n = _pick_units(s_naive.n_trials, m, rng, keep_rest=False)
        sum_b = finalise(s_ref.total(~in_a))
        for key, sums, pick in (
            ("model", s_gen, in_g),
            ("floor", s_ref_a, in_a),
            ("naive", s_naive, in_n),
        ):
            values = compare(finalise(sums.total(pick)), sum_b, settings)
            for name in METRIC_NAMES:
                per_fold[key][name].append(values[name])
            sizes[key].append(int(sums.n_trials[pick].sum()))
        sizes["comparison"].append(sum_b.n_trials)
        # the authors' protocol: a bootstrap resample of the generated set vs all reference trials
        n_u = s_gen_full.n_units
        boot = rng.multinomial(n_u, np.full(n_u, 1.0 / n_u))
        values = compare(finalise(s_gen_full.total(boot)), finalise(s_ref.total()), settings)
        for name in METRIC_NAMES:
            per_fold["paper"][name].append(values[name])

    ref_all, gen_all, naive_all = finalise(s_ref), finalise(s_gen_full), finalise(s_naive)
    all_values = compare(gen_all, ref_all, settings)
    metrics: dict[str, Any] = {}
    for name in METRIC_NAMES:
        model, floor, naive = (fold_stats(per_fold[k][name]) for k in ("model", "floor", "naive"))
        score = score_noise = None
        if None not in (model["mean"], floor["mean"], naive["mean"]):
            # a score needs naive clearly worse than the floor: gap > 3 standard errors of the
            # fold means, else the denominator is noise (e.g. rates: naive matches them exactly)
            gap = naive["mean"] - floor["mean"]
            se = math.sqrt((floor["sd"] ** 2 + naive["sd"] ** 2) / folds)
            if gap > max(3.0 * se, 1e-12 * abs(naive["mean"])):
                score = (model["mean"] - floor["mean"]) / gap
                # the floor's fold sd is the metric's sampling noise at this size; a model's
                # value carries as much, so a score moves by about √2 of it over the gap
                score_noise = math.sqrt(2.0) * floor["sd"] / gap
        metrics[name] = {
            "description": METRIC_DESCRIPTIONS[name],
            "model": model,
            "floor": floor,
            "naive": naive,
            "score": score,
            "score_noise": score_noise,
            "model_all": _finite(all_values[name]),
            "paper": fold_stats(per_fold["paper"][name]),
        }
    used = isi_neurons_used(gen_all, ref_all, settings)
    payload = {
        "ldns_version": __version__,
        "reference": _describe(reference),
        "generated": _describe(generated),
        "protocol": {
            "folds": folds,
            "seed": seed,
            "trials_per_unit": g,
            "matched_trials": {k: fold_stats(v)["mean"] for k, v in sizes.items()},
            "description": (
                "per fold: a random part A of the reference (m trials) vs the rest B; m generated "
                "and m naive-Poisson trials (without replacement) vs the same B; mean ± sd over "
                "folds; score = (model − floor)/(naive − floor)"
            ),
        },
        "settings": dataclasses.asdict(settings),
        "metrics": metrics,
        "notes": {
            "isi_neurons_used": used,
            "isi_neurons_excluded": n_neurons - used,
            "silent_neurons_reference": int(np.sum(ref_all.rates_hz == 0)),
            "silent_neurons_generated": int(np.sum(gen_all.rates_hz == 0)),
            "psd_segment_bins": segment_bins,
            "psd_band_hz": [0.0, projection.cutoff_hz(bin_size_s)],
            "lengths_matched": bool(cropped),
            "score": "given only where naive − floor exceeds 3 standard errors of the fold "
            "means; the naive model has the reference's mean rates by construction (rate RMSE at "
            "the floor, no score) and mean ISI ≈ 1/rate (small denominator, noisy score)",
            "psd_sigma_bins": projection.sigma_bins,
            "pca_explained_variance": [float(v) for v in projection.explained],
            "kl": "KL(model‖data) in nats of Gaussian-KDE (Scott) psc densities on the grid 0..M "
            "shared by all sets; data density floored at 1e-12",
            "corr_rmse_paper": "the authors' value: √2 smaller than corr_rmse (N² denominator)",
        },
    }
    cond_payload, cond_figures = evaluate_conditions(
        reference, generated, conditions, folds=folds, seed=seed, with_figures=figures
    )
    if cond_payload["conditions"]:
        log(f"evaluated per condition: {', '.join(cond_payload['conditions'])}")
    payload["conditions"] = cond_payload["conditions"]
    payload["protocol"]["conditions"] = cond_payload["protocol"]
    payload["notes"]["conditions"] = cond_payload["notes"]
    isi_hist = {}
    if figures:
        sets = (
            ("data", reference.counts, reference.lengths),
            ("samples", generated.counts, generated.lengths),
            ("naive", naive_counts, gen_len),
        )
        for name, counts, lengths in sets:
            isi_hist[name] = isi_histogram(counts[:ISI_HIST_TRIALS], lengths[:ISI_HIST_TRIALS])
    examples = {
        "reference": (reference.counts[:N_EXAMPLES], reference.lengths[:N_EXAMPLES]),
        "generated": (generated.counts[:N_EXAMPLES], generated.lengths[:N_EXAMPLES]),
    }
    return Evaluation(
        payload=payload,
        reference=ref_all,
        generated=gen_all,
        naive=naive_all,
        projection=projection,
        examples=examples,
        bin_size_s=bin_size_s,
        isi_hist=isi_hist,
        condition_figures=cond_figures,
        align_offset_s=float(reference.align_offset_s),
    )


def evaluate(
    reference: SpikeData,
    generated: SpikeData,
    *,
    folds: int = 5,
    seed: int = 0,
    settings: MetricSettings | None = None,
    conditions: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON-ready payload of `evaluate_full` (metrics with floor, naive and score, and the
    per-condition evaluation)."""
    ev = evaluate_full(
        reference,
        generated,
        folds=folds,
        seed=seed,
        settings=settings,
        conditions=conditions,
        figures=False,
    )
    return jsonable(ev.payload)


def _describe(data: SpikeData) -> dict[str, Any]:
    return {
        "trials": data.n_trials,
        "neurons": data.n_neurons,
        "max_bins": data.n_bins,
        "mean_bins": float(data.lengths.mean()),
        "bin_size_s": data.bin_size_s,
        "mean_rate_hz": float(data.mean_rate_hz().mean()),
        "provenance": dict(data.provenance),
    }


def jsonable(obj: Any) -> Any:
    """A copy of `obj` that `json.dumps(allow_nan=False)` accepts: numpy scalars and arrays become
    Python numbers and lists, and NaN/inf become None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
