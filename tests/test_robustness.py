"""Nothing silent, nothing left behind: damaged model files, argument edges, OS errors on
outputs, leftovers of killed runs, and byte-identical NWB for a seed.

Every failure a user can cause must end with exit code 1, one `error:` line and one `hint:` line
on stderr, nothing on stdout and no output file; a damaged model must never give exit 0 with
wrong spikes. The property-based tests at the end fuzz both model files and arguments.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import ldns_cli as ldns
from ldns_cli.cli import app
from ldns_cli.core import paths
from ldns_cli.core.checkpoint import load_checkpoint, save_checkpoint
from ldns_cli.core.errors import LdnsError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
STAGES = ("ae", "history", "diffusion")


def _invoke(args: list[str]):
    return runner.invoke(app, [*args, "-q"])


def _assert_clean_failure(result, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    for needle in needles:
        assert needle in lines[0], lines
    return lines[0]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A small fitted model folder written by this version (so with content hashes)."""
    folder = tmp_path_factory.mktemp("models") / "m"
    data = ldns.simulate("lorenz", trials=20, neurons=8, length=32, seed=0)
    ldns.fit_autoencoder(data, folder, epochs=1, width=8, blocks=1, latent_dim=2,
                         spike_history=False, device="cpu", quiet=True)  # fmt: skip
    ldns.fit_history(data, folder, iterations=5, rate_match_rounds=0, device="cpu", quiet=True)
    ldns.fit_diffusion(
        data, folder, epochs=1, width=8, blocks=1, calibration_trials=2, device="cpu"
    )
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, tensors=None, meta=None) -> None:
    """Change a checkpoint's tensors/metadata in place, keeping everything else (as a bit flip
    or a careless script would: the stored content hash is not updated)."""
    t = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        m = dict(fh.metadata())
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(path), metadata=m)


def _first(t: dict, prefix: str = "model.", ndim: int | None = None) -> str:
    return next(
        k for k in sorted(t) if k.startswith(prefix) and (ndim is None or t[k].ndim == ndim)
    )


def _set_nan(prefix: str = "model."):
    def f(t):
        t[_first(t, prefix)].view(-1)[0] = float("nan")

    return f


def _sample(folder: Path, out: Path, *extra: str):
    return _invoke(["sample", "-m", str(folder), "-n", "2", "--length", "16", "--device", "cpu",
                    "--save-rates", "-o", str(out), *extra])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 1. model-file integrity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("observation", ["auto", "poisson"])
def test_one_nan_in_an_old_model_file_is_named(tmp_path, stage, observation):
    # the shipped Lorenz models predate content hashes: the finiteness check must name the file
    m = _copy(ROOT / "models" / "lorenz", tmp_path / "m")
    _edit(m / f"{stage}.safetensors", tensors=_set_nan())
    out = tmp_path / "out.h5"
    result = _sample(m, out, "--observation", observation)
    if stage == "history" and observation == "poisson":
        assert result.exit_code == 0  # the damaged file is not used
        return
    _assert_clean_failure(result, f"{stage}.safetensors", "non-finite")
    assert not out.exists()


@pytest.mark.parametrize("stage", STAGES)
def test_a_changed_new_model_file_is_named(tmp_path, tiny_models, stage):
    m = _copy(tiny_models, tmp_path / "m")
    _edit(m / f"{stage}.safetensors", tensors=_set_nan())
    _assert_clean_failure(_sample(m, tmp_path / "o.h5"), f"{stage}.safetensors", "changed after")


def test_nan_in_the_stored_calibration_is_named(tmp_path):
    m = _copy(ROOT / "models" / "lorenz", tmp_path / "m")
    _edit(m / "diffusion.safetensors", tensors=_set_nan("calibration."))
    _assert_clean_failure(_sample(m, tmp_path / "o.h5"), "calibration.")


def test_a_float_tensor_stored_as_uint8_is_refused(tmp_path):
    m = _copy(ROOT / "models" / "lorenz", tmp_path / "m")

    def cast(t):
        k = _first(t)
        t[k] = t[k].to(torch.uint8)

    _edit(m / "diffusion.safetensors", tensors=cast)
    _assert_clean_failure(_sample(m, tmp_path / "o.h5"), "torch.uint8")


@pytest.mark.parametrize("stage", STAGES)
def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path, stage):
    m = _copy(ROOT / "models" / "lorenz", tmp_path / "m")

    def shrink(t):
        k = _first(t, ndim=2) if stage != "history" else "model.history"
        t[k] = t[k][:-1].clone()

    _edit(m / f"{stage}.safetensors", tensors=shrink)
    _assert_clean_failure(_sample(m, tmp_path / "o.h5"), f"{stage}.safetensors")


@pytest.mark.parametrize("value", [None, 0, -0.005, "5ms", float("nan")])
def test_a_damaged_fingerprint_is_refused(tmp_path, value):
    m = _copy(ROOT / "models" / "lorenz", tmp_path / "m")

    def damage(meta):
        fp = json.loads(meta["ldns.fingerprint"])
        fp["bin_size_s"] = value
        meta["ldns.fingerprint"] = json.dumps(fp)

    _edit(m / "ae.safetensors", meta=damage)
    _assert_clean_failure(_sample(m, tmp_path / "o.h5"), "ae.safetensors", "fingerprint")


def test_a_newer_checkpoint_format_is_refused_and_old_ones_load(tmp_path):
    path = tmp_path / "ae.safetensors"
    ckpt = load_checkpoint(ROOT / "models" / "lorenz" / "ae.safetensors", "ae")  # no format key
    save_checkpoint(path, ckpt)
    _edit(path, meta=lambda m: m.update({"ldns.format": "99"}))
    with pytest.raises(LdnsError, match="newer ldns"):
        load_checkpoint(path, "ae")


def test_non_finite_latents_or_rates_stop_sampling(tiny_models):
    m = ldns.load(tiny_models, device="cpu")
    diffusion = m._models.diffusion
    saved_std = diffusion.latent_std.copy()
    diffusion.latent_std = np.full_like(saved_std, 3e38)  # finite, but the decode overflows
    with pytest.raises(LdnsError, match="decoded rates are not finite"):
        m.sample(2, length=8)
    diffusion.latent_std = saved_std
    with torch.no_grad():
        next(diffusion.denoiser.parameters()).fill_(float("inf"))
    with pytest.raises(LdnsError, match="sampled latents are not finite"):
        m.sample(2, length=8)


# ---------------------------------------------------------------------------------------------
# 2. argument ranges, before any work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
@pytest.mark.parametrize("command", ["sample", "simulate", "evaluate", "fit-ae"])
def test_seeds_outside_32_bits_are_refused(tmp_path, seed, command):
    out = str(tmp_path / "o.h5")
    data = str(ROOT / "README.md")  # never read: the seed is checked first
    args = {
        "sample": ["sample", "-n", "2", "--length", "8", "-o", out],
        "simulate": ["simulate", "lorenz", "-o", out],
        "evaluate": ["evaluate", data, data],
        "fit-ae": ["fit-ae", data, "-m", str(tmp_path / "m")],
    }[command]
    _assert_clean_failure(_invoke([*args, f"--seed={seed}"]), "--seed")


def test_huge_counts_are_refused_with_the_limit(tmp_path):
    out = str(tmp_path / "o.h5")
    line = _assert_clean_failure(
        _invoke(["sample", "-n", str(2**63 - 1), "--length", "8", "-o", out]), "-n"
    )
    assert "10,000,000" in line
    models = ["-m", str(ROOT / "models"), "--length", "8", "-o", out]
    grid = ["--condition", "angle=0:6.28:100000000"]
    _assert_clean_failure(_invoke(["sample", *models, *grid]), "grid")
    many = ["--condition", "angle=0:6.28:100000", "--per-condition", "1000"]
    result = _invoke(["sample", *models, *many])
    assert "10,000,000" in result.stderr
    _assert_clean_failure(result, "100,000 conditions x 1000")


def test_n_and_per_condition_clash_is_found_before_the_grid_is_built(tmp_path):
    # the grid is never expanded (10^8 rows would take gigabytes): the flag clash comes first
    result = _invoke(["sample", "-m", str(ROOT / "models"), "--condition",
                      "angle=0:6.28:100000000", "--per-condition", "2", "-n", "3",
                      "--length", "8", "-o", str(tmp_path / "o.h5")])  # fmt: skip
    _assert_clean_failure(result, "not both")


# ---------------------------------------------------------------------------------------------
# 3. OS errors on outputs name the user's path
# ---------------------------------------------------------------------------------------------
def test_an_output_in_a_folder_that_refuses_files(tmp_path):
    _assert_clean_failure(_invoke(["simulate", "lorenz", "--trials", "2", "-o", "/proc/x.h5"]),
                          "/proc/x.h5")  # fmt: skip


def test_an_output_name_too_long(tmp_path):
    out = tmp_path / ("a" * 300 + ".h5")
    line = _assert_clean_failure(_invoke(["simulate", "lorenz", "--trials", "2", "-o", str(out)]))
    assert "File name too long" in line and str(out) in line


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO])
def test_os_errors_while_writing_name_the_output(tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / ".ldns-secret.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "o.h5"
    line = _assert_clean_failure(_invoke(["simulate", "lorenz", "--trials", "2", "-o", str(out)]))
    assert f"'{out}'" in line and ".ldns-secret" not in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 4. leftovers of killed runs
# ---------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_9_leftovers_carry_the_pid_and_the_next_run_removes_them(tmp_path):
    # a writer killed outright (os._exit: no cleanup runs, as with kill -9)
    code = (
        "import os, sys\n"
        "from ldns_cli.core.paths import atomic_output\n"
        "from ldns_cli.io.scratch import SampleScratch\n"
        "import numpy as np\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    SampleScratch(tmp.parent, np.array([3, 4])).__enter__()\n"
        "    os._exit(9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "o.h5")])
    assert proc.wait() == 9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(f".{proc.pid}-" in name for name in left), left
    assert any(n.endswith(".tmp") for n in left) and any(n.endswith(".scratch") for n in left)
    # a live process's temporary file in the same folder is not touched
    mine = tmp_path / f"{paths.temp_prefix()}keep.h5.tmp"
    mine.write_bytes(b"busy")
    other_host = tmp_path / f".ldns-otherhost.{_dead_pid()}-x.h5.tmp"
    other_host.write_bytes(b"?")
    result = _invoke(["simulate", "lorenz", "--trials", "2", "--length", "8", "-o",
                      str(tmp_path / "new.h5")])  # fmt: skip
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["new.h5", mine.name, other_host.name]
    )


def test_remove_stale_skips_what_it_cannot_judge(tmp_path):
    dead = _dead_pid()
    prefix = paths.temp_prefix()  # .ldns-<host>.<pid>-
    host, pid = prefix[len(".ldns-") : -1].split(".")
    assert pid == str(os.getpid())
    names = [
        f".ldns-{host}.{dead}-a.nwb.tmp",  # removed
        f".ldns-{host}.{dead}-b.scratch",  # removed (a folder)
        f".ldns-{host}.{dead}-c.nwb",  # not a temporary name: kept
        ".ldns-x1y2z3.tmp",  # an older name without a pid: kept
        "data.nwb",  # kept
    ]
    for name in names:
        (tmp_path / name).mkdir() if name.endswith(".scratch") else (tmp_path / name).touch()
    removed = sorted(p.name for p in paths.remove_stale(tmp_path))
    assert removed == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


# ---------------------------------------------------------------------------------------------
# 5. same seed, same NWB bytes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sample", "simulate"])
def test_nwb_outputs_are_byte_identical_for_a_seed(tmp_path, monkeypatch, command):
    digests = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        args = (
            ["sample", "-m", str(ROOT / "models"), "-n", "3", "--length", "32", "--seed", "4",
             "--condition", "angle=1", "--save-rates", "--save-latents", "--device", "cpu"]
            if command == "sample"
            else ["simulate", "reach", "--trials", "6", "--seed", "4"]
        )  # fmt: skip
        assert _invoke([*args, "-o", "out.nwb"]).exit_code == 0
        digests.append(hashlib.sha256((folder / "out.nwb").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    data = ldns.read(tmp_path / "a" / "out.nwb")  # still a valid file that reads back
    assert data.n_trials in (3, 6)


# ---------------------------------------------------------------------------------------------
# 6. fuzzing: damaged model files and argument edges
# ---------------------------------------------------------------------------------------------
# fixed examples by default (deterministic suite); LDNS_FUZZ_EXAMPLES=500 for a longer, random hunt
_HUNT = os.environ.get("LDNS_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_HUNT or 30),
    deadline=None,
    derandomize=_HUNT is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DAMAGES = ("nan", "inf", "big", "cast", "shrink", "drop", "meta_json", "meta_value", "bytes")


def _damage(path: Path, how: str, where: int, value: int) -> None:
    if how == "bytes":  # a flipped byte anywhere in the file
        raw = bytearray(path.read_bytes())
        raw[where % len(raw)] ^= 1 + value % 255
        path.write_bytes(bytes(raw))
        return

    def tensors(t):
        names = sorted(t)
        k = names[where % len(names)]
        if how == "nan" and t[k].is_floating_point():
            t[k].view(-1)[value % t[k].numel()] = float("nan")
        elif how == "inf" and t[k].is_floating_point():
            t[k].view(-1)[value % t[k].numel()] = float("-inf")
        elif how == "big" and t[k].is_floating_point():
            t[k].view(-1)[value % t[k].numel()] = 1e30
        elif how == "cast":
            t[k] = t[k].to(torch.float16 if value % 2 else torch.int32)
        elif how == "shrink" and t[k].ndim and t[k].shape[0] > 1:
            t[k] = t[k][:-1].clone()
        elif how == "drop":
            del t[k]

    def meta(m):
        keys = sorted(m)
        k = keys[where % len(keys)]
        if how == "meta_json":
            m[k] = m[k][: value % max(1, len(m[k]))]
        else:
            m[k] = json.dumps({"n_neurons": -value, "bin_size_s": None, "x": [value]})

    _edit(path, tensors=tensors if how not in ("meta_json", "meta_value") else None,
          meta=meta if how in ("meta_json", "meta_value") else None)  # fmt: skip


@FUZZ
@given(
    stage=st.sampled_from(STAGES),
    how=st.sampled_from(DAMAGES),
    where=st.integers(0, 10_000),
    value=st.integers(0, 10_000),
)
def test_fuzz_damaged_models_never_give_silent_or_unclean_results(
    tiny_models, tmp_path_factory, stage, how, where, value
):
    m = _copy(tiny_models, tmp_path_factory.mktemp("fuzz") / "m")
    _damage(m / f"{stage}.safetensors", how, where, value)
    try:
        models = ldns.load(m, device="cpu")
        fake = models.sample(2, length=8, save_rates=True, seed=value)
    except LdnsError as exc:
        assert exc.message and exc.hint
        return
    # the only damage that loads is one the hash cannot see and that changes nothing used
    assert np.isfinite(fake.rates).all() and (fake.counts >= 0).all()


@FUZZ
@given(
    n=st.one_of(st.none(), st.integers(-5, 2**64)),
    length=st.one_of(st.none(), st.sampled_from(["0", "8", "8:4", "x", "4:8", str(10**7)])),
    seed=st.integers(-(2**33), 2**33),
    guidance=st.sampled_from(["1", "nan", "inf", "-3", "2"]),
    steps=st.one_of(st.none(), st.integers(-2, 2000)),
    batch=st.integers(-1, 4),
    per_condition=st.one_of(st.none(), st.integers(-1, 3)),
)
def test_fuzz_sample_arguments_exit_0_or_1_cleanly(
    n, length, seed, guidance, steps, batch, per_condition
):
    out = Path(tempfile.mkdtemp()) / "o.h5"
    args = ["sample", "-m", str(ROOT / "models" / "lorenz"), "--device", "cpu", "--sampler",
            "ddim", "--seed", str(seed), "--guidance", guidance, "--batch-size", str(batch),
            "-o", str(out)]  # fmt: skip
    if n is not None:
        args += ["-n", str(min(n, 2) if 0 < n <= 10**7 else n)]
    if length is not None:
        args += ["--length", length]
    if steps is not None:
        args += ["--steps", str(min(steps, 3) if 0 < steps <= 1000 else steps)]
    if per_condition is not None:
        args += ["--per-condition", str(per_condition)]
    result = _invoke(args)
    assert result.exit_code in (0, 1), (args, result.stderr)
    assert result.stdout == ""
    if result.exit_code == 1:
        _assert_clean_failure(result)
        assert not out.exists()
    else:
        assert out.exists()
    shutil.rmtree(out.parent)
