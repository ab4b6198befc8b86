"""Property tests: damaged and random files end in `LdnsError`, never a crash or a wrong tensor."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_data, write_nlb_nwb
from ldns_cli.errors import LdnsError
from ldns_cli.readers import read_spikes
from ldns_cli.writers import write_spikes

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
