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
"""

from __future__ import annotations

import numpy as np

from ldns_cli.core.data import SpikeData, VariableInfo
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.version import __version__

HISTORIES = ("none", "refractory", "bursting")
HISTORY_BINS = 10
SPIKE_CAP = 5  # as LDNS_sh: bounds the positive feedback of a bursting kernel

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
    raise LdnsError(f"unknown --history '{history}'", f"use one of {', '.join(HISTORIES)}")


def draw_spikes(rates: np.ndarray, history: str, rng: np.random.Generator) -> np.ndarray:
    """Spike counts `[B, L, N]` from rates (spikes/bin) with the chosen self-history kernel."""
    kernel = history_kernel(history)
    if not kernel.any():
        return rng.poisson(rates).astype(np.int32)
    n_trials, n_bins, n_neurons = rates.shape
    counts = np.zeros((n_trials, n_bins, n_neurons), dtype=np.int32)
    for t in range(n_bins):
        drive = np.zeros((n_trials, n_neurons))  # [B, N] sum_k h_k s_{t-k}
        for k in range(1, min(t, HISTORY_BINS) + 1):
            drive += kernel[k - 1] * counts[:, t - k, :]
        lam = rates[:, t, :] * np.exp(drive)
        counts[:, t, :] = np.minimum(rng.poisson(lam), SPIKE_CAP)
    return counts


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
    counts = draw_spikes(rates, history, rng)
    return SpikeData(
        counts=counts,
        lengths=np.full(n_trials, n_bins),
        bin_size_s=bin_size_s,
        split=split_labels(n_trials, rng),
        latents=latents,
        rates=rates,
        provenance={
            "simulator": "lorenz",
            "simulator_version": __version__,
            "seed": str(seed),
            "lorenz": f"sigma={LORENZ_SIGMA} rho={LORENZ_RHO} beta={LORENZ_BETA:.6g}",
            "lorenz_step": f"{LORENZ_PERIOD / 100:.6g} per bin, burn-in {LORENZ_BURN_IN}",
            "observation": "softplus_beta2(C x + log 0.3), C rows unit-norm sorted by column 0",
            **_history_provenance(history),
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
    counts = draw_spikes(rates, history, rng)
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
            **_history_provenance(history),
        },
    )


SIMULATORS = {"lorenz": simulate_lorenz, "reach": simulate_reach}
# per dataset: trials, neurons, length (bins) when not given
DEFAULT_SIZES = {"lorenz": (5000, 128, 256), "reach": (1000, 128, 140)}


def simulate(
    name: str,
    *,
    trials: int | None = None,
    neurons: int | None = None,
    length: int | None = None,
    history: str = "none",
    seed: int = 0,
) -> SpikeData:
    """A built-in dataset with known truth (`ldns simulate`): "lorenz" or "reach", at its
    default size unless `trials`, `neurons` or `length` (bins) say otherwise."""
    if name not in SIMULATORS:
        raise LdnsError(f"unknown dataset '{name}'", f"use one of: {', '.join(SIMULATORS)}")
    d_trials, d_neurons, d_length = DEFAULT_SIZES[name]
    return SIMULATORS[name](
        n_trials=d_trials if trials is None else trials,
        n_neurons=d_neurons if neurons is None else neurons,
        n_bins=d_length if length is None else length,
        seed=seed,
        history=history,
    )
