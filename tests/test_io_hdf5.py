"""HDF5: the ldns binned layout both ways, LFADS-style input, re-binning and errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ldns_cli.core.errors import LdnsError
from ldns_cli.io.common import ReadOptions
from ldns_cli.io.formats import read_spikes, write_spikes


def test_round_trip_is_exact(tmp_path, tiny_data):
    data = tiny_data(6, 20, 4, variable_lengths=True, behavior=True, truth=True, rate=2.0)
    data.unit_info["heldout"] = np.array([False, True, False, True])
    data.provenance["source_file"] = "x.nwb"
    path = tmp_path / "rt.h5"
    write_spikes(data, path, settings={"steps": 50}, save_latents=True, save_rates=True)
    back = read_spikes(path)
    np.testing.assert_array_equal(back.counts, data.counts)
    np.testing.assert_array_equal(back.lengths, data.lengths)
    np.testing.assert_array_equal(back.unit_ids, data.unit_ids)
    np.testing.assert_array_equal(back.trial_ids, data.trial_ids)
    np.testing.assert_array_equal(back.trial_start_s, data.trial_start_s)
    np.testing.assert_array_equal(back.split, data.split)
    np.testing.assert_array_equal(back.unit_info["heldout"], data.unit_info["heldout"])
    assert back.bin_size_s == data.bin_size_s
    assert set(back.covariates) == set(data.covariates)
    for name, values in data.covariates.items():
        np.testing.assert_array_equal(back.covariates[name], values)
        assert back.info(name) == data.info(name)
    np.testing.assert_array_equal(back.behavior["hand_vel"], data.behavior["hand_vel"])
    np.testing.assert_array_equal(back.latents, data.latents)
    # rates keep RATE_MANTISSA_BITS = 12 mantissa bits (relative rounding <= 2^-13)
    np.testing.assert_allclose(back.rates, data.rates, rtol=2**-13, atol=0)
    assert back.provenance["settings.steps"] == "50"
    assert back.provenance["source_file"] == "x.nwb"


def test_layout_follows_the_documented_format(tmp_path, tiny_data):
    data = tiny_data(5, 8, 3)
    path = tmp_path / "layout.h5"
    write_spikes(data, path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "ldns-binned" and f.attrs["format_version"] == 1
        assert f["spikes"].dtype == np.uint8 and f["spikes"].shape == (5, 8, 3)
        assert list(f["spikes"].attrs["dims"]) == ["trial", "time", "neuron"]
        assert f["lengths"].dtype == np.int32
        assert f["bin_size"][()] == data.bin_size_s
        assert f["split"].asstr()[()].tolist() == data.split.tolist()
        np.testing.assert_array_equal(f["train_inds"][()], np.flatnonzero(data.split == "train"))
        assert f["conditions/angle"].attrs["kind"] == "circular"
        assert f["conditions/angle"].attrs["unit"] == "rad"
        np.testing.assert_array_equal(f["neurons/unit_id"][()], np.arange(3))


def test_lfads_files_read_with_train_and_val_splits(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.poisson(1.0, (7, 10, 4))
    valid = rng.poisson(1.0, (3, 10, 4))
    path = tmp_path / "lfads.h5"
    with h5py.File(path, "w") as f:
        f["train_data"] = train
        f["valid_data"] = valid
        f.attrs["dt"] = 0.01
    data = read_spikes(path)
    np.testing.assert_array_equal(data.counts, np.concatenate([train, valid]))
    assert data.split.tolist() == ["train"] * 7 + ["val"] * 3
    assert data.bin_size_s == 0.01


def test_coarser_bins_sum_counts_and_keep_lengths_consistent(tmp_path, tiny_data):
    data = tiny_data(4, 16, 3, variable_lengths=True)
    path = tmp_path / "d.h5"
    write_spikes(data, path)
    back = read_spikes(path, ReadOptions(bin_ms=20))
    assert back.bin_size_s == pytest.approx(0.02)
    np.testing.assert_array_equal(back.lengths, data.lengths // 2)
    expected = data.counts.reshape(4, 8, 2, 3).sum(axis=2)
    expected[~back.mask()] = 0
    np.testing.assert_array_equal(back.counts, expected)
    with pytest.raises(LdnsError, match="whole multiple"):
        read_spikes(path, ReadOptions(bin_ms=15))


def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"other": np.zeros(3)}, "no /spikes"),
        ({"spikes": np.zeros((2, 3))}, "3-D"),
        ({"spikes": -np.ones((2, 3, 1))}, "negative"),
        ({"spikes": np.full((2, 3, 1), 0.5)}, "non-integer"),
        ({"spikes": np.ones((2, 3, 1)), "bin_size": 0.0}, "positive"),
        ({"spikes": np.ones((2, 3, 1)), "lengths": [3, 4]}, "lengths"),
        ({"spikes": np.ones((2, 3, 1)), "lengths": [3, 1]}, "beyond a trial's length"),
        ({"spikes": np.ones((2, 3, 1)), "conditions": np.zeros(2)}, "must be a group"),
        ({"train_data": np.ones((2, 3, 1)), "valid_data": np.ones((2, 4, 1))}, "disagree"),
    ],
)
def test_bad_hdf5_layouts_raise_clear_errors(tmp_path, arrays, message):
    path = _h5(tmp_path / "bad.h5", **arrays)
    with pytest.raises(LdnsError, match=message) as exc:
        read_spikes(path)
    assert exc.value.hint


def test_nan_condition_is_an_error_naming_it(tmp_path):
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f["spikes"] = np.ones((2, 3, 1), dtype=np.uint8)
        f["conditions/angle"] = [0.1, np.nan]
    with pytest.raises(LdnsError, match="covariate 'angle'"):
        read_spikes(path)


def test_not_hdf5_and_missing_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(LdnsError, match="not an HDF5 or NWB file"):
        read_spikes(text)
    with pytest.raises(LdnsError, match="not found"):
        read_spikes(tmp_path / "missing.nwb")
    with pytest.raises(LdnsError, match="folder"):
        read_spikes(tmp_path)


def test_align_options_are_refused_for_binned_files(tmp_path, tiny_data):
    path = tmp_path / "d.h5"
    write_spikes(tiny_data(), path)
    with pytest.raises(LdnsError, match="already binned"):
        read_spikes(path, ReadOptions(chop_s=1.0))


def test_unknown_output_extension(tmp_path, tiny_data):
    with pytest.raises(LdnsError, match="extension"):
        write_spikes(tiny_data(), tmp_path / "out.csv")


def test_nlb_read_to_hdf5_keeps_alignment(tmp_path, nlb_nwb):
    path, _ = nlb_nwb
    opts = ReadOptions(bin_ms=5, align="move_onset_time", window_s=(-0.25, 0.45))
    data = read_spikes(path, opts)
    out = tmp_path / "nlb.h5"
    write_spikes(data, out)
    with h5py.File(out, "r") as f:
        assert f["align_offset"][()] == -0.25
        assert f["align_offset"].attrs["align_field"] == "move_onset_time"
        assert f["neurons/heldout"].dtype == bool
        assert f["behavior/hand_vel"].shape == (12, 140, 2)
    back = read_spikes(out)
    np.testing.assert_array_equal(back.counts, data.counts)
    np.testing.assert_array_equal(back.unit_ids, data.unit_ids)
    assert back.provenance["align_field"] == "move_onset_time"
    np.testing.assert_array_equal(back.covariates["maze_id"], data.covariates["maze_id"])


def test_text_ids_and_columns_round_trip(tmp_path, tiny_data):
    data = tiny_data(4, 8, 3)
    data.unit_ids = np.array(["a1", "b2", "c3"])
    data.unit_info["area"] = np.array(["M1", "PMd", "M1"])
    data.covariates["target"] = np.array(["up", "down", "up", "left"])
    path = tmp_path / "text.h5"
    write_spikes(data, path)
    with h5py.File(path, "r") as f:
        assert h5py.check_string_dtype(f["neurons/unit_id"].dtype) is not None
        assert h5py.check_string_dtype(f["conditions/target"].dtype) is not None
    back = read_spikes(path)
    assert back.unit_ids.tolist() == ["a1", "b2", "c3"]
    assert back.unit_info["area"].tolist() == ["M1", "PMd", "M1"]
    assert back.covariates["target"].tolist() == ["up", "down", "up", "left"]
