"""`ldns audit` of a model fitted on a SMALL recording (200 trials), held out against a large one.

A small training set is where a generator is most likely to copy. One simulated reach session
of 2200 trials (seed 1, one readout for all of them): the models are fitted on its first 200
trials (`--trials 0:200`; their own split gives 140 training and 20 validation trials), sampled
with the angles of 1000 trials they never saw, and audited with every one of the 2000 unseen
trials (200:2200) as the held-out set. The model folder remembers `--trials 0:200`, so the audit
finds the 140 training trials itself. Settings: the small presets (CPU minutes).

    python bench/audit_small_model.py    # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from audit_common import LDNS, audit_json, print_verdict, summary
from common import log, run, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/results/audit_small_model_work"))
    ap.add_argument("--small", type=int, default=200, help="trials the models are fitted on")
    ap.add_argument("--trials", type=int, default=2200, help="trials in the session")
    ap.add_argument("--diff-epochs", type=int, default=300)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data, models, samples = work / "session.h5", work / "models", work / "samples.h5"
    common = ["--seed", "0", "--device", "cpu"]
    fitted = f"0:{args.small}"
    unseen = f"{args.small}:{args.trials}"
    results: dict = {"settings": vars(args) | {"work": str(work)}}
    run([*LDNS, "simulate", "reach", "--trials", str(args.trials), "--seed", "1", "-o", str(data),
         "--force", "-q"])  # fmt: skip
    if not (models / "diffusion.safetensors").exists():
        results["fit_ae_s"] = run(
            [*LDNS, "fit-ae", str(data), "-m", str(models), "--trials", fitted, *common, "--force"]
        )
        results["fit_diffusion_s"] = run(
            [*LDNS, "fit-diffusion", str(data), "-m", str(models), "--condition", "angle",
             "--epochs", str(args.diff_epochs), *common, "--force"]
        )  # fmt: skip
    run(
        [*LDNS, "sample", "-m", str(models), "--condition-from", str(data), "--trials",
         f"{args.small}:{args.small + 1000}", "--seed", "1", "--device", "cpu", "-o",
         str(samples), "--force", "-q"]
    )  # fmt: skip
    payload, wall = audit_json(
        [str(data), str(data), str(samples), "-m", str(models), "--heldout-trials", unseen,
         "--device", "cpu", "--report", str(work / "report"), "--force"]
    )  # fmt: skip
    results["audit"] = {"wall_s": wall, **summary(payload)}
    print_verdict(payload)
    log(f"wrote {write_results('audit_small_model', results)}")


if __name__ == "__main__":
    main()
