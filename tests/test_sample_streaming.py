"""`ldns sample` output streamed chunk by chunk: same files as in memory, bounded memory, no leftovers."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ldns_cli.diffusion.model import DiffusionConfig, DiffusionModel, denoiser_config
from ldns_cli.diffusion.sampling import SampleSettings
from ldns_cli.diffusion.schedule import NoiseSchedule
from ldns_cli.generate import generate, generate_chunks, sample_metadata
from ldns_cli.io import scratch
from ldns_cli.io.common import ReadOptions
from ldns_cli.io.formats import read_spikes, write_generated, write_spikes
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
from ldns_cli.nn.denoiser import Denoiser
from ldns_cli.nn.observation import PoissonObservation

SPECS = [
    {"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [-3.1], "max": [3.1]},
    {
        "name": "vel", "kind": "timeseries", "dim": 2, "unit": "m/s", "min": [-1, -1],
        "max": [1, 1], "mean": [0, 0], "std": [0.5, 0.5],
    },
]  # fmt: skip


def _models(n_neurons: int, latent_dim: int = 3, specs=(), bias: float | None = None):
    torch.manual_seed(0)
    ae = Autoencoder(
        AEConfig(n_neurons=n_neurons, latent_dim=latent_dim, width=4, blocks=1, state_dim=2)
    ).eval()
    if bias is not None:  # rates near softplus(bias) spikes per bin
        with torch.no_grad():
            ae.decoder_out.bias.fill_(bias)
            ae.decoder_out.weight.mul_(0.05)
    cfg = DiffusionConfig(width=8, blocks=1, state_dim=4)
    net = Denoiser(denoiser_config(cfg, latent_dim, list(specs), n_bins=32)).eval()
    model = DiffusionModel(
        denoiser=net,
        config=cfg,
        schedule=NoiseSchedule(cfg.schedule_config()),
        latent_mean=np.linspace(-1, 1, latent_dim).astype(np.float32),
        latent_std=np.full(latent_dim, 0.5, np.float32),
        conditions=list(specs),
        fingerprint={"bin_size_s": 0.005, "ae_id": "x"},
    )
    return ae, model


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".ldns-"))


def _datasets(path: Path) -> dict[str, tuple]:
    """Every dataset (values, dtype, layout) and attribute, object ids and wall-clock dates out."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            attrs = {k: str(v) for k, v in obj.attrs.items() if k != "object_id"}
            if isinstance(obj, h5py.Dataset):
                if name == "file_create_date":
                    return
                values = obj[()]
                if obj.dtype.kind in "OSV":
                    values = str(values.tolist() if hasattr(values, "tolist") else values)
                layout = (obj.dtype.str, obj.shape, obj.chunks, obj.maxshape, obj.compression)
                out[name] = (values, layout, attrs)
            else:
                out[name] = (None, None, attrs)

        f.visititems(visit)
    return out


def _same_datasets(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        (va, la, aa), (vb, lb, ab) = da[name], db[name]
        assert la == lb, name
        assert aa == ab, name
        if isinstance(va, np.ndarray) and va.dtype.kind == "f":
            assert np.array_equal(va.view(f"u{va.itemsize}"), vb.view(f"u{vb.itemsize}")), name
        else:
            assert np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb, name


@pytest.mark.parametrize("ext", ["h5", "nwb"])
def test_streamed_file_equals_in_memory_file(tmp_path, monkeypatch, ext):
    # many small read-back blocks and several generation chunks of unequal lengths
    monkeypatch.setattr(scratch, "BLOCK_ELEMENTS", 600)
    ae, model = _models(n_neurons=6, specs=SPECS)
    rng = np.random.default_rng(0)
    n = 17
    lengths = rng.integers(200, 300, size=n)
    assert lengths.sum() >= 4096  # bin times, latents and rates too
    conditions = {
        "angle": rng.uniform(-3, 3, size=(n, 1)),
        "vel": rng.uniform(-1, 1, size=(n, 300, 2)),
    }
    settings = SampleSettings(steps=2, seed=3, batch_size=4, save_latents=True, save_rates=True)
    kw = {"generated_by": "ldns sample", "save_latents": True, "save_rates": True}
    kw["source_script"] = "ldns sample (test)"

    data = generate(ae, model, PoissonObservation(), lengths, settings, "cpu", conditions)
    assert data.counts.sum() > 4096  # the NWB spike times take the block-by-block path
    memory = tmp_path / f"memory.{ext}"
    write_spikes(data, memory, settings=data.provenance, **kw)

    meta = sample_metadata(model, lengths, settings, conditions)
    chunks = generate_chunks(ae, model, PoissonObservation(), lengths, settings, "cpu", conditions)
    streamed = tmp_path / f"streamed.{ext}"
    summary = write_generated(meta, chunks, streamed, settings=meta["provenance"], **kw)

    assert summary.n_trials == n and summary.n_spikes == int(data.counts.sum())
    if ext == "h5":
        assert streamed.read_bytes() == memory.read_bytes()
    else:
        _same_datasets(memory, streamed)
    assert _leftovers(tmp_path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = read_spikes(streamed, ReadOptions())
    np.testing.assert_array_equal(back.counts, data.counts)


def _fake_chunks(n: int, length: int, neurons: int, fail_after: int | None = None, exc=None):
    from ldns_cli.generate import GeneratedChunk

    rng = np.random.default_rng(0)
    for k, start in enumerate(range(0, n, 4)):
        if fail_after is not None and k == fail_after:
            raise exc
        idx = np.arange(start, min(n, start + 4))
        counts = rng.poisson(1.0, size=(len(idx), length, neurons)).astype(np.int32)
        yield GeneratedChunk(index=idx[::-1].copy(), counts=counts)


def _meta(n: int, length: int) -> dict:
    return {"lengths": np.full(n, length), "bin_size_s": 0.01, "provenance": {"x": "1"}}


@pytest.mark.parametrize("ext", ["h5", "nwb"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupted_generation_leaves_no_output_or_scratch(tmp_path, ext, exc):
    out = tmp_path / f"out.{ext}"
    chunks = _fake_chunks(20, 50, 5, fail_after=3, exc=exc)
    with pytest.raises(type(exc)):
        write_generated(_meta(20, 50), chunks, out)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("ext", ["h5", "nwb"])
def test_failing_writer_removes_scratch_and_keeps_old_file(tmp_path, monkeypatch, ext):
    out = tmp_path / f"out.{ext}"
    out.write_bytes(b"old")
    seen: list[list[str]] = []

    def broken(*args, **kwargs):
        seen.append(_leftovers(tmp_path))  # the scratch folder and temporary output exist now
        raise KeyboardInterrupt

    import ldns_cli.io.hdf5
    import ldns_cli.io.nwb_write

    monkeypatch.setattr(ldns_cli.io.nwb_write, "write_nwb", broken)
    monkeypatch.setattr(ldns_cli.io.hdf5, "write_hdf5", broken)
    with pytest.raises(KeyboardInterrupt):
        write_generated(_meta(9, 30), _fake_chunks(9, 30, 4), out, force=True)
    assert any(name.endswith(".scratch") for name in seen[0])
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_refuses_to_overwrite_before_generating(tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    started = []

    def chunks():
        started.append(True)
        yield from _fake_chunks(4, 10, 3)

    from ldns_cli.core.errors import LdnsError

    with pytest.raises(LdnsError, match="already exists"):
        write_generated(_meta(4, 10), chunks(), out)
    assert not started and out.read_bytes() == b"old"


@pytest.mark.parametrize("ext", ["h5", "nwb"])
def test_memory_does_not_grow_with_the_number_of_trials(tmp_path, ext):
    # the [B, L, N] counts would be 500 x 400 x 128 x 4 bytes = 102 MB; the model is tiny
    import pynwb  # noqa: F401 (imported before tracing: module import is not what is measured)

    n, length, neurons = 500, 400, 128
    full = n * length * neurons * 4
    ae, model = _models(n_neurons=neurons, latent_dim=2, bias=-3.0)  # ~10 Hz at 5 ms
    lengths = np.full(n, length)
    settings = SampleSettings(steps=1, seed=0, batch_size=64)
    meta = sample_metadata(model, lengths, settings)
    chunks = generate_chunks(ae, model, PoissonObservation(), lengths, settings, "cpu")
    tracemalloc.start()
    try:
        summary = write_generated(meta, chunks, tmp_path / f"big.{ext}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.n_trials == n and summary.n_spikes > 0
    # measured: HDF5 ~10 MB (its 64-trial write blocks), NWB ~13 MB (the scratch read blocks)
    assert peak < full / 5, f"peak {peak / 1e6:.1f} MB vs {full / 1e6:.0f} MB of counts"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("ext", ["h5", "nwb"])
def test_ctrl_c_while_writing_stops_the_write_and_cleans_up(tmp_path, monkeypatch, ext):
    # h5py would swallow a KeyboardInterrupt raised inside its weakref callbacks: while writing,
    # Ctrl-C only sets a flag, and the writers stop at their next block
    import os
    import signal

    import ldns_cli.io.hdf5

    sent = []

    def ctrl_c() -> None:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    if ext == "h5":  # while /spikes is being written
        rows_as = ldns_cli.io.hdf5._rows_as
        monkeypatch.setattr(ldns_cli.io.hdf5, "_rows_as", lambda *a: (ctrl_c(), rows_as(*a))[1])
    else:  # while the spike times are being sorted by unit
        blocks = scratch.StoredSpikes.trial_blocks
        monkeypatch.setattr(
            scratch.StoredSpikes, "trial_blocks", lambda *a: (ctrl_c(), blocks(*a))[1]
        )
    out = tmp_path / f"out.{ext}"
    with pytest.raises(KeyboardInterrupt) as caught:
        write_generated(_meta(40, 30), _fake_chunks(40, 30, 4), out)
    assert caught.traceback[-1].name == "check_interrupt"  # raised at a safe point
    assert sent and not out.exists()
    assert _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_during_sampling_leaves_no_output_or_scratch(tmp_path):
    # a cluster's time limit sends SIGTERM: the temporary output and scratch must go too
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "models" / "lorenz"
    out = tmp_path / "out.nwb"
    cmd = [sys.executable, "-m", "ldns_cli", "sample", "-m", str(models), "-n", "4000"]
    cmd += ["--length", "256", "--device", "cpu", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".ldns-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)  # well inside generation (4000 trials take minutes)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
