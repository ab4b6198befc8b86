"""Exponential moving average (EMA) of a model's parameters, used for sampling.

The LDNS authors' code (diffusers-0.3 EMA) warms its decay up as 1 - (1+k)^(-2/3), which after
the paper's ~7-8k optimiser steps is still only ≈0.997 (an averaging window of ≈400 steps). Here
the decay is a fixed number (default 0.999, window ≈1000 steps) with an optional short warm-up
`min(decay, (1+n)/(10+n))`, which reaches 0.99 after ≈900 updates and the full 0.999 after
≈9000: early on it keeps the average from being dominated by the random initialisation; turn it
off (`warmup=False`) for an exact fixed-decay average.

Floating-point parameters are averaged in float32 (or float64 if the parameter is); buffers
(e.g. length-dependent S4 caches, step counters) are not averaged, the model's current ones are
used, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ldns_cli.core.errors import LdnsError


class EMA:
    """Shadow copy of `model`'s trainable parameters, updated after each optimiser step.

    Usage:
        ema = EMA(model, decay=0.999)
        for batch in loader:
            ...; optimizer.step(); ema.update(model)
        with ema.swapped_in(model):        # evaluate / sample with the EMA weights
            validate(model)
        save({**ema.state_dict()})          # plain tensors + a step count, safetensors-friendly

    Args:
        model: the module whose parameters are averaged (only `requires_grad` ones).
        decay: the fixed decay d in shadow ← d·shadow + (1-d)·param, in [0, 1).
        warmup: use min(decay, (1+n)/(10+n)) for the n-th update (n from 0).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise LdnsError(f"EMA decay must lie in [0, 1), got {decay}", "e.g. 0.999 or 0.9999")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: _averaging_copy(p) for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow ← d·shadow + (1-d)·param for every tracked parameter (after optimizer.step())."""
        d = self.current_decay()
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            p = params.get(name)
            if p is None:
                raise LdnsError(
                    f"EMA tracks parameter '{name}' that the model does not have",
                    "build the EMA from the same model architecture",
                )
            shadow.lerp_(p.detach().to(shadow.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's tracked parameters with the EMA values."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            params[name].copy_(shadow.to(params[name].dtype))

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into `model`; the training weights come back after.

        The backup is restored even if the body raises.
        """
        params = dict(model.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (contiguous, CPU): the shadow parameters plus `num_updates` as int64.

        Keys are the parameter names and `"num_updates"`; merge it into a safetensors dict with
        a prefix of your choice (e.g. `{"ema." + k: v}`).
        """
        out = {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load `state_dict()` output; the parameter names and shapes must match exactly."""
        state = dict(state)
        count = state.pop("num_updates", None)
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise LdnsError(
                "EMA state does not match the model "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})",
                "the checkpoint was written for a different architecture",
            )
        for name, value in state.items():
            if value.shape != self.shadow[name].shape:
                raise LdnsError(
                    f"EMA tensor '{name}' has shape {tuple(value.shape)}, "
                    f"expected {tuple(self.shadow[name].shape)}",
                    "the checkpoint was written for a different architecture",
                )
            self.shadow[name] = value.to(self.shadow[name].device, self.shadow[name].dtype).clone()
        self.num_updates = int(count) if count is not None else 0


def _averaging_copy(p: torch.Tensor) -> torch.Tensor:
    """A detached copy to average in: float32 at least (fp16/bf16 averages drift)."""
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    return p.detach().to(dtype).clone()
