"""The latent-size rule on fits of known quality: short fits that decide, and ones that cannot."""

from __future__ import annotations

import numpy as np

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

    def fit_size(size: int, seed: int, steps: int) -> np.ndarray:
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
    assert len(calls) == len(SIZES) + 2  # one fit per size, two more seeds of the best
    assert [p["latent_dim"] for p in record["curve"]] == SIZES


def test_short_fits_that_disagree_are_refitted_longer_and_then_decide():
    calls: list[tuple[int, int, int]] = []
    # short fits spread 0.015 bits/spike by chance (a fifth of the best score): a 2-latent fit
    # can come out as good as a 6-latent one; longer fits agree within 0.002
    chosen, record = search_latent_dim(SIZES, fake_fitter(0.015, 0.002, calls), seed=0)
    long_steps = SEARCH_STEPS * LONG_FIT_FACTOR
    assert "long_fits" in record and record["short_fit_spread"] > 0.1
    contenders = [p["latent_dim"] for p in record["curve"] if p["within_noise"]]
    assert 2 in contenders  # the short fits could not rule out 2 latents
    refitted = sorted({size for size, _, steps in calls if steps == long_steps})
    assert refitted == contenders  # only the sizes the short fits could not tell apart
    assert chosen == record["long_fits"]["chosen"] == 6
    assert record["chosen"] == 6
