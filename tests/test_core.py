"""Core plumbing: config resolution, checkpoints, atomic outputs, the CLI error boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ldns_cli.core.checkpoint import (
    Checkpoint,
    check_data_matches,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from ldns_cli.core.config import config_to_dict, resolve_config
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import atomic_output


@dataclass(frozen=True)
class _Cfg:
    width: int = 8
    lr: float = 1e-3
    sizes: tuple[int, ...] = (1, 2)


def test_config_precedence(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"width": 32, "lr": 0.5}))
    presets = {"big": {"width": 16, "sizes": [3, 4]}}
    cfg = resolve_config(_Cfg, presets, "big", f, {"lr": 0.1, "width": None})
    # preset < file < flags, None flags ignored, lists back to tuples
    assert cfg == _Cfg(width=32, lr=0.1, sizes=(3, 4))
    assert config_to_dict(cfg) == {"width": 32, "lr": 0.1, "sizes": [3, 4]}


def test_config_errors(tmp_path):
    with pytest.raises(LdnsError, match="unknown preset"):
        resolve_config(_Cfg, {"a": {}}, "b")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(LdnsError, match="not valid JSON"):
        resolve_config(_Cfg, config_file=bad)
    with pytest.raises(LdnsError, match="unknown setting"):
        resolve_config(_Cfg, overrides={"depth": 3})


def test_checkpoint_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "m" / "ae.safetensors"
    t = {"model.w": torch.randn(3, 4), "model.b": torch.arange(5)}
    save_checkpoint(path, Checkpoint("ae", t, config={"a": 1}, fingerprint={"n_neurons": 4}))
    ck = load_checkpoint(path, "ae")
    assert ck.config == {"a": 1} and ck.fingerprint == {"n_neurons": 4}
    assert torch.equal(ck.subset("model")["w"], t["model.w"])
    with pytest.raises(LdnsError, match="expected diffusion"):
        load_checkpoint(path, "diffusion")
    with pytest.raises(LdnsError, match="no ae model"):
        load_checkpoint(tmp_path / "missing.safetensors", "ae", "ldns fit-ae DATA")
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.raises(LdnsError, match="not a readable checkpoint"):
        load_checkpoint(path, "ae")


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    optimizer_from_tensors(opt2, tensors, meta)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][k][name]))


def test_check_data_matches_names_both_values():
    with pytest.raises(LdnsError, match="trained on 10 neurons, the data has 12"):
        check_data_matches({"n_neurons": 10}, {"n_neurons": 12, "bin_size_s": 0.01}, "autoencoder")
    with pytest.raises(LdnsError, match="5 ms bins, the data has 20 ms"):
        check_data_matches(
            {"n_neurons": 3, "bin_size_s": 0.005}, {"n_neurons": 3, "bin_size_s": 0.02}, "model"
        )


def test_atomic_output_keeps_target_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(LdnsError, match="already exists"):
        with atomic_output(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(target, force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left
    with atomic_output(target, force=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_spikedata_validation():
    counts = np.zeros((2, 5, 3), dtype=np.int64)
    counts[0, 4, 1] = 2
    with pytest.raises(LdnsError, match="beyond a trial's length"):
        SpikeData(counts, lengths=[4, 5], bin_size_s=0.01)
    with pytest.raises(LdnsError, match="bin size must be positive"):
        SpikeData(counts, lengths=[5, 5], bin_size_s=0.0)
    with pytest.raises(LdnsError, match="NaN"):
        SpikeData(counts, [5, 5], 0.01, covariates={"angle": np.array([0.0, np.nan])})
    with pytest.raises(LdnsError, match="negative"):
        SpikeData(-counts, [5, 5], 0.01)
    d = SpikeData(counts, [5, 3], 0.01, covariates={"a": np.array([1.0, 2.0])})
    assert d.mask().sum() == 8
    sub = d.select([1])
    assert sub.n_trials == 1 and sub.covariates["a"].tolist() == [2.0]
    assert d.fingerprint()["covariates"]["a"]["min"] == 1.0
    np.testing.assert_allclose(d.mean_rate_hz(), [0.0, 2 / (8 * 0.01), 0.0])


def test_quiet_thread_silences_only_its_own_thread(capsys):
    import threading

    from ldns_cli.core.console import info, is_quiet, quiet_thread

    seen: dict[str, bool] = {}

    def worker() -> None:
        with quiet_thread():
            seen["inside"] = is_quiet()
            info("from the worker")
        seen["after"] = is_quiet()

    with quiet_thread():
        pass  # entered and left in the main thread: nothing stays silenced
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    info("from the main thread")
    err = capsys.readouterr().err
    assert seen == {"inside": True, "after": False}
    assert "from the main thread" in err and "from the worker" not in err
