"""Multi-process training: 2 CPU processes (gloo) launched by torchrun, as users launch them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ldns_cli.cli import app
from ldns_cli.core.checkpoint import load_checkpoint
from ldns_cli.fit import distributed as dist
from ldns_cli.io.formats import write_spikes
from ldns_cli.io.simulate import simulate_lorenz

# Each rank runs the real `ldns fit-ae` command (what `torchrun ... -m ldns_cli fit-ae` runs),
# with test hooks: record checkpoint writes per rank, keep the process group open afterwards to
# compare the ranks' final weights and check the trial sharding.
WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    import torch.distributed as tdist
    from ldns_cli.fit import autoencoder as fit_ae, distributed as dist, trainer as train
    from ldns_cli.cli import app

    out, args = Path(sys.argv[1]), sys.argv[2:]
    saves, results = [], []
    real_save, real_fit, real_shutdown = train.save_checkpoint, fit_ae.fit, dist.shutdown
    train.save_checkpoint = lambda *a, **k: (saves.append(1), real_save(*a, **k))
    fit_ae.fit = lambda *a, **k: results.append(real_fit(*a, **k)) or results[-1]
    dist.shutdown = lambda: None
    try:
        app(args, standalone_mode=False)
    finally:
        dist.shutdown = real_shutdown
    flat = torch.cat([p.detach().flatten() for p in results[0].model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.world_size())]
    tdist.all_gather(gathered, flat)
    shards = {}
    for n in (7, 8, 9, 1):
        parts = [None] * dist.world_size()
        tdist.all_gather_object(parts, dist.shard(torch.arange(n)).tolist())
        shards[n] = parts
    (out / f"saves_rank{dist.rank()}.json").write_text(json.dumps(len(saves)))
    if dist.is_main():
        (out / "result.json").write_text(json.dumps({
            "world": dist.world_size(),
            "rank_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "shards": shards,
        }))
    tdist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.shutdown()
    """
)


def torchrun(args: list[str], cwd: Path, timeout_s: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def test_two_gloo_processes_fit_ae_like_one_process(tmp_path: Path) -> None:
    data = tmp_path / "tiny.h5"
    write_spikes(simulate_lorenz(24, 8, 16, seed=0), data)
    # dropout off: a deterministic loss, so 2 × half-batches must equal one full batch
    flags = ["--width", "8", "--blocks", "1", "--latent-dim", "2", "--batch-size", "8",
             "--epochs", "2", "--dropout-p", "0", "--no-spike-history", "--device", "cpu"]  # fmt: skip
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = torchrun(
        [str(script), str(tmp_path), "fit-ae", str(data), "-m", "ddp", *flags], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert proc.stderr.count("saved ") == 1  # progress and reports from rank 0 alone
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world"] == 2
    assert result["rank_diff"] == 0.0  # DDP keeps the replicas bitwise identical
    # only rank 0 writes checkpoints
    assert json.loads((tmp_path / "saves_rank0.json").read_text()) >= 1
    assert json.loads((tmp_path / "saves_rank1.json").read_text()) == 0
    # the checkpoint and its training log, written once (by rank 0)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "ae.safetensors",
        "ae_training.csv",
    ]
    # the same command in one process on the full batches
    res = CliRunner().invoke(app, ["fit-ae", str(data), "-m", str(tmp_path / "one"), *flags, "-q"])
    assert res.exit_code == 0, res.stderr
    a = load_checkpoint(tmp_path / "ddp" / "ae.safetensors", "ae").subset("model")
    b = load_checkpoint(tmp_path / "one" / "ae.safetensors", "ae").subset("model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=0)
    # sharding covers every index exactly once, odd sizes and fewer items than ranks included
    for n, parts in result["shards"].items():
        assert sorted(i for part in parts for i in part) == list(range(int(n)))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_python_m_ldns_cli_is_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ldns_cli", "fit-ae", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "torchrun" in proc.stdout


def test_single_process_helpers_are_no_ops() -> None:
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    idx = torch.arange(5)
    assert torch.equal(dist.shard(idx), idx)
    assert dist.rank_seed(7) == 7
    assert dist.init("cpu") == "cpu"


@pytest.mark.parametrize("world", [2, 3])
def test_shard_partitions_any_batch(monkeypatch: pytest.MonkeyPatch, world: int) -> None:
    for n in range(0, 12):
        parts = []
        for r in range(world):
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            monkeypatch.setattr(dist, "world_size", lambda: world)
            parts.append(dist.shard(torch.arange(n)).tolist())
        assert sorted(i for p in parts for i in p) == list(range(n))
