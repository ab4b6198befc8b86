"""How much guidance widens the sampled latents, and how precisely the paired calibration
measures it.

For a fitted conditional model (`fit-diffusion --condition ...`), draws the calibration's 1000
latent trials (the training trials' lengths and conditions, as `fit-diffusion` picks them) at
every weight of the guidance grid, and compares three estimates of each weight's per-channel
latent std:
- all 1000 draws at the weight (the reference);
- the paired estimate `fit-diffusion` stores: W = 1's std over the 1000 draws, times the ratio
  of the weight's std to W = 1's on `GUIDED_CALIBRATION_TRIALS` of the same trials drawn from
  the same noise;
- those trials' own std at the weight (what an unpaired calibration of that size would use).
Prints, per weight, the sampled std relative to the training latents' and the largest relative
error of the two subset estimates.

Usage: python bench/quality_guided_calibration.py DATA MODELS [--trials 1000] [--seed 0]
(MODELS: a folder `fit-diffusion` wrote for DATA, e.g. the `models` of a bed of
`bench/quality_pipeline_conditions.py`). Writes bench/results/quality_guided_calibration.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ldns_cli.core.checkpoint import load_checkpoint
from ldns_cli.core.config import config_from_dict
from ldns_cli.diffusion.calibration import MomentAccumulator
from ldns_cli.diffusion.model import DiffusionConfig
from ldns_cli.diffusion.sampling import SampleSettings, chunks, sample_latents
from ldns_cli.fit.checks import GUIDANCE_GRID
from ldns_cli.fit.diffusion import (
    fit_latent_calibrations,
    pick_calibration_trials,
    pick_paired_trials,
    prepare_latents,
)
from ldns_cli.io.formats import read_spikes
from ldns_cli.store import load_models

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import log, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("models", type=Path)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = read_spikes(args.data)
    models = load_models(args.models, "cpu")
    ckpt = load_checkpoint(args.models / "diffusion.safetensors", "diffusion")
    config = config_from_dict(DiffusionConfig, ckpt.config["diffusion"], "diffusion")
    stats = (ckpt.extra["latent_mean"], ckpt.extra["latent_std"])
    lat = prepare_latents(data, models.ae, config, "cpu", args.seed, stats=stats,
                          specs=ckpt.extra["conditions"])  # fmt: skip
    if not lat.specs:
        raise SystemExit("the model is unconditional: guidance does not apply")
    model = models.diffusion
    model.calibrations = {}  # raw draws, as the calibration fit sees them
    n = args.trials
    fitted = fit_latent_calibrations(
        model, lat.latents, lat.mask, lat.train, lat.values, n, args.seed, "cpu",
        guidances=GUIDANCE_GRID,
    )  # fmt: skip
    paired_std = {s["guidance"]: np.asarray(s["sampled_std"]) for _, s in fitted}
    target_std = np.asarray(fitted[0][1]["target_std"])

    # the same trials, noise and paired positions as the fit
    picked, sample_seed = pick_calibration_trials(np.flatnonzero(lat.train), n, args.seed)
    lengths = lat.mask[picked].sum(axis=1).astype(np.int64)
    paired = np.isin(np.arange(n), pick_paired_trials(n, args.seed))
    results: dict = {"data": str(args.data), "models": str(args.models), "trials": n,
                     "paired_trials": int(paired.sum()), "weights": {}}  # fmt: skip
    for w in GUIDANCE_GRID:
        settings = SampleSettings(seed=sample_seed, guidance=w, calibrate=False)
        every, subset = (
            MomentAccumulator(lat.latents.shape[-1]),
            MomentAccumulator(lat.latents.shape[-1]),
        )
        for idx in chunks(lengths, 128):
            conds = {name: v[picked[idx]] for name, v in lat.values.items()}
            with torch.no_grad():
                x0, m = sample_latents(model, lengths[idx], conds, settings, "cpu", idx)
            x0, m = x0.numpy(), m.numpy()
            every.add(x0, m)
            subset.add(x0[paired[idx]], m[paired[idx]])
        std_all, std_subset = every.moments()[1], subset.moments()[1]
        row = {
            "std_ratio_range": [float(np.min(std_all / target_std)),
                                float(np.max(std_all / target_std))],
            "paired_max_rel_error": float(np.max(np.abs(paired_std[w] / std_all - 1))),
            "unpaired_max_rel_error": float(np.max(np.abs(std_subset / std_all - 1))),
        }  # fmt: skip
        results["weights"][f"{w:g}"] = row
        log(
            f"W={w:g}: sampled std {row['std_ratio_range'][0]:.3f}-{row['std_ratio_range'][1]:.3f}"
            f" x the training latents' ({n} draws); {int(paired.sum())}-trial estimate off by at "
            f"most {row['paired_max_rel_error']:.2%} paired with W = 1, "
            f"{row['unpaired_max_rel_error']:.2%} unpaired"
        )
    write_results("quality_guided_calibration", results)


if __name__ == "__main__":
    main()
