"""Property tests: damaged and random files end in `LdnsError`, never a crash or a wrong tensor."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_data, write_nlb_nwb
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.formats import read_spikes, write_spikes

# modest by default (suite time); LDNS_FUZZ_EXAMPLES=500 for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("LDNS_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="ldns-fuzz-"))


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    data = make_tiny_data(5, 12, 3, variable_lengths=True, behavior=True)
    write_spikes(data, folder / "d.h5")
    write_spikes(data, folder / "d.nwb")
    write_nlb_nwb(folder / "nlb.nwb", n_trials=4, n_units=3)
    return {name: (folder / name).read_bytes() for name in ("d.h5", "d.nwb", "nlb.nwb")}


def _read_bytes(raw: bytes, name: str):
    path = SCRATCH / name
    path.write_bytes(raw)
    try:
        return read_spikes(path)
    finally:
        path.unlink()


@FUZZ
@given(name=st.sampled_from(["d.h5", "d.nwb", "nlb.nwb"]), fraction=st.floats(0.0, 0.999))
def test_truncated_files_fail_cleanly(valid_files, name, fraction):
    raw = valid_files[name]
    with pytest.raises(LdnsError):
        _read_bytes(raw[: int(len(raw) * fraction)], name)


@FUZZ
@given(raw=st.binary(max_size=4096), signature=st.booleans())
def test_random_bytes_fail_cleanly(raw, signature):
    if signature:
        raw = b"\x89HDF\r\n\x1a\n" + raw
    with pytest.raises(LdnsError):
        _read_bytes(raw, "random.nwb")


_KEYS = [
    "spikes",
    "lengths",
    "bin_size",
    "align_offset",
    "trial_id",
    "trial_start",
    "split",
    "conditions/angle",
    "behavior/vel",
    "neurons/unit_id",
    "latents",
    "rates",
    "train_data",
    "valid_data",
]
_DTYPES = ["uint8", "int16", "int64", "float32", "float64", "bool"]


@st.composite
def random_layouts(draw):
    """Mostly plausible ldns/LFADS layouts with random damage: shapes, dtypes, NaN, signs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_trials, n_bins, n_neurons = (draw(st.integers(0, 4)) for _ in range(3))
    core = draw(st.sampled_from(["spikes", "train_data", None]))
    extra = draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=6))
    keys = list(dict.fromkeys(([core] if core else []) + extra)) or ["spikes"]
    layout = {}
    for key in keys:
        plausible = {
            "spikes": (n_trials, n_bins, n_neurons),
            "train_data": (n_trials, n_bins, n_neurons),
            "valid_data": (n_trials, n_bins, n_neurons),
            "latents": (n_trials, n_bins, 2),
            "rates": (n_trials, n_bins, n_neurons),
            "behavior/vel": (n_trials, n_bins, 1),
            "neurons/unit_id": (n_neurons,),
            "bin_size": (),
            "align_offset": (),
            "lengths": (n_trials,),
        }.get(key, (n_trials,))
        damaged_shape = draw(st.integers(0, 3)) == 0
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3))) if damaged_shape else plausible
        if key == "split" and draw(st.booleans()):
            layout[key] = np.array(
                (["train", "val", "x", ""] * 2)[: max(1, n_trials)], dtype=object
            )
            continue
        dtype = draw(st.sampled_from(_DTYPES))
        if key == "lengths":
            values = rng.integers(-1, n_bins + 2, size=shape)
        elif key == "bin_size":
            values = rng.choice([0.005, 0.01, 0.0, -1.0], size=shape)
        else:
            values = rng.normal(0, 3, size=shape)
            if draw(st.integers(0, 3)) > 0:
                values = np.abs(np.round(values))  # count-like
        if dtype.startswith("float") and draw(st.integers(0, 5)) == 0:
            values = np.where(rng.random(shape) < 0.3, np.nan, values)
        layout[key] = values.astype(dtype) if dtype != "bool" else values > 0
    return layout


@FUZZ
@given(layout=random_layouts(), nwb_flag=st.booleans())
def test_random_hdf5_layouts_fail_cleanly_or_read_exactly(layout, nwb_flag):
    path = SCRATCH / "layout.h5"
    with h5py.File(path, "w") as f:
        if nwb_flag:
            f.attrs["nwb_version"] = "2.7.0"  # claims to be NWB, is not
        for key, values in layout.items():
            if values.dtype == object:
                f.create_dataset(key, data=values, dtype=h5py.string_dtype())
            else:
                f[key] = values
    try:
        data = read_spikes(path)
    except LdnsError:
        event("clean error")
        return
    finally:
        path.unlink()
    event("read")
    # it read: then the tensor must be exactly what the file holds
    assert not nwb_flag
    if "spikes" in layout:
        np.testing.assert_array_equal(data.counts, layout["spikes"])
    else:
        stored = [layout[k] for k in ("train_data", "valid_data") if k in layout]
        np.testing.assert_array_equal(data.counts, np.concatenate(stored))
    assert data.counts.min() >= 0 and data.bin_size_s > 0
    assert np.all((data.lengths >= 1) & (data.lengths <= data.n_bins))


def _oracle(trains, starts, lengths, bin_s):
    n_bins = int(lengths.max())
    out = np.zeros((len(starts), n_bins, len(trains)), dtype=np.int64)
    for u, train in enumerate(trains):
        for t in train:
            for b, s in enumerate(starts):
                k = int(np.floor((t - s) / bin_s + 1e-6))
                if 0 <= k < lengths[b]:
                    out[b, k, u] += 1
    return out


@st.composite
def random_recordings(draw):
    """Spike trains and trials, sometimes damaged (unsorted, negative, NaN, empty trials)."""
    n_units = draw(st.integers(1, 4))
    times = st.one_of(st.floats(-0.2, 3.0), st.just(float("nan")))
    trains = [
        draw(st.lists(times, max_size=30))
        if draw(st.integers(0, 4)) == 0
        else sorted(draw(st.lists(st.floats(0.0, 3.0), max_size=30)))
        for _ in range(n_units)
    ]
    n_trials = draw(st.integers(1, 4))
    starts = sorted(draw(st.lists(st.floats(0.0, 2.5), min_size=n_trials, max_size=n_trials)))
    durations = draw(st.lists(st.floats(-0.1, 0.6), min_size=n_trials, max_size=n_trials))
    trials = [(s, s + d) for s, d in zip(starts, durations, strict=True)]
    bin_ms = draw(st.sampled_from([5.0, 10.0, 50.0]))
    return trains, trials, bin_ms


@settings(
    max_examples=max(4, FUZZ.max_examples // 3),  # each example writes and reads an NWB file
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(recording=random_recordings())
def test_random_nwb_recordings_fail_cleanly_or_bin_exactly(recording):
    import warnings

    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.misc import Units

    from ldns_cli.io.common import ReadOptions

    trains, trials, bin_ms = recording
    path = SCRATCH / "rec.nwb"
    nwbfile = NWBFile(
        session_description="fuzz",
        identifier="fuzz",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    flat = np.asarray([t for train in trains for t in train], dtype=np.float64)
    st_col = VectorData(name="spike_times", description="s", data=flat)
    nwbfile.units = Units(
        name="units",
        description="u",
        id=np.arange(len(trains)),
        columns=[
            st_col,
            VectorIndex(
                name="spike_times_index", data=np.cumsum([len(t) for t in trains]), target=st_col
            ),
        ],
    )
    for start, stop in trials:
        nwbfile.add_trial(start_time=start, stop_time=stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)
    try:
        data = read_spikes(path, ReadOptions(bin_ms=bin_ms))
    except LdnsError:
        event("clean error")
        return
    finally:
        path.unlink()
    event("read")
    # it read: the input was valid and the counts are exactly the oracle's
    assert all(np.all(np.diff(t) >= 0) and (len(t) == 0 or min(t) >= 0) for t in trains)
    starts = np.array([s for s, _ in trials])
    np.testing.assert_array_equal(data.trial_start_s, starts)
    np.testing.assert_array_equal(data.counts, _oracle(trains, starts, data.lengths, bin_ms / 1000))
    expected_lengths = [int(np.floor((b - a) / (bin_ms / 1000) + 1e-6)) for a, b in trials]
    np.testing.assert_array_equal(data.lengths, expected_lengths)
