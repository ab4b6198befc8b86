"""The one training loop, shared by every stage (autoencoder, diffusion, ...).

Contract
--------
    result = fit(model, train, val, loss_fn, cfg, device=..., checkpoint=spec, resume=ckpt)

- `train` / `val`: in-memory datasets, `dict[str, Tensor]`, every tensor's first dim = trial
  (e.g. {"counts": [B, L, N], "mask": [B, L]}). They are moved to `device` once. `val` may be
  None (then the last weights are "best").
- `loss_fn(model, batch, generator) -> (loss, logs)`: `batch` is the dict indexed by a batch of
  trials, `generator` a `torch.Generator` on `device` for every random draw the loss makes (noise,
  time steps, dropout masks), `loss` a scalar tensor: the *mean* over the batch's trials (the
  trainer weights ranks by trial count under DDP), `logs` a dict of floats. Call the model through
  `model(...)` (it may be wrapped in DistributedDataParallel; reach attributes via
  `getattr(model, "module", model)`).
- `val_loss_fn` (default `loss_fn`) is called under `torch.no_grad()`, `model.eval()`, with a
  generator re-seeded identically every validation, so validation scores compare across epochs.
  When EMA is on, validation (and the "best" weights) use the EMA weights.
- Optimiser: AdamW with `s4.ssm_param_groups` (SSM parameters: no weight decay, `ssm_lr`); linear
  warm-up then cosine decay to `final_lr_frac`·lr, per step; gradient clipping by global norm.
- Checkpoints (when `checkpoint` is given; rank 0 only; atomic): tensors `model.*` = best weights
  (what later stages load), `state.*` = exact training state (current weights, EMA, optimiser,
  RNG states); `extra["train"]` = summary + resume bookkeeping. Written at most every
  `checkpoint_every_s` at epoch ends, on Ctrl-C, and at the end. `fit(..., resume=ckpt)` continues
  bit-for-bit where the checkpoint stopped (mid-epoch included).
- Ctrl-C (or SIGTERM): the first one finishes the current step, saves a resumable checkpoint and
  returns with `result.interrupted = True` (the command prints how to resume); a second one
  aborts at once. Under DDP every rank stops at the same step.
- Multi-process: under `torchrun`, call `distributed.init()` first; the model is wrapped in DDP,
  every rank draws the same permutation and takes its shard of each *global* batch of
  `batch_size` trials, so results equal one process in expectation (exactly, for deterministic
  losses with equal-length trials).
- Determinism: the data order and the loss's random draws come from explicit generators seeded
  from `cfg.seed` (per rank for the loss); the model's initialisation is the caller's business.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldns_cli.core.checkpoint import (
    Checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from ldns_cli.core.config import config_to_dict
from ldns_cli.core.console import err_console, info, is_quiet, progress, set_quiet, warn
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed, keep_freed_memory
from ldns_cli.fit import distributed as dist
from ldns_cli.fit.ema import EMA
from ldns_cli.nn.s4 import ssm_param_groups

LossFn = Callable[[nn.Module, dict[str, Tensor], torch.Generator], tuple[Tensor, dict[str, float]]]

_VAL_SEED_OFFSET = 7919


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every stage (saved with the weights).

    Attributes:
        epochs: passes over the training trials.
        batch_size: trials per optimiser step (global: summed over DDP ranks).
        lr: peak learning rate of AdamW.
        ssm_lr: learning rate of the SSM dynamics parameters (None: same as lr).
        weight_decay: AdamW weight decay (never applied to SSM parameters).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        final_lr_frac: the cosine decay ends at this fraction of the peak learning rate.
        grad_clip: maximum global gradient norm (0 disables clipping).
        ema_decay: EMA decay of the weights (None: no EMA), after a short warm-up
            min(decay, (1+n)/(10+n)) at optimiser step n.
        amp: bf16 autocast on CUDA (FFTs stay in float32); ignored on CPU.
        seed: seeds the data order and the loss's random draws.
        checkpoint_every_s: minimum wall time between periodic checkpoints (epoch ends).
        min_steps: train for at least this many optimiser steps: small datasets get more epochs
            than `epochs` (0: exactly `epochs`).
        patience: stop early once the validation loss has not improved for this many epochs
            and `min_steps` are done (0: never; needs validation trials).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    ssm_lr: float | None = None
    weight_decay: float = 0.01
    warmup_epochs: float = 5.0
    final_lr_frac: float = 0.1
    grad_clip: float = 2.0
    ema_decay: float | None = None
    amp: bool = False
    seed: int = 0
    checkpoint_every_s: float = 60.0
    min_steps: int = 0
    patience: int = 0

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.ssm_lr is None or self.ssm_lr >= 0, "ssm_lr must be >= 0"),
            (self.weight_decay >= 0, "weight decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.final_lr_frac <= 1, "final_lr_frac must be in [0, 1]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.ema_decay is None or 0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.min_steps >= 0, "min_steps must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LdnsError(msg, "check the flags or --config file")
        check_seed(self.seed, "seed")


TRAIN_KEYS = frozenset(f.name for f in TrainConfig.__dataclass_fields__.values())


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_frac: float) -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based).

    Linear warm-up (1/w, 2/w, ..., 1) over `warmup_steps`, then a half cosine from 1 down to
    `final_frac` at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress_frac = min(1.0, (step - warmup_steps) / decay_steps)
    return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress_frac))


@dataclass
class CheckpointSpec:
    """Where and how the trainer writes the stage's checkpoint."""

    path: Path
    kind: str
    config: dict[str, Any]
    fingerprint: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    # the training log: a CSV next to the checkpoint, its loss columns named after what the loss
    # measures (with its unit), e.g. "poisson_nll_nats_per_neuron_bin"
    loss_name: str = "loss"

    @property
    def log_path(self) -> Path:
        """`<folder>/<stage>_training.csv`, next to the checkpoint."""
        return self.path.parent / f"{self.path.stem}_training.csv"


@dataclass
class FitResult:
    """What `fit` returns; `model` holds the best (EMA, if enabled) weights, in eval mode."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val: float | None
    epochs_done: int
    steps_done: int
    interrupted: bool
    train_seconds: float
    trials_seen: int
    checkpoint: Checkpoint | None = None
    stop_reason: str = ""  # why training ended, in words


class _StopOnInterrupt:
    """First Ctrl-C (or SIGTERM) requests a clean stop after the current step; a second aborts.

    SIGTERM is handled too because torchrun forwards it to the workers when its own launcher is
    interrupted (and then waits before killing them), and batch schedulers use it to preempt.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, external: threading.Event | None = None) -> None:
        self._signalled = False
        self._external = external  # a stop asked for by the caller (a fit no longer needed)
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._signalled or (self._external is not None and self._external.is_set())

    def _handler(self, signum: int, frame: Any) -> None:
        if self._signalled:
            raise KeyboardInterrupt
        self._signalled = True
        if dist.is_main():
            warn("interrupt: saving a resumable checkpoint after this step (Ctrl-C again to abort)")

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _index(data: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(0, idx) for k, v in data.items()}


def _n_trials(data: dict[str, Tensor]) -> int:
    sizes = {int(v.shape[0]) for v in data.values()}
    if len(sizes) != 1:
        raise ValueError(f"dataset tensors disagree on the number of trials: {sorted(sizes)}")
    return sizes.pop()


def _state_dict_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Trainer:
    def __init__(
        self,
        model: nn.Module,
        train: dict[str, Tensor],
        val: dict[str, Tensor] | None,
        loss_fn: LossFn,
        cfg: TrainConfig,
        device: str,
        checkpoint: CheckpointSpec | None,
        val_loss_fn: LossFn | None,
        description: str,
        stop: threading.Event | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device)
        self.net = model.to(self.device)  # the bare module (saved, EMA'd)
        self.train = {k: v.to(self.device) for k, v in train.items()}
        self.val = None if val is None else {k: v.to(self.device) for k, v in val.items()}
        self.n_train = _n_trials(self.train)
        self.loss_fn = loss_fn
        self.val_loss_fn = val_loss_fn or loss_fn
        self.spec = checkpoint
        self.description = description
        self.stop = stop

        self.model: nn.Module = self.net
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        groups = ssm_param_groups(self.net, cfg.lr, cfg.weight_decay, cfg.ssm_lr)
        self.base_lrs = [g["lr"] for g in groups]
        # the multi-tensor step on the CPU too (torch's default there is one tensor at a time):
        # the same numbers, and 300 steps over 36 small parameter tensors took 0.75 s instead
        # of 1.20 s (2 threads)
        foreach = True if self.device.type == "cpu" else None
        self.opt = torch.optim.AdamW(
            groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=foreach
        )
        # warm-up min(decay, (1+n)/(10+n)): without it a short run's EMA still holds most of
        # the random initialisation (0.999 over 300 steps keeps e^-0.3 = 74% of it)
        self.ema = EMA(self.net, cfg.ema_decay) if cfg.ema_decay is not None else None

        self.steps_per_epoch = max(1, math.ceil(self.n_train / cfg.batch_size))
        # small datasets get extra epochs so that training lasts at least `min_steps` steps
        self.epochs = max(cfg.epochs, math.ceil(cfg.min_steps / self.steps_per_epoch))
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)  # same order on every rank
        self.loss_gen = torch.Generator(self.device).manual_seed(dist.rank_seed(cfg.seed) + 1)
        self.epoch_start_data_state = self.data_gen.get_state()

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.history: list[dict[str, float]] = []
        self.best_val: float | None = None
        self.best_epoch = 0
        self.best_state = self.eval_state()
        self.train_seconds = 0.0
        self.trials_seen = 0
        self.stop_reason = ""

    def eval_weights(self) -> contextlib.AbstractContextManager[nn.Module]:
        """`self.net` holding the weights to validate and keep (the EMA ones, if any)."""
        return (
            self.ema.swapped_in(self.net)
            if self.ema is not None
            else contextlib.nullcontext(self.net)
        )

    def eval_state(self) -> dict[str, Tensor]:
        with self.eval_weights() as module:
            return _state_dict_copy(module)

    # ------------------------------------------------------------------ state <-> checkpoint
    def state_checkpoint(self, complete: bool) -> Checkpoint:
        tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in self.best_state.items()}
        tensors.update({f"state.model.{k}": v for k, v in self.net.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"state.ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt, prefix="state.optim")
        tensors.update(opt_tensors)
        tensors["state.rng.data_epoch"] = self.epoch_start_data_state
        tensors["state.rng.loss"] = self.loss_gen.get_state()
        resume = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_loss_n": self.epoch_loss_n,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "trials_seen": self.trials_seen,
            "optimizer": opt_meta,
            "complete": complete,
            "world_size": dist.world_size(),
        }
        spec = self.spec
        extra = dict(spec.extra) if spec else {}
        extra["train"] = {
            "config": config_to_dict(self.cfg),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "stop_reason": self.stop_reason,
            "resume": resume,
        }
        return Checkpoint(
            kind=spec.kind if spec else "state",
            tensors=tensors,
            config=spec.config if spec else {},
            fingerprint=spec.fingerprint if spec else {},
            extra=extra,
        )

    def save(self, complete: bool) -> Checkpoint:
        ckpt = self.state_checkpoint(complete)
        if self.spec is not None and dist.is_main():
            save_checkpoint(self.spec.path, ckpt)
            self.write_log()
        dist.barrier()
        return ckpt

    def restore(self, ckpt: Checkpoint) -> None:
        train_meta = ckpt.extra.get("train", {})
        resume = train_meta.get("resume")
        state = ckpt.subset("state.model")
        if not resume or not state:
            raise LdnsError(
                f"'{ckpt.path}' holds no training state to resume from",
                "start a new fit without --resume",
            )
        if resume.get("world_size", 1) != dist.world_size():
            warn(
                f"resuming a {resume.get('world_size')}-process run with {dist.world_size()} "
                "process(es): the data order stays the same, the dropout draws differ"
            )
        self.net.load_state_dict(state)
        if self.ema is not None:
            # parameters only (older checkpoints also hold buffers); no EMA saved: start from
            # the training weights. The update count is the step count.
            ema_state = ckpt.subset("state.ema") or state
            ema_state = {k: v for k, v in ema_state.items() if k in self.ema.shadow}
            ema_state["num_updates"] = torch.tensor(int(resume["global_step"]))
            self.ema.load_state_dict(ema_state)
        try:
            optimizer_from_tensors(
                self.opt, ckpt.tensors, resume["optimizer"], prefix="state.optim"
            )
        except (ValueError, KeyError) as exc:
            raise LdnsError(
                f"cannot resume from '{ckpt.path}': optimiser state does not fit ({exc})",
                "start a new fit without --resume",
            ) from None
        self.best_state = {k: v.to(self.device) for k, v in ckpt.subset("model").items()}
        self.epoch_start_data_state = ckpt.tensors["state.rng.data_epoch"]
        self.data_gen.set_state(self.epoch_start_data_state)
        if resume.get("world_size", 1) == dist.world_size():
            self.loss_gen.set_state(ckpt.tensors["state.rng.loss"])
        self.epoch = int(resume["epoch"])
        self.step_in_epoch = int(resume["step_in_epoch"])
        self.global_step = int(resume["global_step"])
        self.epoch_loss_sum = float(resume["epoch_loss_sum"])
        self.epoch_loss_n = int(resume["epoch_loss_n"])
        self.best_val = resume["best_val"]
        self.best_epoch = int(resume["best_epoch"])
        self.train_seconds = float(resume.get("train_seconds", 0.0))
        self.trials_seen = int(resume.get("trials_seen", 0))
        self.history = list(train_meta.get("history", []))

    def write_log(self) -> None:
        """Rewrite the per-epoch CSV log (atomically; a log that cannot be written only warns).

        Written every epoch once the model folder exists, and with every checkpoint (the first
        save makes the folder: a fit that fails early leaves no folder behind)."""
        if self.spec is None or not self.spec.log_path.parent.is_dir():
            return
        write_training_log(self.spec.log_path, self.history, self.spec.loss_name)

    # ------------------------------------------------------------------ steps
    def autocast(self) -> Any:
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, global_idx: Tensor) -> float:
        local = dist.shard(global_idx)
        weight = len(local) * dist.world_size() / len(global_idx)
        if len(local) == 0:  # fewer trials than ranks: take part in the all-reduce with weight 0
            local, weight = global_idx[:1], 0.0
        batch = _index(self.train, local.to(self.device))
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr_factor(
                self.global_step, self.warmup_steps, self.total_steps, self.cfg.final_lr_frac
            )
        self.model.train()
        with self.autocast():
            loss, _ = self.loss_fn(self.model, batch, self.loss_gen)
        if not torch.isfinite(loss):
            raise LdnsError(
                f"training diverged (loss {float(loss)}) at epoch {self.epoch + 1}",
                "lower --lr, or check the data for extreme counts",
            )
        self.opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.net)
        self.global_step += 1
        self.trials_seen += len(global_idx)
        return float(loss.detach())

    def validate(self) -> float | None:
        if self.val is None:
            return None
        with torch.no_grad(), self.eval_weights() as module:
            return self._validate(module)

    def _validate(self, module: nn.Module) -> float:
        module.eval()
        gen = torch.Generator(self.device).manual_seed(
            dist.rank_seed(self.cfg.seed) + _VAL_SEED_OFFSET
        )
        n_val = _n_trials(self.val)
        idx_all = dist.shard(torch.arange(n_val))
        loss_sum, count = 0.0, 0
        for start in range(0, len(idx_all), self.cfg.batch_size):
            idx = idx_all[start : start + self.cfg.batch_size].to(self.device)
            with self.autocast():
                loss, _ = self.val_loss_fn(module, _index(self.val, idx), gen)
            loss_sum += float(loss) * len(idx)
            count += len(idx)
        # summed over ranks as a float64 tensor (a CPU tensor for one process: MPS has no fp64)
        dev = self.device if dist.is_initialized() else "cpu"
        total = dist.all_reduce_sum(
            torch.tensor([loss_sum, count], dtype=torch.float64, device=dev)
        )
        return float(total[0] / total[1].clamp_min(1))

    # ------------------------------------------------------------------ loop
    def run(self) -> FitResult:
        cfg = self.cfg
        main = dist.is_main()
        if self.epochs > cfg.epochs and self.epoch == 0 and self.step_in_epoch == 0:
            info(
                f"{self.description}: {self.epochs} epochs instead of {cfg.epochs}, to train for "
                f"at least {cfg.min_steps} steps ({self.steps_per_epoch} per epoch)"
            )
        last_save = time.monotonic()
        interrupted = False
        show = main and not is_quiet()
        log_epochs = show and not err_console.is_terminal
        with (
            _StopOnInterrupt(self.stop) as stop,
            progress(self.description, self.total_steps) as bar,
        ):
            task = bar.add_task(
                self.description, total=self.total_steps, completed=self.global_step, status=""
            )
            while self.epoch < self.epochs:
                self.data_gen.set_state(self.epoch_start_data_state)
                perm = torch.randperm(self.n_train, generator=self.data_gen)
                t0 = time.perf_counter()
                while self.step_in_epoch < self.steps_per_epoch:
                    s = self.step_in_epoch * cfg.batch_size
                    loss = self.train_step(perm[s : s + cfg.batch_size])
                    self.step_in_epoch += 1
                    self.epoch_loss_sum += loss
                    self.epoch_loss_n += 1
                    if main:
                        bar.update(
                            task,
                            completed=self.global_step,
                            status=self._status(self.epoch_loss_sum / self.epoch_loss_n, None),
                        )
                    if dist.any_rank(stop.requested, self.device):
                        interrupted = True
                        break
                self.train_seconds += time.perf_counter() - t0
                if interrupted:
                    break
                val_loss = self.validate()
                train_loss = self.epoch_loss_sum / max(1, self.epoch_loss_n)
                self.epoch += 1
                better = val_loss is None or self.best_val is None or val_loss < self.best_val
                if better:
                    self.best_val, self.best_epoch = val_loss, self.epoch
                    self.best_state = self.eval_state()
                self.history.append(
                    {
                        "epoch": self.epoch,
                        "train_loss": train_loss,
                        "val_loss": val_loss if val_loss is not None else float("nan"),
                        "lr": self.opt.param_groups[0]["lr"],
                        "step": self.global_step,
                        "train_seconds": self.train_seconds,
                    }
                )
                if main:
                    self.write_log()
                if main:
                    bar.update(task, status=self._status(train_loss, val_loss, done=True))
                if log_epochs:
                    info(self._status(train_loss, val_loss, done=True))
                # next epoch: its permutation continues the data stream from here
                self.step_in_epoch, self.epoch_loss_sum, self.epoch_loss_n = 0, 0.0, 0
                self.epoch_start_data_state = self.data_gen.get_state()
                if self.plateaued(val_loss):
                    self.stop_reason = (
                        f"stopped after epoch {self.epoch}: the validation loss has not improved "
                        f"for {cfg.patience} epochs (best {self.best_val:.4g} at epoch "
                        f"{self.best_epoch}; at least {cfg.min_steps} steps done)"
                    )
                    break
                if (
                    self.epoch < self.epochs
                    and time.monotonic() - last_save >= cfg.checkpoint_every_s
                ):
                    self.save(complete=False)
                    last_save = time.monotonic()
                if dist.any_rank(stop.requested, self.device):
                    interrupted = True
                    break
        if not interrupted and not self.stop_reason:
            where = (
                "still improving at the end"
                if self.best_epoch == self.epoch
                else f"best at epoch {self.best_epoch}"
            )
            self.stop_reason = (
                f"trained all {self.epochs} epochs ({self.global_step} steps; {where})"
            )
        ckpt = self.save(complete=not interrupted)
        self.net.load_state_dict(self.best_state)
        self.net.eval()
        return FitResult(
            model=self.net,
            history=self.history,
            best_epoch=self.best_epoch,
            best_val=self.best_val,
            epochs_done=self.epoch,
            steps_done=self.global_step,
            interrupted=interrupted,
            train_seconds=self.train_seconds,
            trials_seen=self.trials_seen,
            checkpoint=ckpt,
            stop_reason=self.stop_reason,
        )

    def plateaued(self, val_loss: float | None) -> bool:
        """The stop rule: `patience` epochs without a better validation loss, after the floor."""
        cfg = self.cfg
        return (
            cfg.patience > 0
            and val_loss is not None
            and self.global_step >= cfg.min_steps
            and self.epoch - self.best_epoch >= cfg.patience
        )

    def _status(self, train_loss: float, val_loss: float | None, done: bool = False) -> str:
        shown = self.epoch if done else min(self.epoch + 1, self.epochs)
        text = f"epoch {shown}/{self.epochs} train {train_loss:.4f}"
        if val_loss is not None:
            text += f" val {val_loss:.4f}"
        if self.best_val is not None:
            text += f" (best {self.best_val:.4f} @ {self.best_epoch})"
        return text


def fit(
    model: nn.Module,
    train: dict[str, Tensor],
    val: dict[str, Tensor] | None,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    checkpoint: CheckpointSpec | None = None,
    resume: Checkpoint | None = None,
    val_loss_fn: LossFn | None = None,
    description: str = "training",
    stop: threading.Event | None = None,
) -> FitResult:
    """Train `model` on `train`, validating on `val` each epoch; see the module docstring.

    `stop`, when set (from another thread), ends training after the current step as a Ctrl-C
    does: the result is marked interrupted."""
    keep_freed_memory()  # reuse freed activation memory across steps (CPU: 6-7% per step)
    if not dist.is_main():
        set_quiet(True)  # progress and info from rank 0 only
    trainer = _Trainer(
        model, train, val, loss_fn, cfg, device, checkpoint, val_loss_fn, description, stop
    )
    if resume is not None:
        trainer.restore(resume)
    return trainer.run()


def strip_training_state(ckpt: Checkpoint) -> Checkpoint:
    """A copy without `state.*` tensors (smaller files for shipping; no longer resumable)."""
    tensors = {k: v for k, v in ckpt.tensors.items() if not k.startswith("state.")}
    extra = copy.deepcopy(ckpt.extra)
    extra.get("train", {}).pop("resume", None)
    return Checkpoint(
        kind=ckpt.kind,
        tensors=tensors,
        config=ckpt.config,
        fingerprint=ckpt.fingerprint,
        extra=extra,
        version=ckpt.version,
        path=ckpt.path,
    )


LOG_COLUMNS = ("epoch", "step", "train_seconds", "lr")


def write_training_log(path: Path, history: list[dict[str, float]], loss_name: str) -> None:
    """The per-epoch log as CSV: epoch, optimiser step, cumulative training seconds, learning
    rate, then `train_<loss_name>` and `val_<loss_name>` (empty without validation)."""
    header = [*LOG_COLUMNS, f"train_{loss_name}", f"val_{loss_name}"]
    lines = [",".join(header)]
    for row in history:
        values = [row.get(k, float("nan")) for k in LOG_COLUMNS]
        values += [row.get("train_loss", float("nan")), row.get("val_loss", float("nan"))]
        lines.append(",".join(_csv_number(v) for v in values))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        warn(f"could not write the training log {path}: {exc.strerror or exc}")
        tmp.unlink(missing_ok=True)


def _csv_number(value: float) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.8g}"


def resume_hint(command: str) -> str:
    """The message printed after an interrupted fit."""
    return (
        f"training interrupted; a resumable checkpoint was saved. Resume with: {command} --resume"
    )


__all__ = [
    "TRAIN_KEYS",
    "CheckpointSpec",
    "FitResult",
    "TrainConfig",
    "fit",
    "lr_factor",
    "resume_hint",
    "strip_training_state",
    "write_training_log",
]
