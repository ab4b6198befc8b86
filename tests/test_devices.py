"""Device selection and the mixed-precision (GPU) code path, exercised on CPU.

`--device auto` must pick CUDA, then MPS, then CPU; asking for an absent accelerator is a user
error (exit 1, `error:` + `hint:`). Training on CUDA runs under bf16 autocast with the S4 FFTs in
float32; the same autocast path runs here on CPU with `torch.autocast("cpu", torch.bfloat16)`.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device
from ldns_cli.fit.autoencoder import ae_loss
from ldns_cli.io.formats import write_spikes
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
from ldns_cli.nn.denoiser import Denoiser, DenoiserConfig
from ldns_cli.nn.s4 import S4Layer, cached_kernels

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA machine")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# ---------------------------------------------------------------------------- resolution
@no_cuda
def test_auto_resolves_to_cpu_without_accelerators():
    assert resolve_device("auto") == ("mps" if _mps_available() else "cpu")
    assert resolve_device("CPU") == "cpu"


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def test_unavailable_or_unknown_devices_are_user_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "mps", "tpu"):
        with pytest.raises(LdnsError) as err:
            resolve_device(name)
        assert err.value.hint  # every device error tells the user what to do


@no_cuda
@pytest.mark.skipif(_mps_available(), reason="tests the no-MPS machine")
@pytest.mark.parametrize("device", ["cuda", "mps", "gpu"])
def test_cli_rejects_missing_device_with_error_and_hint(tmp_path, tiny_data, device):
    data_path = tmp_path / "tiny.h5"
    write_spikes(tiny_data(4, 16, 3), data_path)
    for args in (
        ["sample", "-m", str(tmp_path / "models"), "-n", "2", "--length", "16",
         "--device", device, "-o", str(tmp_path / "out.h5")],
        ["fit-ae", str(data_path), "-m", str(tmp_path / "models"), "--device", device],
    ):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stdout == ""  # stdout is for data only
        assert "error:" in result.stderr and "hint:" in result.stderr
        assert device in result.stderr
    assert not (tmp_path / "out.h5").exists()
    assert not (tmp_path / "models" / "ae.safetensors").exists()


# ------------------------------------------------------------------ autocast (the GPU path)
class FFTDtypes:
    """Records the dtypes that reach torch.fft.rfft/irfft (S4 looks them up at call time)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[torch.dtype] = []
        for name in ("rfft", "irfft"):
            original = getattr(torch.fft, name)

            def wrapped(x, *args, _f=original, **kwargs):
                self.seen.append(x.dtype)
                return _f(x, *args, **kwargs)

            monkeypatch.setattr(torch.fft, name, wrapped)


def test_s4_layer_under_bf16_autocast_runs_its_fft_in_float32(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    layer = S4Layer(16, state_dim=16, bidirectional=True, generator=gen)
    u = torch.randn(3, 16, 50, generator=gen).to(torch.bfloat16)  # [B, H, L] as autocast gives
    ffts = FFTDtypes(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(u)
    assert ffts.seen and all(d in (torch.float32, torch.complex64) for d in ffts.seen)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    # the same map in float32 outside autocast: only the final rounding to bf16 differs
    with torch.no_grad():
        ref = layer(u.float())
    torch.testing.assert_close(y.float(), ref, rtol=2**-7, atol=1e-3 * float(ref.abs().max()))


def test_ae_training_step_under_bf16_autocast_is_finite_and_close_to_fp32(monkeypatch):
    cfg = AEConfig(n_neurons=12, latent_dim=4, width=32, blocks=2, state_dim=16)
    model = Autoencoder(cfg, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.full((4, 64, 12), 0.4), generator=gen)
    batch = {"counts": counts, "mask": torch.ones(4, 64, dtype=torch.bool)}
    loss32, _ = ae_loss(model, batch, torch.Generator().manual_seed(2))
    ffts = FFTDtypes(monkeypatch)
    # exactly what fit.trainer._Trainer.autocast() does on CUDA, with the CPU device type
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _ = ae_loss(model, batch, torch.Generator().manual_seed(2))
    loss16.backward()
    assert ffts.seen and all(d in (torch.float32, torch.complex64) for d in ffts.seen)
    assert torch.isfinite(loss16)
    l16, l32 = float(loss16.detach()), float(loss32.detach())
    assert abs(l16 - l32) < 0.05 * abs(l32)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_denoiser_sampling_call_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)  # Denoiser init draws from the global generator
    net = Denoiser(DenoiserConfig(latent_dim=4, width=32, blocks=2, state_dim=16)).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 4, generator=gen)  # [B, L, Z]
    t = torch.tensor([10, 900])
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False  # padded trial: masked path too
    with torch.no_grad():
        ref = net(x, t, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16), cached_kernels(net):
            out = net(x, t, mask)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, float(err)
