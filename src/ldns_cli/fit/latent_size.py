"""Choosing the autoencoder's latent size by co-smoothing (`fit-ae --latent-dim auto`).

A latent size is good when the latents carry what the population shares: then the activity of
neurons the encoder does not see can be predicted from the others. For each candidate size Z of
`LATENT_GRID` (up to half the neurons), a short fit (`SEARCH_STEPS` optimiser steps, the stage's
other settings unchanged) is scored on the validation trials by co-smoothing, as the Neural
Latents Benchmark scores models: the neurons are split into `NEURON_FOLDS` groups; each group's
inputs are zeroed (the others scaled up by N/(N − |group|), as inverted dropout does) and its
rates predicted from the rest; the score is the Poisson log-likelihood gain of those predictions
over each neuron's mean training rate, in bits per spike.

Short fits favour small sizes: a larger latent needs more steps to pay off. On 400 trials of
the simulated E/I network (`ldns simulate network --seed 1`), fits of 2 and 8 latents scored
0.242 and 0.241 bits/spike after 150 steps, 0.287 and 0.325 after 300, 0.288 and 0.371 after
600; the full `fit-ae` fits scored 0.299 and 0.373. A search with 150-step fits kept 2 latents
there, whose free-running samples missed the population spectrum (score 0.32, against 0.22
with 8). Hence `SEARCH_STEPS` = 300, half the stage's least budget, and a grid that doubles.

The grid is scanned upwards while each size scores above every smaller one by more than
`SCAN_STOP_SE` standard errors of the paired per-trial difference: the first size that does not
rise ends the scan. Co-smoothing curves mostly rise, flatten and fall (`python
bench/quality_latent_size.py`), and a larger size could only change the choice below by beating
the best beyond the noise. Not always: on 600 simulated reach trials of mixed cell types, single
fits scored 0.169 bits/spike with 8 latents, 0.164 with 16 and 0.172 with 32; the choice there is
4 with or without 32 (`python bench/quality_realism.py --beds reach-mixed`). The sizes not
scanned are printed and stored.

On a CPU the search runs two fits at once (`parallel_fits`): the next size of the scan beside the
current one (stopped if the scan ends first), and the best size's other seeds side by side. Every
fit is deterministic in its size, seed and length, so the choice is the same as one at a time.

The chosen size's fit with the stage's own seed is kept (`SearchFit`): it was trained on the same
data with the main fit's settings and seed, only for fewer steps, so `fit-ae` continues it (a new
warm-up and decay over the remaining steps, at a lower peak learning rate:
`fit.autoencoder.CONTINUED_LR_FACTOR`) and counts its steps towards the stage's step floor
instead of starting again.

The size kept is the smallest whose score is within the noise of the best: within one standard
error of the per-trial paired difference (the evaluation's noise), or within the spread of two
short fits (√2 x the standard deviation of the best size's fits with `SPREAD_REPEATS` + 1
seeds). The best size is judged by the mean of its seeds, since its first fit was picked as the
largest of noisy scores: on 400 simulated Lorenz trials of 48 units (an autoencoder of width 32,
one block) the first fit of 8 latents scored 1.165 bits/spike where its other seeds gave 1.141
and 1.149. The spread is measured in every run because it depends on the data (`python
bench/quality_latent_size.py`), and it is larger than the evaluation's standard errors. Larger
latents that predict no better only give the denoiser more to learn.

Short fits do not always decide. When the best size's short fits spread more than
`SPREAD_LIMIT` of its score, the sizes within that noise are refitted with `LONG_FIT_FACTOR` x
the steps (one seed each, and one more seed of the best for the spread) and the rule is applied
to those fits. On 600 simulated reach trials whose 64 units are all refractory (6 true latents),
three 150-step fits of 6 latents scored 0.026-0.058 bits/spike and of 2 latents 0.037-0.060,
while 600-step fits scored 0.068-0.073 and 0.039-0.042.

Not in the rule: the conditions. Scoring each size's short fit by the autoencoder stage of the
condition checks as well (and keeping the smallest size that keeps them) was tried and measured
worse: the short fits' condition ratios were noise (1.8-2.9x across sizes on 400 simulated reach
trials, with no trend), so the rule chose 16 latents, whose full fit decoded the angle 2.19x
worse than the real validation trials, against 1.63x for 4 latents.
The condition checks at the end of `fit-ae` report and warn instead.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ldns_cli.core.console import info, quiet_thread
from ldns_cli.core.data import SpikeData
from ldns_cli.fit import distributed as dist
from ldns_cli.fit.trainer import LossFn, TrainConfig, fit
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder

LATENT_GRID = (2, 4, 8, 16, 32)
SEARCH_STEPS = 300
NEURON_FOLDS = 4
SPREAD_REPEATS = 2  # extra seeds of the best size, for the short fits' run-to-run spread
SPREAD_LIMIT = 0.1  # short fits whose sd exceeds this share of the best score decide nothing
LONG_FIT_FACTOR = 2  # ... and the sizes they cannot tell apart are refitted this much longer
LONG_SPREAD_REPEATS = 1
MIN_LATENT = 2
SCAN_STOP_SE = 2.0  # the scan goes on while each size beats the smaller ones by this many SEs

# one search fit: (size, seed, steps, stop event) -> per-validation-trial gains [B], or None
# when stopped
FitSize = Callable[[int, int, int, "threading.Event | None"], "np.ndarray | None"]


def candidate_sizes(n_neurons: int) -> list[int]:
    """The grid up to half the neurons (at least the smallest size)."""
    sizes = [z for z in LATENT_GRID if z <= max(n_neurons // 2, MIN_LATENT)]
    return sizes or [MIN_LATENT]


@torch.no_grad()
def cosmoothing_per_trial(
    model: Autoencoder,
    data: SpikeData,
    null_rate: np.ndarray,
    device: str,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, float]:
    """Per-trial log-likelihood gain (nats) of co-smoothed rates over the null `[B]`, and the
    number of spikes it is over (see the module docstring)."""
    model.eval()
    n = data.n_neurons
    folds = np.random.default_rng([seed, 0xC05]).permutation(n) % NEURON_FOLDS
    r0 = np.clip(null_rate.astype(np.float64), 1e-9, None)  # [N]
    gain = np.zeros(data.n_trials)
    mask_all = data.mask()
    for start in range(0, data.n_trials, batch_size):
        sl = slice(start, start + batch_size)
        longest = int(data.lengths[sl].max())
        counts = torch.as_tensor(data.counts[sl, :longest], dtype=torch.float32, device=device)
        mask = torch.as_tensor(mask_all[sl, :longest], device=device)
        pad = mask if not bool(mask.all()) else None
        predicted = torch.zeros_like(counts)
        for f in range(NEURON_FOLDS):
            out = torch.as_tensor(folds == f, device=device)  # [N] held-out neurons
            if not bool(out.any()):
                continue
            scale = n / max(n - int(out.sum()), 1)
            inputs = torch.where(out, 0.0, counts * scale)
            rates, _ = model(inputs, pad)
            predicted = torch.where(out, rates.float(), predicted)
        r = np.clip(predicted.cpu().numpy().astype(np.float64), 1e-9, None)  # [b, l, N]
        c = data.counts[sl, :longest].astype(np.float64)
        m = mask_all[sl, :longest, None]
        ll = (m * (c * np.log(r) - r)).sum(axis=(1, 2))
        ll0 = (m * (c * np.log(r0) - r0)).sum(axis=(1, 2))
        gain[sl] = ll - ll0
    n_spikes = float((data.counts * mask_all[..., None]).sum())
    return gain, n_spikes


@dataclasses.dataclass(frozen=True)
class SearchFit:
    """The chosen size's search fit with the stage's own seed, which `fit-ae` continues.

    Attributes:
        state: the autoencoder's weights (`state_dict`) after the fit.
        latent_dim: its latent size.
        steps: the optimiser steps it was trained for.
    """

    state: dict[str, torch.Tensor]
    latent_dim: int
    steps: int


def choose_latent_dim(
    ae_cfg: AEConfig,
    train_cfg: TrainConfig,
    train_t: dict[str, torch.Tensor],
    val: SpikeData,
    loss_fn: LossFn,
    device: str,
    steps: int = SEARCH_STEPS,
) -> tuple[int, dict[str, Any], SearchFit]:
    """The latent size by co-smoothing (module docstring), its record (the curve of size, bits
    per spike and standard error of the difference to the best; the rule and the choice), and
    the chosen size's fit with `train_cfg.seed` at the steps that decided (`SearchFit`).

    `train_t`: the training trials as the stage's tensors ({"counts", "mask"}); `loss_fn`: the
    stage's training loss."""
    sizes = candidate_sizes(int(train_t["counts"].shape[2]))
    search_cfg = dataclasses.replace(
        train_cfg, epochs=1, min_steps=steps, patience=0, checkpoint_every_s=math.inf
    )
    mean_rate = train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()
    null_rate = mean_rate.numpy().astype(np.float64)
    # the weights of the fits with the stage's seed, by (size, steps): the main fit continues
    # the chosen one (a few 63K-parameter models)
    kept: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def short_fit(
        z: int, seed: int, n_steps: int, stop: threading.Event | None
    ) -> np.ndarray | None:
        cfg = dataclasses.replace(ae_cfg, latent_dim=z)
        model = Autoencoder(cfg, torch.Generator().manual_seed(seed))
        model.init_rate_bias(mean_rate)
        tcfg = dataclasses.replace(search_cfg, seed=seed, min_steps=n_steps)
        with quiet_thread():  # one line per size from the search, not a progress bar each
            result = fit(model, train_t, None, loss_fn, tcfg, device=device,
                         description=f"latent size {z}", stop=stop)  # fmt: skip
        if result.interrupted:
            if stop is not None and stop.is_set():
                return None  # no longer needed
            raise KeyboardInterrupt  # Ctrl-C during the search: stop the whole fit
        if seed == train_cfg.seed:
            state = result.model.state_dict()
            kept[z, n_steps] = {k: v.detach().clone() for k, v in state.items()}
        gain, spikes = cosmoothing_per_trial(result.model, val, null_rate, device)
        return gain / (math.log(2) * max(spikes, 1.0))  # per trial, in bits per spike

    chosen, record = search_latent_dim(
        sizes, short_fit, train_cfg.seed, steps, parallel_fits(device)
    )
    deciding_steps = record.get("long_fits", record)["steps_per_size"]
    return chosen, record, SearchFit(kept[chosen, deciding_steps], chosen, deciding_steps)


def parallel_fits(device: str) -> int:
    """How many search fits run at once: two on a CPU with two or more torch threads (each fit
    with half of them), else one.

    Two 100-step fits of 8 latents on 420 simulated reach trials x 128 units took 19.5 s one
    after the other with 2 threads and 14.7 s side by side with 1 thread each (2 cores): small
    fits leave cores idle that a second fit fills, and the gradient steps release the
    interpreter lock (`python bench/time_default_pipeline.py` times the whole pipeline). Not
    under torchrun: the ranks' collective calls must come from one thread."""
    if torch.device(device).type != "cpu" or dist.world_size() > 1:
        return 1
    return 2 if torch.get_num_threads() >= 2 else 1


class _Fits:
    """Search fits by (size, seed, steps), each made once. With `workers` > 1, fits asked for
    ahead (`prefetch`) run side by side in threads, each with its share of the torch threads;
    fits the rule then does not ask for are stopped (`discard`). Every fit is deterministic in
    its arguments, so the search's result does not depend on `workers`."""

    def __init__(self, fit_size: FitSize, workers: int) -> None:
        self._fit_size = fit_size
        self._done: dict[tuple[int, int, int], np.ndarray] = {}
        self._running: dict[tuple[int, int, int], tuple[Future, threading.Event]] = {}
        self._pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self._threads_before = torch.get_num_threads()
        if self._pool is not None:
            torch.set_num_threads(max(1, self._threads_before // workers))

    def prefetch(self, *keys: tuple[int, int, int]) -> None:
        if self._pool is None:
            return
        for key in keys:
            if key not in self._done and key not in self._running:
                stop = threading.Event()
                self._running[key] = (self._pool.submit(self._fit_size, *key, stop), stop)

    def get(self, key: tuple[int, int, int]) -> np.ndarray:
        if key not in self._done:
            if self._pool is None:
                gains = self._fit_size(*key, None)
            else:
                self.prefetch(key)
                gains = self._running[key][0].result()  # still listed: Ctrl-C here stops it
                del self._running[key]
            assert gains is not None, "a fit asked for was stopped"
            self._done[key] = gains
        return self._done[key]

    def discard(self) -> None:
        """Stop the fits asked for ahead that are still running or waiting."""
        for future, stop in self._running.values():
            stop.set()
            future.cancel()
        self._running.clear()

    def close(self) -> None:
        self.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # each stopped fit ends after its current step
            torch.set_num_threads(self._threads_before)


def search_latent_dim(
    sizes: list[int],
    fit_size: FitSize,
    seed: int,
    steps: int = SEARCH_STEPS,
    workers: int = 1,
) -> tuple[int, dict[str, Any]]:
    """The rule of the module docstring over `sizes`, given `fit_size(size, seed, steps, stop)`:
    the per-validation-trial co-smoothing gains `[B]` (bits per spike) of one fit, or None when
    the `threading.Event` `stop` was set before it finished. `workers` > 1 runs up to that many
    fits at once (the next size of the scan is fitted ahead). Returns the size and the record
    of the search."""
    fits = _Fits(fit_size, workers)
    try:
        return _search(sizes, fits, seed, steps)
    finally:
        fits.close()


def _search(sizes: list[int], fits: _Fits, seed: int, steps: int) -> tuple[int, dict[str, Any]]:
    gains: dict[int, np.ndarray] = {}
    for i, z in enumerate(sizes):
        fits.prefetch(*[(s, seed, steps) for s in sizes[i : i + 2]])
        gains[z] = fits.get((z, seed, steps))
        info(f"latent size {z}: {gains[z].sum():.4f} bits/spike")
        if not _rose(gains):
            break
    fits.discard()  # a size fitted ahead of a scan that stopped
    skipped = [z for z in sizes if z not in gains]  # printed with the curve (`describe_search`)
    chosen, record = _choose(gains, fits, seed, steps)
    if skipped:
        record["not_scanned"] = skipped
    rel = record["fit_sd"] / record["cobps_best"] if record["cobps_best"] > 0 else 0.0
    contenders = [p["latent_dim"] for p in record["curve"] if p["within_noise"]]
    if rel > SPREAD_LIMIT and len(contenders) > 1:
        # the short fits differ by chance more than the sizes do: refit the sizes they cannot
        # tell apart with LONG_FIT_FACTOR x the steps, where fits agree, and choose among those
        long_steps = steps * LONG_FIT_FACTOR
        info(
            f"short fits spread {100 * rel:.0f}% of the best score (above "
            f"{100 * SPREAD_LIMIT:.0f}%): refitting sizes {', '.join(map(str, contenders))} "
            f"with {long_steps} steps"
        )
        long_gains: dict[int, np.ndarray] = {}
        fits.prefetch(*[(z, seed, long_steps) for z in contenders])
        for z in contenders:
            long_gains[z] = fits.get((z, seed, long_steps))
            info(f"latent size {z}, {long_steps} steps: {long_gains[z].sum():.4f} bits/spike")
        chosen, long_record = _choose(
            long_gains, fits, seed, long_steps, repeats=LONG_SPREAD_REPEATS
        )
        record["short_fit_spread"] = rel
        record["long_fits"] = long_record
    record["chosen"] = chosen
    return chosen, record


def _rose(gains: dict[int, np.ndarray]) -> bool:
    """Whether the last size scanned scores above every smaller one by more than `SCAN_STOP_SE`
    standard errors of the paired difference (the first size always counts as a rise)."""
    *smaller, last = list(gains)
    new = gains[last]
    return all(
        float((new - gains[z]).sum()) > SCAN_STOP_SE * _paired_se(new, gains[z]) for z in smaller
    )


def _paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the difference of two scores `a.sum() − b.sum()` from their per-trial
    gains `[B]`: the per-trial contributions B·(a − b) averaged over the B trials."""
    n_val = max(len(a), 2)
    diff = (a - b) * n_val  # per-trial contributions to the difference
    return float(diff.std(ddof=1) / math.sqrt(n_val))


def _choose(
    gains: dict[int, np.ndarray],
    fits: _Fits,
    seed: int,
    steps: int,
    repeats: int = SPREAD_REPEATS,
) -> tuple[int, dict[str, Any]]:
    """The rule of the module docstring on per-trial gains `{size: [B]}` (bits per spike) of
    fits with `seed`; the best size is refitted from `fits` with the next `repeats` seeds, for
    the spread of its fits."""
    sizes = sorted(gains)
    score = {z: float(g.sum()) for z, g in gains.items()}
    best = max(score, key=lambda z: score[z])
    # the fits' own spread: the best size again with other seeds
    others = [(best, seed + 1 + k, steps) for k in range(repeats)]
    fits.prefetch(*others)
    runs = [gains[best]] + [fits.get(key) for key in others]  # [repeats + 1] x [B]
    values = [float(g.sum()) for g in runs]
    fit_sd = float(np.std(values, ddof=1))
    info(f"latent size {best} with {len(values)} seeds ({steps} steps): sd {fit_sd:.4f} bits/spike")
    # the best size is judged by the mean of its seeds: its first fit was picked as the
    # largest of noisy scores, so that score alone is biased upwards
    reference = np.mean(runs, axis=0)  # [B]
    ref_score = float(reference.sum())
    curve = []
    chosen = None
    for z in sizes:
        se = _paired_se(reference, gains[z])
        # two fits differ by chance with sd √2·fit_sd, on top of the evaluation's noise
        within = ref_score - score[z] <= max(se, math.sqrt(2) * fit_sd)
        curve.append({"latent_dim": z, "cobps": score[z], "se_vs_best": se, "within_noise": within})
        if chosen is None and within:
            chosen = z
    chosen = chosen or best
    record = {
        "chosen": chosen,
        "curve": curve,
        "steps_per_size": steps,
        "best": best,
        "cobps_best": ref_score,
        "best_repeats": values,
        "fit_sd": fit_sd,
        "rule": "the smallest latent size whose co-smoothing bits/spike on the validation "
        f"trials is within the noise of the best (the mean of its fits with {len(runs)} seeds): "
        "one standard error of the evaluation, or the spread of two fits (√2 x the sd of the "
        "best size's fits)",
    }
    return chosen, record


def describe_search(record: dict[str, Any]) -> list[str]:
    """Lines: the curve and the choice."""
    lines = []
    for stage in (record, record.get("long_fits")):
        if stage is None:
            continue
        points = ", ".join(f"Z={p['latent_dim']}: {p['cobps']:.4f}" for p in stage["curve"])
        lines.append(
            f"latent size by co-smoothing (bits/spike of held-out neurons, validation trials, "
            f"{stage['steps_per_size']} steps per size): {points}"
        )
    if record.get("not_scanned"):
        lines.append(
            f"sizes {', '.join(map(str, record['not_scanned']))} not scanned: co-smoothing rose "
            "no further before them"
        )
    if "long_fits" in record:
        lines.append(
            f"the {record['steps_per_size']}-step fits spread "
            f"{100 * record['short_fit_spread']:.0f}% of the best score, so the sizes they could "
            f"not tell apart were refitted with {record['long_fits']['steps_per_size']} steps"
        )
    lines.append(f"latent size {record['chosen']}: {record['rule']}")
    return lines


def log_search(record: dict[str, Any]) -> None:
    for line in describe_search(record):
        info(line)
