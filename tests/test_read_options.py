"""The model folder remembers how its recording was read, and the commands follow it.

fit-ae stores the read options (bin size, alignment, window, chop, trial selection) in the
autoencoder's checkpoint; fit-diffusion, fit-history, encode, sample and evaluate -m default to
them and warn when a flag differs; the resume hint prints the full command; sample without a
length draws the training trials' lengths and without -n makes 64 trials.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import NLB_WINDOW_S, write_nlb_nwb
from ldns_cli.cli import app
from ldns_cli.store import read_options_of

runner = CliRunner()
ALIGN = ["--align", "move_onset_time", "--window", "-0.25", "0.45", "--bin-ms", "5"]
TINY = ["--width", "8", "--blocks", "1", "--epochs", "1", "--device", "cpu"]


def _ok(args: list[str]):
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro")
    path = root / "nlb.nwb"
    truth = write_nlb_nwb(path, n_trials=24)
    models = root / "m"
    _ok(["fit-ae", str(path), "-m", str(models), *ALIGN, "--trials", "0:18", "--latent-dim", "2",
         "--no-spike-history", *TINY])  # fmt: skip
    _ok(["fit-diffusion", str(path), "-m", str(models), "--calibration-trials", "2",
         "--condition", "cond_dir", *TINY])  # fmt: skip
    return path, truth, models


def test_fit_ae_remembers_how_the_recording_was_read(fitted):
    _, _, models = fitted
    assert read_options_of(models) == {
        "bin_ms": 5.0,
        "align": "move_onset_time",
        "window_s": list(NLB_WINDOW_S),
        "chop_s": None,
        "trials": "0:18",
    }


def test_later_stages_read_as_the_autoencoder_did(fitted, tmp_path):
    path, truth, models = fitted
    out = tmp_path / "enc.h5"
    _ok(["encode", str(path), "-m", str(models), "-o", str(out), "--device", "cpu"])
    with h5py.File(out) as f:
        assert f["spikes"].shape[:2] == (24, 140)  # aligned windows, every trial (not 0:18)
        np.testing.assert_allclose(f["trial_start"][()], truth["move_onset"] - 0.25, atol=1e-9)


def test_a_flag_that_differs_from_the_models_warns(fitted, tmp_path):
    path, _, models = fitted
    out = str(tmp_path / "e.h5")
    args = ["encode", str(path), "-m", str(models), "-o", out, "--window", "-0.3", "0.4"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert "--window -0.3 0.4 differs from how the models" in result.stderr
    assert "(-0.25 0.45)" in result.stderr


def test_evaluate_reads_the_reference_as_the_models_were_fitted(fitted, tmp_path):
    path, _, models = fitted
    samples = tmp_path / "s.h5"
    _ok(["sample", "-m", str(models), "-n", "6", "--device", "cpu", "-o", str(samples)])
    with h5py.File(samples) as f:
        assert f["spikes"].shape[1] == 140  # the training length, no --length needed
    plain = json.loads(_ok(["evaluate", str(path), str(samples), "--json"]).stdout)
    assert plain["reference"]["max_bins"] == 240  # start..stop trials of 1.2 s: not like samples
    aligned = _ok(["evaluate", str(path), str(samples), "-m", str(models), "--json"]).stdout
    assert json.loads(aligned)["reference"]["max_bins"] == 140
    assert json.loads(aligned)["reference"]["trials"] == 24


def test_sample_defaults_to_64_trials_of_the_training_lengths(fitted, tmp_path):
    _, _, models = fitted
    out = tmp_path / "d.h5"
    _ok(["sample", "-m", str(models), "--device", "cpu", "--sampler", "ddim", "--steps", "2",
         "-o", str(out)])  # fmt: skip
    with h5py.File(out) as f:
        assert f["spikes"].shape[:2] == (64, 140)
        assert set(f["lengths"][()].tolist()) == {140}


def test_resume_hint_prints_the_full_command(fitted, tmp_path):
    from ldns_cli.cli.options import read_flags
    from ldns_cli.io.common import ReadOptions

    opts = ReadOptions(bin_ms=5, align="move_onset_time", window_s=(-0.25, 0.45), trials="train")
    assert read_flags(opts) == (
        " --bin-ms 5 --align move_onset_time --window -0.25 0.45 --trials train"
    )
    assert read_flags(ReadOptions(chop_s=1.0)) == " --chop 1"


def test_generated_nwb_is_aligned_like_the_recording(fitted, tmp_path):
    """Event column at the aligned time, the true offset, the source's other trial columns: a
    reader that aligns on the event column gets the generated trials back bin for bin."""
    from pynwb import NWBHDF5IO

    import ldns_cli as ldns

    path, truth, models = fitted
    out = tmp_path / "gen.nwb"
    _ok(["sample", "-m", str(models), "--condition-from", str(path), "--trials", "test",
         "--device", "cpu", "--sampler", "ddim", "--steps", "2", "-o", str(out)])  # fmt: skip
    test = truth["split"] == "test"
    with NWBHDF5IO(str(out), "r") as io:
        trials = io.read().trials.to_dataframe()
        onset = trials["move_onset_time"].to_numpy()
        np.testing.assert_allclose(onset - trials["start_time"].to_numpy(), 0.25, atol=1e-9)
        np.testing.assert_array_equal(trials["maze_id"].to_numpy(), truth["maze_id"][test])
        np.testing.assert_allclose(np.rad2deg(trials["cond_dir"]), truth["cond_dir"][test])
        # NLB readers split units on a `heldout` column: generated units are all held in
        units = io.read().units.to_dataframe()
        assert units["heldout"].dtype == bool and not units["heldout"].any()
    written = ldns.read(out)
    aligned = ldns.read(out, align="move_onset_time", window=NLB_WINDOW_S, bin_ms=5)
    np.testing.assert_array_equal(aligned.counts, written.counts)
    assert written.align_offset_s == pytest.approx(-0.25)
