"""The Python API (`import ldns_cli as ldns`): the README's example runs, the same seed gives the
command line's numbers bit for bit, and a model fitted from Python is usable by the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import ldns_cli as ldns
from ldns_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _cli(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, (result.stdout, result.stderr)


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Python API section holds one example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    # a reader's working folder: the shipped models under ./models, files written next to them
    (tmp_path / "models").symlink_to(ROOT / "models", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_python_example(), "README.md", "exec"), namespace)
    fake = namespace["fake"]
    assert isinstance(fake, ldns.SpikeData)
    assert fake.counts.shape == (16, 140, 128)
    assert isinstance(fake.counts, np.ndarray) and fake.counts.dtype.kind in "iu"
    np.testing.assert_allclose(fake.covariates["angle"][:8], 0.0)
    np.testing.assert_allclose(fake.covariates["angle"][8:], np.pi / 2)
    assert ldns.read("fake.nwb").n_trials == 16
    # held-out trials of the shipped model's own task: the samples score near the data
    scores = namespace["scores"]["metrics"]
    assert abs(scores["psc_kl"]["score"]) < 0.5 and abs(scores["fano_rmse"]["score"]) < 0.5
    assert namespace["long"].counts.shape == (10, 256, 32)


def test_package_import_does_not_import_torch():
    code = "import sys, ldns_cli; assert 'torch' not in sys.modules; ldns_cli.load"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_names_are_the_packages():
    from ldns_cli import api

    assert sorted(api.__all__) == sorted(n for n in ldns.__all__ if n != "__version__")
    for name in api.__all__:
        assert getattr(ldns, name) is getattr(api, name)
    with pytest.raises(AttributeError):
        ldns.no_such_thing  # noqa: B018


@pytest.mark.parametrize(
    "api_kwargs, cli_args",
    [
        (
            {"n": 5, "length": 96, "conditions": {"angle": "0:6.28:4"}, "seed": 4},
            ["-n", "5", "--length", "96", "--condition", "angle=0:6.28:4", "--seed", "4"],
        ),
        (
            {"n": 3, "length": "40:80", "sampler": "ddim", "steps": 8, "guidance": 2.0,
             "conditions": ["angle=30deg"], "seed": 9},
            ["-n", "3", "--length", "40:80", "--sampler", "ddim", "--steps", "8",
             "--guidance", "2", "--condition", "angle=30deg", "--seed", "9"],
        ),
    ],
)  # fmt: skip
def test_sample_equals_the_cli_bit_for_bit(tmp_path, api_kwargs, cli_args):
    out = tmp_path / "cli.h5"
    _cli(["sample", "-m", str(ROOT / "models"), "--device", "cpu", "--save-rates",
          *cli_args, "-o", str(out)])  # fmt: skip
    m = ldns.load(ROOT / "models", device="cpu")
    fake = m.sample(save_rates=True, **api_kwargs)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["lengths"][()], fake.lengths)
        np.testing.assert_array_equal(f["spikes"][()], fake.counts)
        np.testing.assert_array_equal(f["conditions/angle"][()], fake.covariates["angle"])
        rates = f["rates"][()]
    # the file stores rates with a 12-bit mantissa; the in-memory ones are exact
    np.testing.assert_allclose(rates, fake.rates, rtol=2**-12)


def test_sample_chunks_cover_sample(tmp_path):
    m = ldns.load(ROOT / "models" / "lorenz", device="cpu")
    kwargs = {"length": "30:60", "seed": 2, "sampler": "ddim", "steps": 5, "batch_size": 3}
    whole = m.sample(7, **kwargs)
    seen = np.zeros(7, bool)
    for chunk in m.sample_chunks(7, **kwargs):
        assert len(chunk.index) <= 3
        for row, i in enumerate(chunk.index):
            n = whole.lengths[i]
            np.testing.assert_array_equal(chunk.counts[row, :n], whole.counts[i, :n])
            seen[i] = True
    assert seen.all()


def test_sample_takes_lengths_and_conditions_from_a_recording(tmp_path):
    m = ldns.load(ROOT / "models", device="cpu")
    rec = ldns.simulate("reach", trials=6, length=50, seed=1)
    fake = m.sample(condition_from=rec, seed=0, sampler="ddim", steps=4)
    np.testing.assert_array_equal(fake.lengths, rec.lengths)
    np.testing.assert_allclose(fake.covariates["angle"], rec.covariates["angle"])
    drawn = m.sample(20, lengths_from=rec, seed=0, sampler="ddim", steps=4)
    assert set(drawn.lengths.tolist()) <= set(rec.lengths.tolist())


def test_bad_api_arguments_raise_ldns_errors():
    m = ldns.load(ROOT / "models", device="cpu")
    with pytest.raises(ldns.LdnsError, match="no trial length"):
        m.sample(4)
    with pytest.raises(ldns.LdnsError, match="-n must be"):
        m.sample(0, length=10)
    with pytest.raises(ldns.LdnsError, match="unknown condition 'speed'"):
        m.sample(2, length=10, conditions={"speed": 1.0})
    with pytest.raises(ldns.LdnsError, match="batch-size"):
        m.sample(2, length=10, batch_size=0)


def test_fit_autoencoder_from_python_writes_a_model_the_cli_samples_from(tmp_path):
    data = ldns.simulate("lorenz", trials=24, neurons=12, length=48, seed=0)
    folder = tmp_path / "m"
    fit = ldns.fit_autoencoder(
        data, folder, epochs=1, width=16, blocks=1, latent_dim=2, device="cpu", quiet=True
    )
    assert not fit.interrupted and fit.path == folder / "ae.safetensors" and fit.path.exists()
    assert np.isfinite(fit.summary["bits_per_spike"])
    assert (folder / "history.safetensors").exists()
    ldns.fit_diffusion(
        data, folder, epochs=1, width=16, blocks=1, calibration_trials=4, device="cpu"
    )
    out = tmp_path / "s.h5"
    _cli(["sample", "-m", str(folder), "-n", "3", "--length", "32", "--device", "cpu",
          "-o", str(out)])  # fmt: skip
    with h5py.File(out) as f:
        assert f["spikes"].shape == (3, 32, 12)
    encoded = ldns.load(folder, device="cpu").encode(data)
    assert encoded.latents.shape == (24, 48, 2) and encoded.rates.shape == (24, 48, 12)
    with pytest.raises(ldns.LdnsError, match="already holds a fitted autoencoder"):
        ldns.fit_autoencoder(data, folder, epochs=1, device="cpu")


def test_read_write_round_trip(tmp_path):
    data = ldns.simulate("reach", trials=5, length=30, seed=3)
    path = tmp_path / "r.nwb"
    ldns.write(data, path)
    back = ldns.read(path, trials="0:3")
    np.testing.assert_array_equal(back.counts, data.counts[:3])
    np.testing.assert_allclose(back.covariates["angle"], data.covariates["angle"][:3])
