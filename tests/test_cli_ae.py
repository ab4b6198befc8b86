"""`ldns fit-ae` and `ldns encode` through the CLI: exit codes, files, clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.core.checkpoint import load_checkpoint
from ldns_cli.fit.latent_size import candidate_sizes
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import simulate_lorenz

TINY = ["--width", "16", "--blocks", "1", "--latent-dim", "4", "--batch-size", "16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_ae")
    data = root / "tiny.h5"
    write_spikes(simulate_lorenz(40, 16, 32, seed=0), data)
    other = root / "other.h5"
    write_spikes(simulate_lorenz(10, 20, 32, seed=1), other)
    models = root / "models"
    runner = CliRunner()
    res = runner.invoke(
        app, ["fit-ae", str(data), "-m", str(models), "--epochs", "2", "--no-spike-history", *TINY]
    )
    assert res.exit_code == 0, res.stderr
    return {"root": root, "data": data, "other": other, "models": models, "fit_stdout": res.stdout}


def test_fit_ae_writes_a_checkpoint_and_nothing_on_stdout(files: dict[str, Path]) -> None:
    assert files["fit_stdout"] == ""
    ckpt = load_checkpoint(files["models"] / "ae.safetensors", "ae")
    assert ckpt.config["ae"]["n_neurons"] == 16 and ckpt.config["ae"]["latent_dim"] == 4
    assert ckpt.config["train"]["epochs"] == 2
    assert len(ckpt.extra["train"]["history"]) == 2  # --epochs overrides the preset's min_steps
    assert ckpt.fingerprint["n_neurons"] == 16
    summary = ckpt.extra["summary"]
    assert np.isfinite(summary["bits_per_spike"]) and summary["poisson_nll"] > 0
    assert summary["rate_ratio"] == pytest.approx(1.0, abs=0.05)  # intercepts refit after training
    # the saved weights are the refit ones: they reproduce the reported ratio on the train trials
    from ldns_cli.nn.autoencoder import infer
    from ldns_cli.store import load_autoencoder

    data = read_spikes(files["data"])
    train = data.select(data.split == "train")
    _, rates = infer(load_autoencoder(files["models"])[0], train)
    assert rates.sum() / train.counts.sum() == pytest.approx(summary["rate_ratio"], rel=1e-4)
    assert summary["rate_ratio"] != pytest.approx(summary["rate_ratio_before_calibration"])
    assert ckpt.extra["data"]["n_train"] == 28  # the file's 70% train split, never test
    # no temp files; the per-epoch log names its loss and unit
    assert sorted(p.name for p in files["models"].iterdir()) == [
        "ae.safetensors",
        "ae_training.csv",
    ]
    log = (files["models"] / "ae_training.csv").read_text().splitlines()
    assert log[0] == (
        "epoch,step,train_seconds,lr,train_objective_nats_per_neuron_bin,"
        "val_objective_nats_per_neuron_bin"
    )
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]


def test_encode_writes_latents_and_rates(files: dict[str, Path]) -> None:
    out = files["root"] / "latents.h5"
    res = CliRunner().invoke(
        app, ["encode", str(files["data"]), "-m", str(files["models"]), "-o", str(out)]
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    back = read_spikes(out)
    assert back.latents is not None and back.latents.shape == (40, 32, 4)
    assert back.rates is not None and back.rates.shape == (40, 32, 16)
    assert (back.rates > 0).all()
    again = CliRunner().invoke(
        app, ["encode", str(files["data"]), "-m", str(files["models"]), "-o", str(out)]
    )
    assert again.exit_code == 1 and "--force" in again.stderr


def test_encode_mismatched_neurons_names_both_values(files: dict[str, Path]) -> None:
    out = files["root"] / "bad.h5"
    res = CliRunner().invoke(
        app, ["encode", str(files["other"]), "-m", str(files["models"]), "-o", str(out)]
    )
    assert res.exit_code == 1
    assert "error:" in res.stderr and "hint:" in res.stderr
    assert "16 neurons" in res.stderr and "20" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_encode_without_a_model_hints_fit_ae(files: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["encode", str(files["data"]), "-m", str(tmp_path), "-o", str(tmp_path / "o.h5")]
    )
    assert res.exit_code == 1 and "ldns fit-ae" in res.stderr


def test_resume_continues_to_more_epochs(files: dict[str, Path], tmp_path: Path) -> None:
    models = tmp_path / "m"
    models.mkdir()
    (models / "ae.safetensors").write_bytes((files["models"] / "ae.safetensors").read_bytes())
    res = CliRunner().invoke(
        app,
        ["fit-ae", str(files["data"]), "-m", str(models), "--resume", "--epochs", "3",
         "--no-spike-history", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    ckpt = load_checkpoint(models / "ae.safetensors", "ae")
    assert len(ckpt.extra["train"]["history"]) == 3
    assert ckpt.extra["train"]["resume"]["complete"] is True


def test_fit_ae_keeps_an_existing_model_unless_forced(
    files: dict[str, Path], tmp_path: Path
) -> None:
    models = tmp_path / "m"
    models.mkdir()
    before = (files["models"] / "ae.safetensors").read_bytes()
    (models / "ae.safetensors").write_bytes(before)
    (models / "diffusion.safetensors").write_bytes(b"a diffusion model of the old autoencoder")
    fit = ["fit-ae", str(files["data"]), "-m", str(models), "--epochs", "1", "--no-spike-history"]
    refused = CliRunner().invoke(app, [*fit, *TINY, "--seed", "5"])
    assert refused.exit_code == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and "already holds a fitted autoencoder" in lines[0]
    assert lines[1].startswith("hint:") and "--force" in lines[1] and "--resume" in lines[1]
    assert refused.stdout == ""
    assert (models / "ae.safetensors").read_bytes() == before  # untouched, byte for byte
    assert sorted(p.name for p in models.iterdir()) == ["ae.safetensors", "diffusion.safetensors"]

    forced = CliRunner().invoke(app, [*fit, *TINY, "--seed", "5", "--force"])
    assert forced.exit_code == 0, forced.stderr
    assert "replacing the existing autoencoder" in forced.stderr
    assert "belong to the previous autoencoder" in forced.stderr  # the stale diffusion model
    assert (models / "ae.safetensors").read_bytes() != before
    assert load_checkpoint(models / "ae.safetensors", "ae").config["train"]["seed"] == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "huge"], "unknown preset"),
        (["--resume"], "no ae model"),
        (["--dropout-p", "1.5"], "dropout"),
        (["--val-frac", "1.0"], "--val-frac"),
    ],
)
def test_fit_ae_user_errors_exit_1(
    files: dict[str, Path], tmp_path: Path, args: list[str], needle: str
) -> None:
    res = CliRunner().invoke(
        app, ["fit-ae", str(files["data"]), "-m", str(tmp_path / "m"), *TINY, *args]
    )
    assert res.exit_code == 1, res.stderr
    assert "error:" in res.stderr and needle in res.stderr
    assert "Traceback" not in res.stderr


def test_help_has_an_example() -> None:
    for cmd in ("fit-ae", "encode"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.stdout


def test_latent_dim_auto_recovers_a_three_dimensional_system(tmp_path: Path) -> None:
    """Lorenz spikes come from a 3-D latent state: co-smoothing picks a size within ±2 of it
    and stores its curve; the main fit continues the chosen size's search fit, whose steps
    count towards the step floor."""
    data = tmp_path / "lorenz.h5"
    write_spikes(simulate_lorenz(400, 48, 64, seed=2), data)
    models = tmp_path / "m"
    floor = tmp_path / "floor.json"
    floor.write_text('{"min_steps": 400}')
    res = CliRunner().invoke(
        app,
        ["fit-ae", str(data), "-m", str(models), "--latent-dim", "auto", "--width", "32",
         "--blocks", "1", "--epochs", "1", "--config", str(floor), "--no-spike-history",
         "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    ckpt = load_checkpoint(models / "ae.safetensors", "ae")
    search = ckpt.extra["latent_search"]
    assert abs(search["chosen"] - 3) <= 2
    assert ckpt.config["ae"]["latent_dim"] == search["chosen"]
    # the main fit continued the chosen size's search fit with the stage's seed, at a lower
    # peak learning rate
    from ldns_cli.fit.autoencoder import CONTINUED_LR_FACTOR, resolve_ae_configs

    stage_lr = resolve_ae_configs(None, None, {}, 48)[1].lr
    assert ckpt.config["train"]["lr"] == pytest.approx(stage_lr * CONTINUED_LR_FACTOR)
    deciding = search.get("long_fits", search)
    assert ckpt.config["train"]["min_steps"] == max(400 - deciding["steps_per_size"], 0)
    assert ckpt.extra["continues_search_fit"] == {
        "latent_dim": search["chosen"],
        "seed": 0,
        "steps": deciding["steps_per_size"],
    }
    sizes = [p["latent_dim"] for p in search["curve"]]
    # the grid up to half the 48 neurons, scanned upwards until a size does not rise
    assert sizes + search.get("not_scanned", []) == candidate_sizes(48) == [2, 4, 8, 16]
    assert all(np.isfinite(p["cobps"]) for p in search["curve"])
    assert "latent size" in res.stderr and f"latent size {search['chosen']}:" in res.stderr
    bad = CliRunner().invoke(app, ["fit-ae", str(data), "-m", str(tmp_path / "x"),
                                   "--latent-dim", "many"])  # fmt: skip
    assert bad.exit_code == 1 and "--latent-dim" in bad.stderr
