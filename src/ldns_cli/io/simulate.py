"""Built-in datasets with known ground truth, so the tool runs without user data.

- `simulate_lorenz`: the LDNS paper's synthetic benchmark (Kapoor et al. 2024): 3-D Lorenz
  latents, per-trajectory z-scored, read out by 128 neurons through softplus_{beta=2}(Cx + log 0.3).
  The true mean is about 0.14 spikes/bin (exp(b) = 0.3 is not the mean). Lorenz time has no
  physical unit; we call a bin 10 ms, so 0.14 spikes/bin is about 14 Hz.
- `simulate_reach`: a conditional dataset laid out like the NLB MC_Maze files: 140 bins of 5 ms
  from -250 to +450 ms around movement onset, rotational latent dynamics set by the reach
  direction (trial column `angle`, radians), and hand velocity that is a linear readout of the
  latents (so it can be decoded from the spikes).

Both store the true latents (`SpikeData.latents`) and rates (`SpikeData.rates`, spikes/bin) and
split trials 70/10/20 into train/val/test.

`history="refractory"|"bursting"` draws spikes autoregressively with a known self-history
kernel h (per neuron, the same for all): lambda_t = r_t * exp(sum_k h_k * s_{t-k}),
s_t = min(Poisson(lambda_t), 5). The kernel goes into the provenance (`history_kernel`), and
`rates` stay the latent-driven r_t (the input of the history stage), as in LDNS_sh.

`history="mixed"` makes a heterogeneous population, as recordings are: each neuron is one of
CELL_TYPES (bursting, refractory, regular = long relative refractoriness and under-dispersed,
poisson = no history) in chosen fractions (`cell_types`), with its own jittered kernel, and counts
capped at MIXED_SPIKE_CAP (recordings at 5 ms bins never show more than 3 spikes in a unit's bin).
The truth goes into the file as unit columns: `cell_type` [N] and `history_kernel` [N, H].

- `simulate_network`: no latent variables at all: a spiking network of coupled GLM units, 80%
  excitatory and 20% inhibitory, each with its own refractory self-history and sparse synaptic
  input from the others; a stimulus direction (trial column `angle`) tunes the input of a
  fraction of the excitatory cells during a stimulus window. Truth as unit columns
  (`cell_type`, `tuned`, `preferred_angle`, `history_kernel`, `coupling` [N, N]: row n holds the
  weights onto neuron n); `rates` are the input-driven rates before self-history and coupling.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ldns_cli.core.data import SpikeData, VariableInfo
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.version import __version__

HISTORIES = ("none", "refractory", "bursting", "mixed")
HISTORY_BINS = 10
SPIKE_CAP = 5  # as LDNS_sh: bounds the positive feedback of a bursting kernel
# heterogeneous populations: a ceiling like the recordings' (never more than 3 spikes per bin)
MIXED_SPIKE_CAP = 3
CELL_TYPES = ("bursting", "refractory", "regular", "poisson")
# fractions of a mixed population when not given (every kind present, refractory the most common)
DEFAULT_CELL_TYPES = {"bursting": 0.2, "refractory": 0.5, "regular": 0.15, "poisson": 0.15}

# dysts' Lorenz defaults: parameters and initial condition; 100 samples per dominant period
LORENZ_SIGMA, LORENZ_RHO, LORENZ_BETA = 10.0, 28.0, 8.0 / 3.0
LORENZ_IC = np.array([-9.7869288, -15.03852, 20.533978])
LORENZ_PERIOD = 1.5008
LORENZ_BURN_IN = 100
LORENZ_BIN_S = 0.01


def history_kernel(history: str) -> np.ndarray:
    """Self-history weights h_k for lags k = 1..HISTORY_BINS (log-rate change per past spike)."""
    lags = np.arange(1, HISTORY_BINS + 1, dtype=np.float64)
    if history == "none":
        return np.zeros(HISTORY_BINS)
    if history == "refractory":
        # a spike nearly silences the next bin and recovers over ~3 bins
        return -4.0 * np.exp(-(lags - 1) / 1.5)
    if history == "bursting":
        # a spike raises the rate of the next 1-2 bins, then mild adaptation
        return 1.2 * np.exp(-(lags - 1) / 1.0) - 0.4 * np.exp(-(lags - 1) / 4.0)
    if history == "mixed":
        raise LdnsError(
            "a mixed population has one kernel per neuron",
            "see mixed_kernels / the file's history_kernel unit column",
        )
    raise LdnsError(f"unknown --history '{history}'", f"use one of {', '.join(HISTORIES)}")


def parse_cell_types(spec: str | dict[str, float] | None) -> dict[str, float]:
    """Fractions of a mixed population from "bursting=0.2,refractory=0.5,..." (or a dict).

    Kinds not named get 0; the fractions must be ≥ 0 and sum to 1 (within 1e-6).
    """
    if spec is None:
        return dict(DEFAULT_CELL_TYPES)
    hint = "e.g. --cell-types bursting=0.2,refractory=0.5,regular=0.15,poisson=0.15"
    if isinstance(spec, str):
        pairs: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            try:
                pairs[name.strip()] = float(value) if sep else float("nan")
            except ValueError:
                raise LdnsError(f"cell-type fraction '{part}' is not a number", hint) from None
        spec = pairs
    bad = [k for k in spec if k not in CELL_TYPES]
    if bad:
        raise LdnsError(f"unknown cell type '{bad[0]}'", f"use {', '.join(CELL_TYPES)}; {hint}")
    fractions = {k: float(spec.get(k, 0.0)) for k in CELL_TYPES}
    if any(not np.isfinite(v) or v < 0 for v in fractions.values()):
        raise LdnsError("cell-type fractions must be numbers ≥ 0", hint)
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise LdnsError(f"cell-type fractions sum to {sum(fractions.values()):g}, not 1", hint)
    return fractions


def mixed_kernels(
    n_neurons: int, fractions: dict[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cell types `[N]` (in a random order) and their jittered self-history kernels `[N, H]`.

    Counts per type: floor(fraction·N), the remainder to the largest fractional parts.
    Kernels (log-rate change per past spike at lag k = 1..H):
    - bursting: a·e^{-(k-1)/τ1} − c·e^{-(k-1)/τ2}: the next 1-2 bins excited, slow adaptation;
    - refractory: −A·e^{-(k-1)/τ}, A in 3-5, recovery over 1-2.5 bins;
    - regular: −A·e^{-(k-1)/τ} with A in 5-7 and τ in 3-5 bins: a long relative refractory
      period, so intervals are regular and counts under-dispersed (Fano < 1);
    - poisson: no history.
    """
    exact = np.array([fractions[k] for k in CELL_TYPES]) * n_neurons
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n_neurons - counts.sum()]] += 1
    types = np.repeat(np.array(CELL_TYPES), counts)
    types = types[rng.permutation(n_neurons)]
    lag = np.arange(HISTORY_BINS, dtype=np.float64)  # k - 1
    kernels = np.zeros((n_neurons, HISTORY_BINS))
    for n, kind in enumerate(types):
        u = rng.uniform(size=4)  # always four draws: a neuron's kernel depends on its index only
        if kind == "bursting":
            a, tau1, c, tau2 = 1.0 + 0.5 * u[0], 0.7 + 0.8 * u[1], 0.3 + 0.2 * u[2], 3 + 2 * u[3]
            kernels[n] = a * np.exp(-lag / tau1) - c * np.exp(-lag / tau2)
        elif kind == "refractory":
            kernels[n] = -(3.0 + 2.0 * u[0]) * np.exp(-lag / (1.0 + 1.5 * u[1]))
        elif kind == "regular":
            kernels[n] = -(5.0 + 2.0 * u[0]) * np.exp(-lag / (3.0 + 2.0 * u[1]))
    return types, kernels


def _draw_with_kernels(
    rates: np.ndarray, kernels: np.ndarray, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """Counts `[B, L, N]`: lambda_t = r_t·exp(Σ_k kernels[n, k-1]·s_{t-k}), s = min(Poisson, cap)."""
    n_trials, n_bins, n_neurons = rates.shape
    n_lags = kernels.shape[1]
    counts = np.zeros((n_trials, n_bins, n_neurons), dtype=np.int32)
    for t in range(n_bins):
        drive = np.zeros((n_trials, n_neurons))  # [B, N] sum_k h_{n,k} s_{t-k}
        for k in range(1, min(t, n_lags) + 1):
            drive += kernels[:, k - 1] * counts[:, t - k, :]
        lam = rates[:, t, :] * np.exp(drive)
        counts[:, t, :] = np.minimum(rng.poisson(lam), cap)
    return counts


def draw_spikes(rates: np.ndarray, history: str, rng: np.random.Generator) -> np.ndarray:
    """Spike counts `[B, L, N]` from rates (spikes/bin) with the chosen self-history kernel
    (one kernel for all neurons; `mixed` populations go through `mixed_kernels`)."""
    kernel = history_kernel(history)
    if not kernel.any():
        return rng.poisson(rates).astype(np.int32)
    kernels = np.broadcast_to(kernel, (rates.shape[2], HISTORY_BINS))
    return _draw_with_kernels(rates, kernels, SPIKE_CAP, rng)


def _spikes_and_truth(
    rates: np.ndarray, history: str, cell_types: dict[str, float] | None, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """Counts, per-unit truth columns and provenance for a latent dataset's spikes."""
    if history != "mixed":
        return draw_spikes(rates, history, rng), {}, _history_provenance(history)
    fractions = parse_cell_types(cell_types)
    types, kernels = mixed_kernels(rates.shape[2], fractions, rng)
    counts = _draw_with_kernels(rates, kernels, MIXED_SPIKE_CAP, rng)
    prov = {
        "history": "mixed",
        "cell_types": ",".join(f"{k}={v:g}" for k, v in fractions.items()),
        "history_model": (
            "lambda_t = rate_t * exp(sum_k history_kernel[n, k-1] * s_(t-k)), k = 1.."
            f"{HISTORY_BINS}; s_t = min(Poisson(lambda_t), {MIXED_SPIKE_CAP}); per-unit "
            "cell_type and history_kernel are unit columns; rates are rate_t, before history"
        ),
    }
    truth = {"cell_type": types, "history_kernel": kernels.astype(np.float32)}
    return counts, truth, prov


def _history_provenance(history: str) -> dict[str, str]:
    prov = {"history": history}
    if history != "none":
        kernel = history_kernel(history)
        prov.update(
            history_kernel=",".join(f"{w:.6g}" for w in kernel),
            history_model=(
                "lambda_t = rate_t * exp(sum_k kernel[k-1] * s_(t-k)), k = 1.."
                f"{HISTORY_BINS}; s_t = min(Poisson(lambda_t), {SPIKE_CAP}); "
                "rates are rate_t, before the history term"
            ),
        )
    return prov


def split_labels(n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """Random 70/10/20 train/val/test labels."""
    n_train = round(0.7 * n_trials)
    n_val = round(0.1 * n_trials)
    labels = np.array(["test"] * n_trials, dtype="<U5")
    order = rng.permutation(n_trials)
    labels[order[:n_train]] = "train"
    labels[order[n_train : n_train + n_val]] = "val"
    return labels


def _checked_rng(
    n_trials: int, n_neurons: int, n_bins: int, history: str, seed: int
) -> np.random.Generator:
    """Validate a simulator's arguments (before any work) and return its random generator."""
    for name, value in (("--trials", n_trials), ("--neurons", n_neurons), ("--length", n_bins)):
        if value < 1:
            raise LdnsError(f"{name} must be at least 1, got {value}", f"pass a positive {name}")
    if history != "mixed":
        history_kernel(history)
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------- Lorenz
def _lorenz_rhs(x: np.ndarray) -> np.ndarray:
    dx = np.empty_like(x)  # [B, 3]
    dx[:, 0] = LORENZ_SIGMA * (x[:, 1] - x[:, 0])
    dx[:, 1] = x[:, 0] * (LORENZ_RHO - x[:, 2]) - x[:, 1]
    dx[:, 2] = x[:, 0] * x[:, 1] - LORENZ_BETA * x[:, 2]
    return dx


def lorenz_trajectories(
    n_trials: int, n_points: int, rng: np.random.Generator, substeps: int = 6
) -> np.ndarray:
    """Lorenz trajectories `[B, n_points, 3]` sampled every LORENZ_PERIOD/100 (classic RK4)."""
    dt = LORENZ_PERIOD / 100.0
    h = dt / substeps
    x = LORENZ_IC[None, :] + rng.normal(0.0, 2.0, size=(n_trials, 3))  # [B, 3]
    out = np.empty((n_trials, n_points, 3))
    for t in range(n_points):
        out[:, t] = x
        for _ in range(substeps):
            k1 = _lorenz_rhs(x)
            k2 = _lorenz_rhs(x + 0.5 * h * k1)
            k3 = _lorenz_rhs(x + 0.5 * h * k2)
            k4 = _lorenz_rhs(x + h * k3)
            x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def softplus_beta(x: np.ndarray, beta: float) -> np.ndarray:
    return np.logaddexp(np.zeros((), dtype=x.dtype), beta * x) / beta


def simulate_lorenz(
    n_trials: int = 5000,
    n_neurons: int = 128,
    n_bins: int = 256,
    seed: int = 0,
    history: str = "none",
    bin_size_s: float = LORENZ_BIN_S,
    cell_types: dict[str, float] | None = None,
) -> SpikeData:
    """The LDNS Lorenz benchmark: Poisson (or history-dependent) spikes from Lorenz latents."""
    rng = _checked_rng(n_trials, n_neurons, n_bins, history, seed)
    traj = lorenz_trajectories(n_trials, n_bins + LORENZ_BURN_IN, rng)[:, LORENZ_BURN_IN:]
    # per trajectory and per dimension z-scoring, as the LDNS authors' code does
    latents = (traj - traj.mean(axis=1, keepdims=True)) / traj.std(axis=1, keepdims=True)
    latents = latents.astype(np.float32)
    readout = rng.normal(size=(n_neurons, 3))
    readout /= np.linalg.norm(readout, axis=1, keepdims=True)
    readout = readout[np.argsort(readout[:, 0], kind="stable")]  # [N, 3]
    log_rate_bias = np.float32(np.log(0.3))
    # float32 halves the memory of the [B, L, N] arrays (5000 x 256 x 128 by default)
    rates = softplus_beta(latents @ readout.T.astype(np.float32) + log_rate_bias, beta=2.0)
    counts, truth, history_prov = _spikes_and_truth(rates, history, cell_types, rng)
    return SpikeData(
        counts=counts,
        lengths=np.full(n_trials, n_bins),
        bin_size_s=bin_size_s,
        split=split_labels(n_trials, rng),
        unit_info=truth,
        latents=latents,
        rates=rates,
        provenance={
            "simulator": "lorenz",
            "simulator_version": __version__,
            "seed": str(seed),
            "lorenz": f"sigma={LORENZ_SIGMA} rho={LORENZ_RHO} beta={LORENZ_BETA:.6g}",
            "lorenz_step": f"{LORENZ_PERIOD / 100:.6g} per bin, burn-in {LORENZ_BURN_IN}",
            "observation": "softplus_beta2(C x + log 0.3), C rows unit-norm sorted by column 0",
            **history_prov,
        },
    )


# ---------------------------------------------------------------------- reach
REACH_BIN_S = 0.005
REACH_PRE_S = 0.25  # the window starts 250 ms before movement onset (NLB MC_Maze)
REACH_GAP_S = 0.3  # time between trial windows on the session clock
REACH_PEAK_SPEED = 400.0  # mm/s, of the order of MC_Maze hand speeds
REACH_ROTATION_HZ = 2.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def reach_latents(
    angle: np.ndarray, gain: np.ndarray, t_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Latents `[B, L, 6]` and hand velocity `[B, L, 2]` (mm/s) for reach angles (rad).

    t_s: bin-centre times relative to movement onset `[L]`; gain: per-trial speed scale `[B]`.
    Latents: a preparatory state along the reach direction (rises before onset, decays
    after), a rotation of that state at REACH_ROTATION_HZ during the movement (the
    rotational dynamics of motor cortex), and the normalised velocity itself.
    """
    t = t_s[None, :]  # [1, L]
    th = angle[:, None]  # [B, 1]
    prep = _sigmoid((t + 0.15) / 0.03) * np.exp(-np.maximum(t, 0.0) / 0.1)  # [1, L]
    move = _sigmoid((t + 0.05) / 0.03) * np.exp(-np.maximum(t - 0.1, 0.0) / 0.25)
    phase = th + 2 * np.pi * REACH_ROTATION_HZ * np.maximum(t, 0.0)  # [B, L]
    speed = gain[:, None] * np.exp(-0.5 * ((t - 0.15) / 0.07) ** 2)  # [B, L] in peak units
    latents = np.stack(
        [
            prep * np.cos(th),
            prep * np.sin(th),
            move * np.cos(phase),
            move * np.sin(phase),
            speed * np.cos(th),
            speed * np.sin(th),
        ],
        axis=-1,
    )  # [B, L, 6]
    velocity = REACH_PEAK_SPEED * latents[:, :, 4:6]  # [B, L, 2]
    return latents, velocity


def simulate_reach(
    n_trials: int = 1000,
    n_neurons: int = 128,
    n_bins: int = 140,
    seed: int = 0,
    history: str = "none",
    bin_size_s: float = REACH_BIN_S,
    cell_types: dict[str, float] | None = None,
) -> SpikeData:
    """An NLB-like centre-out reach dataset whose latents depend on the reach angle."""
    rng = _checked_rng(n_trials, n_neurons, n_bins, history, seed)
    angle = rng.uniform(0.0, 2 * np.pi, size=n_trials)  # [B]
    gain = rng.uniform(0.8, 1.2, size=n_trials)
    t_s = -REACH_PRE_S + (np.arange(n_bins) + 0.5) * bin_size_s  # [L] bin centres
    latents, velocity = reach_latents(angle, gain, t_s)
    # slow trial-to-trial variability of the latent state
    latents = latents + 0.1 * rng.normal(size=(n_trials, 1, latents.shape[2]))
    n_latents = latents.shape[2]
    readout = rng.normal(size=(n_neurons, n_latents)) / np.sqrt(n_latents) * 1.5  # [N, Z]
    base_hz = rng.uniform(5.0, 25.0, size=n_neurons)
    log_rates = np.log(base_hz * bin_size_s) + latents @ readout.T  # [B, L, N]
    rates = np.minimum(np.exp(log_rates), 300.0 * bin_size_s)  # cap at 300 Hz
    counts, truth, history_prov = _spikes_and_truth(rates, history, cell_types, rng)
    trial_start_s = np.arange(n_trials) * (n_bins * bin_size_s + REACH_GAP_S)
    n_conditions = 8
    condition = np.round(angle / (2 * np.pi / n_conditions)).astype(np.int64) % n_conditions
    return SpikeData(
        counts=counts,
        lengths=np.full(n_trials, n_bins),
        bin_size_s=bin_size_s,
        trial_start_s=trial_start_s,
        align_offset_s=-REACH_PRE_S,
        covariates={
            "angle": angle,
            "condition_id": condition,
            "move_onset_time": np.full(n_trials, REACH_PRE_S),
        },
        behavior={"hand_vel": velocity.astype(np.float32)},
        split=split_labels(n_trials, rng),
        variable_info={
            "angle": VariableInfo(
                unit="rad", kind="circular", description="reach direction; 0 = rightward"
            ),
            "condition_id": VariableInfo(
                kind="categorical", description="nearest of 8 reach directions (angle / 45 deg)"
            ),
            "move_onset_time": VariableInfo(
                unit="s", description="movement onset (s, relative to the trial's first bin)"
            ),
            "hand_vel": VariableInfo(unit="mm/s", description="hand velocity", columns=["x", "y"]),
        },
        unit_info=truth,
        latents=latents.astype(np.float32),
        rates=rates.astype(np.float32),
        provenance={
            "simulator": "reach",
            "align_field": "move_onset_time",
            "simulator_version": __version__,
            "seed": str(seed),
            "reach": (
                f"window -{REACH_PRE_S} s around move_onset_time; rotation "
                f"{REACH_ROTATION_HZ} Hz; peak speed {REACH_PEAK_SPEED} mm/s"
            ),
            "observation": "exp(log base rate + C z), base 5-25 Hz, capped at 300 Hz",
            **history_prov,
        },
    )


# ---------------------------------------------------------------------- E/I network
NETWORK_BIN_S = 0.005
NETWORK_EXCITATORY = 0.8  # fraction of excitatory cells
NETWORK_TUNED = 0.4  # fraction of excitatory cells whose input the stimulus direction tunes
NETWORK_CONNECTION_P = 0.2  # probability of a synapse from any cell onto any other
NETWORK_SYNAPSE_BINS = 2.0  # decay (bins) of a synaptic input after a presynaptic spike
NETWORK_BURN_IN = 50  # bins run before each trial, so trials start from ongoing activity
NETWORK_STIMULUS = (0.15, 0.45)  # stimulus on/off, seconds after the trial's first bin


def network_truth(n_neurons: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cell types, baselines, tuning, self-history kernels and couplings of the E/I network.

    Excitatory cells: 3-12 Hz baselines, refractory kernels (A 2-4, τ 1-2 bins); inhibitory:
    10-25 Hz, short refractoriness (A 2-3, τ 0.5-1). Synapses: with probability
    NETWORK_CONNECTION_P, weight +w_E from an excitatory cell and −g·w_E from an inhibitory one,
    w_E = 2.4/√(expected excitatory inputs), g = 6: shared fluctuations (population count
    variance ≈ 5x its mean at 100 cells, pairwise correlations ≈ 0.025, Fano 1.0-1.7) without
    locking into runaway synchronous bursts (at g = 3 rates reach 80-110 Hz and Fano 3-8).
    """
    n_exc = round(NETWORK_EXCITATORY * n_neurons)
    exc = np.arange(n_neurons) < n_exc
    base_hz = np.where(exc, rng.uniform(3.0, 12.0, n_neurons), rng.uniform(10.0, 25.0, n_neurons))
    tuned = exc & (rng.uniform(size=n_neurons) < NETWORK_TUNED)
    preferred = rng.uniform(0.0, 2 * np.pi, n_neurons)
    tuning_gain = np.where(tuned, rng.uniform(0.5, 1.0, n_neurons), 0.0)  # log-rate amplitude
    lag = np.arange(HISTORY_BINS, dtype=np.float64)
    amp = np.where(exc, rng.uniform(2.0, 4.0, n_neurons), rng.uniform(2.0, 3.0, n_neurons))
    tau = np.where(exc, rng.uniform(1.0, 2.0, n_neurons), rng.uniform(0.5, 1.0, n_neurons))
    kernels = -amp[:, None] * np.exp(-lag[None, :] / tau[:, None])  # [N, H]
    w_exc = 2.4 / np.sqrt(max(NETWORK_CONNECTION_P * n_exc, 1.0))
    connected = rng.uniform(size=(n_neurons, n_neurons)) < NETWORK_CONNECTION_P
    np.fill_diagonal(connected, False)  # self-effects are the history kernel's
    coupling = connected * np.where(exc, w_exc, -6.0 * w_exc)[None, :]  # [N post, N pre]
    return {
        "cell_type": np.where(exc, "excitatory", "inhibitory"),
        "base_rate_hz": base_hz,
        "tuned": tuned,
        "preferred_angle": preferred,
        "tuning_gain": tuning_gain,
        "history_kernel": kernels,
        "coupling": coupling,
    }


def simulate_network(
    n_trials: int = 400,
    n_neurons: int = 100,
    n_bins: int = 120,
    seed: int = 0,
    history: str = "none",
    bin_size_s: float = NETWORK_BIN_S,
    cell_types: dict[str, float] | None = None,
) -> SpikeData:
    """A spiking E/I network of coupled GLM units with no latent variables.

    λ_{n,t} = exp(log base_n + u_n(t) + Σ_k h_{n,k} s_{n,t−k} + Σ_m J_{nm} x_{m,t}),
    s_{n,t} = min(Poisson(λ), MIXED_SPIKE_CAP), x_m the synaptically filtered past spikes of m
    (x_{m,t} = Σ_k e^{−(k−1)/NETWORK_SYNAPSE_BINS} s_{m,t−k}). u_n(t) = κ_n cos(θ − φ_n) inside
    the stimulus window for tuned cells (θ the trial's `angle`), else 0. Each trial runs
    NETWORK_BURN_IN bins without stimulus first. `history` and `cell_types` do not apply: the
    network's own kernels are part of its truth.
    """
    if history != "none" or cell_types is not None:
        raise LdnsError(
            "the network dataset has its own per-cell history kernels",
            "drop --history/--cell-types for `network`",
        )
    rng = _checked_rng(n_trials, n_neurons, n_bins, "none", seed)
    truth = network_truth(n_neurons, rng)
    angle = rng.uniform(0.0, 2 * np.pi, size=n_trials)  # [B]
    t_s = np.arange(n_bins) * bin_size_s  # [L] bin starts
    on_s, off_s = NETWORK_STIMULUS
    window = _sigmoid((t_s - on_s) / 0.01) * _sigmoid((off_s - t_s) / 0.01)  # [L]
    tuning = truth["tuning_gain"] * np.cos(angle[:, None] - truth["preferred_angle"])  # [B, N]
    log_base = np.log(truth["base_rate_hz"] * bin_size_s)  # [N]
    log_input = log_base + window[None, :, None] * tuning[:, None, :]  # [B, L, N]
    kernels, coupling = truth["history_kernel"], truth["coupling"]
    H = kernels.shape[1]
    syn = np.exp(-np.arange(H) / NETWORK_SYNAPSE_BINS)  # [H], lag k at index k-1
    W = NETWORK_BURN_IN
    total = W + n_bins
    s = np.zeros((n_trials, total, n_neurons), dtype=np.int32)
    for t in range(total):
        eta = (
            log_input[:, max(t - W, 0)]
            if t >= W
            else np.broadcast_to(log_base, (n_trials, n_neurons))
        )
        eta = np.array(eta, dtype=np.float64)  # [B, N]
        filtered = np.zeros((n_trials, n_neurons))  # [B, N] synaptic traces x_m
        for k in range(1, min(t, H) + 1):
            past = s[:, t - k]
            eta += kernels[:, k - 1] * past
            filtered += syn[k - 1] * past
        eta += filtered @ coupling.T
        s[:, t] = np.minimum(rng.poisson(np.exp(np.minimum(eta, 5.0))), MIXED_SPIKE_CAP)
    counts = s[:, W:]
    rates = np.exp(log_input).astype(np.float32)
    stim_on = np.full(n_trials, on_s)
    return SpikeData(
        counts=counts,
        lengths=np.full(n_trials, n_bins),
        bin_size_s=bin_size_s,
        covariates={
            "angle": angle,
            "stimulus_on_time": stim_on,
            "stimulus_off_time": np.full(n_trials, off_s),
        },
        split=split_labels(n_trials, rng),
        variable_info={
            "angle": VariableInfo(
                unit="rad", kind="circular", description="stimulus direction tuning the input"
            ),
            "stimulus_on_time": VariableInfo(unit="s", description="stimulus onset in the trial"),
            "stimulus_off_time": VariableInfo(unit="s", description="stimulus offset"),
        },
        unit_info={
            "cell_type": truth["cell_type"],
            "tuned": truth["tuned"],
            "preferred_angle": truth["preferred_angle"].astype(np.float32),
            "history_kernel": kernels.astype(np.float32),
            "coupling": coupling.astype(np.float32),
        },
        rates=rates,
        provenance={
            "simulator": "network",
            "simulator_version": __version__,
            "seed": str(seed),
            "network": (
                f"{NETWORK_EXCITATORY:.0%} excitatory; P(synapse) {NETWORK_CONNECTION_P}; "
                f"synaptic decay {NETWORK_SYNAPSE_BINS} bins; {NETWORK_TUNED:.0%} of E cells "
                f"tuned to angle from {on_s} to {off_s} s; burn-in {NETWORK_BURN_IN} bins"
            ),
            "observation": (
                "lambda = exp(log base + tuning + sum_k history_kernel[n,k-1] s_n(t-k) + "
                "sum_m coupling[n,m] x_m(t)), x_m = sum_k exp(-(k-1)/"
                f"{NETWORK_SYNAPSE_BINS}) s_m(t-k); s = min(Poisson, {MIXED_SPIKE_CAP}); "
                "rates are exp(log base + tuning), before history and coupling"
            ),
            "history": "network",
        },
    )


SIMULATORS = {"lorenz": simulate_lorenz, "reach": simulate_reach, "network": simulate_network}
# per dataset: trials, neurons, length (bins) when not given
DEFAULT_SIZES = {"lorenz": (5000, 128, 256), "reach": (1000, 128, 140), "network": (400, 100, 120)}


def simulate(
    name: str,
    *,
    trials: int | None = None,
    neurons: int | None = None,
    length: int | str | tuple[int, int] | None = None,
    history: str = "none",
    cell_types: str | dict[str, float] | None = None,
    seed: int = 0,
) -> SpikeData:
    """A built-in dataset with known truth (`ldns simulate`): "lorenz", "reach" or "network",
    at its default size unless `trials`, `neurons` or `length` (bins) say otherwise.

    A `length` range ("150:400" or (150, 400)) gives variable-length trials: each trial is
    simulated at the longest length and ends after a length drawn uniformly from the range
    (spikes, rates, latents and behaviour are cut there; the truth is unchanged before it).

    `history="mixed"` with `cell_types` ("bursting=0.2,refractory=0.5,..." or a dict; default
    DEFAULT_CELL_TYPES) makes a heterogeneous population on the latent datasets."""
    if name not in SIMULATORS:
        raise LdnsError(f"unknown dataset '{name}'", f"use one of: {', '.join(SIMULATORS)}")
    if cell_types is not None and history != "mixed" and name != "network":
        raise LdnsError("cell-type fractions apply to mixed populations", "add --history mixed")
    d_trials, d_neurons, d_length = DEFAULT_SIZES[name]
    lo, hi = parse_length_range(length, d_length)
    data = SIMULATORS[name](
        n_trials=d_trials if trials is None else trials,
        n_neurons=d_neurons if neurons is None else neurons,
        n_bins=hi,
        seed=seed,
        history=history,
        cell_types=None if cell_types is None else parse_cell_types(cell_types),
    )
    if lo == hi:
        return data
    rng = np.random.default_rng([seed, _LENGTH_STREAM])
    return cut_trials(data, rng.integers(lo, hi + 1, size=data.n_trials))


_LENGTH_STREAM = 0x1E7


def parse_length_range(length: int | str | tuple[int, int] | None, default: int) -> tuple[int, int]:
    """(shortest, longest) bins from a length, "lo:hi" or (lo, hi); errors for bad values."""
    if length is None:
        return default, default
    try:
        if isinstance(length, str):
            parts = [int(p) for p in length.split(":")]
        elif isinstance(length, tuple | list):
            parts = [int(p) for p in length]
        else:
            parts = [int(length)]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise LdnsError(
            f"--length must be a number of bins or a range lo:hi with 1 <= lo <= hi, got {length!r}",
            "e.g. --length 140 or --length 150:400",
        )
    return parts[0], parts[1]


def cut_trials(data: SpikeData, lengths: np.ndarray) -> SpikeData:
    """`data` with trial b ending after `lengths[b]` bins: everything after is zeroed padding."""
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), data.lengths)
    keep = np.arange(data.n_bins)[None, :] < lengths[:, None]  # [B, L]

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        if a is None or a.ndim < 2 or a.shape[1] != data.n_bins:
            return a
        return np.where(keep.reshape(keep.shape + (1,) * (a.ndim - 2)), a, 0).astype(a.dtype)

    return dataclasses.replace(
        data,
        counts=cut(data.counts),
        lengths=lengths,
        rates=cut(data.rates),
        latents=cut(data.latents),
        behavior={k: cut(v) for k, v in data.behavior.items()},
    )
