"""`ldns fit-history` end to end: fit-ae without history, then refit history alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.io.formats import write_spikes
from ldns_cli.io.simulate import simulate_lorenz
from ldns_cli.nn.observation import PoissonObservation, SpikeHistoryObservation
from ldns_cli.store import load_history, load_observation

runner = CliRunner()
TINY_AE = ["--epochs", "1", "--width", "8", "--blocks", "1", "--latent-dim", "4"]


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _fails(args: list[str], *needles: str):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("history_cli")
    data = root / "lorenz.h5"
    write_spikes(
        simulate_lorenz(n_trials=30, n_neurons=6, n_bins=48, seed=0, history="refractory"), data
    )
    models = root / "models"
    # the spike-history model is fitted by default at the end of fit-ae
    res = _ok(["fit-ae", str(data), "-m", str(models), "--device", "cpu", *TINY_AE])
    return root, data, models, res


def test_fit_ae_fits_history_by_default(fitted):
    _, _, models, res = fitted
    assert "spike history: validation NLL" in res.stderr and res.stdout == ""
    model, ckpt = load_history(models)
    assert model.history_bins == 20 and model.max_count == 5
    assert ckpt.extra["nll_split"] == "validation"
    # the statistics the validation trials could not score are named as left out of the choice
    flags = ckpt.extra["selection"]["scales"]["informative"]
    assert ("left out of the choice" in res.stderr) == (not all(flags.values()))


def test_fit_history_refits_alone(fitted):
    _, data, models, _ = fitted
    (models / "history.safetensors").unlink()
    assert isinstance(load_observation(models, "auto"), PoissonObservation)
    res = _ok(["fit-history", str(data), "-m", str(models), "--history-ms", "50",
               "--max-count", "3", "--device", "cpu", "--json"])  # fmt: skip
    summary = json.loads(res.stdout)  # stdout holds only the JSON payload
    assert summary["history_bins"] == 5  # 50 ms of 10 ms bins
    assert summary["nll_split"] == "validation"
    assert summary["free_running_rate_ratio"] == pytest.approx(1.0, abs=0.05)  # rate matching on
    # refractory data: the history model explains held-out spikes better than Poisson
    assert summary["nll_history"] < summary["nll_poisson"]
    assert "spike history" in res.stderr
    model, ckpt = load_history(models)
    assert model.history_bins == 5 and model.max_count == 3
    assert ckpt.fingerprint["n_neurons"] == 6
    assert isinstance(load_observation(models, "auto"), SpikeHistoryObservation)
    # 0 = no cap
    _ok(["fit-history", str(data), "-m", str(models), "--max-count", "0", "--iterations", "20",
         "-q"])  # fmt: skip
    assert load_history(models)[0].max_count is None
    # the paper's plain fit: no matching rounds, no matching figures in the summary
    res = _ok(["fit-history", str(data), "-m", str(models), "--rate-match-rounds", "0",
               "--iterations", "20", "--json"])  # fmt: skip
    assert "free_running_rate_ratio" not in json.loads(res.stdout)
    assert load_history(models)[1].config["rate_match_rounds"] == 0
    # the bound on self-excitation is a flag; it must be positive
    _ok(["fit-history", str(data), "-m", str(models), "--max-excitation", "1.5",
         "--iterations", "20", "-q"])  # fmt: skip
    assert load_history(models)[0].max_excitation == 1.5
    _fails(["fit-history", str(data), "-m", str(models), "--max-excitation", "0"],
           "max_excitation")  # fmt: skip
    # the coupling between units: a rank, or auto (the default), whose choice is stored
    quick = models.parent / "no_matching.json"  # the coupled candidates run one by one: slow
    quick.write_text(json.dumps({"match_dispersion": False}))
    res = _ok(["fit-history", str(data), "-m", str(models), "--coupling-rank", "2",
               "--iterations", "20", "--config", str(quick), "--json"])  # fmt: skip
    assert "coupling" not in json.loads(res.stdout)  # a given rank is not a choice
    model, ckpt = load_history(models)
    assert model.coupling_rank == 2 and ckpt.config["coupling_rank"] == 2
    res = _ok(["fit-history", str(data), "-m", str(models), "--coupling-rank", "auto",
               "--iterations", "20", "--json"])  # fmt: skip
    choice = json.loads(res.stdout)["coupling"]
    model, ckpt = load_history(models)
    # the saved settings hold the rank the choice resolved to, so the model loads as fitted
    assert model.coupling_rank == choice["rank"] == ckpt.config["coupling_rank"]
    assert choice["reason"] and "spike history" in res.stderr
    for bad in ("-1", "two", "1.5"):
        _fails(["fit-history", str(data), "-m", str(models), "--coupling-rank", bad],
               "--coupling-rank")  # fmt: skip
    # the kernels' input is a setting of the config file, stored with the model
    residuals = models.parent / "residuals.json"
    residuals.write_text(json.dumps({"match_dispersion": False, "history_input": "residuals"}))
    res = _ok(["fit-history", str(data), "-m", str(models), "--coupling-rank", "0",
               "--iterations", "20", "--config", str(residuals)])  # fmt: skip
    assert "deviations from the rates" in res.stderr
    model, ckpt = load_history(models)
    assert model.history_input == ckpt.config["history_input"] == "residuals"
    residuals.write_text(json.dumps({"history_input": "rates"}))
    _fails(["fit-history", str(data), "-m", str(models), "--config", str(residuals)],
           "history_input")  # fmt: skip


def test_fit_history_errors(fitted, tmp_path):
    _, data, models, _ = fitted
    _fails(["fit-history", str(data), "-m", str(tmp_path / "none")], "fit-ae")
    _fails(["fit-history", str(data), "-m", str(models), "--optimizer", "sgd"], "optimizer")
    _fails(["fit-history", str(data), "-m", str(models), "--max-count", "-1"], "max-count")
    other = tmp_path / "other.h5"
    write_spikes(simulate_lorenz(n_trials=5, n_neurons=4, n_bins=16, seed=1), other)
    _fails(["fit-history", str(other), "-m", str(models)], "neurons")


def test_fit_history_help_has_example():
    res = runner.invoke(app, ["fit-history", "--help"])
    assert res.exit_code == 0 and "Example: ldns fit-history" in res.stdout


def test_condition_checks_draw_through_the_fitted_observation_model(tmp_path):
    from ldns_cli.core.checkpoint import load_checkpoint
    from ldns_cli.io.simulate import simulate_reach

    data = tmp_path / "reach.h5"
    write_spikes(simulate_reach(n_trials=60, n_neurons=8, n_bins=24, seed=0, history="refractory"),
                 data)  # fmt: skip

    def stored(models):
        summary = load_checkpoint(models / "ae.safetensors", "ae").extra["summary"]
        return summary["condition_checks"]["angle"]

    plain, spiking = tmp_path / "plain", tmp_path / "spiking"
    _ok(["fit-ae", str(data), "-m", str(plain), "--device", "cpu", "-q", *TINY_AE,
         "--no-spike-history"])  # fmt: skip
    assert stored(plain)["autoencoder_observation"] == "poisson"
    _ok(["fit-ae", str(data), "-m", str(spiking), "--device", "cpu", "-q", *TINY_AE])
    assert stored(spiking)["autoencoder_observation"] == "history"
    # a history model fitted later replaces the stored checks with draws through it
    _ok(["fit-history", str(data), "-m", str(plain), "--iterations", "20", "-q"])
    check = stored(plain)
    assert check["autoencoder_observation"] == "history"
    assert check["stages"]["autoencoder"] == pytest.approx(
        float(np.mean(check["autoencoder_draws"]))
    )


def test_the_choice_takes_the_data_s_maximum_from_training_blocks_too(fitted, monkeypatch):
    """The per-neuron choice compares with the data's maximum counts as the validation trials and
    blocks of as many training trials show them, computed once for every candidate."""
    import ldns_cli.fit.history as history

    calls = []
    real = history.data_draw_max

    def spy(held_out, lengths, more, seed):
        out = real(held_out, lengths, more, seed)
        calls.append((len(lengths), more.n_trials, out))
        return out

    monkeypatch.setattr(history, "data_draw_max", spy)
    _, data, models, _ = fitted
    _ok(["fit-history", str(data), "-m", str(models), "--iterations", "20", "-q"])
    assert len(calls) == 1
    n_held_out, n_more, expected = calls[0]
    assert n_more > n_held_out  # the training trials, not the held-out ones again
    stored = load_history(models)[1].extra["selection"]["stats_data"]["max_count"]
    np.testing.assert_allclose(stored, expected, atol=1e-3)
