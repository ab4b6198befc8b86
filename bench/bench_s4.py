"""S4 layer benchmark: forward+backward time and peak memory at L = 256, 4,096 and 16,384.

Each case runs in a fresh process (so peak RSS is its own) with H = 128 channels and state size
64 (32 complex modes), bidirectional, loss = mean(y²). Reported per case:

- median/min wall time of fwd+bwd, the kernel built by the factored Vandermonde product (ours)
  and by the naive materialised product (the in-run reference; LDNS-style code does this);
- the factored/naive speed-up (raw, and with each time normalised by the GEMM rate measured in
  the same process, which is what survives a noisy shared machine) and peak-RSS ratio;
- time in units of a 1024³ fp32 GEMM measured in the same process (`bench/common.py`);
- peak RSS of the process (MB).

Usage: nice python bench/bench_s4.py [--threads 1] [--quick]
Writes bench/results/bench_s4.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, run_isolated, write_results

CASES = [(64, 256), (8, 4096), (2, 16384)]  # (batch, length)

CASE_CODE = """
import json, sys, time, statistics
sys.path.insert(0, {bench_dir!r})
import torch
torch.set_num_threads({threads})
from common import matmul_gflops, peak_rss_mb
from ldns_cli.nn.s4 import S4Layer

naive = {naive}
layer = S4Layer(128, 64, bidirectional=True, generator=torch.Generator().manual_seed(0))
if naive:
    orig = layer.kernel
    layer.kernel = lambda length, naive=False: orig(length, naive=True)
u = torch.randn({batch}, 128, {length}, generator=torch.Generator().manual_seed(1))
u.requires_grad_(True)

def step():
    layer.zero_grad(set_to_none=True)
    y = layer(u)
    y.square().mean().backward()

step()
times, gemm = [], []
for _ in range({repeats}):
    gemm.append(matmul_gflops(1024, repeats=2))
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
g = statistics.median(gemm)
gemm_s = 2 * 1024**3 / (g * 1e9)
print(json.dumps({{
    "median_s": statistics.median(times), "min_s": min(times), "gemm_gflops": g,
    "gemm1024_equivalents": statistics.median(times) / gemm_s, "peak_rss_mb": peak_rss_mb(),
}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip L = 16,384")
    args = ap.parse_args()
    bench_dir = str(Path(__file__).parent)
    results = []
    for batch, length in CASES[:2] if args.quick else CASES:
        row: dict = {"batch": batch, "channels": 128, "state_dim": 64, "length": length}
        for mode in ("factored", "naive"):
            code = CASE_CODE.format(
                bench_dir=bench_dir, threads=args.threads, naive=mode == "naive",
                batch=batch, length=length, repeats=args.repeats,
            )  # fmt: skip
            row[mode] = run_isolated(code, timeout_s=1200)
            print(f"L={length} B={batch} {mode}: {json.dumps(row[mode])}", flush=True)
        row["speedup_factored_vs_naive"] = row["naive"]["median_s"] / row["factored"]["median_s"]
        # robust on a shared machine: each time in units of the GEMM measured beside it
        row["speedup_gemm_normalised"] = (
            row["naive"]["gemm1024_equivalents"] / row["factored"]["gemm1024_equivalents"]
        )
        row["rss_ratio_naive_vs_factored"] = (
            row["naive"]["peak_rss_mb"] / row["factored"]["peak_rss_mb"]
        )
        results.append(row)
    path = write_results("bench_s4", {"threads": args.threads, "cases": results})
    print(f"{'L':>6} {'B':>3} {'fact ms':>9} {'naive ms':>9} {'speedup':>8} {'GEMMs':>7} "
          f"{'norm. speedup':>13} {'RSS MB':>8} {'naive RSS':>9}")  # fmt: skip
    for r in results:
        f, n = r["factored"], r["naive"]
        print(
            f"{r['length']:>6} {r['batch']:>3} {f['median_s'] * 1e3:>9.1f} "
            f"{n['median_s'] * 1e3:>9.1f} {r['speedup_factored_vs_naive']:>8.1f} "
            f"{f['gemm1024_equivalents']:>7.1f} {r['speedup_gemm_normalised']:>13.1f} "
            f"{f['peak_rss_mb']:>8.0f} {n['peak_rss_mb']:>9.0f}"
        )
    print(f"wrote {path}; environment: {environment()}")


if __name__ == "__main__":
    main()
