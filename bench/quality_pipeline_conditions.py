"""Do conditions survive the default pipeline? Stage by stage, on small realistic recordings.

For each test bed, every default as a new user would run them:

    ldns simulate NAME --trials T -o data.h5
    ldns fit-ae data.h5 -m M                      (latent size by co-smoothing)
    ldns fit-diffusion data.h5 -m M --condition C   (step floor, stop rule, measured guidance)
    ldns sample -m M --condition-from data.h5 --trials test   (--guidance auto)

then decoders of the condition (`--condition`, default the angle) fitted on the real *training*
trials are applied to the real test trials, to Poisson draws of the autoencoder's rates of them,
and to the samples (`scoring.conditions.stage_checks`); the samples' unconditional fidelity is
`ldns evaluate`'s score against the test trials. Bars: angle error of the samples ≤ 1.3x the
real error (goal 1.1x), autoencoder stage ≤ 1.15x; hand-velocity R² and condition accuracy of the
samples ≥ 0.9x the real; every fidelity score ≤ 0.3.

    python bench/quality_pipeline_conditions.py [--beds reach400,reach600,reach1000,network400]
        [--condition angle|hand_vel|condition_id]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.io.formats import read_spikes
from ldns_cli.nn.autoencoder import infer
from ldns_cli.scoring.conditions import stage_checks
from ldns_cli.scoring.evaluation import evaluate
from ldns_cli.store import load_autoencoder

BEDS = {  # name: (simulator, trials, --length)
    "reach400": ("reach", 400, "140"),
    "reach600": ("reach", 600, "140"),
    "reach1000": ("reach", 1000, "140"),
    "reachvar800": ("reach", 1000, "150:400"),  # ~800 training trials of 150-400 bins
    "network400": ("network", 400, "120"),
}


def ldns(*args: str) -> float:
    cmd = [sys.executable, "-m", "ldns_cli", *args]
    log("$ ldns " + " ".join(args))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def run_bed(name: str, work: Path, seed: int, condition: str = "angle") -> dict:
    sim, trials, length = BEDS[name]
    folder = work / (name if condition == "angle" else f"{name}_{condition}")
    folder.mkdir(parents=True, exist_ok=True)
    data_path, models, samples = folder / "data.h5", folder / "models", folder / "samples.h5"
    out: dict = {"simulator": sim, "trials": trials}
    ldns("simulate", sim, "--trials", str(trials), "--length", length, "--seed", str(seed),
         "-o", str(data_path), "--force", "-q")  # fmt: skip
    out["fit_ae_s"] = ldns("fit-ae", str(data_path), "-m", str(models), "--force")
    out["fit_diffusion_s"] = ldns(
        "fit-diffusion", str(data_path), "-m", str(models), "--condition", condition, "--force"
    )
    out["sample_s"] = ldns("sample", "-m", str(models), "--condition-from", str(data_path),
                           "--trials", "test", "-o", str(samples), "--force", "-q")  # fmt: skip
    data = read_spikes(data_path)
    train, test = data.select(data.split == "train"), data.select(data.split == "test")
    gen = read_spikes(samples)
    ae, ckpt = load_autoencoder(models)
    _, rates = infer(ae, test)
    rng = np.random.default_rng([seed, 1])
    drawn = dataclasses.replace(test, counts=rng.poisson(rates.astype(np.float64)).astype(np.int32))
    checks = stage_checks(train, {"real": test, "autoencoder": drawn, "samples": gen}, [condition])
    stages = checks[condition]["stages"]
    out["condition"] = condition
    out["metric"] = checks[condition]["metric"]
    out["stages"] = {**stages, "chance": checks[condition]["chance"]}
    # error (angle) or score (R², accuracy) of each stage over the real test trials'
    out["ratio_autoencoder"] = stages["autoencoder"] / stages["real"]
    out["ratio_samples"] = stages["samples"] / stages["real"]
    payload = evaluate(test, gen, conditions=[])
    out["fidelity_scores"] = {k: v["score"] for k, v in payload["metrics"].items()}
    out["latent_dim"] = ckpt.config["ae"]["latent_dim"]
    out["latent_search"] = ckpt.extra.get("latent_search", {}).get("curve")
    cmd = [sys.executable, "-m", "ldns_cli", "evaluate", str(data_path), str(samples),
           "-m", str(models), "--reference-trials", "test", "--json", "-q"]  # fmt: skip
    diff = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    out["stored_checks"] = diff.get("model_checks")
    out["per_condition"] = diff.get("conditions")
    log(
        f"{name}: Z={out['latent_dim']}, {condition} {out['metric']} real {stages['real']:.3g}, "
        f"autoencoder {stages['autoencoder']:.3g} ({out['ratio_autoencoder']:.2f}x), samples "
        f"{stages['samples']:.3g} ({out['ratio_samples']:.2f}x); worst fidelity score "
        f"{max(v for v in out['fidelity_scores'].values() if v is not None):.2f}"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beds", default=",".join(BEDS))
    ap.add_argument("--work", type=Path, default=Path("bench/results/pipeline_conditions_work"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--condition", default="angle", help="angle, hand_vel (series), condition_id")
    args = ap.parse_args()
    results = {}
    beds = args.beds.split(",")
    # one results file per set of beds, so that beds can run as parallel processes
    tag = "quality_pipeline_conditions" + ("" if beds == list(BEDS) else "_" + "_".join(beds))
    tag += "" if args.condition == "angle" else "_" + args.condition
    for name in beds:
        t0 = time.perf_counter()
        results[name] = run_bed(name, args.work, args.seed, args.condition)
        results[name]["total_s"] = time.perf_counter() - t0
        write_results(tag, results)
    print(json.dumps({k: {kk: v[kk] for kk in ("latent_dim", "ratio_autoencoder",
                                                "ratio_samples", "total_s")}
                      for k, v in results.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
