"""Shared benchmark helpers: in-run calibration, timing, peak memory, JSON results.

This machine is shared and noisy, so every figure is also reported as a ratio to a baseline
measured in the same run (a dense fp32 matmul), interleaved with the case being measured.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def matmul_gflops(n: int = 1024, repeats: int = 3) -> float:
    """Measured fp32 GEMM throughput (GFLOP/s) at the current thread count: the in-run baseline."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def matmul_seconds(flops: float, gflops: float) -> float:
    """Time a dense matmul of `flops` would take at the measured GEMM rate."""
    return flops / (gflops * 1e9)


def timeit(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time of `fn` (seconds), interleaved with GEMM calibration."""
    for _ in range(warmup):
        fn()
    times, gemm = [], []
    for _ in range(repeats):
        gemm.append(matmul_gflops(512, repeats=2))
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "gemm_gflops": statistics.median(gemm),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(code: str, timeout_s: float = 600) -> dict[str, Any]:
    """Run a Python snippet in a fresh process (so peak RSS is its own); it must print JSON last."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str]) -> float:
    """Run a command (failing loudly), logging it; return its wall time (seconds)."""
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` with the environment attached; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), "results": results}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
