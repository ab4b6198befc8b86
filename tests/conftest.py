"""Shared test fixtures: a tiny `SpikeData` factory and an NLB MC_Maze-shaped NWB file.

Keep this small and generic; module-specific fixtures live in their test modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ldns_cli.core.data import SpikeData, VariableInfo


def make_tiny_data(
    n_trials: int = 4,
    n_bins: int = 16,
    n_neurons: int = 3,
    *,
    seed: int = 0,
    variable_lengths: bool = False,
    bin_size_s: float = 0.01,
    rate: float = 0.5,
    covariates: bool = True,
    behavior: bool = False,
    truth: bool = False,
) -> SpikeData:
    """Poisson counts `[n_trials, n_bins, n_neurons]` with optional covariates and behaviour."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rate, size=(n_trials, n_bins, n_neurons)).astype(np.int32)
    lengths = np.full(n_trials, n_bins)
    if variable_lengths:
        lengths = rng.integers(max(1, n_bins // 2), n_bins + 1, size=n_trials)
        lengths[0] = n_bins
        counts[np.arange(n_bins)[None, :] >= lengths[:, None]] = 0
    covs: dict[str, np.ndarray] = {}
    infos: dict[str, VariableInfo] = {}
    if covariates:
        covs = {
            "angle": rng.uniform(0, 2 * np.pi, n_trials),
            "target": rng.normal(size=(n_trials, 2)),
            "condition": rng.integers(0, 3, n_trials),
            "label": np.array([f"c{i % 2}" for i in range(n_trials)]),
        }
        infos = {
            "angle": VariableInfo(unit="rad", kind="circular", description="reach angle"),
            "target": VariableInfo(unit="mm", columns=["x", "y"]),
            "condition": VariableInfo(kind="categorical"),
            "label": VariableInfo(kind="categorical"),
        }
    beh: dict[str, np.ndarray] = {}
    if behavior:
        mask = np.arange(n_bins)[None, :] < lengths[:, None]
        beh["hand_vel"] = (rng.normal(size=(n_trials, n_bins, 2)) * mask[:, :, None]).astype(
            np.float32
        )
        infos["hand_vel"] = VariableInfo(unit="mm/s", columns=["x", "y"])
    split = np.array(["train", "val", "test", "train"] * n_trials)[:n_trials]
    latents = rng.normal(size=(n_trials, n_bins, 2)).astype(np.float32) if truth else None
    rates = rng.uniform(0.1, 1, size=counts.shape).astype(np.float32) if truth else None
    return SpikeData(
        counts=counts,
        lengths=lengths,
        bin_size_s=bin_size_s,
        covariates=covs,
        behavior=beh,
        split=split,
        variable_info=infos,
        latents=latents,
        rates=rates,
    )


@pytest.fixture(autouse=True)
def _console_as_a_fresh_process_has_it() -> None:
    """Every test starts with info lines on: a CLI run with -q, or a library call with
    quiet=True, silences the console for whatever runs after it in the same process."""
    from ldns_cli.core import console

    console.set_quiet(False)


@pytest.fixture
def tiny_data() -> Callable[..., SpikeData]:
    """Factory: `tiny_data(n_trials=4, n_bins=16, n_neurons=3, variable_lengths=..., ...)`."""
    return make_tiny_data


# ---------------------------------------------------------------------- NLB-shaped NWB
NLB_BIN_S = 0.005
NLB_WINDOW_S = (-0.25, 0.45)  # around move_onset_time: 140 bins of 5 ms
NLB_TRIAL_S = 1.5  # trial period on the session clock


def nlb_unit0_spikes(move_onset: np.ndarray) -> np.ndarray:
    """Unit 0's hand-placed spikes: known bins of trial 0 plus decoys outside its window."""
    t0 = move_onset[0] + NLB_WINDOW_S[0]
    placed = [
        t0 - 0.0001,  # just before the window: not counted
        t0 + 0.0101,  # bin 2
        t0 + 0.0149,  # bin 2
        t0 + 0.2502,  # bin 50 (just after move onset)
        t0 + 0.6999,  # bin 139, the last one
        t0 + 0.7001,  # just after the window: not counted
    ]
    later = move_onset[1:] + 0.1012  # one spike ~100 ms after onset in other trials: bin 70
    return np.sort(np.concatenate([placed, later]))


def write_nlb_nwb(
    path: Path,
    n_trials: int = 12,
    n_units: int = 6,
    seed: int = 0,
    *,
    trials_table: bool = True,
    units_table: bool = True,
    extra_trial_columns: dict[str, Any] | None = None,
    hand_vel_gap: bool = False,
) -> dict[str, Any]:
    """Write a small NWB file laid out like DANDI 000128 (NLB MC_Maze); return its truth.

    Units carry `heldout` and `obs_intervals` (no waveforms, no electrodes); trials carry
    `split`, `move_onset_time`, `maze_id`, ragged `target_pos`, and `cond_dir` in degrees;
    `processing/behavior/hand_vel` is a TimeSeries at 1 kHz whose x column is the time
    itself (so its 5 ms bin means are the bin centres); `cursor_pos` is a SpatialSeries
    inside a Position container.
    """
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, ProcessingModule, TimeSeries
    from pynwb.behavior import Position, SpatialSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    rng = np.random.default_rng(seed)
    start = 0.2 + np.arange(n_trials) * NLB_TRIAL_S
    stop = start + 1.2
    move_onset = start + 0.4 + rng.uniform(0.0, 0.2, n_trials).round(4) + 0.00037
    session_end = float(stop[-1] + 0.3)
    nwbfile = NWBFile(
        session_description="NLB MC_Maze-shaped test file",
        identifier="nlb-test",
        session_start_time=datetime(2009, 9, 18, tzinfo=timezone.utc),
        experimenter=["Doe, Jane"],
        institution="test",
        subject=Subject(subject_id="Jenkins", species="Macaca mulatta", sex="M", age="P8Y"),
    )
    trains = [nlb_unit0_spikes(move_onset)]
    for _ in range(1, n_units):
        n = rng.poisson(20 * session_end)
        trains.append(np.sort(rng.uniform(0, session_end, n)))
    if units_table:
        flat = np.concatenate(trains)
        st = VectorData(name="spike_times", description="spike times", data=flat)
        obs = VectorData(
            name="obs_intervals",
            description="observation intervals",
            data=np.tile([[0.0, session_end]], (n_units, 1)),
        )
        heldout = np.arange(n_units) >= n_units - 2
        nwbfile.units = Units(
            name="units",
            description="sorted units",
            id=1031 + 20 * np.arange(n_units),
            columns=[
                st,
                VectorIndex(
                    name="spike_times_index", data=np.cumsum([len(t) for t in trains]), target=st
                ),
                obs,
                VectorIndex(name="obs_intervals_index", data=np.arange(1, n_units + 1), target=obs),
                VectorData(name="heldout", description="held-out unit", data=heldout),
            ],
        )
    else:
        heldout = np.zeros(n_units, bool)
    split = np.array(["train", "val", "test"])[np.arange(n_trials) % 3]
    maze_id = rng.integers(1, 5, n_trials)
    n_targets = 1 + np.arange(n_trials) % 3  # ragged: 1, 2 or 3 targets per trial
    target_pos = rng.normal(size=(int(n_targets.sum()), 2))
    cond_dir = (np.arange(n_trials) % 8) * 45.0
    if trials_table:
        tp = VectorData(name="target_pos", description="target positions (mm)", data=target_pos)
        columns = [
            VectorData(name="start_time", description="start", data=start),
            VectorData(name="stop_time", description="stop", data=stop),
            VectorData(name="move_onset_time", description="movement onset", data=move_onset),
            VectorData(name="split", description="NLB split", data=split.tolist()),
            VectorData(name="maze_id", description="maze", data=maze_id),
            VectorData(name="cond_dir", description="reach direction in degrees", data=cond_dir),
            tp,
            VectorIndex(name="target_pos_index", data=np.cumsum(n_targets), target=tp),
        ]
        for name, values in (extra_trial_columns or {}).items():
            columns.append(VectorData(name=name, description=name, data=values))
        nwbfile.trials = TimeIntervals(name="trials", description="trials", columns=columns)
    n_samples = int(session_end * 1000)
    t_ms = np.arange(n_samples) / 1000.0
    hand_vel = np.stack([t_ms, np.sin(t_ms)], axis=1)  # [T, 2]
    if hand_vel_gap:  # a tracking dropout inside trial 2's window
        i0 = round(move_onset[2] * 1000)
        hand_vel[i0 : i0 + 7] = np.nan
    behavior = ProcessingModule(name="behavior", description="behaviour")
    behavior.add(
        TimeSeries(
            name="hand_vel",
            data=hand_vel,
            unit="mm/s",
            rate=1000.0,
            starting_time=0.0,
            comments="columns=[x,y]",
            description="hand velocity",
        )
    )
    position = Position(name="position")
    position.add_spatial_series(
        SpatialSeries(
            name="cursor_pos",
            data=np.cumsum(hand_vel, axis=0) / 1000.0,
            reference_frame="screen centre",
            unit="mm",
            rate=1000.0,
            starting_time=0.0,
            description="cursor position",
        )
    )
    behavior.add(position)
    nwbfile.add_processing_module(behavior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)
    return {
        "start": start,
        "stop": stop,
        "move_onset": move_onset,
        "trains": trains,
        "heldout": heldout,
        "split": split,
        "maze_id": maze_id,
        "cond_dir": cond_dir,
        "unit_ids": 1031 + 20 * np.arange(n_units),
    }


@pytest.fixture
def nlb_nwb(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """(path, truth) of a 12-trial, 6-unit NLB MC_Maze-shaped NWB file."""
    path = tmp_path / "mc_maze_like.nwb"
    return path, write_nlb_nwb(path)
