"""Diagonal state-space layer (S4D-style) applied as a global FFT convolution.

Each of the H channels owns a diagonal SSM with M complex modes (state size 2M as real numbers):

    x_t = exp(Δλ) ⊙ x_{t-1} + B̄ u_t,   B̄ = (exp(Δλ) − 1)/λ   (zero-order hold, B = 1 folded in)
    y_t = 2·Re(C x_t) + D u_t

whose impulse response is the kernel K[l] = 2·Re Σ_m C_m B̄_m exp(Δλ_m l). The kernel is computed for
the input's length every call (no stored length, so any length works, including lengths never seen
in training) and applied by FFT convolution at a fast size n ≥ 2L, always in float32.

Bidirectional layers add an anti-causal kernel with its own C (shared λ and Δ), summed, not
concatenated, as LDNS does (Kapoor et al. 2024):

    y_t = Σ_{l≥0} Kᶠ[l] u_{t−l} + Σ_{m≥1} Kᵇ[m−1] u_{t+m} + D u_t

(the backward kernel skips lag 0, so the D skip is not counted twice).

Kernel construction uses the factored Vandermonde product: with t = cT + j,
exp(Δλ t) = exp(ΔλcT)·exp(Δλj), so K is one real batched GEMM over [H, Cn, 2M] × [H, 2M, T] and
never materialises [H, M, L]. `kernel_naive` is the O(H·M·L)-memory reference used by tests and
the benchmark (`python bench/bench_s4.py` times and sizes both).

Positive quantities are stored in log space (Δ, −Re λ); SSM parameters (Δ, λ) are tagged so that
`ssm_param_groups` can give them no weight decay and their own learning rate (the S4 optimiser
rule). For repeated calls at one length with frozen weights (diffusion sampling), wrap the calls in
`with cached_kernels(model):` so each layer computes rfft(K) once per (length, FFT size).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

SSM_PARAM_ATTR = "_ldns_ssm"


@lru_cache(maxsize=512)
def fast_fft_size(n: int) -> int:
    """Smallest integer ≥ n whose prime factors are all in {2, 3, 5, 7} (fast for MKL and cuFFT).

    A prime-sized transform can be 10× slower than its neighbour.
    """
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                # smallest power of two lifting p3 to ≥ n
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def _chunk_size(length: int) -> int:
    """Inner length T of the factored kernel: ≈√L (balances L/T + T exponentials), a power of 2."""
    t = 1 << max(3, round(math.log2(max(length, 1)) / 2))
    return min(t, 256)


def kernel_factored(dt_a: Tensor, c_tilde: Tensor, length: int) -> Tensor:
    """SSM convolution kernel by the factored Vandermonde product.

    Args:
        dt_a: Δλ, complex `[H, M]`.
        c_tilde: C·B̄ per direction, complex `[D, H, M]` (D = 1 causal, 2 bidirectional).
        length: kernel length L.

    Returns:
        Real kernel `[D, H, L]`: K[d, h, l] = 2·Re Σ_m c̃[d,h,m]·exp(Δλ[h,m]·l).
    """
    n_dir, n_ch, n_modes = c_tilde.shape
    t_in = _chunk_size(length)
    n_chunks = -(-length // t_in)
    dev = dt_a.device
    outer = torch.arange(n_chunks, device=dev, dtype=torch.float32) * t_in  # [Cn]
    inner = torch.arange(t_in, device=dev, dtype=torch.float32)  # [T]
    # P[d,h,m,c] = c̃·exp(Δλ·cT); Q[h,m,j] = exp(Δλ·j)
    p = c_tilde[..., None] * torch.exp(dt_a[None, :, :, None] * outer)  # [D, H, M, Cn]
    q = torch.exp(dt_a[..., None] * inner)  # [H, M, T]
    # 2·Re(P·Q) = 2·(Pr·Qr − Pi·Qi): one real GEMM over the stacked 2M axis
    p_cat = torch.cat([p.real, -p.imag], dim=2)  # [D, H, 2M, Cn]
    q_cat = torch.cat([q.real, q.imag], dim=1)  # [H, 2M, T]
    p_cat = p_cat.permute(1, 0, 3, 2).reshape(n_ch, n_dir * n_chunks, 2 * n_modes)  # [H, D·Cn, 2M]
    k = 2.0 * torch.bmm(p_cat, q_cat)  # [H, D·Cn, T]
    k = k.reshape(n_ch, n_dir, n_chunks * t_in).transpose(0, 1)  # [D, H, Cn·T]
    return k[..., :length]


def kernel_naive(dt_a: Tensor, c_tilde: Tensor, length: int) -> Tensor:
    """Reference kernel: the materialised Vandermonde product (O(H·M·L) memory)."""
    steps = torch.arange(length, device=dt_a.device, dtype=torch.float32)
    vander = torch.exp(dt_a[..., None] * steps)  # [H, M, L]
    return 2.0 * torch.einsum("dhm,hml->dhl", c_tilde, vander).real  # [D, H, L]


class S4Layer(nn.Module):
    """Diagonal SSM over time, one independent SSM per channel: `[B, H, L] -> [B, H, L]`.

    No activation, dropout or output projection inside (the blocks add those), as in LDNS.

    Args:
        channels: H, the number of channels (one SSM each).
        state_dim: real state size per channel; M = state_dim // 2 complex modes.
        bidirectional: add an anti-causal kernel (own C, shared λ, Δ); False = strictly causal.
        dt_min, dt_max: range of the log-uniform initial step size Δ (in bins).
        generator: RNG for the initialisation.
        channels_last: map `[B, L, H] -> [B, L, H]` instead. The FFTs still run on a contiguous
            `[B, H, L]` copy: fed a transposed view, the AE step's complex products after the
            rfft took 50 ms instead of 8 ms per step (profiler, 1 thread).
    """

    def __init__(
        self,
        channels: int,
        state_dim: int = 64,
        bidirectional: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last  # layout only; not part of the checkpoint
        if state_dim < 2 or state_dim % 2:
            raise ValueError("state_dim must be an even number >= 2")
        self.channels = channels
        self.bidirectional = bidirectional
        n_modes = state_dim // 2
        n_dir = 2 if bidirectional else 1
        gen = generator
        u = torch.rand(channels, generator=gen)
        log_dt = math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))
        # S4D-Lin initialisation: λ_m = −1/2 + iπm
        self.log_dt = nn.Parameter(log_dt)  # [H]
        self.log_a_real = nn.Parameter(torch.full((channels, n_modes), math.log(0.5)))  # [H, M]
        self.a_imag = nn.Parameter(math.pi * torch.arange(n_modes).float().repeat(channels, 1))
        # C as a real view [D, H, M, 2]; variance 1/2 per part ≈ complex standard normal
        c = torch.randn(n_dir, channels, n_modes, 2, generator=gen) * math.sqrt(0.5)
        self.c = nn.Parameter(c)
        self.d = nn.Parameter(torch.randn(channels, generator=gen))  # [H]
        for p in (self.log_dt, self.log_a_real, self.a_imag):
            setattr(p, SSM_PARAM_ATTR, True)
        # kernel cache for sampling: None = off; dict = on (see `cached_kernels`)
        self._cache: dict[tuple, Tensor] | None = None
        # longest kernel (lags per direction) applied; None = as long as the input (global)
        self.max_kernel_bins: int | None = None

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, state_dim={2 * self.log_a_real.shape[1]}, "
            f"bidirectional={self.bidirectional}"
        )

    # ------------------------------------------------------------------ SSM quantities
    def discretised(self) -> tuple[Tensor, Tensor]:
        """(Δλ complex [H, M], C·B̄ complex [D, H, M]) in float32 (zero-order hold)."""
        dt = torch.exp(self.log_dt.float())[:, None]  # [H, 1]
        lam = torch.complex(-torch.exp(self.log_a_real.float()), self.a_imag.float())  # [H, M]
        dt_a = dt * lam
        b_bar = torch.expm1(dt_a) / lam  # ZOH input matrix with B = 1
        c = torch.view_as_complex(self.c.float().contiguous())  # [D, H, M]
        return dt_a, c * b_bar

    def kernel(self, length: int, naive: bool = False) -> Tensor:
        """Real kernels `[D, H, L]` (D = 2 for bidirectional: forward, backward)."""
        dt_a, c_tilde = self.discretised()
        return (kernel_naive if naive else kernel_factored)(dt_a, c_tilde, length)

    def circular_kernel(self, length: int, n_fft: int, naive: bool = False) -> Tensor:
        """The layer's whole map as one real circular kernel `[H, n_fft]`, D skip included.

        `length` is the kernel length K (lags 0..K−1 each way); n_fft ≥ L + K − 1 for input L.
        Layout: lags 0..K−1 at the front, lag −m (m = 1..K−1) at index n − m, zeros between;
        D sits at lag 0, so the skip costs no extra pass over the activations.
        """
        k = self.kernel(length, naive=naive)  # [D, H, K]
        d = self.d.float()[:, None]  # [H, 1]
        forward = torch.cat([k[0, :, :1] + d, k[0, :, 1:]], dim=-1)  # [H, K]
        if self.bidirectional:
            gap = k.new_zeros(self.channels, n_fft - 2 * length + 1)
            return torch.cat([forward, gap, k[1, :, : length - 1].flip(-1)], dim=-1)  # [H, n]
        return torch.cat([forward, k.new_zeros(self.channels, n_fft - length)], dim=-1)

    def kernel_fft(self, length: int, n_fft: int, naive: bool = False) -> Tensor:
        """rfft of `circular_kernel` (D included): complex `[H, n_fft//2 + 1]`."""
        return torch.fft.rfft(self.circular_kernel(length, n_fft, naive=naive), n=n_fft)

    def _cached_kernel_fft(self, length: int, n_fft: int) -> Tensor:
        if self._cache is None:
            return self.kernel_fft(length, n_fft)
        key = (length, n_fft, self.log_dt.device)
        hit = self._cache.get(key)
        if hit is None:
            with torch.no_grad():
                hit = self.kernel_fft(length, n_fft)
            self._cache[key] = hit
        return hit

    # ------------------------------------------------------------------ forward
    def forward(self, u: Tensor) -> Tensor:
        """u `[B, H, L]` -> y `[B, H, L]` (`[B, L, H]` both if channels-last), in float32 inside."""
        if self.channels_last:
            return self._forward_cf(u.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return self._forward_cf(u)

    def _forward_cf(self, u: Tensor) -> Tensor:
        length = u.shape[-1]
        k_len = length if self.max_kernel_bins is None else min(length, self.max_kernel_bins)
        # lags −(K−1)..K−1 on an input of L bins: n ≥ L + K − 1 avoids wrap-around
        n_fft = fast_fft_size(length + k_len)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u32 = u.float()
            if self._cache is not None or not torch.is_grad_enabled():
                y, _ = _spectral_conv(u32, self._cached_kernel_fft(k_len, n_fft), n_fft)
            else:
                y = FFTConv.apply(u32, self.circular_kernel(k_len, n_fft), n_fft)
        return y.to(u.dtype)


def _spectral_conv(u: Tensor, k_hat: Tensor, n_fft: int) -> tuple[Tensor, Tensor]:
    """(irfft(rfft(u, n) · k_hat)[..., :L], rfft(u, n)) for u `[B, H, L]`, k_hat `[H, n/2+1]`."""
    u_hat = torch.fft.rfft(u, n=n_fft)  # [B, H, n/2+1]
    return torch.fft.irfft(u_hat * k_hat, n=n_fft)[..., : u.shape[-1]], u_hat  # [B, H, L]


class FFTConv(torch.autograd.Function):
    """y = (kernel ⊛ u)[..., :L]: circular convolution at FFT size n, with hand-written adjoints.

    Forward: y = irfft(rfft(u, n) · rfft(k))[:L] for u `[B, H, L]`, real kernel k `[H, n]`.
    Backward, both exact for the zero-padded circular convolution (no wrap-around reaches
    [0, L) because the kernel is zero between its lags K..n−K and n ≥ L + K − 1):

        ∂u = irfft(rfft(g, n) · conj(rfft(k)))[:L]        (correlation of g with the kernel)
        ∂k = irfft(Σ_b rfft(g, n) · conj(rfft(u, n)))       (correlation of g with u)

    Why not autograd through torch.fft: rfft's generic backward rebuilds a full-length complex
    spectrum (a zero fill plus a c2c transform over [B, H, n]); this costs two real transforms
    and keeps rfft(u) from the forward pass instead.
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, kernel: Tensor, n_fft: int) -> Tensor:
        k_hat = torch.fft.rfft(kernel, n=n_fft)  # [H, n/2+1]
        y, u_hat = _spectral_conv(u, k_hat, n_fft)  # [B, H, L], [B, H, n/2+1]
        ctx.save_for_backward(u_hat, k_hat)
        ctx.n_fft = n_fft
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        u_hat, k_hat = ctx.saved_tensors
        n_fft, length = ctx.n_fft, grad_y.shape[-1]
        g_hat = torch.fft.rfft(grad_y, n=n_fft)  # [B, H, n/2+1]
        grad_u = grad_k = None
        if ctx.needs_input_grad[1]:
            cross = (g_hat * u_hat.conj()).sum(dim=0)  # [H, n/2+1]
            grad_k = torch.fft.irfft(cross, n=n_fft)  # [H, n]
        if ctx.needs_input_grad[0]:  # g_hat is not needed after this: multiply in place
            grad_u = torch.fft.irfft(g_hat.mul_(k_hat.conj()), n=n_fft)[..., :length]
        return grad_u, grad_k, None


@contextmanager
def cached_kernels(model: nn.Module) -> Iterator[None]:
    """Reuse each S4 layer's rfft(K) per (length, FFT size) inside the block.

    For inference with frozen weights only (diffusion sampling calls the denoiser many times at
    one length): kernels are computed without gradient on first use and dropped on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, S4Layer)]
    previous = [m._cache for m in layers]
    for m in layers:
        m._cache = {}
    try:
        yield
    finally:
        for m, prev in zip(layers, previous, strict=True):
            m._cache = prev


def is_ssm_param(p: Tensor) -> bool:
    return bool(getattr(p, SSM_PARAM_ATTR, False))


def ssm_param_groups(
    model: nn.Module, lr: float, weight_decay: float, ssm_lr: float | None = None
) -> list[dict]:
    """AdamW parameter groups with the S4 optimiser rule.

    SSM dynamics parameters (Δ, λ) get no weight decay and their own learning rate `ssm_lr`
    (default: `lr`); everything else gets `lr` and `weight_decay`. Groups are never empty.
    """
    ssm, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (ssm if is_ssm_param(p) else rest).append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "default"}]
    if ssm:
        groups.append(
            {
                "params": ssm,
                "lr": lr if ssm_lr is None else ssm_lr,
                "weight_decay": 0.0,
                "name": "ssm",
            }
        )
    return groups
