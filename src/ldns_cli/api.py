"""The Python API: the command line's stages as functions, for notebooks and scripts.

    import ldns_cli as ldns

    rec = ldns.read("rec.nwb", align="move_onset_time", window=(-0.25, 0.45), bin_ms=5)
    ldns.fit_autoencoder(rec, "models/")
    ldns.fit_diffusion(rec, "models/", conditions=["angle"])
    m = ldns.load("models/")
    fake = m.sample(64, length=140, conditions={"angle": 0.5}, seed=0)
    ldns.write(fake, "out.nwb")
    scores = ldns.evaluate(rec, fake)

Every option is keyword-only and carries the name and default of its command-line flag
(`--lengths-from` is `lengths_from=`, `--condition` is `conditions=`). The same seed gives the same
numbers as the command line. Recordings and samples are `SpikeData`, whose fields are numpy
arrays (`counts [trial, time, neuron]`, `lengths [trial]`, `covariates`, `behavior`, ...).
Problems with the input raise `LdnsError` (with `.message` and `.hint`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldns_cli.auditing.run import audit as _audit
from ldns_cli.core.checkpoint import Checkpoint, check_data_matches
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device
from ldns_cli.diffusion.model import resolve_guidance
from ldns_cli.diffusion.samplers import check_steps, resolve_sampler_name
from ldns_cli.diffusion.sampling import DEFAULT_SAMPLER, SampleSettings
from ldns_cli.fit.autoencoder import AutoencoderFit, fit_autoencoder
from ldns_cli.fit.diffusion import DiffusionFit, fit_diffusion
from ldns_cli.fit.history import refit_history as fit_history
from ldns_cli.generate import GeneratedChunk, TrialPlan, generate, generate_chunks, plan_trials
from ldns_cli.io.common import ReadOptions
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import simulate
from ldns_cli.nn.autoencoder import infer
from ldns_cli.scoring.evaluation import evaluate as _evaluate
from ldns_cli.store import ModelSet, alignment_of, load_autoencoder, load_models

DEFAULT_FOLDER = "models"

__all__ = [
    "AutoencoderFit",
    "DiffusionFit",
    "GeneratedChunk",
    "LdnsError",
    "Models",
    "SpikeData",
    "TrialPlan",
    "audit",
    "encode",
    "evaluate",
    "fit_autoencoder",
    "fit_diffusion",
    "fit_history",
    "load",
    "read",
    "simulate",
    "write",
]


def read(
    path: str | Path,
    *,
    bin_ms: float | None = None,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    chop: float | None = None,
    trials: str | None = None,
    strict_windows: bool = False,
) -> SpikeData:
    """Read a recording (.nwb, .h5/.hdf5, LFADS-style HDF5) into `SpikeData`.

    `bin_ms` (default: the file's own bin size, else 5), `align` + `window` (seconds around a
    trials-table column, the Neural Latents Benchmark way), `chop` (seconds per window when there
    is no trials table), `trials` ("train", "val", "test", a range "0:20" of the file's trials,
    or "all"). A trial whose window runs outside the recording is left out with a warning, or
    is an error with `strict_windows`.
    """
    opts = ReadOptions.from_flags(bin_ms, align, window, chop, trials, strict_windows)
    return read_spikes(path, opts)


def write(
    data: SpikeData,
    path: str | Path,
    *,
    force: bool = False,
    save_latents: bool = False,
    save_rates: bool = False,
) -> None:
    """Write `data` as NWB (.nwb) or HDF5 (.h5), atomically; an existing file only with `force`.
    Latents and rates are written when present and asked for."""
    write_spikes(data, path, force=force, save_latents=save_latents, save_rates=save_rates)


def evaluate(
    reference: SpikeData,
    generated: SpikeData,
    *,
    folds: int = 5,
    seed: int = 0,
    conditions: list[str] | None = None,
) -> dict[str, Any]:
    """`ldns evaluate --json` as a dict: every statistic of `generated` against `reference`
    with the floor (the recording against itself), the naive Poisson model and the score
    (0 = as good as the data, 1 = no better than naive); under "conditions" the per-condition
    decoding and PSTH R² of the `conditions` (default: those `generated` was sampled with)."""
    return _evaluate(reference, generated, folds=folds, seed=seed, conditions=conditions)


def audit(
    train: SpikeData,
    heldout: SpikeData,
    samples: SpikeData,
    *,
    models: str | Path | Models | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """`ldns audit --json` as a dict: does `samples` copy the `train` trials its model saw, does
    the model reveal them (with `models`, a folder or a loaded `Models`), can a classifier tell
    samples from the real `heldout` trials, and do decoders trained on samples work on them?
    The "verdict" entry says it in words."""
    model_set = None
    if isinstance(models, Models):
        model_set = models._models
    elif models is not None:
        model_set = load_models(models, resolve_device(device))
    return _audit(train, heldout, samples, models=model_set, seed=seed, batch_size=batch_size)


def encode(
    data: SpikeData,
    folder: str | Path = DEFAULT_FOLDER,
    *,
    batch_size: int = 64,
    device: str = "auto",
) -> SpikeData:
    """`ldns encode`: `data` with the latents `[trial, time, Z]` and rates (spikes per bin) of
    the autoencoder in `folder` (which must have been fitted on data like it)."""
    if batch_size < 1:
        raise LdnsError(f"--batch-size must be >= 1, got {batch_size}", "e.g. --batch-size 64")
    dev = resolve_device(device)
    ae, ckpt = load_autoencoder(folder, dev)
    return _encode(ae, ckpt, data, batch_size, dev)


def _encode(ae: Any, ckpt: Checkpoint, data: SpikeData, batch_size: int, device: Any) -> SpikeData:
    check_data_matches(ckpt.fingerprint, data.fingerprint(), "autoencoder")
    latents, rates = infer(ae, data, batch_size, device)
    return dataclasses.replace(data, latents=latents, rates=rates)


def load(
    folder: str | Path = DEFAULT_FOLDER, *, device: str = "auto", observation: str = "auto"
) -> Models:
    """Load a model folder: autoencoder, diffusion model and observation model ("auto": spike
    history when fitted, else Poisson; or "history", "poisson"), checked to belong together."""
    return Models(load_models(folder, resolve_device(device), observation))


class Models:
    """The models of one folder, ready to encode recordings and to generate trials."""

    def __init__(self, models: ModelSet) -> None:
        self._models = models

    @property
    def folder(self) -> Path:
        return self._models.folder

    @property
    def device(self) -> torch.device:
        return next(self._models.ae.parameters()).device

    @property
    def conditions(self) -> list[str]:
        """Names of the conditions the diffusion model takes (empty: unconditional)."""
        return [c["name"] for c in self._models.diffusion.conditions]

    @property
    def observation(self) -> str:
        """The observation model samples are drawn with: "history" or "poisson"."""
        return self._models.observation.kind

    @property
    def bin_size_s(self) -> float:
        return self._models.diffusion.bin_size_s

    def __repr__(self) -> str:
        conds = ", ".join(self.conditions) or "none"
        return (
            f"Models('{self.folder}', {self._models.ae_checkpoint.fingerprint.get('n_neurons')} "
            f"neurons, {self.bin_size_s * 1e3:g} ms bins, conditions: {conds}, "
            f"{self.observation} spikes)"
        )

    def encode(self, data: SpikeData, *, batch_size: int = 64) -> SpikeData:
        """`data` with the autoencoder's latents `[trial, time, Z]` and rates (spikes per bin)."""
        return _encode(self._models.ae, self._models.ae_checkpoint, data, batch_size, self.device)

    def plan(
        self,
        n: int | None = None,
        *,
        length: int | str | tuple[int, int] | None = None,
        lengths_from: SpikeData | np.ndarray | None = None,
        conditions: Mapping[str, Any] | Sequence[str] | None = None,
        condition_from: SpikeData | None = None,
        per_condition: int | None = None,
        seed: int = 0,
    ) -> TrialPlan:
        """The trials `sample` would make (lengths and checked conditions), without sampling."""
        if isinstance(lengths_from, SpikeData):
            lengths_from = lengths_from.lengths
        return plan_trials(
            self._models.diffusion,
            n=n,
            length=length,
            lengths_from=lengths_from,
            conditions=conditions,
            condition_from=condition_from,
            per_condition=per_condition,
            seed=seed,
            alignment=alignment_of(self.folder),
        )

    def _prepare(self, args: dict[str, Any]) -> tuple[TrialPlan, SampleSettings]:
        """The plan and the sampler settings of a `sample`/`sample_chunks` call (its arguments)."""
        plan = self.plan(
            args["n"],
            length=args["length"],
            lengths_from=args["lengths_from"],
            conditions=args["conditions"],
            condition_from=args["condition_from"],
            per_condition=args["per_condition"],
            seed=args["seed"],
        )
        settings = SampleSettings(
            sampler=resolve_sampler_name(args["sampler"]),
            steps=args["steps"],
            guidance=resolve_guidance(self._models.diffusion, args["guidance"]),
            seed=args["seed"],
            batch_size=args["batch_size"],
            save_latents=args["save_latents"],
            save_rates=args["save_rates"],
            calibrate=args["calibration"],
        )
        settings.validate()
        if args["steps"] is not None:
            check_steps(args["steps"], self._models.diffusion.schedule.num_train_timesteps)
        return plan, settings

    def sample(
        self,
        n: int | None = None,
        *,
        length: int | str | tuple[int, int] | None = None,
        lengths_from: SpikeData | np.ndarray | None = None,
        conditions: Mapping[str, Any] | Sequence[str] | None = None,
        condition_from: SpikeData | None = None,
        per_condition: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        guidance: float | str = "auto",
        calibration: bool = True,
        save_latents: bool = False,
        save_rates: bool = False,
        batch_size: int = 64,
        seed: int = 0,
    ) -> SpikeData:
        """Generate trials in memory (`ldns sample` without the file).

        `n` trials of `length` bins (an int, "200:400" or (200, 400) for a uniform range), or
        with `lengths_from`'s length distribution. `conditions` like {"angle": 0.5} or
        {"angle": "0:6.28:8"} (a grid; with `per_condition` samples each), or `condition_from`
        (a recording whose trials lend their conditions and lengths). `sampler` dpm++ / ddim /
        ddpm with `steps` (default 20 / 50 / 1000), classifier-free `guidance` W ("auto": the
        weight `fit_diffusion` measured for a conditional model, else 1). The conditions
        come back as covariates (trial level) and behaviour (time series).
        """
        plan, settings = self._prepare(locals())
        m = self._models
        return generate(
            m.ae,
            m.diffusion,
            m.observation,
            plan.lengths,
            settings,
            self.device,
            conditions=plan.conditions,
            provenance={"observation": m.observation.kind, "models": str(m.folder)},
            plan=plan,
        )

    def sample_chunks(
        self,
        n: int | None = None,
        *,
        length: int | str | tuple[int, int] | None = None,
        lengths_from: SpikeData | np.ndarray | None = None,
        conditions: Mapping[str, Any] | Sequence[str] | None = None,
        condition_from: SpikeData | None = None,
        per_condition: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        guidance: float | str = "auto",
        calibration: bool = True,
        save_latents: bool = False,
        save_rates: bool = False,
        batch_size: int = 64,
        seed: int = 0,
    ) -> Iterator[GeneratedChunk]:
        """`sample` one network batch at a time, for memory bounded by `batch_size` whatever `n`.

        Each `GeneratedChunk` holds global trial indices (`index [b]`; chunks come sorted by
        length) and `counts [b, l, N]` (plus rates/latents when asked for); the numbers are those
        of `sample` with the same arguments.
        """
        plan, settings = self._prepare(locals())
        m = self._models
        yield from generate_chunks(
            m.ae, m.diffusion, m.observation, plan.lengths, settings, self.device, plan.conditions
        )
