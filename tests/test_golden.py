"""Golden digests: a refactoring must leave every output bit for bit as it was.

SHA-256 of sampled HDF5 files from the shipped reach and Lorenz models, of the tensors (and
resolved settings) written by a short seeded `fit-ae` / `fit-diffusion`, and of `evaluate --json`.

Floating-point results of training depend on the CPU's vector instructions and on the torch
build and on the thread count, so the digests are asserted on the platform they were recorded on
(torch version, CPU capability and threads below; `make test` runs with 2 threads) and skipped elsewhere; the same-seed reproducibility tests run everywhere.
Re-record (only when an output is *meant* to change) with:

    OMP_NUM_THREADS=2 LDNS_PRINT_GOLDEN=1 python -m pytest tests/test_golden.py -s
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from ldns_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

RECORDED_ON = {"torch": "2.13.0+cpu", "cpu": "AVX2", "threads": 2}
GOLDEN = {
    "sample_reach": "72bf544d90891704027e9e907a506e2ccc3cf8bf938dfccefa5bd8d54000ce6d",
    "sample_lorenz": "a11f9345899e10af602d7cea3e300922ef1df67c28054d690d3288ce7611c997",
    "fit_ae": "c84d0365b53f0e862fdd59d4ecf323811884284df5e377df0350069cd342a240",
    "fit_history": "fac6427820e152bf77dd58bbabacb79237e79ae8331852fb43b687174d5bf6c0",
    "fit_diffusion": "c8a565a21d63311059d867f9e7e83a64f6977cdbd2ac87436fb74c22454f3403",
    "evaluate_json": "151cc545fe86e265673d8326f8c9210ba15c99ecff848bd3ee75fe71a55b3695",
}


def _run(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensor_digest(path: Path) -> str:
    """Every tensor (name, dtype, shape, bytes) plus the resolved settings and fingerprint;
    not the summary, which holds wall-clock timings."""
    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        for key in ("ldns.kind", "ldns.config", "ldns.fingerprint"):
            h.update(key.encode() + meta[key].encode())
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


PATH_KEYS = {"path", "source_file", "models", "settings.models"}


def _without_paths(value: object) -> object:
    """The JSON payload minus the entries that name files (they name this test's temporary
    folder): the files' `path`s and, in their provenance, source file and model folder."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _platform() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),  # reductions split differently per thread count
    }


def _digests(tmp_path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    common = ["--device", "cpu", "-q"]
    cwd = Path.cwd()
    os.chdir(ROOT)  # the model folder is stored as given (-m models): keep it relative
    try:
        reach = tmp_path / "reach.h5"
        _run(["sample", "-n", "4", "--length", "64", "--condition", "angle=0.5",
              "--seed", "3", "-o", str(reach), *common])  # fmt: skip
        lorenz = tmp_path / "lorenz.h5"
        _run(["sample", "-m", "models/lorenz", "-n", "3", "--length", "96", "--seed", "11",
              "--sampler", "ddim", "--steps", "10", "-o", str(lorenz), *common])  # fmt: skip
    finally:
        os.chdir(cwd)
    out["sample_reach"] = _file_digest(reach)
    out["sample_lorenz"] = _file_digest(lorenz)

    data = tmp_path / "d.h5"
    models = tmp_path / "m"
    _run(["simulate", "lorenz", "--trials", "40", "--length", "64", "--neurons", "16",
          "--seed", "0", "-o", str(data), "-q"])  # fmt: skip
    _run(["fit-ae", str(data), "-m", str(models), "--epochs", "2", "--seed", "0",
          "--latent-dim", "8", *common])  # fmt: skip
    _run(["fit-diffusion", str(data), "-m", str(models), "--epochs", "2", "--seed", "0",
          "--calibration-trials", "16", *common])  # fmt: skip
    out["fit_ae"] = _tensor_digest(models / "ae.safetensors")
    out["fit_history"] = _tensor_digest(models / "history.safetensors")
    out["fit_diffusion"] = _tensor_digest(models / "diffusion.safetensors")

    samples = tmp_path / "s.h5"
    _run(["sample", "-m", str(models), "-n", "12", "--length", "64", "--seed", "1",
          "-o", str(samples), *common])  # fmt: skip
    payload = _run(["evaluate", str(data), str(samples), "--json", "--seed", "2", "-q"])
    out["evaluate_json"] = hashlib.sha256(
        json.dumps(_without_paths(json.loads(payload)), sort_keys=True).encode()
    ).hexdigest()
    return out


@pytest.mark.slow
def test_outputs_match_the_golden_digests(tmp_path):
    if os.environ.get("LDNS_PRINT_GOLDEN"):
        print(json.dumps({"platform": _platform(), **_digests(tmp_path)}, indent=4))
        return
    if _platform() != RECORDED_ON:
        pytest.skip(f"digests recorded on {RECORDED_ON}, this is {_platform()}")
    assert _digests(tmp_path) == GOLDEN
