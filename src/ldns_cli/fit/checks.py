"""Does each stage of a fit keep the conditions? Checks run at the end of `fit-ae` and
`fit-diffusion`, printed and stored in the checkpoints; and the guidance weight chosen by them.

Decoders of each condition are fitted on the real training trials (`scoring.conditions.
stage_checks`) and applied to
- "real": the real validation trials (what a perfect pipeline achieves);
- "autoencoder": spikes drawn from the autoencoder's rates of those trials through the fitted
  observation model, as `ldns sample` draws them (the spike-history model with its per-neuron
  choice; plain Poisson without one), the mean over `AE_DRAWS` draws: what its single-trial
  reconstructions keep. Plain Poisson draws misjudge recordings whose spiking is not Poisson: on
  simulated reach, Poisson draws of the true rates decoded hand velocity at R² 0.02 against the
  real trials' 0.73 with refractory units (0.61 against 0.78 with bursting ones), draws through
  the simulator's own spiking 0.72 (0.77) (`python bench/quality_check_observation.py`). No
  reconstruction from one trial reaches the real trials' error either: rates carry the condition
  no better than the trial they are inferred from, and a new draw adds its own noise; the best
  reconstruction the simulator's own model makes of each simulated reach trial decoded the angle
  1.19-1.27x worse than draws of the true rates (`python bench/quality_ae_floor.py`). Samples
  drawn from the latent distribution of a condition can decode better (on simulated reach of
  400-1000 trials, two datasets each, they decoded the angle 1.11-1.24x the real error against
  the reconstructions' 1.31-1.39x, `python bench/quality_pipeline_conditions.py --beds
  reach400,reach600,reach1000 [--seed 1]`), but not much better: a condition the latents do not
  carry cannot be sampled. A conditional model that kept a rate gain for its conditions
  (`diffusion/condition_gain.py`) samples from the decoded rates times that gain, and
  `fit-diffusion` measures this stage on those rates;
- "samples": trials generated for the validation trials' conditions (with the guidance weight).

Guidance by measurement (`choose_guidance`): samples are drawn at each weight of
`GUIDANCE_GRID` for the validation conditions; among the weights that keep the unconditional
fidelity (no `evaluate` score against the real validation trials worse than plain conditional
sampling's, W = 1, by more than `FIDELITY_MARGIN` beyond 2 standard errors of the difference,
each score on its own: `_keeps_fidelity`), the weight kept is the smallest whose
decoding comes within `GUIDANCE_TOLERANCE` of the target for every condition; when none does,
the best-decoding one. The target is the autoencoder's ceiling, or the best decoding any of
those weights reaches when that is better: the ceiling is measured on a few dozen validation
trials, and guidance can sharpen samples past it. On 1000 simulated reach trials the ceiling
measured 3.93° (1.63x the validation trials' 2.42°) and W = 1.5 decoded 3.13°; against the
ceiling alone W = 1 (4.15°) counted as enough, and its samples decoded the test trials' angle
1.55x worse than the real trials (`python bench/quality_pipeline_conditions.py --beds
reach1000`). `sample --guidance auto` uses the weight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ldns_cli.core.console import info, warn
from ldns_cli.core.data import SpikeData
from ldns_cli.diffusion.condition_gain import ConditionGain
from ldns_cli.diffusion.sampling import SampleSettings, trial_generator
from ldns_cli.generate import generate, plan_trials
from ldns_cli.nn.autoencoder import Autoencoder, infer
from ldns_cli.nn.observation import Observation
from ldns_cli.scoring.conditions import (
    checkable_conditions,
    describe_checks,
    explained_bits_per_spike,
    interval_text,
    stage_checks,
)
from ldns_cli.scoring.evaluation import evaluate_full

# Poisson draws of the autoencoder's rates per check, averaged: on the 40 test trials of
# `ldns simulate reach --trials 400`, five draws of the same rates decoded the angle between
# 1.07x and 1.59x worse than the real trials (python bench/quality_pipeline_conditions.py
# --beds reach400)
AE_DRAWS = 5
STAGE_LABELS = {
    "real": "real validation trials",
    "autoencoder": f"draws of the autoencoder's rates (mean of {AE_DRAWS})",
    "samples": "samples",
}
# the autoencoder stage of a conditional model that kept a condition gain
GAINED_LABELS = {
    **STAGE_LABELS,
    "autoencoder": f"draws of the autoencoder's rates times the condition gain (mean of {AE_DRAWS})",
}
AE_TOLERANCE = 1.15  # the autoencoder loses a condition when its error is beyond 1.15x real
# a lost condition is "weak" when its PSTHs explain less than this share of what the
# autoencoder's rates explain (beyond the mean time course): on `ldns simulate network` the
# angle's PSTHs explain -0.036 bits/spike of the test trials and the rates 0.34-0.43, and no
# latent size (2-32), 3000 steps or 100x the smoothness weight kept the angle
# (python bench/quality_ae_conditions.py)
WEAK_CONDITION_SHARE = 0.1
GUIDANCE_GRID = (1.0, 1.5, 2.0, 3.0)
GUIDANCE_TOLERANCE = 1.1  # guidance is enough when samples decode within 1.1x the AE's ceiling
SAMPLES_PER_TRIAL = 2  # samples drawn per validation trial for a check
MIN_CHECK_SAMPLES = 128  # ... and at least this many in all
MAX_CHECK_SAMPLES = 512
FIDELITY_FOLDS = 3
# a weight may not worsen any fidelity score of W = 1 by more than this beyond their noise
FIDELITY_MARGIN = 0.1
_DRAW_STREAM = 0xAE57


def _relative(check: dict[str, Any], stage: str, base: str) -> float | None:
    """How far `stage` is from `base` as a factor ≥ 1 = worse (errors: ratio; accuracies and
    R²: inverse ratio), or None when undefined."""
    v, b = check["stages"].get(stage), check["stages"].get(base)
    if v is None or b is None or not np.isfinite(v) or not np.isfinite(b):
        return None
    if check["lower_is_better"]:
        return v / b if b > 0 else None
    return b / v if v > 0 else float("inf")


def _score(check: dict[str, Any], stage: str) -> float:
    """(value − real)/(chance − real): 0 = like real trials, 1 = like trials that ignore the
    condition (comparable across kinds, unlike ratios of R²)."""
    v, real, chance = check["stages"].get(stage), check["stages"].get("real"), check["chance"]
    if v is None or real is None or not np.isfinite(chance) or abs(chance - real) < 1e-12:
        return float("nan")
    return float((v - real) / (chance - real))


def observation_draws(
    rates: np.ndarray,
    lengths: np.ndarray,
    observation: Observation | None,
    seed: int,
    draw: int,
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Counts `[B, L, N]` drawn from `rates` (spikes per bin) through `observation` as `ldns
    sample` draws them (free-running, one generator per trial), or plain Poisson for None."""
    if observation is None:
        rng = np.random.default_rng([seed, _DRAW_STREAM, draw])
        counts = rng.poisson(rates.astype(np.float64)).astype(np.int32)
        return counts * (np.arange(rates.shape[1])[None, :] < lengths[:, None])[..., None]
    out = np.zeros(rates.shape, dtype=np.int32)
    for lo in range(0, rates.shape[0], batch_size):
        hi = min(lo + batch_size, rates.shape[0])
        r = torch.as_tensor(rates[lo:hi], dtype=torch.float32, device=device)  # [b, L, N]
        # one generator per trial and draw, as `sample` seeds its trials
        gens = [trial_generator(seed, _DRAW_STREAM + draw, i, r.device) for i in range(lo, hi)]
        with torch.no_grad():
            s = observation.sample(r, gens, torch.as_tensor(lengths[lo:hi], device=r.device))
        out[lo:hi] = s.round().to(torch.int32).cpu().numpy()
    return out


def autoencoder_checks(
    model: Autoencoder,
    train: SpikeData,
    val: SpikeData,
    device: str,
    seed: int,
    names: list[str] | None = None,
    draws: int = AE_DRAWS,
    observation: Observation | None = None,
    condition_gain: ConditionGain | None = None,
) -> dict[str, Any]:
    """Stages "real" and "autoencoder" for `names` (default: every checkable condition).

    The autoencoder stage is the mean over `draws` draws of spikes from its rates of `val`,
    through `observation` (the fitted observation model, as `sample` uses it; plain Poisson for
    None); each condition's record also lists the single draws (`"autoencoder_draws"`), the
    observation model's kind (`"autoencoder_observation"`) and, for trial-level conditions, how
    much of the validation spikes the condition's PSTHs and the autoencoder's rates explain
    beyond the mean time course (`"explained_bits_per_spike"`,
    `scoring.conditions.explained_bits_per_spike`). With a conditional model's
    `condition_gain`, the rates are those the model samples from: the decoded rates times the
    gain of each trial's conditions (`"autoencoder_condition_gain": True`)."""
    names = checkable_conditions(train) if names is None else names
    if not names:
        return {}
    _, rates = infer(model, val, device=device)  # [B, L, N] spikes per bin
    if condition_gain is not None:
        rates = condition_gain.gained_rates(rates, val)
    drawn = [
        dataclasses.replace(
            val, counts=observation_draws(rates, val.lengths, observation, seed, k, device)
        )
        for k in range(draws)
    ]
    checks = stage_checks(train, {"real": val, "autoencoder": drawn}, names, seed)
    kind = "poisson" if observation is None else observation.kind
    for name, c in checks.items():
        c["autoencoder_draws"] = [float(v) for v in c.pop("draws")["autoencoder"]]
        c["autoencoder_observation"] = kind
        c["autoencoder_condition_gain"] = condition_gain is not None
        explained = explained_bits_per_spike(train, val, name, rates)
        if explained is not None:
            c["explained_bits_per_spike"] = explained
    return checks


def report_checks(checks: dict[str, Any]) -> None:
    """Print the checks, with a warning for each condition the autoencoder loses."""
    for line in describe_checks(checks, STAGE_LABELS):
        info(line)
    for name, c in checks.items():
        rel = _relative(c, "autoencoder", "real")
        if rel is None or rel <= AE_TOLERANCE:
            continue
        interval = c.get("ratio_interval", {}).get("autoencoder")
        # the interval is of value/real; a loss is beyond the noise when it excludes 1
        clear = interval is None or (
            interval[0] > 1.0 if c["lower_is_better"] else interval[1] < 1.0
        )
        span = "" if interval is None else f" (value/real {interval_text(interval)}, 95%)"
        verb = "loses" if clear else "may lose"
        doubt = (
            ""
            if clear
            else "; the interval includes no loss: the validation trials are too few to tell"
        )
        warn(
            f"the autoencoder {verb} part of condition {name}: {c['metric']} "
            f"{c['stages']['autoencoder']:.3g} decoded from its rates against "
            f"{c['stages']['real']:.3g} from real trials{span}{doubt}; samples seldom carry "
            f"much more ({_loss_hint(c.get('explained_bits_per_spike'))})"
        )


def _loss_hint(explained: dict[str, float] | None) -> str:
    """Why a condition may be lost, from how much of the spikes it explains (see
    `autoencoder_checks`), and what may keep it."""
    larger = "a larger autoencoder, --latent-dim/--width/--blocks, or more epochs may keep it"
    if explained is None or "rates" not in explained:
        return larger
    cond, rates = explained["condition"], explained["rates"]
    if rates > 0 and cond < WEAK_CONDITION_SHARE * rates:
        said = (
            "no more of the validation spikes than their mean time course does"
            if cond <= 0
            else f"{cond:.3g} bits/spike of the validation spikes beyond their mean time course"
        )
        return (
            f"its per-group PSTHs explain {said}, the autoencoder's rates {rates:.3g}: the "
            "latents follow the activity that explains the most, and a condition this weak in "
            "the spikes is rarely kept by more latents or epochs; `fit-diffusion --condition "
            "NAME` fits a rate gain read from it, and keeps it when it predicts the validation "
            "spikes"
        )
    return (
        f"its per-group PSTHs explain {cond:.3g} bits/spike, the rates {rates:.3g}; part of the "
        "gap is expected of any reconstruction of single trials (the simulator's own model, "
        "reconstructing simulated reach trials, decoded the angle 1.19-1.27x worse than draws of "
        f"the true rates); beyond that, {larger}"
    )


def _sample_for(models: Any, trials: SpikeData, guidance: float, seed: int, device: str):
    """Samples for the conditions (and lengths) of `trials`, `SAMPLES_PER_TRIAL` each."""
    per = max(SAMPLES_PER_TRIAL, -(-MIN_CHECK_SAMPLES // max(trials.n_trials, 1)))
    n = min(trials.n_trials * per, MAX_CHECK_SAMPLES)
    plan = plan_trials(models.diffusion, condition_from=trials, n=n, seed=seed)
    settings = SampleSettings(guidance=guidance, seed=seed)
    with torch.no_grad():
        return generate(
            models.ae,
            models.diffusion,
            models.observation,
            plan.lengths,
            settings,
            device,
            conditions=plan.conditions,
            plan=plan,
        )


def _fidelity(
    reference: SpikeData, samples: SpikeData, seed: int
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """Mean `evaluate` score over the scored metrics and its fold spread (sd of the mean), and
    each scored metric's score and fold spread (the sd of its model value over the folds, on
    the score's scale)."""
    ev = evaluate_full(
        reference, samples, folds=FIDELITY_FOLDS, seed=seed, conditions=[], figures=False
    )
    scores, spreads = {}, {}
    for name, m in ev.payload["metrics"].items():
        if m["score"] is None:
            continue
        gap = m["naive"]["mean"] - m["floor"]["mean"]
        scores[name] = float(m["score"])
        spreads[name] = float((m["model"]["sd"] or 0.0) / gap if gap else 0.0)
    if not scores:
        return float("nan"), 0.0, {}, {}
    mean = float(np.mean(list(scores.values())))
    return mean, float(np.sqrt(np.mean(np.square(list(spreads.values()))))), scores, spreads


def _keeps_fidelity(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether no fidelity score of a weight's samples is worse than W = 1's beyond the noise
    of the two (2 standard errors of the difference) plus FIDELITY_MARGIN. Each score on its
    own: on 400 simulated reach trials the mean over scores let W = 2 through (0.71 ± 0.34
    against W = 1's 0.06 ± 0.06), and its samples' population-count score on the test trials
    was 2.16, worse than naive (`python bench/quality_pipeline_conditions.py --beds
    reach400`, with W = 1's latent calibration applied at W = 2, as for a model calibrated at
    W = 1 only: `diffusion/calibration.py`)."""
    scores, base_scores = row["fidelity_scores"], base["fidelity_scores"]
    for name in scores.keys() & base_scores.keys():
        noise = math.hypot(row["fidelity_spreads"][name], base["fidelity_spreads"][name])
        if scores[name] > base_scores[name] + 2 * noise + FIDELITY_MARGIN:
            return False
    return True


def diffusion_checks(
    models: Any,
    train: SpikeData,
    val: SpikeData,
    ae_checks: dict[str, Any],
    device: str,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three stages for the model's conditions, and the guidance weight chosen by
    measurement (see the module docstring): (checks at the chosen weight, guidance record)."""
    names = [str(spec["name"]) for spec in models.diffusion.conditions]
    if not names or val.n_trials < 2:
        return {}, {}
    curve = []
    by_weight: dict[float, dict[str, Any]] = {}
    for w in GUIDANCE_GRID:
        samples = _sample_for(models, val, w, seed, device)
        checks = stage_checks(train, {"real": val, "samples": samples}, names, seed)
        fidelity, spread, scores, spreads = _fidelity(val, samples, seed)
        worst = max((_score(c, "samples") for c in checks.values()), default=float("nan"))
        curve.append({"guidance": w, "fidelity_score": fidelity, "fidelity_spread": spread,
                      "fidelity_scores": scores, "fidelity_spreads": spreads,
                      "worst_decoding_score": worst,
                      "decoding": {n: c["stages"]["samples"] for n, c in checks.items()}})  # fmt: skip
        by_weight[w] = checks
    weight, reason = _choose(curve, ae_checks, by_weight)
    chosen = by_weight[weight]
    for name, c in chosen.items():  # the autoencoder stage, as measured at the end of fit-ae
        ae_check = ae_checks.get(name, {})
        ae_value = ae_check.get("stages", {}).get("autoencoder")
        stages = {"real": c["stages"]["real"]}
        intervals = {}
        if ae_value is not None:
            stages["autoencoder"] = ae_value
            intervals["autoencoder"] = ae_check.get("ratio_interval", {}).get("autoencoder")
            for key in (
                "autoencoder_draws",
                "autoencoder_observation",
                "autoencoder_condition_gain",
            ):
                if key in ae_check:
                    c[key] = ae_check[key]
        stages["samples"] = c["stages"]["samples"]
        intervals["samples"] = c["ratio_interval"]["samples"]
        c["stages"] = stages
        c["ratio_interval"] = intervals
        c["guidance"] = weight
    return chosen, {"weight": weight, "reason": reason, "curve": curve}


def _choose(
    curve: list[dict[str, Any]], ae_checks: dict[str, Any], by_weight: dict[float, Any]
) -> tuple[float, str]:
    base = curve[0]
    allowed = [base] + [row for row in curve[1:] if _keeps_fidelity(row, base)]

    def target(name: str, lower_is_better: bool) -> float:
        # the autoencoder's ceiling, or the best an allowed weight decodes when that is better
        values = [by_weight[row["guidance"]][name]["stages"]["samples"] for row in allowed]
        ceiling = ae_checks.get(name, {}).get("stages", {}).get("autoencoder")
        if ceiling is None:
            ceiling = by_weight[curve[0]["guidance"]][name]["stages"]["real"]
        finite = [v for v in values if np.isfinite(v)]
        if not finite:
            return ceiling
        return min(ceiling, *finite) if lower_is_better else max(ceiling, *finite)

    def target_met(row: dict[str, Any]) -> bool:
        for name, c in by_weight[row["guidance"]].items():
            goal = target(name, c["lower_is_better"])
            value = c["stages"]["samples"]
            if c["lower_is_better"]:
                if value > GUIDANCE_TOLERANCE * goal:
                    return False
            elif value < (goal / GUIDANCE_TOLERANCE if goal > 0 else goal):
                return False
        return True

    for row in allowed:
        if target_met(row):
            return row["guidance"], (
                f"the smallest weight whose samples decode within {GUIDANCE_TOLERANCE:g}x the "
                "autoencoder's ceiling or the best weight's decoding, fidelity within its spread "
                "of W = 1"
            )
    best = min(
        allowed,
        key=lambda r: r["worst_decoding_score"] if np.isfinite(r["worst_decoding_score"]) else 9,
    )
    return best["guidance"], (
        "no weight reached the autoencoder's ceiling without losing fidelity: the one that "
        "decodes best among those that keep it"
    )


def describe_guidance(record: dict[str, Any]) -> list[str]:
    """Lines on the measured guidance curve and the chosen weight."""
    lines = [
        f"guidance W={row['guidance']:g}: decoding score {row['worst_decoding_score']:.2f} "
        "(worst condition; 0 = like real trials, 1 = chance), fidelity score "
        f"{row['fidelity_score']:.2f} ± {row['fidelity_spread']:.2f} (mean evaluate score)"
        for row in record.get("curve", [])
    ]
    if record:
        lines.append(
            f"guidance for `sample --guidance auto`: {record['weight']:g} ({record['reason']})"
        )
    return lines


__all__ = [
    "GAINED_LABELS",
    "STAGE_LABELS",
    "autoencoder_checks",
    "describe_guidance",
    "diffusion_checks",
    "report_checks",
]
