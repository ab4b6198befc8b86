"""`ldns audit`: known answers for memorisation, membership, realism and utility, the statistics
behind them, and the command line.

The data: one simulated reach recording (32 neurons, 48 bins) cut into training, held-out and
"fresh" trials, all drawn by the same simulator (same readout), so fresh trials are what a
perfect, non-copying generator would produce.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import ldns_cli as ldns
from ldns_cli.auditing.distances import TrialFeatures, count_features, prefix_distances
from ldns_cli.auditing.memorisation import conformal_threshold
from ldns_cli.auditing.run import audit, audit_full
from ldns_cli.auditing.stats import auc_delong, fit_logistic, fit_ridge, wilson_interval
from ldns_cli.cli import app
from ldns_cli.core.data import SpikeData
from ldns_cli.io.formats import write_spikes
from ldns_cli.io.simulate import simulate

N_SET = 200


@pytest.fixture(scope="module")
def reach() -> dict[str, SpikeData]:
    data = simulate("reach", trials=3 * N_SET, neurons=32, length=48, seed=0)
    return {
        "train": data.select(slice(0, N_SET)),
        "heldout": data.select(slice(N_SET, 2 * N_SET)),
        "fresh": data.select(slice(2 * N_SET, 3 * N_SET)),
    }


def jitter(data: SpikeData, rng: np.random.Generator) -> SpikeData:
    """Every spike moved by -1, 0 or +1 bin (probabilities 1/4, 1/2, 1/4) inside its trial:
    small noise that keeps every neuron's spike count."""
    trial, time, neuron = np.nonzero(data.counts)
    reps = data.counts[trial, time, neuron]
    trial, time, neuron = (np.repeat(a, reps) for a in (trial, time, neuron))
    shift = rng.choice([-1, 0, 0, 1], size=len(time))
    time = np.clip(time + shift, 0, data.lengths[trial] - 1)
    counts = np.zeros_like(data.counts)
    np.add.at(counts, (trial, time, neuron), 1)
    return dataclasses.replace(data, counts=counts, latents=None, rates=None)


@pytest.fixture(scope="module")
def copies(reach) -> SpikeData:
    """N_SET training trials drawn with replacement, each spike jittered (ids kept)."""
    rng = np.random.default_rng(1)
    return jitter(reach["train"].select(rng.integers(0, N_SET, N_SET)), rng)


# ------------------------------------------------------------------ memorisation and realism
def test_copies_are_flagged_and_the_two_sample_test_cannot_see_them(reach, copies):
    result = audit(reach["train"], reach["heldout"], copies, seed=0)
    mem = result["memorisation"]["counts"]
    assert mem["flagged"] >= 0.9
    assert mem["nearer_train_share"] >= 0.9
    # the closest pairs point at the trial each copy was made from
    assert all(p["sample_trial_id"] == p["train_trial_id"] for p in mem["closest_pairs"])
    lo, hi = result["realism"]["model"]["accuracy_ci"]
    assert lo <= 0.5 <= hi  # copies are perfectly realistic: realism alone would pass them
    status = {v["aspect"]: v["status"] for v in result["verdict"]}
    assert status["memorisation (counts)"] == "copies"
    assert status["realism"] == "indistinguishable"


def test_memorised_trajectories_with_fresh_spikes_are_caught():
    # Lorenz trials are each their own trajectory: a model that memorised the training latents
    # returns their rates with new Poisson spikes, and those samples sit too close
    data = simulate("lorenz", trials=3 * N_SET, neurons=32, length=128, seed=0)
    train, heldout = data.select(slice(0, N_SET)), data.select(slice(N_SET, 2 * N_SET))
    redrawn = np.random.default_rng(0).poisson(train.rates).astype(np.int32)
    copies = dataclasses.replace(train, counts=redrawn, latents=None, rates=None)
    mem = audit(train, heldout, copies, seed=0)["memorisation"]["counts"]
    assert mem["closer_than_heldout_auc_ci"][0] > 0.6
    assert mem["flagged_p_value"] < 0.01
    fresh = audit(train, heldout, data.select(slice(2 * N_SET, 3 * N_SET)), seed=0)
    assert fresh["memorisation"]["counts"]["flagged_p_value"] > 0.01


@pytest.fixture(scope="module")
def fresh_audit(reach) -> dict:
    return audit(reach["train"], reach["heldout"], reach["fresh"], seed=0)


def test_fresh_trials_are_flagged_no_more_than_heldout_and_look_real(fresh_audit):
    result = fresh_audit
    mem = result["memorisation"]["counts"]
    assert mem["flagged"] <= 0.05
    assert mem["expected_flagged"] == pytest.approx(2 / (N_SET + 1))  # k = ⌊0.01·201⌋ = 2
    assert mem["flagged_p_value"] > 0.01
    # samples come as close to the training trials as held-out trials do (a loose bound: the
    # interval itself misses 0.5 for 1 split in 20 by design)
    assert abs(mem["closer_than_heldout_auc"] - 0.5) < 0.1
    model, naive, floor = (result["realism"][k] for k in ("model", "naive", "floor"))
    assert model["accuracy_ci"][0] <= 0.5 <= model["accuracy_ci"][1]
    assert abs(floor["accuracy"] - 0.5) < 0.1  # real vs real
    assert naive["accuracy_ci"][0] > 0.6  # the test has power: the Poisson surrogate is caught
    status = {v["aspect"]: v["status"] for v in result["verdict"]}
    assert status["memorisation (counts)"] != "copies"
    assert status["realism"] == "indistinguishable"
    assert status["membership"] == "not run"


def test_audit_is_deterministic_and_json_ready(reach):
    small = {k: d.select(slice(0, 40)) for k, d in reach.items()}
    a = audit(small["train"], small["heldout"], small["fresh"], seed=3)
    b = audit(small["train"], small["heldout"], small["fresh"], seed=3)
    assert json.dumps(a, allow_nan=False) == json.dumps(b, allow_nan=False)


# ------------------------------------------------------------------ utility
def test_tstr_of_condition_ignoring_samples_is_at_chance(reach):
    fresh = reach["fresh"]
    rng = np.random.default_rng(2)
    shuffled = dataclasses.replace(
        fresh,
        covariates={k: rng.permutation(v) for k, v in fresh.covariates.items()},
        behavior={k: rng.permutation(v) for k, v in fresh.behavior.items()},
    )
    result = audit(reach["train"], reach["heldout"], shuffled, seed=0)
    targets = {t["name"]: t for t in result["utility"]["targets"]}
    angle = targets["angle"]
    assert angle["real"]["ci"][0] > 0.8  # the real decoder works: mean cos(error) near 1
    lo, hi = angle["synthetic"]["ci"]
    assert lo <= angle["chance"] <= hi  # trained on samples: at chance, within its interval
    velocity = targets["hand_vel"]
    assert velocity["real"]["ci"][0] > 0.1
    assert velocity["synthetic"]["value"] < 0.02  # R² of a constant guess is 0
    status = {v["aspect"]: v["status"] for v in result["verdict"]}
    assert status["utility (angle)"] == "useless"


def test_tstr_of_fresh_trials_matches_real_training(fresh_audit):
    result = fresh_audit
    angle = next(t for t in result["utility"]["targets"] if t["name"] == "angle")
    lo, hi = angle["synthetic_minus_real"]["ci"]
    assert lo <= 0.0 <= hi  # as good as real training trials of the same size
    assert angle["synthetic"]["ci"][0] > 0.8
    skipped = result["utility"]["skipped"]
    assert "constant" in skipped["move_onset_time"]


# ------------------------------------------------------------------ membership
@pytest.fixture(scope="module")
def memorising(tmp_path_factory, reach):
    """A model fitted on purpose to memorise 8 trials: no coordinated dropout, no latent
    penalties, many steps on those trials (and a briefly trained denoiser)."""
    from ldns_cli.fit.autoencoder import fit_autoencoder
    from ldns_cli.fit.diffusion import fit_diffusion

    folder = tmp_path_factory.mktemp("memorising")
    base = simulate("reach", trials=110, neurons=32, length=32, seed=0)
    split = np.array(["test"] * 110, dtype="<U5")
    split[:8], split[8:10] = "train", "val"
    data = dataclasses.replace(base, split=split)
    config = folder / "train.json"
    config.write_text(json.dumps({"warmup_epochs": 1, "min_steps": 0}))
    fit_autoencoder(
        data, folder, config=config, epochs=25, lr=0.02, width=16, blocks=1, latent_dim=2,
        dropout_p=0.0, l2=0.0, smooth=0.0, spike_history=False, device="cpu", quiet=True, seed=0,
    )  # fmt: skip
    fit_diffusion(
        data, folder, config=config, epochs=5, width=16, blocks=1, calibration_trials=0,
        conditions=["angle"], device="cpu", seed=0,
    )  # fmt: skip
    return folder, data


def test_membership_auc_of_a_memorising_model_is_high(memorising):
    from ldns_cli.store import load_models

    folder, data = memorising
    models = load_models(folder, "cpu")
    train, heldout = data.select(data.split == "train"), data.select(data.split == "test")
    result = audit(train, heldout, heldout.select(slice(0, 50)), models=models, seed=0)
    scores = result["membership"]["scores"]
    assert scores["combined"]["auc"] >= 0.8
    assert scores["combined"]["auc_ci"][0] > 0.5
    assert result["membership"]["members"] == 8
    assert {v["aspect"]: v["status"] for v in result["verdict"]}["membership"] == "leaks"
    assert "latents" in result["memorisation"]
    # the null: two sets of trials the model never saw cannot be told apart
    null = audit(heldout.select(slice(0, 50)), heldout.select(slice(50, 100)),
                 heldout.select(slice(0, 20)), models=models, seed=0)  # fmt: skip
    lo, hi = null["membership"]["scores"]["combined"]["auc_ci"]
    assert lo <= 0.5 <= hi


# ------------------------------------------------------------------ statistics
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.40383, 0.59617), abs=1e-4)


def test_auc_and_delong_match_the_pairwise_definition():
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1, 30), 1)  # rounded: ties count 1/2
    neg = np.round(rng.normal(0.0, 1, 45), 1)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [m, n]
    auc, se = auc_delong(pos, neg)
    assert auc == pytest.approx(psi.mean())
    v10, v01 = psi.mean(1), psi.mean(0)
    assert se**2 == pytest.approx(v10.var(ddof=1) / 30 + v01.var(ddof=1) / 45)
    assert auc_delong(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == (1.0, 0.0)


@pytest.mark.parametrize("n, d", [(40, 7), (12, 30)])  # primal and dual decompositions
def test_ridge_matches_the_closed_form_and_its_leave_one_out(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 2.0
    y = x @ rng.normal(size=(d, 2)) + rng.normal(size=(n, 2))
    model = fit_ridge(x, y)
    xs = (x - x.mean(0)) / x.std(0)
    yc = y - y.mean(0)
    w = np.linalg.solve(xs.T @ xs + model.alpha * np.eye(d), xs.T @ yc)
    assert model.weights == pytest.approx(w, rel=1e-6, abs=1e-8)

    def loo_error(alpha: float) -> float:  # refit without each trial (same standardisation)
        err = 0.0
        for i in range(n):
            keep = np.arange(n) != i
            xk, yk = xs[keep], y[keep]
            xm, ym = xk.mean(0), yk.mean(0)  # the unpenalised intercept
            wk = np.linalg.solve(
                (xk - xm).T @ (xk - xm) + alpha * np.eye(d), (xk - xm).T @ (yk - ym)
            )
            err += float(np.sum((ym + (xs[i] - xm) @ wk - y[i]) ** 2))
        return err

    eig = np.linalg.eigvalsh(xs.T @ xs)
    base = float(eig[eig > 1e-10 * eig.max()].mean())  # the grid is relative to this
    grid = [a * base for a in 10.0 ** np.arange(-3.0, 3.5, 0.5)]
    errors = [loo_error(a) for a in grid]
    assert model.alpha == pytest.approx(grid[int(np.argmin(errors))], rel=1e-6)


def test_logistic_regression_separates_shifted_classes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (100, 3)), rng.normal([3, 0, 0], 1, (100, 3))])
    y = np.repeat([0.0, 1.0], 100)
    clf = fit_logistic(x, y, l2=0.01)
    assert np.mean((clf.decision(x) > 0) == (y == 1)) > 0.9
    assert clf.weights[0] > 5 * max(abs(clf.weights[1]), abs(clf.weights[2]))


def test_prefix_distances_match_brute_force_for_unequal_lengths():
    rng = np.random.default_rng(0)
    a = TrialFeatures(rng.normal(size=(5, 9, 3)).astype(np.float32), np.array([9, 4, 7, 1, 9]))
    b = TrialFeatures(rng.normal(size=(4, 6, 3)).astype(np.float32), np.array([6, 2, 5, 6]))
    for f in (a, b):  # zero beyond each trial's steps, as the feature builders leave them
        f.values[np.arange(f.values.shape[1])[None, :] >= f.steps[:, None]] = 0.0
    got = prefix_distances(a, b)
    for i in range(5):
        for j in range(4):
            m = min(a.steps[i], b.steps[j])
            diff = a.values[i, :m] - b.values[j, :m]
            assert got[i, j] == pytest.approx(np.sqrt(np.mean(diff**2)), rel=1e-5)


def test_count_features_compare_trials_of_unequal_length_on_their_prefix(reach):
    # a trial cut to half its length is at distance 0 from its own full-length original
    full = reach["train"].select([0])
    counts = full.counts.copy()
    counts[:, 24:] = 0
    half = dataclasses.replace(
        full, counts=counts, lengths=np.array([24]), latents=None, rates=None
    )
    d_self = prefix_distances(count_features(half), count_features(full))[0, 0]
    other = count_features(reach["heldout"].select([0]))
    d_other = prefix_distances(count_features(full), other)[0, 0]
    # only the smoothing's edge correction in the last bins before the cut differs
    assert d_self < 0.2 * d_other


def test_conformal_threshold_rank():
    tau, expected, k = conformal_threshold(np.arange(1.0, 300.0), alpha=0.01)
    assert (k, tau, expected) == (3, 3.0, pytest.approx(3 / 300))
    tau, expected, k = conformal_threshold(np.array([5.0, 1.0, 3.0]), alpha=0.01)
    assert (k, tau, expected) == (1, 1.0, 0.25)  # few held-out trials: the minimum, rate 1/(n+1)


# ------------------------------------------------------------------ errors, CLI and API
def test_overlapping_sets_and_mismatched_neurons_are_errors(reach):
    with pytest.raises(ldns.LdnsError, match="also training trials"):
        audit_full(reach["train"], reach["train"], reach["fresh"])
    fewer = dataclasses.replace(
        reach["fresh"], counts=reach["fresh"].counts[:, :, :5], unit_ids=None, latents=None,
        rates=None,
    )  # fmt: skip
    with pytest.raises(ldns.LdnsError, match="neurons"):
        audit_full(reach["train"], reach["heldout"], fewer)


@pytest.fixture(scope="module")
def files(tmp_path_factory, reach):
    root = tmp_path_factory.mktemp("audit_cli")
    labelled = simulate("reach", trials=150, neurons=32, length=48, seed=0)
    paths = {"rec": root / "rec.h5", "fresh": root / "fresh.h5", "bare": root / "bare.h5"}
    write_spikes(labelled, paths["rec"])
    write_spikes(reach["fresh"].select(slice(0, 60)), paths["fresh"])
    write_spikes(dataclasses.replace(labelled, split=None), paths["bare"])
    return paths


def test_cli_json_is_pure_and_table_has_the_verdict(files, tmp_path):
    runner = CliRunner()
    rec, fresh = str(files["rec"]), str(files["fresh"])
    result = runner.invoke(
        app, ["audit", rec, rec, fresh, "--json", "--report", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["sets"]["train"]["trials_selected"] == "train"
    assert payload["sets"]["heldout"]["trials_selected"] == "test"
    assert payload["sets"]["samples"]["path"] == fresh
    assert {v["aspect"] for v in payload["verdict"]} >= {"memorisation (counts)", "realism"}
    assert "memorisation:" in result.stderr  # progress on stderr
    assert (tmp_path / "r" / "index.html").read_text().count("<li><b>") >= 3
    assert (tmp_path / "r" / "distances.png").exists()
    table = runner.invoke(app, ["audit", rec, rec, fresh])
    assert table.exit_code == 0, table.stderr
    assert "memorisation [counts]" in table.stdout and "verdict:" in table.stdout


def test_cli_errors_have_a_hint(files, memorising):
    runner = CliRunner()
    bare, fresh = str(files["bare"]), str(files["fresh"])
    result = runner.invoke(app, ["audit", bare, bare, fresh])
    assert result.exit_code == 1 and "no test split" in result.stderr
    assert "hint: " in result.stderr and result.stdout == ""
    result = runner.invoke(app, ["audit", bare, bare, fresh, "--train-trials", "train"])
    assert result.exit_code == 1 and "--train-trials" in result.stderr
    folder, _ = memorising  # 32 neurons, 32 bins: the files have 32 neurons too, so fine
    rec = str(files["rec"])
    result = runner.invoke(app, ["audit", rec, rec, fresh, "-m", str(folder / "nowhere")])
    assert result.exit_code == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_api_audit_stays_a_function(reach):
    small = {k: d.select(slice(0, 30)) for k, d in reach.items()}
    first = ldns.audit(small["train"], small["heldout"], small["fresh"])
    second = ldns.audit(small["train"], small["heldout"], small["fresh"])  # not shadowed
    assert callable(ldns.audit) and first == second and "verdict" in first
