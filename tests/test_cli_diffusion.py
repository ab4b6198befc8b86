"""End to end through the CLI: fit-ae -> fit-diffusion (conditional) -> sample -> NWB/HDF5."""

from __future__ import annotations

import io
import json
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import simulate_reach

runner = CliRunner()
TINY_AE = ["--epochs", "1", "--width", "8", "--blocks", "1", "--latent-dim", "4"]
TINY_DIFF = ["--preset", "small", "--epochs", "2", "--width", "16", "--blocks", "1"]


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _fails(args: list[str], *needles: str):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion_cli")
    data = root / "reach.h5"
    write_spikes(simulate_reach(n_trials=40, n_neurons=8, n_bins=16, seed=0), data)
    models = root / "models"
    common = ["-m", str(models), "--device", "cpu", "-q"]
    _ok(["fit-ae", str(data), *common, *TINY_AE, "--no-spike-history"])
    conds = ["--condition", "angle", "--condition", "hand_vel"]
    _ok(["fit-diffusion", str(data), *common, *TINY_DIFF, *conds])
    # a second model on the same AE: a circular and a categorical trial-level condition
    typed = root / "typed"
    typed.mkdir()
    shutil.copy(models / "ae.safetensors", typed / "ae.safetensors")
    conds = ["--condition", "angle", "--condition", "condition_id", "--cond-dropout", "0.2"]
    _ok(["fit-diffusion", str(data), "-m", str(typed), "-q", *TINY_DIFF, *conds])
    return root, data, models


def test_sample_unconditional_writes_valid_nwb(fitted):
    root, _, models = fitted
    out = root / "u.nwb"
    res = _ok(["sample", "-m", str(models), "-n", "3", "--length", "37", "-o", str(out)])
    assert res.stdout == ""  # logs and progress go to stderr only
    back = read_spikes(out)
    assert back.counts.shape == (3, 37, 8)
    assert back.provenance["settings.sampler"] == "dpm++"
    assert back.provenance["settings.seed"] == "0"
    assert "settings.ae_id" in back.provenance and "settings.diffusion_id" in back.provenance
    # guidance needs conditions: without them it is said to do nothing, and it does nothing
    guided = ["sample", "-m", str(models), "-n", "3", "--length", "37", "--guidance", "3"]
    res = _ok([*guided, "-o", str(root / "ug.nwb")])
    assert "--guidance 3 has no effect without conditions" in res.stderr
    assert np.array_equal(read_spikes(root / "ug.nwb").counts, back.counts)


def test_conditions_land_in_trials_table_and_seed_reproduces(fitted):
    root, data, models = fitted
    args = ["sample", "-m", str(models), "--condition-from", str(data), "--trials", "test"]
    _ok([*args, "--per-condition", "2", "--guidance", "2", "-o", str(root / "c.nwb"), "-q"])
    back = read_spikes(root / "c.nwb")
    src = read_spikes(data)
    test_angles = src.covariates["angle"][src.split == "test"]
    assert np.allclose(back.covariates["angle"], np.repeat(test_angles, 2))
    assert back.behavior["hand_vel"].shape == (2 * len(test_angles), 16, 2)
    assert back.provenance["settings.guidance"] == "2"
    # same seed -> same data (via stdout HDF5 bytes: stdout carries only the file)
    a = runner.invoke(app, [*args, "--seed", "5", "-o", "-", "-q"])
    b = runner.invoke(app, [*args, "--seed", "5", "-o", "-", "-q"])
    c = runner.invoke(app, [*args, "--seed", "6", "-o", "-", "-q"])
    spikes = []
    for r in (a, b, c):
        assert r.exit_code == 0 and r.stdout_bytes[:8] == b"\x89HDF\r\n\x1a\n"
        with h5py.File(io.BytesIO(r.stdout_bytes), "r") as fh:
            spikes.append(fh["spikes"][()])
    assert np.array_equal(spikes[0], spikes[1]) and not np.array_equal(spikes[0], spikes[2])


def test_typed_condition_grid_and_categories(fitted):
    root, data, _ = fitted
    typed, out = root / "typed", root / "grid.nwb"
    conds = ["--condition", "angle=0:360deg:4", "--condition", "condition_id=1,2"]
    per = ["--per-condition", "2", "--length", "16"]
    _ok(["sample", "-m", str(typed), *conds, *per, "-o", str(out), "-q"])
    back = read_spikes(out)
    assert back.n_trials == 4 * 2 * 2
    angles = np.repeat(np.arange(4) * np.pi / 2, 4)  # first condition varies slowest
    assert np.allclose(back.covariates["angle"], angles)
    assert [str(v) for v in back.covariates["condition_id"][:4]] == ["1", "1", "2", "2"]
    # only some conditions given: the rest take the null path; none given: unconditional
    base = ["sample", "-m", str(typed), "--length", "8"]
    _ok([*base, "--condition", "angle=1", "-n", "3", "-o", "-", "-q"])
    bad = ["--condition", "condition_id=9", "-o", str(root / "bad.nwb")]
    _fails([*base, *bad], "condition_id")
    # --resume continues the saved fit for more epochs
    res = _ok(["fit-diffusion", str(data), "-m", str(typed), "--resume", "--epochs", "3"])
    # the log names no architecture of its own: the saved one is what continues
    assert "resuming the saved denoiser" in res.stderr and "denoiser width" not in res.stderr
    from ldns_cli.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(typed / "diffusion.safetensors", "diffusion")
    assert len(ckpt.extra["train"]["history"]) == 3
    assert ckpt.extra["conditions"][1]["name"] == "condition_id"
    # the conditions' rate gain was fitted and judged after the resumed fit too
    gain = ckpt.extra["condition_gain"]
    assert gain["conditions"] == ["angle", "condition_id"] and len(gain["curve"]) >= 2
    assert gain["kept"] == any(n.startswith("condition_gain.") for n in ckpt.tensors)
    assert "condition gain (angle, condition_id)" in res.stderr


def test_variable_lengths_and_sampler_choice(fitted):
    root, data, models = fitted
    out = root / "v.h5"
    sampler = ["--sampler", "ddim", "--steps", "3"]
    save = ["--save-latents", "--save-rates"]
    _ok(
        [
            "sample",
            "-m",
            str(models),
            "-n",
            "4",
            "--length",
            "5:40",
            *sampler,
            *save,
            "-o",
            str(out),
        ]
    )
    back = read_spikes(out)
    assert back.lengths.min() >= 5 and back.lengths.max() <= 40
    assert back.latents is not None and back.rates is not None
    _ok(["sample", "-m", str(models), "-n", "2", "--lengths-from", str(data), "-o", "-", "-q"])


def test_error_exit_codes(fitted, tmp_path):
    _, data, models = fitted
    m = ["-m", str(models)]
    o = ["-o", str(tmp_path / "x.nwb")]
    _fails(["sample", "-m", str(tmp_path / "none"), "-n", "2", "--length", "8", *o], "fit-ae")
    _fails(["sample", *m, "-n", "2", "--length", "0", *o], "--length")
    _fails(["sample", *m, "-n", "2", "--length", "abc", *o], "--length")
    # no --length: the training trials' lengths (the model records them)
    assert "16 bins" in _ok(["sample", *m, "-n", "2", "-o", str(tmp_path / "len.nwb")]).stderr
    _fails(["sample", *m, "--condition", "speed=1", "--length", "8", *o], "speed", "angle")
    _fails(["sample", *m, "--condition", "angle=0.5", "--length", "8", *o], "hand_vel")
    _fails(["sample", *m, "-n", "2", "--length", "8", "--sampler", "euler", *o], "euler")
    _fails(
        ["fit-diffusion", str(data), *m, "--condition", "colour", "--epochs", "1", "--force"],
        "hand_vel",
    )
    # an existing diffusion model is replaced only with --force (checked before reading data)
    before = (models / "diffusion.safetensors").read_bytes()
    _fails(["fit-diffusion", str(data), *m, "--epochs", "1"], "already holds", "--force")
    assert (models / "diffusion.safetensors").read_bytes() == before
    # a diffusion model next to an autoencoder it was not trained on
    other = tmp_path / "other"
    _ok(
        ["fit-ae", str(data), "-m", str(other), *TINY_AE, "--seed", "3", "--no-spike-history", "-q"]
    )
    shutil.copy(models / "diffusion.safetensors", other / "diffusion.safetensors")
    _fails(["sample", "-m", str(other), "-n", "2", "--length", "8", *o], "different autoencoder")
    # usage errors stay Typer's (exit 2)
    assert runner.invoke(app, ["sample", "--no-such-flag"]).exit_code == 2


def test_denoiser_kernels_reach_the_longest_training_trial(fitted):
    # default --kernel-bins -1 resolves to half the 16-bin training trials, saved with the model
    _, _, models = fitted
    from ldns_cli.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(models / "diffusion.safetensors", "diffusion", fit_command="x")
    assert ckpt.config["diffusion"]["kernel_bins"] == -1
    assert ckpt.extra["denoiser"]["kernel_bins"] == 8


def test_latent_calibration_is_fitted_applied_and_refittable(fitted):
    """fit-diffusion stores a per-channel latent calibration for dpm++ 20, at each weight of the
    guidance grid for this conditional model; sample applies the one of its weight unless told
    not to (an exact affine map of the same draws) and only for that sampler setting;
    --calibrate-only refits them, or adds them for another setting, without training."""
    from ldns_cli.core.checkpoint import load_checkpoint, save_checkpoint
    from ldns_cli.diffusion.calibration import calibration_key
    from ldns_cli.fit.checks import GUIDANCE_GRID
    from ldns_cli.store import load_diffusion

    root, data, models = fitted
    ckpt = load_checkpoint(models / "diffusion.safetensors", "diffusion")
    summary = ckpt.extra["latent_calibration"]["dpm++/20"]
    assert summary["trials"] == 1000 and summary["sampler"] == "dpm++" and summary["steps"] == 20
    keys = sorted(calibration_key("dpm++", 20, w) for w in GUIDANCE_GRID)
    assert sorted(ckpt.extra["latent_calibration"]) == keys
    assert ckpt.extra["latent_calibration"]["dpm++/20@w2"]["trials"] == 256
    model = load_diffusion(models, "cpu")
    cal_model = model.calibration_for("dpm++", 20)
    assert sorted(model.calibrations) == keys and cal_model is not None
    base = ["sample", "-m", str(models), "-n", "4", "--length", "16", "--save-latents", "-q"]
    _ok([*base, "-o", str(root / "cal.h5")])
    _ok([*base, "--no-calibration", "-o", str(root / "raw.h5")])
    cal, raw = read_spikes(root / "cal.h5"), read_spikes(root / "raw.h5")
    # unconditional draws are not guided: W = 1's map
    applied = "applied (dpm++ 20 steps, fitted at W=1)"
    assert cal.provenance["settings.latent_calibration"] == applied
    assert raw.provenance["settings.latent_calibration"] == "off"
    mu, sd = model.latent_mean, model.latent_std
    expected = ((raw.latents - mu) / sd * cal_model.scale + cal_model.shift) * sd + mu
    assert np.allclose(cal.latents, expected, atol=1e-4)
    assert not np.allclose(cal.latents, raw.latents, atol=1e-3)
    # guided draws get their weight's map, interpolated between fitted weights
    cond = ["sample", "-m", str(models), "--condition-from", str(data), "--trials", "test",
            "--save-latents", "-q"]  # fmt: skip
    for w, how in (("2", "fitted at W=2"), ("2.5", "interpolated between W=2 and W=3")):
        _ok([*cond, "--guidance", w, "-o", str(root / f"g{w}.h5")])
        _ok([*cond, "--guidance", w, "--no-calibration", "-o", str(root / f"g{w}raw.h5")])
        got, unmapped = read_spikes(root / f"g{w}.h5"), read_spikes(root / f"g{w}raw.h5")
        label = got.provenance["settings.latent_calibration"]
        assert label == f"applied (dpm++ 20 steps, {how})"
        at_w = model.calibration_for("dpm++", 20, float(w))
        z = (unmapped.latents - mu) / sd * at_w.scale + at_w.shift
        assert np.allclose(got.latents, z * sd + mu, atol=1e-4)
    assert not np.allclose(model.calibration_for("dpm++", 20, 2.0).scale, cal_model.scale)
    # another setting has no calibration: raw draws, and the log says how to add one
    res = _ok(["sample", "-m", str(models), "-n", "2", "--length", "16", "--steps", "10",
               "-o", str(root / "s10.h5")])  # fmt: skip
    assert "calibration is for dpm++/20;" in res.stderr
    assert "--calibrate-only --sampler dpm++ --steps 10" in res.stderr
    s10 = read_spikes(root / "s10.h5").provenance["settings.latent_calibration"]
    assert s10 == "none for dpm++ 10 steps"

    # a model without calibration (fitted before it existed) samples as before: "none"
    old = root / "old"
    old.mkdir()
    shutil.copy(models / "ae.safetensors", old / "ae.safetensors")
    ckpt.tensors = {k: v for k, v in ckpt.tensors.items() if not k.startswith("calibration.")}
    ckpt.extra.pop("latent_calibration")
    save_checkpoint(old / "diffusion.safetensors", ckpt)
    _ok(["sample", "-m", str(old), "-n", "4", "--length", "16", "-q", "-o", str(root / "o.h5")])
    back = read_spikes(root / "o.h5")
    assert back.provenance["settings.latent_calibration"] == "none for dpm++ 20 steps"
    assert np.array_equal(back.counts, raw.counts)
    # --calibrate-only adds them back: same seed, same calibrations as the fit's; they are what
    # the guidance curve samples with, so the guidance weight is measured again
    res = _ok(["fit-diffusion", str(data), "-m", str(old), "--calibrate-only", "--device", "cpu"])
    assert "latent calibration on 1000 sampled trials (dpm++ 20 steps)" in res.stderr
    assert "256 sampled trials (dpm++ 20 steps at guidance W=2, paired" in res.stderr
    assert "guidance for `sample --guidance auto`" in res.stderr
    again = load_diffusion(old, "cpu")
    assert sorted(again.calibrations) == keys
    for key in keys:
        assert np.allclose(again.calibrations[key].scale, model.calibrations[key].scale, rtol=1e-5)
        assert np.allclose(again.calibrations[key].shift, model.calibrations[key].shift, atol=1e-5)
    remeasured = load_checkpoint(old / "diffusion.safetensors", "diffusion").extra
    assert remeasured["guidance"]["weight"] == ckpt.extra["guidance"]["weight"]
    # ... and another setting's, next to them (its guidance is not what `auto` measured)
    res = _ok(["fit-diffusion", str(data), "-m", str(old), "--calibrate-only", "--sampler",
               "ddim", "--steps", "5", "--calibration-trials", "50"])  # fmt: skip
    assert "guidance for `sample --guidance auto`" not in res.stderr
    both = load_diffusion(old, "cpu")
    ddim = sorted(calibration_key("ddim", 5, w) for w in GUIDANCE_GRID)
    assert sorted(both.calibrations) == sorted(ddim + keys)
    assert np.allclose(both.calibrations["dpm++/20"].scale, cal_model.scale, rtol=1e-5)
    stored = load_checkpoint(old / "diffusion.safetensors", "diffusion").extra
    assert stored["latent_calibration"]["ddim/5"]["trials"] == 50
    assert stored["latent_calibration"]["ddim/5@w3"]["trials"] == 50  # fewer than 256 in all
    _fails(["fit-diffusion", str(data), "-m", str(old), "--calibrate-only", "--resume"], "train")
    _fails(
        ["fit-diffusion", str(data), "-m", str(old), "--calibrate-only",
         "--calibration-trials", "0"], "calibration-trials",
    )  # fmt: skip
    _fails(["fit-diffusion", str(data), "-m", str(old), "--sampler", "ddim"], "--calibrate-only")


def test_evaluate_reports_per_condition_and_the_report_plots_training(fitted):
    root, data, models = fitted
    samples = root / "per_condition.nwb"
    _ok(["sample", "-m", str(models), "--condition-from", str(data), "--trials", "test",
         "--per-condition", "3", "-o", str(samples), "-q"])  # fmt: skip
    args = ["evaluate", str(data), str(samples), "-m", str(models), "--folds", "2"]
    table = _ok([*args, "-q"]).stdout
    assert "per condition" in table and "angle_error_deg" in table and "hand_vel" in table
    payload = json.loads(_ok([*args, "--json", "-q"]).stdout)
    assert set(payload["conditions"]) == {"angle", "hand_vel"}
    assert payload["generated"]["provenance"]["conditions"] == "angle,hand_vel"
    # the stored stage checks: each stage's cell holds its value and its value/real interval
    from ldns_cli.scoring.report import model_check_rows

    stored = payload["model_checks"]["diffusion"]["angle"]
    rows = {row[0]: row for row in model_check_rows(payload)}
    for column, stage in ((3, "autoencoder"), (4, "samples")):
        lo, hi = stored["ratio_interval"][stage]
        assert rows["angle"][column].endswith(f"(×{lo:.2f} to {hi:.2f})"), rows["angle"]
    off = json.loads(_ok([*args, "--json", "-q", "--condition", "none"]).stdout)
    assert off["conditions"] == {}
    report = root / "report"
    _ok([*args, "-q", "--report", str(report)])
    assert {"ae_training.csv", "diffusion_training.csv"} <= {p.name for p in models.iterdir()}
    assert len((report / "training.png").read_bytes()) > 5000


def test_guidance_auto_resolves_to_the_measured_weight(fitted):
    from ldns_cli.core.checkpoint import load_checkpoint
    from ldns_cli.fit.checks import GUIDANCE_GRID

    root, data, models = fitted
    ckpt = load_checkpoint(models / "diffusion.safetensors", "diffusion")
    record = ckpt.extra["guidance"]
    assert record["weight"] in GUIDANCE_GRID and len(record["curve"]) == len(GUIDANCE_GRID)
    checks = ckpt.extra["condition_checks"]
    assert set(checks) == {"angle", "hand_vel"}
    assert set(checks["angle"]["stages"]) == {"real", "autoencoder", "samples"}
    for c in checks.values():  # each later stage's value/real, with its 95% interval
        assert set(c["ratio_interval"]) == {"autoencoder", "samples"}
        for stage, interval in c["ratio_interval"].items():
            if interval is not None:  # None: a real R² at or below 0 has no ratio
                ratio = c["stages"][stage] / c["stages"]["real"]
                assert interval[0] <= ratio <= interval[1], (stage, c)
    args = ["sample", "-m", str(models), "--condition-from", str(data), "--trials", "test", "-q"]
    _ok([*args, "-o", str(root / "auto.h5")])
    auto = read_spikes(root / "auto.h5").provenance
    assert auto["guidance"] == f"{record['weight']:g}"
    # ... sampled with the latent calibration fitted at that weight
    fitted_at = f"applied (dpm++ 20 steps, fitted at W={record['weight']:g})"
    assert auto["settings.latent_calibration"] == fitted_at
    _ok([*args, "--guidance", "2.5", "-o", str(root / "fixed.h5")])
    assert read_spikes(root / "fixed.h5").provenance["guidance"] == "2.5"
    _fails([*args, "--guidance", "strong", "-o", str(root / "x.h5")], "--guidance")
    # the stored weight is what ldns.load(...).sample uses by default too
    import ldns_cli as ldns

    m = ldns.load(models, device="cpu")
    src = read_spikes(data)
    fake = m.sample(condition_from=src.select(src.split == "test"), steps=2)
    assert fake.provenance["guidance"] == f"{record['weight']:g}"


def _guidance_curve(decoding: dict[float, float], fidelity: dict[float, float]):
    curve = [
        {"guidance": w, "fidelity_score": fidelity.get(w, 0.0), "fidelity_spread": 0.05,
         "fidelity_scores": {"mean": fidelity.get(w, 0.0)}, "fidelity_spreads": {"mean": 0.05},
         "worst_decoding_score": d / 90.0, "decoding": {"angle": d}}
        for w, d in decoding.items()
    ]  # fmt: skip
    by_weight = {
        w: {"angle": {"lower_is_better": True, "stages": {"real": 2.4, "samples": d}}}
        for w, d in decoding.items()
    }
    return curve, by_weight


def test_guidance_rejects_a_weight_that_worsens_one_fidelity_score_beyond_its_noise():
    from ldns_cli.fit.checks import _choose

    ae = {"angle": {"stages": {"real": 2.4, "autoencoder": 3.9}}}
    curve, by_weight = _guidance_curve({1.0: 5.1, 1.5: 3.2, 2.0: 3.1, 3.0: 3.0}, {})
    names = [f"m{k}" for k in range(10)]
    for row in curve:
        # nine scores stay near W = 1's; the population count's grows with the weight
        w = row["guidance"]
        row["fidelity_scores"] = {n: 0.02 for n in names} | {"psc_w1": 0.02 + 1.1 * (w - 1)}
        row["fidelity_spreads"] = {n: 0.05 for n in names} | {"psc_w1": 0.05 + 0.3 * (w - 1)}
        row["fidelity_score"] = float(np.mean(list(row["fidelity_scores"].values())))
        row["fidelity_spread"] = 0.1 * w  # the mean alone would let W = 2 through
    assert _choose(curve, ae, by_weight)[0] == 1.0
    for row in curve:  # the same scores, each within its noise: the weight that decodes
        row["fidelity_scores"]["psc_w1"] = 0.02 + 0.05 * (row["guidance"] - 1)
    assert _choose(curve, ae, by_weight)[0] == 1.5


def test_guidance_targets_the_better_of_the_ceiling_and_the_best_weight():
    from ldns_cli.fit.checks import _choose

    ae = {"angle": {"stages": {"real": 2.4, "autoencoder": 3.9}}}
    fid = {1.0: 0.01, 1.5: 0.02, 2.0: 0.5, 3.0: 0.9}
    # W = 1 is within 1.1x of the (noisy) ceiling, but W = 1.5 decodes far better at the same
    # fidelity: 1.5 is kept; W = 2 decodes best but loses fidelity beyond the spread
    curve, by_weight = _guidance_curve({1.0: 4.1, 1.5: 3.1, 2.0: 2.5, 3.0: 2.4}, fid)
    assert _choose(curve, ae, by_weight)[0] == 1.5
    # no weight beats the ceiling: the smallest within 1.1x of it
    curve, by_weight = _guidance_curve({1.0: 5.0, 1.5: 4.2, 2.0: 4.0, 3.0: 3.95}, fid)
    assert _choose(curve, ae, by_weight)[0] == 1.5
    # every weight decodes alike: W = 1
    curve, by_weight = _guidance_curve({1.0: 3.0, 1.5: 3.0, 2.0: 3.0, 3.0: 3.0}, fid)
    assert _choose(curve, ae, by_weight)[0] == 1.0
