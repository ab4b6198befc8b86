"""NWB reading (NLB MC_Maze-shaped files), writing, round trips and validation."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest

from conftest import NLB_BIN_S, NLB_WINDOW_S, make_tiny_data, write_nlb_nwb
from ldns_cli.conditions.spec import detect_kind
from ldns_cli.core.data import is_angle_name
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.common import ReadOptions
from ldns_cli.io.formats import read_spikes, write_spikes

NLB_OPTS = ReadOptions(bin_ms=5, align="move_onset_time", window_s=NLB_WINDOW_S)


def brute_force_counts(trains, starts, n_bins, bin_s):
    """Oracle: a Python loop over every spike of every unit."""
    out = np.zeros((len(starts), n_bins, len(trains)), dtype=np.int64)
    for u, train in enumerate(trains):
        for t in train:
            for b, s in enumerate(starts):
                k = int(np.floor((t - s) / bin_s))
                if 0 <= k < n_bins:
                    out[b, k, u] += 1
    return out


def test_nlb_file_bins_to_140_bins_around_move_onset(nlb_nwb):
    path, truth = nlb_nwb
    data = read_spikes(path, NLB_OPTS)
    assert data.counts.shape == (12, 140, 6)
    assert data.bin_size_s == NLB_BIN_S
    assert data.align_offset_s == pytest.approx(-0.25)
    # hand-checked unit 0 (placed spikes; see conftest.nlb_unit0_spikes)
    trial0 = data.counts[0, :, 0]
    assert trial0[2] == 2 and trial0[50] == 1 and trial0[139] == 1
    assert trial0.sum() == 4  # the decoys just outside the window are not counted
    assert np.all(data.counts[1:, 70, 0] == 1) and data.counts[1:, :, 0].sum() == 11
    # every unit and trial against a brute-force loop
    starts = truth["move_onset"] + NLB_WINDOW_S[0]
    expected = brute_force_counts(truth["trains"], starts, 140, NLB_BIN_S)
    np.testing.assert_array_equal(data.counts, expected)
    np.testing.assert_allclose(data.trial_start_s, starts)


def test_nlb_file_columns_units_and_behaviour(nlb_nwb):
    path, truth = nlb_nwb
    data = read_spikes(path, NLB_OPTS)
    np.testing.assert_array_equal(data.unit_ids, truth["unit_ids"])
    np.testing.assert_array_equal(data.unit_info["heldout"], truth["heldout"])
    np.testing.assert_array_equal(data.split, truth["split"])
    np.testing.assert_array_equal(data.covariates["maze_id"], truth["maze_id"])
    assert data.info("maze_id").kind == "categorical"
    # a direction column in degrees becomes a circular covariate in radians
    np.testing.assert_allclose(data.covariates["cond_dir"], np.deg2rad(truth["cond_dir"]))
    assert data.info("cond_dir").kind == "circular" and data.info("cond_dir").unit == "rad"
    # event times are kept relative to the first bin: move onset sits 0.25 s in
    np.testing.assert_allclose(data.covariates["move_onset_time"], 0.25, atol=1e-12)
    # ragged target_pos is skipped, with a note
    assert "target_pos" not in data.covariates
    assert "target_pos" in data.provenance["skipped"]
    # hand_vel x is time itself at 1 kHz, so each 5 ms bin mean is the mean of its 5 samples
    vel = data.behavior["hand_vel"]
    assert vel.shape == (12, 140, 2)
    assert data.info("hand_vel").columns == ["x", "y"]
    ms = np.arange(5) / 1000.0
    edges = data.trial_start_s[:, None] + np.arange(140)[None, :] * NLB_BIN_S  # [B, L]
    first_sample = np.ceil(edges * 1000 - 1e-9) / 1000
    np.testing.assert_allclose(vel[:, :, 0], first_sample + ms.mean(), atol=1e-5)
    # a SpatialSeries inside a Position container loads too
    assert data.behavior["cursor_pos"].shape == (12, 140, 2)
    assert data.info("cursor_pos").unit == "mm"


def test_behaviour_dropouts_are_interpolated(tmp_path):
    path = tmp_path / "gap.nwb"
    write_nlb_nwb(path, hand_vel_gap=True)
    data = read_spikes(path, NLB_OPTS)
    # x is a ramp, so linear interpolation over the gap restores it exactly
    edges = data.trial_start_s[:, None] + np.arange(140)[None, :] * NLB_BIN_S
    first_sample = np.ceil(edges * 1000 - 1e-9) / 1000
    np.testing.assert_allclose(data.behavior["hand_vel"][:, :, 0], first_sample + 0.002, atol=1e-5)
    assert "hand_vel: 7 NaN sample(s) interpolated" in data.provenance["skipped"]


def test_trials_from_start_and_stop_are_variable_length(nlb_nwb):
    path, truth = nlb_nwb
    data = read_spikes(path, ReadOptions(bin_ms=20))
    assert data.bin_size_s == 0.02
    np.testing.assert_array_equal(data.lengths, np.full(12, 60))
    np.testing.assert_allclose(data.trial_start_s, truth["start"])
    expected = brute_force_counts(truth["trains"], truth["start"], 60, 0.02)
    np.testing.assert_array_equal(data.counts, expected)


def test_chop_cuts_a_file_without_trials(tmp_path):
    path = tmp_path / "no_trials.nwb"
    truth = write_nlb_nwb(path, trials_table=False)
    with pytest.raises(LdnsError, match="no trials table") as exc:
        read_spikes(path)
    assert "--chop" in exc.value.hint
    data = read_spikes(path, ReadOptions(bin_ms=10, chop_s=1.0))
    assert data.counts.shape[1:] == (100, 6)
    assert not data.covariates
    starts = data.trial_start_s
    np.testing.assert_allclose(np.diff(starts), 1.0)
    np.testing.assert_array_equal(
        data.counts, brute_force_counts(truth["trains"], starts, 100, 0.01)
    )


def test_round_trip_is_exact(tmp_path, tiny_data):
    data = tiny_data(6, 20, 4, variable_lengths=True, behavior=True, truth=True, rate=1.5)
    data.unit_info["heldout"] = np.array([False, True, False, True])
    data.covariates["go_cue_time"] = np.linspace(0.01, 0.05, 6)
    path = tmp_path / "rt.nwb"
    write_spikes(data, path, settings={"seed": 3}, save_latents=True, save_rates=True)
    back = read_spikes(path)
    np.testing.assert_array_equal(back.counts, data.counts)
    np.testing.assert_array_equal(back.lengths, data.lengths)
    assert back.bin_size_s == data.bin_size_s
    np.testing.assert_array_equal(back.split, data.split)
    np.testing.assert_array_equal(back.unit_info["heldout"], data.unit_info["heldout"])
    for name, values in data.covariates.items():
        if name.endswith("_time"):
            # stored on the session clock: adding and removing the trial start costs an ulp
            np.testing.assert_allclose(back.covariates[name], values, rtol=0, atol=1e-12)
        else:
            np.testing.assert_array_equal(back.covariates[name], values)
        if name in data.variable_info:
            assert back.info(name) == data.info(name)
    assert back.info("target").columns == ["x", "y"]
    mask = data.mask()
    np.testing.assert_array_equal(back.behavior["hand_vel"][mask], data.behavior["hand_vel"][mask])
    np.testing.assert_allclose(back.latents[mask], data.latents[mask], rtol=1e-6)
    # rates are stored with RATE_MANTISSA_BITS = 12 mantissa bits: relative rounding <= 2^-13
    np.testing.assert_allclose(back.rates[mask], data.rates[mask], rtol=2**-13 + 1e-6)
    assert back.provenance["settings.seed"] == "3"


def test_round_mantissa_bounds_the_relative_error_and_keeps_specials():
    from ldns_cli.io.common import round_mantissa

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.lognormal(0.0, 6.0, 10_000), -rng.lognormal(0.0, 6.0, 100), [0.0, np.inf, -np.inf]]
    ).astype(np.float32)
    x = np.append(x, np.float32(np.nan))
    for bits in (4, 12, 20):
        y = round_mantissa(x.copy(), bits)
        finite = np.isfinite(x)
        rel = np.abs(y[finite].astype(np.float64) - x[finite]) / np.maximum(
            np.abs(x[finite]), 1e-38
        )
        assert rel.max() <= 2.0 ** -(bits + 1) * (1 + 1e-6)
        assert rel.max() > 2.0 ** -(bits + 3)  # it really drops bits
        low = y[finite].view(np.uint32) & np.uint32((1 << (23 - bits)) - 1)
        assert not low.any()  # dropped bits are zero: what makes gzip+shuffle effective
        np.testing.assert_array_equal(y[~finite & ~np.isnan(x)], x[~finite & ~np.isnan(x)])
        assert np.isnan(y[-1])
    z = x.copy()
    assert round_mantissa(z, 12) is z  # float32 input: rounded in place, no copy


def test_round_trip_with_trials_out_of_time_order(tmp_path, tiny_data):
    data = tiny_data(5, 12, 3, behavior=True, truth=True).select(np.array([3, 0, 4, 1, 2]))
    path = tmp_path / "shuffled.nwb"
    write_spikes(data, path, save_latents=True, save_rates=True)
    back = read_spikes(path)
    np.testing.assert_array_equal(back.trial_ids, data.trial_ids)
    np.testing.assert_array_equal(back.counts, data.counts)
    np.testing.assert_array_equal(back.behavior["hand_vel"], data.behavior["hand_vel"])
    np.testing.assert_allclose(back.latents, data.latents, rtol=1e-6)


def test_spike_times_sit_inside_their_bins(tmp_path, tiny_data):
    data = tiny_data(3, 10, 2, rate=3.0, covariates=False)
    path = tmp_path / "t.nwb"
    write_spikes(data, path)
    with h5py.File(path, "r") as f:
        times = f["units/spike_times"][()]
        index = f["units/spike_times_index"][()]
        assert f["units/spike_times"].attrs["resolution"] == data.bin_size_s
    bounds = np.concatenate([[0], index])
    for u in range(2):
        unit_times = times[bounds[u] : bounds[u + 1]]
        assert np.all(np.diff(unit_times) > 0)
        rel = (unit_times[:, None] - data.trial_start_s[None, :]) / data.bin_size_s
        trial = np.argmax((rel >= 0) & (rel < data.n_bins), axis=1)
        pos = rel[np.arange(len(rel)), trial]
        # strictly inside a bin, never on an edge: c spikes at (j + 0.5) / c of the bin
        frac = pos - np.floor(pos)
        assert frac.min() > 0 and frac.max() < 1
        rebinned = np.zeros((3, 10), dtype=int)
        np.add.at(rebinned, (trial, np.floor(pos).astype(int)), 1)
        np.testing.assert_array_equal(rebinned, data.counts[:, :, u])


@pytest.mark.filterwarnings("ignore")
def test_written_file_passes_nwbinspector_dandi_config(tmp_path):
    from nwbinspector import inspect_nwbfile, load_config

    from ldns_cli.io.simulate import simulate_reach

    data = simulate_reach(n_trials=30, n_neurons=12, seed=1)
    path = tmp_path / "reach.nwb"
    write_spikes(data, path, generated_by="ldns simulate reach", save_latents=True, save_rates=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        messages = list(inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi")))
    assert messages == [], [f"{m.check_function_name}: {m.message}" for m in messages]
    with h5py.File(path, "r") as f:
        assert f["general/data_collection"][()].decode().startswith("SYNTHETIC")
        assert f["general/was_generated_by"][()][0][0].decode() == "ldns"
        assert "ldns_settings" in f["analysis"]


def test_refuses_to_overwrite_without_force(tmp_path, tiny_data):
    path = tmp_path / "x.nwb"
    write_spikes(tiny_data(), path)
    before = path.read_bytes()
    with pytest.raises(LdnsError, match="already exists") as exc:
        write_spikes(tiny_data(seed=1), path)
    assert "--force" in exc.value.hint
    assert path.read_bytes() == before
    write_spikes(tiny_data(seed=1), path, force=True)
    assert path.read_bytes() != before


# ---------------------------------------------------------------------- errors
def _raw_nwb(path, trains, trial_times=None, units=True):
    """A minimal NWB file with the given spike trains (bypassing our writer's checks)."""
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.misc import Units

    nwbfile = NWBFile(
        session_description="t", identifier="t", session_start_time=datetime.now(timezone.utc)
    )
    if units:
        flat = np.concatenate([np.asarray(t, float) for t in trains]) if trains else np.zeros(0)
        st = VectorData(name="spike_times", description="s", data=flat)
        nwbfile.units = Units(
            name="units",
            description="u",
            id=np.arange(len(trains)),
            columns=[
                st,
                VectorIndex(
                    name="spike_times_index",
                    data=np.cumsum([len(t) for t in trains]).astype(int),
                    target=st,
                ),
            ],
        )
    for start, stop in trial_times or [(0.0, 1.0), (1.0, 2.0)]:
        nwbfile.add_trial(start_time=start, stop_time=stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)
    return path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trains": [], "units": False}, "no Units table"),
        ({"trains": []}, "Units table is empty"),
        ({"trains": [[0.1, 0.3, 0.2]]}, "not sorted"),
        ({"trains": [[0.2, 0.3], [-0.1, 0.5]]}, "negative spike times"),
        ({"trains": [[0.1]], "trial_times": [(0.0, 1.0), (2.0, 2.0)]}, "stop_time <= start_time"),
    ],
)
def test_bad_nwb_files_raise_clear_errors(tmp_path, kwargs, message):
    path = _raw_nwb(tmp_path / "bad.nwb", **kwargs)
    with pytest.raises(LdnsError, match=message) as exc:
        read_spikes(path)
    assert exc.value.hint


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (ReadOptions(align="go_time", window_s=(-0.1, 0.1)), "no column 'go_time'"),
        (ReadOptions(align="split", window_s=(-0.1, 0.1)), "not one time"),
        (ReadOptions(align="target_pos", window_s=(-0.1, 0.1)), "not one time"),
        (ReadOptions(align="move_onset_time", window_s=(-250, 450)), "outside"),
        (
            ReadOptions(align="move_onset_time", window_s=(-1.0, 0.0), strict_windows=True),
            "outside the recording",
        ),
        (  # every selected trial would be left out: an error, not an empty read
            ReadOptions(align="move_onset_time", window_s=(-1.0, 0.0), trials="0:1"),
            "outside the recording",
        ),
        (ReadOptions(bin_ms=1000, align="move_onset_time", window_s=(0, 0.1)), "shorter than"),
    ],
)
def test_bad_alignment_raises_clear_errors(nlb_nwb, opts, message):
    path, _ = nlb_nwb
    with pytest.raises(LdnsError, match=message) as exc:
        read_spikes(path, opts)
    assert exc.value.hint


def test_trials_whose_window_leaves_the_recording_are_left_out_with_one_warning(nlb_nwb, capsys):
    # trial 0's movement onset is ~0.6 s into the session: a 1 s window before it starts at < 0
    path, truth = nlb_nwb
    opts = ReadOptions(align="move_onset_time", window_s=(-1.0, 0.0), bin_ms=5)
    data = read_spikes(path, opts)
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "outside the recording" in line]
    assert len(warnings) == 1 and "1 trial(s) runs outside the recording" in warnings[0]
    assert "left out" in warnings[0]
    assert data.n_trials == len(truth["start"]) - 1
    np.testing.assert_array_equal(data.split, truth["split"][1:])  # rows stay with their data
    np.testing.assert_allclose(data.trial_start_s, truth["move_onset"][1:] - 1.0)


def test_trials_are_selected_before_windows_are_checked(nlb_nwb, capsys):
    path, truth = nlb_nwb
    base = {"align": "move_onset_time", "window_s": (-1.0, 0.0), "bin_ms": 5}
    later = read_spikes(path, ReadOptions(**base, trials="1:5", strict_windows=True))
    assert "outside" not in capsys.readouterr().err  # the selection avoids trial 0
    np.testing.assert_allclose(later.trial_start_s, truth["move_onset"][1:5] - 1.0)
    # ranges count the file's trials, not what is left after trials are left out
    first = read_spikes(path, ReadOptions(**base, trials="0:3"))
    np.testing.assert_allclose(first.trial_start_s, truth["move_onset"][1:3] - 1.0)
    test = read_spikes(path, ReadOptions(**base, trials="test"))
    assert set(test.split) == {"test"} and test.n_trials == int((truth["split"] == "test").sum())


def test_unknown_alignment_column_hint_lists_time_columns(nlb_nwb):
    path, _ = nlb_nwb
    with pytest.raises(LdnsError) as exc:
        read_spikes(path, ReadOptions(align="go", window_s=(0, 0.1)))
    assert "move_onset_time" in exc.value.hint


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bin_ms": 0},
        {"bin_ms": -5},
        {"window_s": (0.45, -0.25)},
        {"align": "move_onset_time"},
        {"chop_s": 0},
        {"chop_s": 1.0, "align": "x", "window_s": (0, 1)},
    ],
)
def test_bad_read_options(kwargs):
    with pytest.raises(LdnsError):
        ReadOptions(**kwargs)


def test_nan_covariate_is_skipped_with_a_note_or_an_error_if_required(tmp_path):
    path = tmp_path / "nan.nwb"
    go = np.linspace(0.5, 0.6, 12)
    go[3] = np.nan
    write_nlb_nwb(path, extra_trial_columns={"go_cue_time": go})
    data = read_spikes(path, NLB_OPTS)
    assert "go_cue_time" not in data.covariates
    assert "go_cue_time: NaN" in data.provenance["skipped"]
    opts = ReadOptions(
        bin_ms=5, align="move_onset_time", window_s=NLB_WINDOW_S, require=("go_cue_time",)
    )
    with pytest.raises(LdnsError, match=r"covariate 'go_cue_time'.*NaN"):
        read_spikes(path, opts)


# names the angle rule (`core.data.is_angle_name`) takes as circular, and some it does not
ANGLE_NAMES = {
    "angle": True,
    "reach_dir": True,
    "target_direction": True,
    "phase": True,
    "theta_target": True,
    "Heading": True,
    "orientation2": True,
    "targetangle": True,
    "thetadot": True,
    "angular_speed": False,
    "directory": False,
    "reachDir": False,
    "speed": False,
}


def test_reader_and_condition_kinds_agree_on_angle_names(tmp_path):
    path = tmp_path / "angles.nwb"
    values = np.linspace(-3.0, 3.0, 12)  # radians: inside ±2π, so a name decides
    write_nlb_nwb(path, extra_trial_columns=dict.fromkeys(ANGLE_NAMES, values))
    data = read_spikes(path, NLB_OPTS)
    read_circular = {name for name in ANGLE_NAMES if data.info(name).kind == "circular"}
    detected = {name for name in ANGLE_NAMES if detect_kind(name, values) == "circular"}
    expected = {name for name, angle in ANGLE_NAMES.items() if angle}
    assert read_circular == detected == expected
    assert expected == {name for name in ANGLE_NAMES if is_angle_name(name)}


def test_nwb_to_stdout_bytes_read_back(tmp_path, capsysbinary):
    data = make_tiny_data()
    write_spikes(data, "-", fmt="nwb")
    raw = capsysbinary.readouterr().out
    assert raw[:8] == b"\x89HDF\r\n\x1a\n"
    path = tmp_path / "piped.nwb"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_spikes(path).counts, data.counts)
