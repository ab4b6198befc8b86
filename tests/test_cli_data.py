"""`ldns simulate` and `ldns inspect` through the CLI: exit codes, stdout purity, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.io.formats import read_spikes


@pytest.fixture
def runner():
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_simulate_then_inspect_json(runner, tmp_path):
    out = tmp_path / "reach.nwb"
    _ok(
        runner.invoke(
            app, ["simulate", "reach", "-o", str(out), "--trials", "20", "--neurons", "8"]
        )
    )
    assert out.exists()
    result = _ok(runner.invoke(app, ["inspect", str(out), "--json"]))
    summary = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert (summary["n_trials"], summary["n_bins"], summary["n_units"]) == (20, 140, 8)
    cov = {c["name"]: c for c in summary["covariates"]}
    assert cov["angle"]["kind"] == "circular"
    assert summary["behavior"][0]["name"] == "hand_vel"
    aligned = _ok(
        runner.invoke(
            app,
            [
                "inspect",
                str(out),
                "--json",
                "--align",
                "move_onset_time",
                "--window",
                "-0.1",
                "0.2",
                "--bin-ms",
                "10",
                "--trials",
                "train",
            ],
        )
    )
    s = json.loads(aligned.stdout)
    assert s["n_bins"] == 30 and s["bin_size_s"] == 0.01 and set(s["splits"]) == {"train"}


def test_simulate_lorenz_h5_with_history_keeps_ground_truth(runner, tmp_path):
    out = tmp_path / "lorenz.h5"
    args = [
        "simulate",
        "lorenz",
        "-o",
        str(out),
        "--trials",
        "6",
        "--neurons",
        "5",
        "--length",
        "32",
        "--history",
        "refractory",
        "--seed",
        "3",
    ]
    _ok(runner.invoke(app, args))
    data = read_spikes(out)
    assert data.counts.shape == (6, 32, 5)
    assert data.latents.shape == (6, 32, 3) and data.rates.shape == (6, 32, 5)
    assert data.provenance["history"] == "refractory"
    assert data.provenance["settings.seed"] == "3"
    # the same seed gives the same file contents
    again = tmp_path / "again.h5"
    _ok(runner.invoke(app, [*args[:3], str(again), *args[4:]]))
    np.testing.assert_array_equal(read_spikes(again).counts, data.counts)


def test_simulate_to_stdout_is_hdf5_bytes(runner):
    result = _ok(
        runner.invoke(
            app,
            ["simulate", "lorenz", "-o", "-", "--trials", "2", "--length", "8", "--neurons", "3"],
        )
    )
    assert result.stdout_bytes[:8] == b"\x89HDF\r\n\x1a\n"
    piped = _ok(runner.invoke(app, ["inspect", "-", "--json"], input=result.stdout_bytes))
    assert json.loads(piped.stdout)["n_trials"] == 2
    assert json.loads(piped.stdout)["latents"] == {"dim": 3}
    bare = _ok(runner.invoke(app, ["simulate", "lorenz", "-o", "-", "--trials", "2", "--no-truth"]))
    piped = _ok(runner.invoke(app, ["inspect", "-", "--json"], input=bare.stdout_bytes))
    assert json.loads(piped.stdout)["latents"] is None and not json.loads(piped.stdout)["rates"]


def test_simulate_nwb_to_stdout(runner):
    result = _ok(
        runner.invoke(
            app,
            ["simulate", "reach", "-o", "-", "--format", "nwb", "--trials", "3", "--neurons", "2"],
        )
    )
    piped = _ok(runner.invoke(app, ["inspect", "-", "--json"], input=result.stdout_bytes))
    summary = json.loads(piped.stdout)
    assert summary["format"] == "nwb" and summary["n_trials"] == 3


def test_inspect_text_view(runner, tmp_path):
    out = tmp_path / "r.h5"
    _ok(
        runner.invoke(app, ["simulate", "reach", "-o", str(out), "--trials", "5", "--neurons", "4"])
    )
    result = _ok(runner.invoke(app, ["inspect", str(out)]))
    assert "units        4" in result.stdout and "covariate    angle" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "missing.nwb"], "not found"),
        (["inspect", "{notes}"], "not an HDF5 or NWB file"),
        (["inspect", "{data}", "--trials", "7:9"], "selects no trials"),
        (["inspect", "{data}", "--bin-ms", "0"], "bin size must be positive"),
        (["inspect", "{data}", "--bin-ms", "7"], "whole multiple"),
        (["simulate", "lorenz", "-o", "{data}", "--trials", "2"], "already exists"),
        (["simulate", "lorenz", "-o", "{tmp}/out.txt", "--trials", "2"], "extension"),
        (["simulate", "lorenz", "-o", "{tmp}/nope/out.h5", "--trials", "2"], "does not exist"),
        (["simulate", "reach", "-o", "{tmp}/x.h5", "--trials", "0"], "at least 1"),
    ],
)
def test_user_errors_exit_1_with_error_and_hint(runner, tmp_path, args, message):
    data = tmp_path / "d.h5"
    _ok(
        runner.invoke(
            app,
            [
                "simulate",
                "lorenz",
                "-o",
                str(data),
                "--trials",
                "3",
                "--length",
                "8",
                "--neurons",
                "2",
            ],
        )
    )
    notes = tmp_path / "notes.nwb"
    notes.write_text("not a file format")
    filled = [a.format(data=data, notes=notes, tmp=tmp_path) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "error: " in result.stderr and message in result.stderr
    assert "hint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(runner):
    assert runner.invoke(app, ["simulate", "mnist", "-o", "x.h5"]).exit_code == 2
    assert runner.invoke(app, ["simulate", "lorenz"]).exit_code == 2  # -o is required
    assert runner.invoke(app, ["inspect", "x.nwb", "--window", "0.1"]).exit_code == 2


@pytest.mark.parametrize("command", ["simulate", "inspect"])
def test_help_has_an_example(runner, command):
    result = _ok(runner.invoke(app, [command, "--help"]))
    assert "Example:" in result.stdout
