"""IO benchmark: NWB/HDF5 write and read+bin times at NLB scale.

Data: 200 units x 2,000 trials x 140 bins of 5 ms (0.7 s trials, NLB MC_Maze-like), Poisson
counts at ~18 Hz: about 5 M spikes. Measured:
- NWB write (`write_spikes`: spike placement + columnar tables + HDF5 write),
- NWB read + bin (`read_spikes`, whole file: pynwb open, spike times, trials, binning),
- the same read aligned to `move_onset_time` with a window (the NLB way),
- binning alone (`bin_spike_times` on in-memory arrays),
- HDF5 write and read of the binned tensor.
Wall times (median/min) and the process's CPU time (median; less inflated when other jobs
share the cores) are reported. Every time is also given as a ratio to the in-run 1024^3 fp32
matmul time (bench/common.py), so numbers from a shared, noisy machine can be compared across
runs. Target: read+bin < 2 s.

Run: nice python bench/bench_io.py [--trials 2000 --units 200] [--quick]
Writes bench/results/io.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops, matmul_seconds, peak_rss_mb, timeit, write_results
from ldns_cli.core.data import SpikeData
from ldns_cli.io.common import ReadOptions, bin_spike_times
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.nwb_write import place_spike_times


def make_data(n_trials: int, n_units: int, n_bins: int, seed: int = 0) -> SpikeData:
    rng = np.random.default_rng(seed)
    rate_hz = rng.uniform(6.0, 30.0, size=n_units)  # mean 18 Hz
    counts = rng.poisson(rate_hz * 0.005, size=(n_trials, n_bins, n_units)).astype(np.int32)
    return SpikeData(
        counts=counts,
        lengths=np.full(n_trials, n_bins),
        bin_size_s=0.005,
        align_offset_s=-0.25,
        covariates={
            "angle": rng.uniform(0, 2 * np.pi, n_trials),
            "move_onset_time": np.full(n_trials, 0.25),
        },
        split=np.array(["train", "val", "test"])[rng.integers(0, 3, n_trials)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--bins", type=int, default=140)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 trials (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.repeats = 500, 2
    torch.set_num_threads(args.threads)

    data = make_data(args.trials, args.units, args.bins)
    n_spikes = int(data.counts.sum())
    print(f"{args.units} units x {args.trials} trials x {args.bins} bins, {n_spikes:,} spikes")
    folder = Path(tempfile.mkdtemp(prefix="ldns-bench-io-"))
    nwb, h5 = folder / "bench.nwb", folder / "bench.h5"
    aligned = ReadOptions(bin_ms=5, align="move_onset_time", window_s=(-0.25, 0.45))
    times, index = place_spike_times(data.counts, data.trial_start_s, data.bin_size_s)

    def check(back: SpikeData) -> None:
        assert np.array_equal(back.counts, data.counts), "read-back counts differ"

    cases = {
        "nwb_write": lambda: write_spikes(data, nwb, force=True),
        "nwb_read_bin": lambda: check(read_spikes(nwb)),
        "nwb_read_bin_aligned": lambda: check(read_spikes(nwb, aligned)),
        "bin_only": lambda: bin_spike_times(
            times, index, data.trial_start_s, data.lengths, data.bin_size_s
        ),
        "hdf5_write": lambda: write_spikes(data, h5, force=True),
        "hdf5_read": lambda: check(read_spikes(h5)),
    }
    results: dict[str, object] = {
        "n_units": args.units,
        "n_trials": args.trials,
        "n_bins": args.bins,
        "n_spikes": n_spikes,
        "threads": args.threads,
        "quick": args.quick,
    }
    gemm_ref = matmul_gflops(1024)
    for name, fn in cases.items():
        t0 = time.perf_counter()
        stats = timeit(fn, repeats=args.repeats, warmup=1)
        # CPU time of this process: less sensitive than wall time to other jobs on the machine
        cpu = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)
        stats["cpu_median_s"] = statistics.median(cpu)
        matmul_1024_s = matmul_seconds(2 * 1024**3, stats["gemm_gflops"])
        stats["ratio_to_matmul1024"] = stats["median_s"] / matmul_1024_s
        results[name] = stats
        print(
            f"{name:22s} median {stats['median_s']:.3f} s  min {stats['min_s']:.3f} s  "
            f"cpu {stats['cpu_median_s']:.3f} s  "
            f"({stats['ratio_to_matmul1024']:.0f} x matmul-1024)  [{time.perf_counter() - t0:.1f} s]"
        )
    results["nwb_file_mb"] = nwb.stat().st_size / 1e6
    results["hdf5_file_mb"] = h5.stat().st_size / 1e6
    results["gemm_gflops_start"] = gemm_ref
    results["peak_rss_mb"] = peak_rss_mb()
    results["target_read_bin_s"] = 2.0
    results["loadavg"] = os.getloadavg()
    print(
        f"files: nwb {results['nwb_file_mb']:.1f} MB, hdf5 {results['hdf5_file_mb']:.1f} MB; "
        f"peak RSS {results['peak_rss_mb']:.0f} MB; GEMM {gemm_ref:.1f} GFLOP/s"
    )
    print("wrote", write_results("io", results))
    for p in (nwb, h5):
        p.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
