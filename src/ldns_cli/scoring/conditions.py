"""Per-condition evaluation: do samples generated for condition c look like real trials with c?

Two measurements per condition the samples were generated with (each next to the reference's own
value, its *floor*, and a *chance* value, measured by the same procedure):

PSTH R² — per condition group, the trial-averaged, Gaussian-smoothed (σ = `PSTH_SMOOTH_S`) rates
  of the samples against those of the reference; R² = 1 − Σ(psth_x − psth_B)² / Σ(psth_B −
  mean_B)², summed over groups, bins and neurons, the mean being each neuron's over all groups and
  bins (variance-weighted over neurons, as the Neural Latents Benchmark pools its PSTH R²).
  Groups: categorical values as they are; circular values in `ANGLE_SECTORS` equal sectors
  centred on 0, 45°, 90°, ...; continuous scalars in `SCALAR_GROUPS` quantile bins of the
  reference; time series and vector conditions have no groups (decoding only).
Decoding — a decoder of the condition fitted on reference trials (`scoring.decoding`) applied to
  the samples, scored against the conditions they were generated with.

Protocol, per fold (K folds, as in the rest of `evaluate`): the reference is split at random into
halves A and B (per group for PSTHs). Decoding: the decoder is fitted on B; floor = its score on A
(held-out real trials), model = its score on the samples, chance = its score on A with the
conditions permuted across trials. PSTH R²: per group, n = min(|A_g|, |G_g|) trials of A and of
the samples are averaged and compared with B's PSTH; floor = A's R² (the split-half ceiling at
the samples' size), model = the samples', chance = A's with the group labels permuted. Reported:
mean ± sd over folds, and score = (model − floor)/(chance − floor): 0 = like real trials of the
condition, 1 = like trials that ignore it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ldns_cli.core.data import SpikeData, detect_kind
from ldns_cli.scoring.decoding import (
    LOWER_IS_BETTER,
    METRIC_OF_KIND,
    fit_decoder,
    metric_of_trials,
    score_values,
    trial_stats,
)
from ldns_cli.scoring.metrics import fold_stats

PSTH_SMOOTH_S = 0.02  # Gaussian σ of the PSTHs (20 ms)
ANGLE_SECTORS = 8  # circular conditions: groups of 45°
SCALAR_GROUPS = 5  # continuous scalars: quintiles of the reference
MIN_GROUP_TRIALS = 2  # a group needs this many trials in A, B and the samples to be compared


@dataclass
class ConditionFigures:
    """What the report draws per condition: group PSTHs of the reference and the samples."""

    name: str
    kind: str
    group_labels: list[str] = field(default_factory=list)
    psth_reference: np.ndarray | None = None  # [G, L, N] spikes/s
    psth_generated: np.ndarray | None = None  # [G, L, N] spikes/s
    # one example trial per group (None where a group has none): counts [L, N] and length
    example_reference: list[tuple[np.ndarray, int] | None] = field(default_factory=list)
    example_generated: list[tuple[np.ndarray, int] | None] = field(default_factory=list)


def condition_kind(reference: SpikeData, generated: SpikeData, name: str) -> str:
    """The kind of condition `name`: a time series if it is a behaviour series, else the declared
    or detected kind of the covariate (the generated file's declaration first)."""
    if name in generated.behavior or name in reference.behavior:
        return "timeseries"
    values = np.asarray(reference.covariates[name])
    info = generated.variable_info.get(name) or reference.variable_info.get(name)
    declared = info.kind if info is not None else ""
    unit = info.unit if info is not None else ""
    return detect_kind(name, values, declared, unit)


def evaluated_conditions(
    reference: SpikeData, generated: SpikeData, names: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """The conditions to evaluate and a note per condition left out.

    Default: the conditions the generated file says it was sampled with (its provenance), which
    both files hold per trial."""
    if names is None:
        listed = generated.provenance.get("conditions", "")
        names = [n for n in listed.split(",") if n and n != "none"]
    kept, skipped = [], []
    for name in names:
        in_ref = name in reference.covariates or name in reference.behavior
        in_gen = name in generated.covariates or name in generated.behavior
        if in_ref and in_gen:
            kept.append(name)
        else:
            where = "the reference" if not in_ref else "the generated file"
            skipped.append(f"condition '{name}': not in {where}")
    return kept, skipped


def _values(data: SpikeData, name: str) -> np.ndarray:
    return np.asarray(data.behavior[name] if name in data.behavior else data.covariates[name])


def _known(values: np.ndarray) -> np.ndarray:
    """bool `[B]`: trials whose condition value is known (no NaN)."""
    if values.dtype.kind not in "fc":
        return np.ones(len(values), dtype=bool)
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def condition_groups(
    kind: str, ref_values: np.ndarray, gen_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Group index of every reference and generated trial (−1: no group) and the group labels,
    or None for conditions that have no groups (time series, vectors)."""
    if kind == "timeseries" or (
        ref_values.ndim > 1 and ref_values.reshape(len(ref_values), -1).shape[1] > 1
    ):
        return None
    ref_flat = ref_values.reshape(len(ref_values), -1)[:, 0]
    gen_flat = gen_values.reshape(len(gen_values), -1)[:, 0]
    if kind == "categorical":
        labels = sorted({str(v) for v in ref_flat[_known(ref_values)]})
        lookup = {lab: i for i, lab in enumerate(labels)}
        return (
            np.asarray([lookup.get(str(v), -1) for v in ref_flat]),
            np.asarray([lookup.get(str(v), -1) for v in gen_flat]),
            labels,
        )
    if kind == "circular":
        width = 2 * math.pi / ANGLE_SECTORS

        def sector(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float64)
            wrapped = np.mod(np.nan_to_num(v) + width / 2, 2 * math.pi)
            idx = np.floor(wrapped / width).astype(np.int64)
            return np.where(np.isfinite(v), idx % ANGLE_SECTORS, -1)

        labels = [f"{math.degrees(k * width):g}°" for k in range(ANGLE_SECTORS)]
        return sector(ref_flat), sector(gen_flat), labels
    ref_f = ref_flat.astype(np.float64)
    known = np.isfinite(ref_f)
    if known.sum() < SCALAR_GROUPS * MIN_GROUP_TRIALS:
        return None
    edges = np.unique(np.quantile(ref_f[known], np.linspace(0, 1, SCALAR_GROUPS + 1)))
    if len(edges) < 3:
        return None

    def bucket(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float64)
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
        return np.where(np.isfinite(v), idx, -1)

    labels = [f"{lo:.3g}..{hi:.3g}" for lo, hi in itertools.pairwise(edges)]
    return bucket(ref_f), bucket(gen_flat.astype(np.float64)), labels


def _group_psth(
    counts: np.ndarray, lengths: np.ndarray, groups: np.ndarray, n_groups: int, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of counts `[G, L, N]` and of valid trials per bin `[G, L]`."""
    sums = np.zeros((n_groups, n_bins, counts.shape[2]), dtype=np.float64)
    n = np.zeros((n_groups, n_bins), dtype=np.float64)
    mask = np.arange(n_bins)[None, :] < lengths[:, None]  # [B, L]
    for g in range(n_groups):
        sel = groups == g
        if sel.any():
            sums[g] = counts[sel, :n_bins].sum(axis=0, dtype=np.float64)
            n[g] = mask[sel].sum(axis=0)
    return sums, n


def _smoothed_mean(sums: np.ndarray, n: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Trial-averaged counts per bin `[G, L, N]`, smoothed along time: smooth(Σ counts) /
    smooth(#trials), so bins that fewer trials reach weigh less and trial ends add no zeros."""
    num = gaussian_filter1d(sums, sigma_bins, axis=1, mode="constant")
    den = gaussian_filter1d(n, sigma_bins, axis=1, mode="constant")
    return num / np.maximum(den, 1e-9)[:, :, None]


def psth_r2(candidate: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """R² of PSTHs `[G, L, N]` over the valid (group, bin) cells `[G, L]`, the SST about each
    neuron's mean over those cells of the target."""
    if not valid.any():
        return float("nan")
    t = target[valid]  # [V, N]
    c = candidate[valid]
    sst = float(np.sum((t - t.mean(axis=0)) ** 2))
    if sst <= 0:
        return float("nan")
    return 1.0 - float(np.sum((c - t) ** 2)) / sst


def _take(index: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(index)[:k])


def _psth_fold(
    ref: SpikeData,
    gen: SpikeData,
    ref_groups: np.ndarray,
    gen_groups: np.ndarray,
    n_groups: int,
    n_bins: int,
    sigma_bins: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One fold of the PSTH protocol (see the module docstring)."""
    pick_a, pick_b, pick_g = [], [], []
    for g in range(n_groups):
        r = rng.permutation(np.flatnonzero(ref_groups == g))
        half = len(r) // 2
        a, b = r[:half], r[half:]
        gi = np.flatnonzero(gen_groups == g)
        k = min(len(a), len(gi))
        if k < MIN_GROUP_TRIALS or len(b) < MIN_GROUP_TRIALS:
            continue
        pick_a.append(_take(a, k, rng))
        pick_b.append(b)
        pick_g.append(_take(gi, k, rng))
    if not pick_a:
        return {"model": math.nan, "floor": math.nan, "chance": math.nan}
    idx_a, idx_b, idx_g = (np.concatenate(p) for p in (pick_a, pick_b, pick_g))
    # chance: A's trials with their group labels permuted (a set that ignores the condition)
    shuffled = ref_groups[idx_a][rng.permutation(len(idx_a))]
    out = {}
    b_sum, b_n = _group_psth(
        ref.counts[idx_b], ref.lengths[idx_b], ref_groups[idx_b], n_groups, n_bins
    )
    target = _smoothed_mean(b_sum, b_n, sigma_bins)
    parts = {
        "floor": (ref.counts[idx_a], ref.lengths[idx_a], ref_groups[idx_a]),
        "model": (gen.counts[idx_g], gen.lengths[idx_g], gen_groups[idx_g]),
        "chance": (ref.counts[idx_a], ref.lengths[idx_a], shuffled),
    }
    sums = {k: _group_psth(c, ln, gr, n_groups, n_bins) for k, (c, ln, gr) in parts.items()}
    valid = b_n >= MIN_GROUP_TRIALS
    for key, (_s, n) in sums.items():
        if key != "chance":
            valid &= n >= MIN_GROUP_TRIALS
    for key, (s, n) in sums.items():
        out[key] = psth_r2(_smoothed_mean(s, n, sigma_bins), target, valid & (n > 0))
    return out


def _decode_fold(
    kind: str,
    ref: SpikeData,
    gen: SpikeData,
    ref_values: np.ndarray,
    gen_values: np.ndarray,
    n_bins: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One fold of the decoding protocol (see the module docstring)."""
    perm = rng.permutation(ref.n_trials)
    a, b = np.sort(perm[: ref.n_trials // 2]), np.sort(perm[ref.n_trials // 2 :])
    decoder = fit_decoder(
        kind, ref.counts[b], ref.lengths[b], ref_values[b], ref.bin_size_s, n_bins
    )
    shuffled = ref_values[a][rng.permutation(len(a))]
    return {
        "floor": decoder.score(ref.counts[a], ref.lengths[a], ref_values[a]),
        "chance": decoder.score(ref.counts[a], ref.lengths[a], shuffled),
        "model": decoder.score(gen.counts, gen.lengths, gen_values),
    }


def _summary(per_fold: dict[str, list[float]], description: str) -> dict[str, Any]:
    model, floor, chance = (fold_stats(per_fold[k]) for k in ("model", "floor", "chance"))
    score = None
    if None not in (model["mean"], floor["mean"], chance["mean"]):
        gap = chance["mean"] - floor["mean"]
        if abs(gap) > 1e-9:
            score = (model["mean"] - floor["mean"]) / gap
    ratio = None
    if model["mean"] is not None and floor["mean"] not in (None, 0.0):
        ratio = model["mean"] / floor["mean"]
    return {
        "description": description,
        "model": model,
        "floor": floor,
        "chance": chance,
        "score": score,
        "ratio_to_floor": ratio,
    }


def evaluate_conditions(
    reference: SpikeData,
    generated: SpikeData,
    names: list[str] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    with_figures: bool = True,
) -> tuple[dict[str, Any], list[ConditionFigures]]:
    """Per-condition PSTH R² and decoding of `generated` against `reference` (module docstring).

    Returns the JSON-ready payload `{"conditions": {name: ...}, "notes": [...]}` and the figure
    data of each condition (left empty with `with_figures=False`)."""
    names, notes = evaluated_conditions(reference, generated, names)
    rng = np.random.default_rng([seed, 0xC0D])
    results: dict[str, Any] = {}
    figures: list[ConditionFigures] = []
    for name in names:
        kind = condition_kind(reference, generated, name)
        ref_values, gen_values = _values(reference, name), _values(generated, name)
        ref_ok, gen_ok = _known(ref_values), _known(gen_values)
        if ref_ok.sum() < 4 or not gen_ok.any():
            notes.append(f"condition '{name}': too few trials with a known value")
            continue
        ref, gen = reference.select(ref_ok), generated.select(gen_ok)
        ref_values, gen_values = ref_values[ref_ok], gen_values[gen_ok]
        n_bins = int(min(ref.lengths.min(), gen.lengths.min()))  # the common prefix
        entry: dict[str, Any] = {"kind": kind, "trials": [ref.n_trials, gen.n_trials]}
        metric, description = METRIC_OF_KIND[kind]
        decode: dict[str, list[float]] = {"model": [], "floor": [], "chance": []}
        for _ in range(folds):
            for key, value in _decode_fold(
                kind, ref, gen, ref_values, gen_values, n_bins, rng
            ).items():
                decode[key].append(value)
        entry["decoding"] = {
            "metric": metric,
            "lower_is_better": LOWER_IS_BETTER[kind],
            **_summary(decode, description),
        }
        fig = ConditionFigures(name, kind)
        grouping = condition_groups(kind, ref_values, gen_values)
        if grouping is None:
            entry["psth"] = None
            notes.append(f"condition '{name}' ({kind}): no PSTH groups (decoding only)")
        else:
            ref_groups, gen_groups, labels = grouping
            sigma_bins = max(PSTH_SMOOTH_S / ref.bin_size_s, 0.5)
            psth_bins = int(max(ref.lengths.max(), gen.lengths.max()))
            per_fold: dict[str, list[float]] = {"model": [], "floor": [], "chance": []}
            for _ in range(folds):
                for key, value in _psth_fold(
                    ref, gen, ref_groups, gen_groups, len(labels), psth_bins, sigma_bins, rng
                ).items():
                    per_fold[key].append(value)
            entry["psth"] = {
                "metric": "r2",
                "lower_is_better": False,
                "groups": labels,
                "grouping": _grouping_text(kind),
                "trials_per_group": {
                    "reference": np.bincount(
                        ref_groups[ref_groups >= 0], minlength=len(labels)
                    ).tolist(),
                    "generated": np.bincount(
                        gen_groups[gen_groups >= 0], minlength=len(labels)
                    ).tolist(),
                },
                **_summary(
                    per_fold,
                    f"R² of the samples' smoothed PSTHs (σ = {PSTH_SMOOTH_S * 1e3:g} ms) per "
                    "condition group against the reference's",
                ),
            }
            if with_figures:
                _fill_figures(fig, ref, gen, ref_groups, gen_groups, labels, psth_bins, sigma_bins)
        results[name] = entry
        figures.append(fig)
    return {"conditions": results, "notes": notes, "protocol": _PROTOCOL}, figures


_PROTOCOL = (
    "per fold the reference is split at random into halves A and B; decoding: a decoder fitted "
    "on B scores A (floor), the samples against their conditions (model) and A with its "
    "conditions permuted (chance); PSTH R²: per condition group, equal numbers of A's and of the "
    "samples' trials against B's PSTH (floor = the split-half ceiling), chance = A with its "
    "group labels permuted; score = (model − floor)/(chance − floor)"
)


def _grouping_text(kind: str) -> str:
    if kind == "circular":
        return f"{ANGLE_SECTORS} equal sectors of {360 // ANGLE_SECTORS}° centred on 0°"
    if kind == "categorical":
        return "one group per value"
    return f"{SCALAR_GROUPS} quantile bins of the reference's values"


def _fill_figures(
    fig: ConditionFigures,
    ref: SpikeData,
    gen: SpikeData,
    ref_groups: np.ndarray,
    gen_groups: np.ndarray,
    labels: list[str],
    n_bins: int,
    sigma_bins: float,
) -> None:
    n_groups = len(labels)
    r_sum, r_n = _group_psth(ref.counts, ref.lengths, ref_groups, n_groups, n_bins)
    g_sum, g_n = _group_psth(gen.counts, gen.lengths, gen_groups, n_groups, n_bins)
    hz = 1.0 / ref.bin_size_s
    fig.group_labels = labels
    fig.psth_reference = (_smoothed_mean(r_sum, r_n, sigma_bins) * hz).astype(np.float32)
    fig.psth_generated = (_smoothed_mean(g_sum, g_n, sigma_bins) * hz).astype(np.float32)
    fig.psth_reference[r_n < 1] = np.nan
    fig.psth_generated[g_n < 1] = np.nan
    fig.example_reference = _examples(ref, ref_groups, n_groups)
    fig.example_generated = _examples(gen, gen_groups, n_groups)


def _examples(
    data: SpikeData, groups: np.ndarray, n_groups: int
) -> list[tuple[np.ndarray, int] | None]:
    """The first trial of each group: (counts `[L, N]`, length), or None."""
    out: list[tuple[np.ndarray, int] | None] = []
    for g in range(n_groups):
        hit = np.flatnonzero(groups == g)
        out.append(None if hit.size == 0 else (data.counts[hit[0]], int(data.lengths[hit[0]])))
    return out


# ----------------------------------------------------------------------------- stage checks
MAX_CHECKED = 6  # conditions checked by default at the end of a fit
TIME_UNITS = ("s", "ms", "sec", "seconds")


def checkable_conditions(data: SpikeData) -> list[str]:
    """The trial covariates and behaviour series a user might condition on: every behaviour
    series and every covariate with at least two distinct known values, except event times (a
    unit of seconds or a name ending in "time"); at most `MAX_CHECKED`."""
    names = []
    for name, values in data.covariates.items():
        info = data.variable_info.get(name)
        unit = (info.unit if info is not None else "").lower()
        if unit in TIME_UNITS or name.lower().endswith("time"):
            continue
        values = np.asarray(values)
        known = values[_known(values)]
        if len(np.unique(known.reshape(len(known), -1), axis=0)) >= 2:
            names.append(name)
    names += list(data.behavior)
    return names[:MAX_CHECKED]


def stage_checks(
    train: SpikeData,
    stages: dict[str, SpikeData | list[SpikeData]],
    names: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Does each pipeline stage keep the conditions? A decoder of each condition is fitted on the
    real training trials and applied to every stage's trials (each carrying the conditions it
    should express: e.g. real validation trials, Poisson draws from the autoencoder's rates of
    them, samples generated for their conditions), next to chance (the first stage's trials with
    their conditions permuted). A stage given as a list of sets of the same trials (draws) is
    the mean of their values.

    Each later stage's value relative to the first's (value/first) comes with a 95% bootstrap
    interval over trials (`ratio_interval`): the first stage's own value moves with its trials
    as much as the others', so a ratio without one cannot tell a loss from noise (on the 200 test
    trials of `ldns simulate reach --trials 1000 --length 150:400`, samples decoded the angle
    1.42x the real error, interval 1.05-1.67: `python bench/quality_pipeline_conditions.py
    --beds reachvar800 --extra-test 0`). A stage whose conditions are the first stage's, trial by trial
    (draws of the same trials, or one sample generated for each, in order), is resampled with
    the same trials; others on their own.

    Returns `{name: {"kind", "metric", "lower_is_better", "chance", "stages": {stage: value},
    "ratio_interval": {stage: [lo, hi] | None}, "draws": {stage: [values]}}}` ("draws" for list
    stages only); conditions missing from the training trials or any stage are left out."""
    rng = np.random.default_rng([seed, 0x57A6E])
    out: dict[str, Any] = {}
    sets = {key: v if isinstance(v, list) else [v] for key, v in stages.items()}
    for i, name in enumerate(names):
        every = [train, *(d for group in sets.values() for d in group)]
        if not all(name in d.covariates or name in d.behavior for d in every):
            continue
        kind = condition_kind(train, next(iter(sets.values()))[0], name)
        kept: dict[str, list[tuple[SpikeData, np.ndarray]]] = {}
        for key, group in {"train": [train], **sets}.items():
            known = []
            for d in group:
                values = _values(d, name)
                ok = _known(values)
                if ok.sum() >= 2:
                    known.append((d.select(ok), values[ok]))
            if len(known) == len(group):
                kept[key] = known
        if len(kept) != len(sets) + 1 or kept["train"][0][0].n_trials < 4:
            continue
        n_bins = int(min(d.lengths.min() for group in kept.values() for d, _ in group))
        fit_set, fit_values = kept.pop("train")[0]
        decoder = fit_decoder(
            kind, fit_set.counts, fit_set.lengths, fit_values, fit_set.bin_size_s, n_bins
        )
        metric, _ = METRIC_OF_KIND[kind]
        # each set decoded once: its value and its per-trial pieces for the intervals
        draws: dict[str, list[float]] = {}
        stats: dict[str, list[np.ndarray]] = {}
        for key, group in kept.items():
            for d, values in group:
                pred, true, trial = decoder.pairs(d.counts, d.lengths, values)
                draws.setdefault(key, []).append(score_values(kind, pred, true))
                stats.setdefault(key, []).append(trial_stats(kind, pred, true, trial, len(values)))
        first, first_values = next(iter(kept.values()))[0]
        shuffled = first_values[rng.permutation(len(first_values))]
        chance = decoder.score(first.counts, first.lengths, shuffled)
        # its own generator: the chance values stay those of the same seed without intervals
        values_of = {key: [v for _, v in group] for key, group in kept.items()}
        rng_interval = np.random.default_rng([seed, 0xB0075, i])
        intervals = _ratio_intervals(kind, stats, values_of, rng_interval)
        out[name] = {
            "kind": kind,
            "metric": metric,
            "lower_is_better": LOWER_IS_BETTER[kind],
            "chance": chance,
            "stages": {key: float(np.mean(v)) for key, v in draws.items()},
            "ratio_interval": intervals,
        }
        listed = {key: v for key, v in draws.items() if isinstance(stages[key], list)}
        if listed:
            out[name]["draws"] = listed
    return out


CHECK_RESAMPLES = 1000  # bootstrap resamples of the trials behind each stage's ratio interval
CHECK_INTERVAL = 0.95


def _same_trials(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two stages hold the same trials' conditions, in the same order."""
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":  # series padded with NaN past the end
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)))


def _ratio_intervals(
    kind: str,
    stats: dict[str, list[np.ndarray]],
    values: dict[str, list[np.ndarray]],
    rng: np.random.Generator,
) -> dict[str, list[float] | None]:
    """95% percentile-bootstrap interval of each later stage's value/first stage's value, from
    each stage's per-trial pieces (`scoring.decoding.trial_stats`, one array per set of trials)
    and its sets' condition values."""
    first_key, *later = list(stats)
    first_values = values[first_key][0]
    n_first = len(first_values)
    picks_first = rng.integers(0, n_first, size=(CHECK_RESAMPLES, n_first))
    base = metric_of_trials(kind, stats[first_key][0], picks_first)  # [R]
    tail = (1.0 - CHECK_INTERVAL) / 2
    out: dict[str, list[float] | None] = {}
    for key in later:
        if all(_same_trials(v, first_values) for v in values[key]):
            picks = picks_first
        else:
            n = len(values[key][0])
            picks = rng.integers(0, n, size=(CHECK_RESAMPLES, n))
        value = np.mean([metric_of_trials(kind, st, picks) for st in stats[key]], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = value / base
        if not (base > 0).all() or not np.isfinite(ratio).all():
            out[key] = None  # a ratio to a value at or below zero (R²) has no meaning
            continue
        lo, hi = np.quantile(ratio, [tail, 1.0 - tail])
        out[key] = [float(lo), float(hi)]
    return out


def _poisson_ll(rates: np.ndarray, counts: np.ndarray, valid: np.ndarray) -> float:
    """Σ (s·log r − r) over the valid bins (the log s! term cancels in every comparison)."""
    r = np.maximum(rates, 1e-9)
    return float(((counts * np.log(r) - r) * valid[..., None]).sum())


def explained_bits_per_spike(
    train: SpikeData, val: SpikeData, name: str, rates: np.ndarray | None = None
) -> dict[str, float] | None:
    """How much of the validation spikes a trial condition explains, next to a model's rates.

    The condition's rate model is the smoothed (σ = `PSTH_SMOOTH_S`) PSTH of the training trials
    of its group (`condition_groups`: 45° sectors, quintiles, categories); the null is the PSTH of
    all training trials, i.e. the mean time course. Returns the Poisson log-likelihood gain over
    that null on `val`, in bits per validation spike: `{"condition": ...}`, and with `rates`
    (`[B, L, N]` spikes per bin for `val`, e.g. the autoencoder's) `{"rates": ...}` too. Bins
    past the longest training trial are left out. None for conditions without groups (time
    series, vectors) or when `val` has no spikes.
    """
    if not all(name in d.covariates for d in (train, val)):
        return None
    kind = condition_kind(train, val, name)
    grouped = condition_groups(kind, _values(train, name), _values(val, name))
    if grouped is None:
        return None
    train_groups, val_groups, labels = grouped
    n_bins = int(min(train.lengths.max(), val.n_bins))
    sigma_bins = max(PSTH_SMOOTH_S / train.bin_size_s, 0.5)
    sums, n = _group_psth(train.counts, train.lengths, train_groups, len(labels), n_bins)
    pooled = _smoothed_mean(sums.sum(0, keepdims=True), n.sum(0, keepdims=True), sigma_bins)[0]
    by_group = _smoothed_mean(sums, n, sigma_bins)  # [G, L, N]
    counts = val.counts[:, :n_bins].astype(np.float64)  # [B, L, N]
    valid = val.mask()[:, :n_bins]  # [B, L]
    # trials of an unknown or empty group get the pooled PSTH: no information claimed for them
    has_group = (val_groups >= 0) & (n.sum(axis=1)[np.maximum(val_groups, 0)] > 0)
    cond = np.where(has_group[:, None, None], by_group[np.maximum(val_groups, 0)], pooled)
    null_ll = _poisson_ll(np.broadcast_to(pooled, counts.shape), counts, valid)
    spikes = float((counts * valid[..., None]).sum())
    if spikes <= 0:
        return None
    scale = math.log(2) * spikes
    out = {"condition": (_poisson_ll(cond, counts, valid) - null_ll) / scale}
    if rates is not None:
        out["rates"] = (_poisson_ll(rates[:, :n_bins], counts, valid) - null_ll) / scale
    return out


def interval_text(interval: list[float]) -> str:
    """A ratio interval as printed: "0.93 to 1.41" (a hyphen would read as a minus sign)."""
    return f"{interval[0]:.2f} to {interval[1]:.2f}"


def describe_checks(checks: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """One line per condition: each stage's value (and its ratio to the first stage's, with the
    ratio's 95% interval when the record has one)."""
    lines = []
    units = {"angle_error_deg": "°", "accuracy": "", "r2": ""}
    for name, c in checks.items():
        unit = units.get(c["metric"], "")
        values = list(c["stages"].items())
        base = values[0][1]
        parts = []
        for i, (stage, v) in enumerate(values):
            text = f"{labels.get(stage, stage)} {v:.3g}{unit}"
            interval = c.get("ratio_interval", {}).get(stage)
            span = "" if interval is None else f", 95% interval {interval_text(interval)}"
            if i and c["lower_is_better"] and base > 0:
                text += f" ({v / base:.2f}×{span})"
            elif i and not c["lower_is_better"] and base > 0 and v > 0:
                text += f" ({v / base:.2f} of the real value{span})"
            parts.append(text)
        direction = "lower" if c["lower_is_better"] else "higher"
        lines.append(
            f"condition {name} ({c['metric']}, {direction} is better): "
            + ", ".join(parts)
            + f"; chance {c['chance']:.3g}{unit}"
        )
    return lines
