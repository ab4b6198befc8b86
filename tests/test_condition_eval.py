"""Per-condition evaluation (`scoring.conditions`) and its decoders (`scoring.decoding`).

Oracles: samples that are real trials of the right condition score at the floor (score ≈ 0),
the same trials with their conditions shuffled score at chance (score ≈ 1); the ridge's
closed-form leave-one-out error equals refitting without each trial."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ldns_cli.core.data import SpikeData, VariableInfo
from ldns_cli.io.simulate import simulate_reach
from ldns_cli.scoring.conditions import condition_groups, evaluate_conditions, psth_r2
from ldns_cli.scoring.decoding import fit_decoder
from ldns_cli.scoring.metrics import isi_histogram
from ldns_cli.scoring.ridge import RIDGE_ALPHAS, fit_ridge


@pytest.fixture(scope="module")
def reach():
    data = simulate_reach(240, 32, 80, seed=3)
    ref, gen = data.select(np.arange(120)), data.select(np.arange(120, 240))
    gen.provenance["conditions"] = "angle,condition_id,hand_vel"
    return ref, gen


def _shuffled(data: SpikeData, seed: int) -> SpikeData:
    perm = np.random.default_rng(seed).permutation(data.n_trials)
    return dataclasses.replace(
        data,
        covariates={k: v[perm] for k, v in data.covariates.items()},
        behavior={k: v[perm] for k, v in data.behavior.items()},
    )


def _scores(payload: dict) -> dict[tuple[str, str], float]:
    return {
        (name, key): entry[key]["score"]
        for name, entry in payload["conditions"].items()
        for key in ("decoding", "psth")
        if entry.get(key)
    }


def test_real_trials_score_at_the_floor_and_shuffled_ones_at_chance(reach):
    ref, gen = reach
    real, _ = evaluate_conditions(ref, gen, folds=4, seed=0)
    shuffled, _ = evaluate_conditions(ref, _shuffled(gen, 1), folds=4, seed=0)
    assert set(real["conditions"]) == {"angle", "condition_id", "hand_vel"}
    kinds = {n: e["kind"] for n, e in real["conditions"].items()}
    assert kinds == {"angle": "circular", "condition_id": "categorical", "hand_vel": "timeseries"}
    assert real["conditions"]["hand_vel"]["psth"] is None  # series: decoding only
    for key, score in _scores(real).items():
        assert abs(score) < 0.2, (key, score)
    for key, score in _scores(shuffled).items():
        assert 0.75 < score < 1.25, (key, score)
    angle = real["conditions"]["angle"]["decoding"]
    assert angle["metric"] == "angle_error_deg" and angle["floor"]["mean"] < 20
    assert angle["chance"]["mean"] > 60  # uniform angles: 90° median error by chance
    acc = real["conditions"]["condition_id"]["decoding"]
    assert acc["floor"]["mean"] > 0.6 and acc["chance"]["mean"] < 0.25  # 8 classes


def test_default_conditions_come_from_the_samples_provenance(reach):
    ref, gen = reach
    gen = dataclasses.replace(gen, provenance={"conditions": "angle"})
    payload, figures = evaluate_conditions(ref, gen, folds=2)
    assert list(payload["conditions"]) == ["angle"]
    assert figures[0].psth_reference.shape == (8, ref.n_bins, ref.n_neurons)
    none, _ = evaluate_conditions(ref, dataclasses.replace(gen, provenance={}), folds=2)
    assert none["conditions"] == {}
    missing, _ = evaluate_conditions(ref, gen, ["speed"], folds=2)
    assert missing["conditions"] == {} and "speed" in missing["notes"][0]


def test_evaluation_is_deterministic(reach):
    ref, gen = reach
    a, _ = evaluate_conditions(ref, gen, ["angle"], folds=2, seed=5)
    b, _ = evaluate_conditions(ref, gen, ["angle"], folds=2, seed=5)
    assert a == b


def test_circular_groups_are_sectors_centred_on_multiples_of_45_degrees():
    angles = np.radians([0.0, 22.0, 23.0, 350.0, 180.0, 359.0, np.nan])
    ref_g, _, labels = condition_groups("circular", angles, angles)
    assert labels[:3] == ["0°", "45°", "90°"] and len(labels) == 8
    assert ref_g.tolist() == [0, 0, 1, 0, 4, 0, -1]


def test_scalar_groups_are_reference_quantiles():
    values = np.arange(100.0)
    ref_g, gen_g, labels = condition_groups("continuous", values, np.array([-5.0, 50.0, 500.0]))
    assert len(labels) == 5 and np.bincount(ref_g).tolist() == [20] * 5
    assert gen_g.tolist() == [0, 2, 4]  # out-of-range values join the outer groups


def test_psth_r2_oracle():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 10, 4))
    valid = np.ones((3, 10), dtype=bool)
    assert psth_r2(target, target, valid) == 1.0
    means = np.broadcast_to(target.reshape(-1, 4).mean(0), target.shape)
    assert abs(psth_r2(means, target, valid)) < 1e-12  # each neuron's mean: R² = 0


def test_ridge_picks_the_penalty_with_the_smallest_refitted_leave_one_out_error():
    """Oracle: refit without each trial for every penalty of the grid; the shared ridge's closed
    form must pick the same penalty."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 6))
    y = x @ rng.normal(size=(6, 2)) + 2.0 * rng.normal(size=(25, 2))
    xs = (x - x.mean(0)) / x.std(0)
    base = np.mean(np.linalg.eigvalsh(xs.T @ xs))
    brute = []
    for rel in RIDGE_ALPHAS:
        err = 0.0
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            xk, yk = xs[keep], y[keep]
            xm, ym = xk.mean(0), yk.mean(0)
            gram = (xk - xm).T @ (xk - xm) + rel * base * np.eye(6)
            w = np.linalg.solve(gram, (xk - xm).T @ (yk - ym))
            err += float(np.sum((y[i] - ((xs[i] - xm) @ w + ym)) ** 2))
        brute.append(err)
    model = fit_ridge(x, y)
    assert model.alpha == pytest.approx(RIDGE_ALPHAS[int(np.argmin(brute))] * base, rel=1e-9)


def test_categorical_decoder_reads_labels_of_any_type():
    rng = np.random.default_rng(1)
    labels = np.array(["left", "right"] * 30)
    counts = rng.poisson(np.where(labels[:, None, None] == "left", 0.1, 0.6), (60, 20, 5))
    decoder = fit_decoder("categorical", counts, np.full(60, 20), labels, 0.01, 20)
    assert decoder.labels == ["left", "right"]
    assert decoder.score(counts, np.full(60, 20), labels) == 1.0


def test_isi_histogram_oracle():
    counts = np.zeros((2, 10, 2), dtype=np.int16)
    counts[0, [1, 4, 5], 0] = [1, 2, 1]  # ISIs: 3, 0 (inside bin 4), 1
    counts[1, [0, 9], 1] = 1  # ISI 9; no ISI across trials or neurons
    hist = isi_histogram(counts, np.full(2, 10), max_bins=5)
    assert hist.tolist() == [1, 1, 0, 1, 0, 1]  # 9 > 5: the last entry


def test_a_declared_continuous_kind_does_not_hide_an_angle(reach):
    ref, gen = reach
    info = {"angle": VariableInfo(kind="continuous")}
    gen = dataclasses.replace(gen, variable_info=info)
    payload, _ = evaluate_conditions(ref, gen, ["angle"], folds=1)
    assert payload["conditions"]["angle"]["kind"] == "circular"  # an angle name and unit rad


def test_report_shows_conditions_verdicts_provenance_and_training_curves(reach, tmp_path):
    from ldns_cli.fit.trainer import write_training_log
    from ldns_cli.scoring.evaluation import evaluate_full
    from ldns_cli.scoring.report import read_training_log, write_report

    ref, gen = reach
    gen = dataclasses.replace(_shuffled(gen, 2), provenance={"conditions": "angle", "seed": "7"})
    ev = evaluate_full(ref, gen, folds=2, seed=0)
    history = [{"epoch": e, "step": 4 * e, "train_seconds": 0.5 * e, "lr": 1e-3,
                "train_loss": 1.0 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]  # fmt: skip
    log = tmp_path / "ae_training.csv"
    write_training_log(log, history, "poisson_nll_nats_per_neuron_bin")
    cols = read_training_log(log)
    assert list(cols) == ["epoch", "step", "train_seconds", "lr",
                          "train_poisson_nll_nats_per_neuron_bin",
                          "val_poisson_nll_nats_per_neuron_bin"]  # fmt: skip
    assert cols["val_poisson_nll_nats_per_neuron_bin"][2] == pytest.approx(0.4)
    out = tmp_path / "report"
    out.mkdir()
    write_report(ev, out, training_logs=[log])
    html = (out / "index.html").read_text(encoding="utf-8")
    for name in ("conditions_psth.png", "trajectories.png", "conditions_rasters.png",
                 "training.png", "isi_hist.png"):  # fmt: skip
        assert len((out / name).read_bytes()) > 5000, name
    # shuffled samples: the condition is lost, and the report says so in red
    assert "samples do not carry the condition" in html or "partly lost" in html
    assert "<td>seed</td><td>7</td>" in html  # the samples' provenance
    assert html.count("<tr class='worse'>") >= 1


def test_stage_checks_read_chance_for_ignoring_samples_and_real_values_for_copies():
    from ldns_cli.scoring.conditions import stage_checks

    data = simulate_reach(300, 32, 80, seed=4)
    train, val = data.select(np.arange(200)), data.select(np.arange(200, 300))
    checks = stage_checks(
        train,
        {"real": val, "copies": val, "ignoring": _shuffled(val, 3)},
        ["angle", "condition_id", "hand_vel"],
    )
    for name, c in checks.items():
        stages = c["stages"]
        assert stages["copies"] == stages["real"], name
        # a set that ignores its condition decodes at chance (within sampling noise)
        spread = abs(stages["real"] - c["chance"])
        assert abs(stages["ignoring"] - c["chance"]) < 0.25 * spread, (name, stages, c["chance"])
    assert checks["angle"]["stages"]["real"] < 15 and checks["angle"]["chance"] > 60


def test_stage_check_intervals_are_exact_for_copies_and_exclude_no_loss_for_ignoring_sets():
    from ldns_cli.scoring.conditions import stage_checks

    data = simulate_reach(300, 32, 80, seed=4)
    train, val = data.select(np.arange(200)), data.select(np.arange(200, 300))
    other = data.select(np.arange(150, 250))  # real trials, half of them the validation ones
    checks = stage_checks(
        train,
        {"real": val, "copies": [val, val], "ignoring": _shuffled(val, 3), "other": other},
        ["angle", "condition_id", "hand_vel"],
    )
    for name, c in checks.items():
        lo_hi = c["ratio_interval"]
        # copies hold the same trials: resampled together, their ratio is 1 in every resample
        assert lo_hi["copies"] == [1.0, 1.0], name
        assert c["draws"]["copies"] == [c["stages"]["real"]] * 2, name
        assert "real" not in lo_hi and set(c["draws"]) == {"copies"}
        # a set that ignores its condition is clearly worse than the real trials
        lo, hi = lo_hi["ignoring"]
        if c["lower_is_better"]:
            assert lo > 1.5, (name, lo_hi)
        else:
            assert hi < 0.7, (name, lo_hi)
        # other real trials of the same recording: no loss is within the interval, which
        # holds their own ratio
        ratio = c["stages"]["other"] / c["stages"]["real"]
        lo, hi = lo_hi["other"]
        assert lo <= min(1.0, ratio) and max(1.0, ratio) <= hi, (name, lo_hi, ratio)


def test_ratio_interval_covers_equal_stages_at_its_level_and_r2_pieces_give_pooled_r2():
    from ldns_cli.scoring.conditions import CHECK_RESAMPLES, _ratio_intervals
    from ldns_cli.scoring.decoding import _r2_pieces, metric_of_trials, r2_pooled

    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):  # two independent sets of 100 errors from one distribution
        stats = {key: [np.abs(rng.normal(0, 3, (100, 1)))] for key in ("real", "model")}
        values = {key: [rng.uniform(size=100)] for key in ("real", "model")}
        lo, hi = _ratio_intervals("circular", stats, values, np.random.default_rng(trial))["model"]
        covered += lo <= 1.0 <= hi
    assert CHECK_RESAMPLES >= 1000
    assert 0.90 <= covered / 200 <= 0.995, covered  # a 95% interval, within sampling noise
    # R² from per-trial pieces equals the pooled R² of all rows, bins kept with their trial
    true = rng.normal(size=(60, 2)) + np.array([2.0, -1.0])
    pred = true + 0.5 * rng.normal(size=(60, 2))
    pieces = _r2_pieces(pred, true, np.repeat(np.arange(12), 5), 12)
    assert metric_of_trials("timeseries", pieces)[0] == pytest.approx(r2_pooled(pred, true))
    assert metric_of_trials("circular", np.array([[3.0], [1.0], [2.0]]))[0] == 2.0


def test_autoencoder_check_averages_several_draws_and_reads_chance_for_a_flat_model():
    import torch

    from ldns_cli.fit.checks import AE_DRAWS, autoencoder_checks
    from ldns_cli.nn.autoencoder import AEConfig, Autoencoder

    data = simulate_reach(300, 32, 80, seed=4)
    train, val = data.select(np.arange(200)), data.select(np.arange(200, 300))
    model = Autoencoder(AEConfig(n_neurons=32, latent_dim=2, width=8, blocks=1))
    with torch.no_grad():  # rates that ignore the spikes: each neuron's mean rate
        model.decoder_out.weight.zero_()
    model.init_rate_bias(torch.from_numpy(train.counts.mean(axis=(0, 1))))
    checks = autoencoder_checks(model, train, val, "cpu", seed=0, names=["angle"])
    c = checks["angle"]
    draws = c["autoencoder_draws"]
    assert len(draws) == AE_DRAWS and len(set(draws)) == AE_DRAWS  # independent draws
    assert c["stages"]["autoencoder"] == pytest.approx(np.mean(draws))
    assert set(c["stages"]) == {"real", "autoencoder"}
    assert c["autoencoder_observation"] == "poisson"  # no observation model given
    # flat rates carry no angle: every draw decodes near chance, far from the real trials
    spread = c["chance"] - c["stages"]["real"]
    assert all(abs(d - c["chance"]) < 0.3 * spread for d in draws), (draws, c)


def test_check_draws_through_the_observation_model_judge_refractory_spikes_like_real_ones():
    import torch

    from ldns_cli.fit.checks import observation_draws
    from ldns_cli.io.simulate import history_kernel
    from ldns_cli.nn.observation import SpikeHistoryObservation
    from ldns_cli.scoring.conditions import stage_checks

    data = simulate_reach(300, 32, 80, seed=4, history="refractory")
    train, val = data.select(np.arange(200)), data.select(np.arange(200, 300))
    kernel = torch.as_tensor(history_kernel("refractory"), dtype=torch.float32)
    observation = SpikeHistoryObservation(32, history_bins=len(kernel), max_count=3)
    with torch.no_grad():  # the simulator's own refractory kernel
        observation.history.copy_(kernel.expand(32, -1))
    sets = {"real": val}
    for k in range(3):  # draws of the true rates: what a perfect autoencoder would give
        for kind, obs in (("poisson", None), ("history", observation)):
            counts = observation_draws(val.rates, val.lengths, obs, seed=0, draw=k)
            sets[f"{kind}/{k}"] = dataclasses.replace(val, counts=counts)
    r2 = stage_checks(train, sets, ["hand_vel"])["hand_vel"]["stages"]
    real = r2["real"]
    poisson = [r2[f"poisson/{k}"] for k in range(3)]
    history = [r2[f"history/{k}"] for k in range(3)]
    # plain Poisson draws of the very rates that made the real trials decode far worse (the
    # real spikes are more regular); draws through the spiking model decode like the real ones
    assert max(poisson) < 0.6 * real, (poisson, real)
    assert all(abs(h - real) < 0.15 * real for h in history), (history, real)
    # the same seed and draw give the same counts; another draw gives others
    again = observation_draws(val.rates, val.lengths, observation, seed=0, draw=0)
    np.testing.assert_array_equal(again, sets["history/0"].counts)
    assert not np.array_equal(again, sets["history/1"].counts)


def test_explained_bits_per_spike_measures_what_the_condition_adds_to_the_mean_time_course():
    from ldns_cli.scoring.conditions import explained_bits_per_spike

    data = simulate_reach(300, 32, 80, seed=4)
    train, val = data.select(np.arange(200)), data.select(np.arange(200, 300))
    known = explained_bits_per_spike(train, val, "angle", val.rates)
    # the angle shapes the reach rates: its PSTHs explain much, and no more than the true rates
    assert 0.05 < known["condition"] < known["rates"], known
    # a label unrelated to the spikes explains nothing beyond the mean time course (its PSTHs
    # only add noise), while the same rates still explain as much
    shuffled = explained_bits_per_spike(_shuffled(train, 1), val, "angle", val.rates)
    assert shuffled["condition"] < 0.01 < known["condition"], shuffled
    assert shuffled["rates"] == pytest.approx(known["rates"])
    alone = explained_bits_per_spike(train, val, "angle")  # without rates: the condition only
    assert alone == {"condition": known["condition"]}
    assert explained_bits_per_spike(train, val, "hand_vel") is None  # time series: no groups


def test_a_lost_condition_is_explained_as_weak_or_as_needing_a_larger_autoencoder():
    from ldns_cli.fit.checks import _loss_hint

    weak = _loss_hint({"condition": -0.03, "rates": 0.36})
    assert "no more of the validation spikes than their mean time course" in weak
    assert "rarely kept" in weak
    assert "0.021" in _loss_hint({"condition": 0.021, "rates": 0.36})  # weak, but measurable
    strong = _loss_hint({"condition": 0.15, "rates": 0.17})
    assert "larger autoencoder" in strong and "rarely" not in strong
    assert "expected of any reconstruction of single trials" in strong  # the measured floor
    assert "larger autoencoder" in _loss_hint(None)  # time series: nothing measured


def test_checkable_conditions_skip_event_times():
    from ldns_cli.scoring.conditions import checkable_conditions

    data = simulate_reach(40, 8, 20, seed=0)
    assert checkable_conditions(data) == ["angle", "condition_id", "hand_vel"]  # no onset time


def test_series_decoder_pairs_each_bin_with_its_own_value_when_the_series_is_shorter():
    """A behaviour series covering fewer bins than the spikes: features and values must stay
    paired bin by bin (a misaligned pairing decodes nothing)."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(2)
    counts = rng.poisson(0.5, (40, 30, 6))
    lengths = rng.integers(20, 31, 40)
    counts[np.arange(30)[None, :] >= lengths[:, None]] = 0
    drive = gaussian_filter1d(counts[:, :, 0].astype(float), 2.0, axis=1)  # [B, L]
    series = drive[:, :25, None]  # the series stops 5 bins early
    decoder = fit_decoder("timeseries", counts, lengths, series, 0.01, 30)
    assert decoder.score(counts, lengths, series) > 0.8


def test_autoencoder_warning_says_when_the_trials_are_too_few_to_tell_a_loss(capsys):
    from ldns_cli.fit.checks import report_checks

    def check(interval):
        return {"angle": {"kind": "circular", "metric": "angle_error_deg", "lower_is_better": True,
                          "chance": 90.0, "stages": {"real": 3.0, "autoencoder": 4.0},
                          "ratio_interval": {"autoencoder": interval}}}  # fmt: skip

    report_checks(check([1.1, 1.6]))  # 1.33x, and beyond the noise
    err = capsys.readouterr().err
    assert "autoencoder loses part of condition angle" in err and "1.10 to 1.60" in err
    assert "too few to tell" not in err
    report_checks(check([0.9, 1.8]))  # 1.33x, but no loss is within the interval
    err = capsys.readouterr().err
    assert "may lose part of condition angle" in err and "too few to tell" in err
    within = check([0.9, 1.3])
    within["angle"]["stages"]["autoencoder"] = 3.3  # 1.1x: within the tolerance, no warning
    report_checks(within)
    assert "lose" not in capsys.readouterr().err
