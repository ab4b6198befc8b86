"""The latent-size rule on fits of known quality: short fits that decide, and ones that cannot."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from ldns_cli.fit.latent_size import LONG_FIT_FACTOR, SEARCH_STEPS, search_latent_dim

SIZES = [2, 4, 6, 8, 12, 16]
# co-smoothing bits/spike a converged fit of each size reaches: the data need 6 latents
TRUE_SCORE = {2: 0.040, 4: 0.060, 6: 0.070, 8: 0.069, 12: 0.062, 16: 0.055}
N_TRIALS = 60


def fake_fitter(short_sd: float, long_sd: float, calls: list[tuple[int, int, int]]):
    """Per-trial gains of a fit of `size`: the size's true score, plus a run-to-run offset of
    sd `short_sd` for fits of SEARCH_STEPS steps and `long_sd` for longer ones, spread over the
    trials with a trial-level noise shared by all sizes (as the same validation trials are)."""
    trial_noise = np.random.default_rng(0).normal(0.0, 2e-4, N_TRIALS)

    def fit_size(size: int, seed: int, steps: int, stop=None) -> np.ndarray:
        calls.append((size, seed, steps))
        sd = short_sd if steps <= SEARCH_STEPS else long_sd
        offset = np.random.default_rng([size, seed, steps]).normal(0.0, sd)
        return (TRUE_SCORE[size] + offset) / N_TRIALS + trial_noise

    return fit_size


def test_consistent_short_fits_decide_alone():
    calls: list[tuple[int, int, int]] = []
    chosen, record = search_latent_dim(SIZES, fake_fitter(5e-4, 5e-4, calls), seed=0)
    # 8 predicts as well as 6 within the noise; the smaller of the two is kept
    assert chosen == 6
    assert "long_fits" not in record
    assert {steps for _, _, steps in calls} == {SEARCH_STEPS}
    # co-smoothing rose no further at 12: 16 is not fitted
    assert record["not_scanned"] == [16]
    assert [p["latent_dim"] for p in record["curve"]] == SIZES[:-1]
    assert len(calls) == len(SIZES) - 1 + 2  # one fit per size scanned, two more seeds of the best


def scored_fitter(score: dict[int, float], calls: list[tuple[int, int, int]]):
    """Fits that reach `score[size]` whatever the seed, with a trial-level noise of sd 2e-4 per
    trial that differs between sizes (so paired differences have a standard error)."""

    def fit_size(size: int, seed: int, steps: int, stop=None) -> np.ndarray:
        calls.append((size, seed, steps))
        noise = np.random.default_rng([size, 7]).normal(0.0, 2e-4, N_TRIALS)
        return score[size] / N_TRIALS + noise - noise.mean()

    return fit_size


def test_the_scan_stops_where_co_smoothing_rises_no_further():
    calls: list[tuple[int, int, int]] = []
    # 8 is 0.0005 above 6, under two standard errors (0.004): the curve has flattened
    score = {2: 0.040, 4: 0.060, 6: 0.070, 8: 0.0705, 12: 0.080, 16: 0.085}
    chosen, record = search_latent_dim(SIZES, scored_fitter(score, calls), seed=0)
    assert record["not_scanned"] == [12, 16]
    assert {size for size, _, _ in calls} == {2, 4, 6, 8}
    assert chosen == 6


def test_a_curve_that_keeps_rising_is_scanned_to_the_end():
    calls: list[tuple[int, int, int]] = []
    score = {2: 0.040, 4: 0.060, 6: 0.070, 8: 0.080, 12: 0.090, 16: 0.100}
    chosen, record = search_latent_dim(SIZES, scored_fitter(score, calls), seed=0)
    assert "not_scanned" not in record
    assert chosen == 16
    assert len(calls) == len(set(calls)) == len(SIZES) + 2  # no fit is made twice


def test_short_fits_that_disagree_are_refitted_longer_and_then_decide():
    # short fits off their size's converged score by chance, a fifth of the best score: the
    # first fit of 8 latents falls below 6's, the other seeds of 6 spread 0.045-0.075, and a
    # 2-latent fit comes out as good as a 6-latent one; longer fits agree within 0.002
    short = {(2, 0): 0.058, (4, 0): 0.061, (6, 0): 0.066, (8, 0): 0.052,
             (6, 1): 0.045, (6, 2): 0.075}  # fmt: skip
    long_fits = fake_fitter(0.0, 0.002, [])
    trial_noise = np.random.default_rng(0).normal(0.0, 2e-4, N_TRIALS)
    calls: list[tuple[int, int, int]] = []

    def fit_size(size: int, seed: int, steps: int, stop=None) -> np.ndarray:
        calls.append((size, seed, steps))
        if steps > SEARCH_STEPS:
            return long_fits(size, seed, steps)
        return short[size, seed] / N_TRIALS + trial_noise

    chosen, record = search_latent_dim(SIZES, fit_size, seed=0)
    long_steps = SEARCH_STEPS * LONG_FIT_FACTOR
    assert record["not_scanned"] == [12, 16]  # the short fits rose no further at 8
    assert "long_fits" in record and record["short_fit_spread"] > 0.1
    contenders = [p["latent_dim"] for p in record["curve"] if p["within_noise"]]
    assert 2 in contenders  # the short fits could not rule out 2 latents
    refitted = sorted({size for size, _, steps in calls if steps == long_steps})
    assert refitted == contenders  # only the sizes the short fits could not tell apart
    assert chosen == record["long_fits"]["chosen"] == 6
    assert record["chosen"] == 6
    assert len(calls) == len(set(calls))  # no fit is made twice


def test_the_best_size_is_judged_by_the_mean_of_its_seeds():
    # 8 latents' first fit was lucky (0.070; its other seeds 0.061 and 0.062): against their
    # mean (0.0643) 4 latents (0.060) are within the fits' spread, against 0.070 they are not
    first = {2: 0.040, 4: 0.060, 8: 0.070}
    others = {1: 0.061, 2: 0.062}
    trial_noise = np.random.default_rng(0).normal(0.0, 2e-4, N_TRIALS)
    trial_noise -= trial_noise.mean()  # the gains sum to the scores above

    def fit_size(size: int, seed: int, steps: int, stop=None) -> np.ndarray:
        value = first[size] if seed == 0 else others[seed]
        return value / N_TRIALS + trial_noise

    chosen, record = search_latent_dim([2, 4, 8], fit_size, seed=0)
    assert record["best"] == 8
    assert abs(record["cobps_best"] - np.mean([0.070, 0.061, 0.062])) < 1e-9
    assert chosen == 4


@pytest.mark.parametrize("case", ["plateau", "rising", "disagree"])
def test_parallel_fits_give_the_serial_search(case):
    """Two workers fit the next size ahead and the best size's seeds side by side; the choice
    and the record are those of one worker, and no fit is made twice."""

    def fitter(calls):
        if case == "plateau":
            return scored_fitter({2: 0.040, 4: 0.060, 6: 0.070, 8: 0.0705, 12: 0.08, 16: 0.09},
                                 calls)  # fmt: skip
        if case == "rising":
            return scored_fitter({2: 0.040, 4: 0.060, 6: 0.070, 8: 0.080, 12: 0.090, 16: 0.1},
                                 calls)  # fmt: skip
        return fake_fitter(0.01, 0.001, calls)  # short fits too noisy: refitted longer

    serial_calls: list[tuple[int, int, int]] = []
    parallel_calls: list[tuple[int, int, int]] = []
    serial = search_latent_dim(SIZES, fitter(serial_calls), seed=0)
    parallel = search_latent_dim(SIZES, fitter(parallel_calls), seed=0, workers=2)
    assert parallel == serial
    assert len(parallel_calls) == len(set(parallel_calls))
    # at most one size beyond where the scan stopped was fitted ahead
    assert len(set(parallel_calls) - set(serial_calls)) <= 1


def test_a_size_fitted_ahead_of_a_scan_that_stops_is_stopped():
    calls: list[tuple[int, int, int]] = []
    score = {2: 0.040, 4: 0.060, 6: 0.070, 8: 0.0705, 12: 0.080, 16: 0.085}
    scored = scored_fitter(score, calls)
    stopped: list[bool] = []
    started = threading.Event()

    def fit_size(size: int, seed: int, steps: int, stop: threading.Event | None = None):
        if size == 12:  # fitted ahead while 8 is scored; 8 does not rise, so 12 is not needed
            assert stop is not None
            started.set()
            stopped.append(stop.wait(timeout=30))
            return None
        if size == 8:  # 8 finishes once 12 runs (else 12 may be cancelled before it starts)
            assert started.wait(timeout=30)
        return scored(size, seed, steps)

    chosen, record = search_latent_dim(SIZES, fit_size, seed=0, workers=2)
    assert stopped == [True]
    assert record["not_scanned"] == [12, 16] and chosen == 6


def test_the_kept_fit_is_the_one_the_search_scored():
    """`fit-ae` continues the chosen size's search fit: the weights `choose_latent_dim` keeps,
    loaded into a freshly initialised model, give the co-smoothing score the search recorded
    for that size."""
    import math

    import torch

    from ldns_cli.fit.autoencoder import ae_loss, resolve_ae_configs, tensors_from_data
    from ldns_cli.fit.latent_size import choose_latent_dim, cosmoothing_per_trial
    from ldns_cli.fit.splits import split_train_val
    from ldns_cli.io.simulate import simulate_lorenz
    from ldns_cli.nn.autoencoder import Autoencoder

    data = simulate_lorenz(90, 16, 32, seed=3)
    train, val, _ = split_train_val(data, 0.3, seed=0)
    overrides = {"width": 16, "blocks": 1, "state_dim": 8, "epochs": 1, "seed": 5}
    ae_cfg, train_cfg = resolve_ae_configs(None, None, overrides, data.n_neurons)
    train_t = tensors_from_data(train)
    chosen, record, kept = choose_latent_dim(
        ae_cfg, train_cfg, train_t, val, ae_loss, "cpu", steps=12
    )
    deciding = record.get("long_fits", record)  # the longer fits decide when short ones disagree
    assert kept.latent_dim == chosen and kept.steps == deciding["steps_per_size"]
    cfg = dataclasses.replace(ae_cfg, latent_dim=chosen)
    model = Autoencoder(cfg, torch.Generator().manual_seed(123))
    model.load_state_dict(kept.state)
    null_rate = (train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()).numpy()
    gain, spikes = cosmoothing_per_trial(model, val, null_rate.astype(np.float64), "cpu")
    recorded = {p["latent_dim"]: p["cobps"] for p in deciding["curve"]}[chosen]
    assert gain.sum() / (math.log(2) * spikes) == pytest.approx(recorded, rel=1e-5, abs=1e-7)
