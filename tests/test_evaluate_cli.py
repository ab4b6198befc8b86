"""`ldns evaluate` through the CLI: exit codes, stdout purity, errors, the report folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.core.data import SpikeData
from ldns_cli.io.formats import write_spikes
from ldns_cli.scoring.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small HDF5 reference (60 trials x 8 neurons), a generated set, one with 5 neurons."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (n_trials, n_bins, n_neurons, bin_s) in {
        "ref": (60, 40, 8, 0.005),
        "gen": (30, 32, 8, 0.005),
        "five": (30, 32, 5, 0.005),
        "coarse": (30, 32, 8, 0.01),
    }.items():
        counts = rng.poisson(0.3, (n_trials, n_bins, n_neurons))
        split = np.array(["train", "test"] * n_trials)[:n_trials]
        data = SpikeData(counts, np.full(n_trials, n_bins), bin_s, split=split)
        paths[name] = root / f"{name}.h5"
        write_spikes(data, paths[name])
    return paths


@pytest.fixture
def runner():
    return CliRunner()


def test_table_on_stdout(runner, files):
    result = runner.invoke(app, ["evaluate", str(files["ref"]), str(files["gen"]), "--folds", "2"])
    assert result.exit_code == 0, result.stderr
    for name in METRIC_NAMES:
        assert name in result.stdout
    assert "score" in result.stdout and "Traceback" not in result.stderr


def test_json_stdout_is_pure(runner, files):
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(files["ref"]),
            str(files["gen"]),
            "--json",
            "--folds",
            "2",
            "--reference-trials",
            "train",
        ],
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert payload["reference"]["trials"] == 30 and payload["generated"]["trials"] == 30
    assert payload["reference"]["trials_selected"] == "train"
    assert set(payload["metrics"]) == set(METRIC_NAMES)
    assert payload["protocol"]["folds"] == 2
    assert "summarising" in result.stderr  # progress goes to stderr


def test_mismatched_neurons_and_bins_are_errors(runner, files):
    result = runner.invoke(app, ["evaluate", str(files["ref"]), str(files["five"])])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "8 neurons" in result.stderr
    assert "hint:" in result.stderr and result.stdout == ""
    result = runner.invoke(app, ["evaluate", str(files["ref"]), str(files["coarse"])])
    assert result.exit_code == 1 and "bin sizes differ" in result.stderr


def test_usage_errors(runner, files):
    assert runner.invoke(app, ["evaluate", str(files["ref"])]).exit_code == 2
    bad = runner.invoke(app, ["evaluate", str(files["ref"]), str(files["gen"]), "--folds", "0"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["evaluate", str(files["ref"]), "nope.h5"])
    assert missing.exit_code == 1 and "error:" in missing.stderr
    both = runner.invoke(app, ["evaluate", "-", "-"])
    assert both.exit_code == 1 and "stdin" in both.stderr


def test_help_has_example(runner):
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "Example:" in result.stdout


def test_report_folder(runner, files, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["evaluate", str(files["ref"]), str(files["gen"]), "--folds", "1", "-q"]
    refused = runner.invoke(app, [*args, "--report", str(out)])
    assert refused.exit_code == 1 and "not empty" in refused.stderr and "--force" in refused.stderr
    assert not (out / "index.html").exists()
    result = runner.invoke(app, [*args, "--report", str(out), "--force", "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # --quiet
    json.loads(result.stdout)
    assert (out / "index.html").exists() and (out / "psc.png").exists()
    assert (out / "notes.txt").read_text() == "mine"  # --force never deletes other files
    file_arg = runner.invoke(app, [*args, "--report", str(files["ref"])])
    assert file_arg.exit_code == 1 and "is a file" in file_arg.stderr
