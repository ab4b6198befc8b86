"""Population statistics of free-running samples against held-out trials, scored as `evaluate` does.

Used to decide whether the spike-history model needs a coupling between units
(`fit.history.choose_coupling`): the validation trials' autoencoder rates are sampled
free-running, and the samples' population statistics (population spike count, pairwise
correlations, spectra of the leading population PCs), Fano factors and autocorrelations are
compared with the validation trials'.
As in `ldns evaluate`, each metric becomes a score = (model − floor) / (naive − floor): the floor
is the training trials against the same validation trials (data against data), the naive model a
homogeneous Poisson process at the validation trials' mean rates. 0 is as close as other real
trials come, 1 no closer than naive. Unlike `evaluate` there are no folds: this is one comparison
on the validation trials, to rank candidate models on the same trials and seeds.

Inputs are counts `[B, L, N]` with `lengths [B]`, as in `scoring.metrics`.
"""

from __future__ import annotations

import numpy as np

from ldns_cli.scoring.metrics import (
    MetricSettings,
    compare,
    draw_naive,
    finalise,
    fit_projection,
    summarise,
    valid_mask,
)

# the population-level metrics of `ldns evaluate`, and the single-neuron ones a change to how
# units drive one another moves too (ISI scores are left out: the naive model's mean ISI is close
# to the data's by construction, so their scores are mostly noise at validation sizes)
SCORED_METRICS = ("psc_w1", "corr_rmse", "psd_log_mse", "fano_rmse", "autocorr_rmse")


def population_scores(
    models: list[np.ndarray],
    model_lengths: np.ndarray,
    data_counts: np.ndarray,
    data_lengths: np.ndarray,
    floor_counts: np.ndarray,
    floor_lengths: np.ndarray,
    bin_size_s: float,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> list[dict[str, dict[str, float | None]]]:
    """Per model set (candidates sampled for the same trials, so sharing `model_lengths`), per
    metric of SCORED_METRICS: model, floor and naive values against `data`, and the score (None
    where naive is not above the floor: the metric cannot tell models apart here).

    `floor_*` are other real trials of the same recording (e.g. the training trials); the naive
    set has the model sets' lengths. The PCA behind the spectra is fitted on `data`, and the
    Welch segment is the data's longest trial or `settings.psd_segment_bins`, whichever is
    shorter, for every set alike. The data, floor and naive sets are summarised once for all
    model sets.
    """
    settings = settings or MetricSettings()
    data_lengths = np.asarray(data_lengths, dtype=np.int64)
    valid = valid_mask(data_lengths, data_counts.shape[1])  # [B, L]
    rate_per_bin = data_counts[valid].astype(np.float64).mean(axis=0)  # [N]
    rng = np.random.default_rng(seed)
    naive_counts = draw_naive(rate_per_bin, model_lengths, models[0].shape[1], rng)
    proj = fit_projection(data_counts, data_lengths, bin_size_s, settings)
    seg = int(min(settings.psd_segment_bins, np.max(data_lengths)))

    def summary(counts: np.ndarray, lengths: np.ndarray) -> object:
        ln = np.asarray(lengths)
        return finalise(summarise(counts, ln, bin_size_s, settings, proj, segment_bins=seg))

    data = summary(data_counts, data_lengths)
    shared = {
        k: compare(summary(c, ln), data, settings)
        for k, (c, ln) in {
            "floor": (floor_counts, floor_lengths),
            "naive": (naive_counts, model_lengths),
        }.items()
    }
    out = []
    for counts in models:
        m_values = compare(summary(counts, model_lengths), data, settings)
        scores: dict[str, dict[str, float | None]] = {}
        for metric in SCORED_METRICS:
            m, f, n = (float(v[metric]) for v in (m_values, shared["floor"], shared["naive"]))
            gap = n - f
            score = (m - f) / gap if np.isfinite(gap) and gap > 0 and np.isfinite(m) else None
            scores[metric] = {"model": m, "floor": f, "naive": n, "score": score}
        out.append(scores)
    return out
