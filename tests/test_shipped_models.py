"""The demo checkpoints shipped in models/ work right after install, with no fitting first.

`make models` rebuilds them deterministically; these tests sample from the committed files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.io.formats import read_spikes

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
runner = CliRunner()


def _sample(args: list[str]) -> None:
    result = runner.invoke(app, ["sample", "--device", "cpu", "-q", *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == ""


def test_shipped_models_exist_and_are_small():
    files = sorted(MODELS.rglob("*.safetensors"))
    names = {str(p.relative_to(MODELS)) for p in files}
    for stage in ("ae", "history", "diffusion"):
        assert f"{stage}.safetensors" in names  # angle-conditioned reach
        assert f"lorenz/{stage}.safetensors" in names  # unconditional Lorenz
    assert sum(p.stat().st_size for p in files) < 10 * 2**20


def test_readme_command_samples_reach_with_an_angle(tmp_path, monkeypatch):
    # the README's first sampling command, run from the repository root (default -m models)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out.nwb"
    _sample(["-n", "2", "--length", "1024", "--condition", "angle=0.5", "-o", str(out)])
    data = read_spikes(out)
    assert data.counts.shape[:2] == (2, 1024)
    np.testing.assert_allclose(data.covariates["angle"], [0.5, 0.5])
    assert data.counts.sum() > 0


def test_lorenz_model_is_reproducible_with_a_seed(tmp_path):
    outs = []
    for name in ("a.h5", "b.h5", "c.h5"):
        seed = "7" if name != "c.h5" else "8"
        out = tmp_path / name
        _sample(
            [
                "-m",
                str(MODELS / "lorenz"),
                "-n",
                "3",
                "--length",
                "300",
                "--seed",
                seed,
                "-o",
                str(out),
            ]
        )
        outs.append(out)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in outs]
    assert digest[0] == digest[1]  # same seed: byte-identical file
    with h5py.File(outs[0]) as a, h5py.File(outs[2]) as c:
        assert a["spikes"].shape == (3, 300, c["spikes"].shape[2])
        assert not np.array_equal(a["spikes"][()], c["spikes"][()])


@pytest.mark.parametrize("guidance", ["1", "2"])
def test_reach_grid_of_directions_lands_in_trials_table(tmp_path, monkeypatch, guidance):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "fan.nwb"
    grid = ["--condition", "angle=0:6.28:4", "--per-condition", "2", "--seed", "0"]
    _sample([*grid, "--length", "140", "--guidance", guidance, "-o", str(out)])
    data = read_spikes(out)
    assert data.counts.shape[:2] == (8, 140)
    np.testing.assert_allclose(
        np.sort(data.covariates["angle"]), np.repeat(np.arange(4) * np.pi / 2, 2), atol=1e-9
    )
    if guidance != "1":  # the weight reaches the sampler: same seed, different spikes than W=1
        ref = tmp_path / "w1.nwb"
        _sample([*grid, "--length", "140", "--guidance", "1", "-o", str(ref)])
        assert not np.array_equal(read_spikes(ref).counts, data.counts)
