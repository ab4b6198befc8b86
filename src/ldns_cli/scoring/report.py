"""The evaluation's table (shared by stdout and HTML) and its visual report: PNGs + index.html.

Figures compare the reference ("data"), the generated set ("samples") and, where it helps to read
the scale, the naive Poisson reference point. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from ldns_cli.scoring.conditions import interval_text
from ldns_cli.scoring.evaluation import Evaluation
from ldns_cli.scoring.metrics import kde_on_grid

TABLE_HEADER = ("metric", "model (mean ± sd)", "floor", "naive", "score ±noise")
CONDITION_HEADER = ("condition", "measure", "model (mean ± sd)", "floor", "chance", "score")
# the metric groups a verdict line speaks for
METRIC_GROUPS = (
    ("population activity", ("psc_kl", "psc_js", "psc_w1")),
    ("pairwise correlations", ("corr_rmse",)),
    ("single neurons", ("rate_rmse_hz", "fano_rmse", "mean_isi_rmse_s", "std_isi_rmse_s")),
    ("temporal structure", ("autocorr_rmse", "psd_log_mse")),
)
GOOD_SCORE = 0.3  # a score at or below this reads as "close to the data"

COLORS = {"data": "#222222", "samples": "#d95f02", "naive": "#7570b3"}

FIGURES = (
    ("psc.png", "Population spike count per bin: histograms (steps/dots) and KDEs (lines)."),
    ("isi.png", "Per-neuron mean and std of inter-spike intervals, samples against data."),
    ("correlations.png", "Pairwise correlations of bin counts (every pair i<j), samples vs data."),
    ("rates.png", "Per-neuron mean firing rate and Fano factor, samples against data."),
    ("autocorr.png", "Autocorrelation of bin counts at lags 1..k, neuron median and IQR."),
    ("psd.png", "Power spectra of the smoothed population's principal components."),
    ("rasters.png", "Example trials: data (top row) and samples (bottom row)."),
    (
        "conditions_psth.png",
        "Per-condition PSTHs of the most condition-dependent neurons: data "
        "(solid) and samples (dashed), one colour per condition group; the event at 0.",
    ),
    (
        "trajectories.png",
        "Condition-averaged population trajectories on the reference's first "
        "two principal components: data (solid) and samples (dashed), one colour per group.",
    ),
    (
        "conditions_rasters.png",
        "One trial per condition group: data (top) and samples (bottom); "
        "the alignment event marked in red.",
    ),
    ("isi_hist.png", "Pooled inter-spike-interval histograms (log scale)."),
    ("training.png", "Training curves from the model folder's logs (train and validation)."),
)


# ----------------------------------------------------------------------------- table
def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def table_rows(payload: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """One row per metric: name, model mean ± sd, floor mean, naive mean, normalised score."""
    rows = []
    for name, m in payload["metrics"].items():
        model = f"{_fmt(m['model']['mean'])} ± {_fmt(m['model']['sd'])}"
        score = "–" if m["score"] is None else f"{m['score']:.2f}"
        if m.get("score_noise") is not None:
            score += f" ±{m['score_noise']:.2f}"
        if m["score"] is not None and m["score"] > 1:
            score += " !"  # worse than the naive Poisson reference
        rows.append((name, model, _fmt(m["floor"]["mean"]), _fmt(m["naive"]["mean"]), score))
    return rows


def condition_rows(payload: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """One row per condition and measure (decoding, PSTH R²): model ± sd, floor, chance, score."""
    rows = []
    for name, entry in payload.get("conditions", {}).items():
        for key in ("decoding", "psth"):
            m = entry.get(key)
            if not m:
                continue
            label = m["metric"] if key == "decoding" else "psth_r2"
            measure = f"{label} ({'lower' if m['lower_is_better'] else 'higher'} is better)"
            model = f"{_fmt(m['model']['mean'])} ± {_fmt(m['model']['sd'])}"
            score = "–" if m["score"] is None else f"{m['score']:.2f}"
            if m["score"] is not None and m["score"] > 1:
                score += " !"
            rows.append(
                (name, measure, model, _fmt(m["floor"]["mean"]), _fmt(m["chance"]["mean"]), score)
            )
    return rows


MODEL_CHECK_HEADER = ("condition", "measure", "real", "autoencoder", "samples", "chance")


def model_check_rows(payload: dict[str, Any]) -> list[tuple[str, ...]]:
    """The stage checks stored with the models (`evaluate -m`): one row per condition; a stage's
    cell holds its value and, when stored, the 95% interval of its value/real."""
    stored = payload.get("model_checks") or {}
    checks = dict(stored.get("autoencoder", {}))
    checks.update(stored.get("diffusion", {}))  # the diffusion stage holds all three stages
    rows = []
    for name, c in checks.items():
        stages = c.get("stages", {})
        measure = c.get("metric", "")
        if "guidance" in c:
            measure += f" (W={c['guidance']:g})"
        if c.get("autoencoder_condition_gain"):  # the rates the conditional model samples from
            measure += " (autoencoder x condition gain)"
        intervals = c.get("ratio_interval") or {}
        values = [_fmt(stages.get("real"))]
        for k in ("autoencoder", "samples"):
            text, interval = _fmt(stages.get(k)), intervals.get(k)
            if interval is not None and stages.get(k) is not None:  # value/real, 95%
                text += f" (×{interval_text(interval)})"
            values.append(text)
        rows.append((name, measure, *values, _fmt(c.get("chance"))))
    return rows


def verdicts(payload: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """One line per metric group (and per condition): (group, verdict, worse than naive)."""
    lines = []
    for group, names in METRIC_GROUPS:
        scores = {
            n: payload["metrics"][n]["score"]
            for n in names
            if n in payload["metrics"] and payload["metrics"][n]["score"] is not None
        }
        if not scores:
            lines.append((group, "no score (the naive model is not clearly worse here)", False))
            continue
        worst = max(scores, key=lambda n: scores[n])
        w = scores[worst]
        noise = payload["metrics"][worst].get("score_noise")
        shown = f"{w:.2f}" if noise is None else f"{w:.2f} ±{noise:.2f}"
        if noise is not None and GOOD_SCORE < w <= GOOD_SCORE + noise:
            shown += f", within its sampling noise of {GOOD_SCORE:g}"
        text = _verdict(
            w,
            f"close to the data (every score ≤ {GOOD_SCORE:g}; worst {worst} {shown})",
            f"between the data and Poisson (worst {worst} {shown})",
            f"worse than homogeneous Poisson on {worst} (score {shown})",
        )
        lines.append((group, text, w > 1))
    for name, entry in payload.get("conditions", {}).items():
        scores = [entry[k]["score"] for k in ("decoding", "psth") if entry.get(k)]
        scores = [x for x in scores if x is not None]
        if not scores:
            continue
        w = max(scores)
        text = _verdict(
            w,
            f"samples carry the condition (scores ≤ {GOOD_SCORE:g})",
            f"the condition is partly lost (worst score {w:.2f})",
            f"samples do not carry the condition (score {w:.2f})",
        )
        lines.append((f"condition {name}", text, w > 1))
    return lines


def _verdict(worst: float, good: str, between: str, bad: str) -> str:
    """The words for a worst score: ≤ GOOD_SCORE, ≤ 1 (between data and the reference), > 1."""
    if worst <= GOOD_SCORE:
        return good
    return between if worst <= 1 else bad


# ----------------------------------------------------------------------------- figures
def pyplot() -> Any:
    """matplotlib.pyplot, headless (Agg), with the reports' shared style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
        }
    )
    return plt


def _save(plt: Any, fig: Any, path: Path, **margins: float) -> None:
    """Fixed margins instead of tight_layout (which doubles the rendering time)."""
    fig.subplots_adjust(**margins)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _identity(ax: Any, x: np.ndarray, y: np.ndarray) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return
    lo = float(min(x[ok].min(), y[ok].min()))
    hi = float(max(x[ok].max(), y[ok].max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999999", lw=0.8, zorder=0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")


def _scatter(ax: Any, x: np.ndarray, y: np.ndarray, title: str, unit: str, s: float = 10) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], s=s, alpha=0.6, color=COLORS["samples"], edgecolors="none")
    _identity(ax, x, y)
    ax.set_xlabel(f"data{unit}")
    ax.set_ylabel(f"samples{unit}")
    if ok.sum() > 2 and np.std(x[ok]) > 0 and np.std(y[ok]) > 0:
        r = float(np.corrcoef(x[ok], y[ok])[0, 1])
        title = f"{title}  (r = {r:.3f}, n = {int(ok.sum())})"
    ax.set_title(title)


def _fig_psc(plt: Any, ev: Evaluation, path: Path) -> None:
    sets = {"data": ev.reference, "samples": ev.generated, "naive": ev.naive}
    size = max(s.psc_hist.size for s in sets.values())
    grid = np.arange(size)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    top = 0.0
    for name, s in sets.items():
        h = np.pad(s.psc_hist.astype(float), (0, size - s.psc_hist.size))
        p = h / max(h.sum(), 1.0)
        kde = kde_on_grid(h)
        top = max(top, float(p.max()), float(kde.max()))
        ls = "--" if name == "naive" else "-"
        axes[0].step(grid, p, where="mid", color=COLORS[name], alpha=0.35, lw=1)
        axes[1].plot(grid, np.where(p > 0, p, np.nan), ".", ms=3, color=COLORS[name], alpha=0.5)
        for ax in axes:
            ax.plot(grid, kde, color=COLORS[name], lw=1.6, ls=ls, label=name)
    # linear panel: the range holding 99.9% of data and samples; log panel: everything observed
    cdf = [np.cumsum(s.psc_hist) / max(s.psc_hist.sum(), 1) for s in (ev.reference, ev.generated)]
    hi = max(int(np.searchsorted(c, 0.999)) for c in cdf) + 2
    seen = max(int(np.flatnonzero(s.psc_hist).max(initial=0)) for s in sets.values()) + 1
    axes[0].set_xlim(-0.5, min(hi, size) + 0.5)
    axes[0].set_ylim(0, top * 1.08)
    axes[0].set_title("population spike count (linear, 99.9% range)")
    axes[1].set_yscale("log")
    axes[1].set_xlim(-0.5, seen + 0.5)
    axes[1].set_ylim(0.3 / max(ev.reference.psc_hist.sum(), 1), top * 2)
    axes[1].set_title("population spike count (log): dots = histogram")
    for ax in axes:
        ax.set_xlabel("spikes per bin, summed over neurons")
        ax.set_ylabel("probability")
    axes[0].legend(frameon=False)
    _save(plt, fig, path, left=0.07, right=0.99, top=0.9, bottom=0.15, wspace=0.22)


def _fig_isi(plt: Any, ev: Evaluation, path: Path, min_isi: int) -> None:
    r, g = ev.reference, ev.generated
    ok = (r.isi_n >= min_isi) & (g.isi_n >= min_isi)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    _scatter(axes[0], r.isi_mean_s[ok] * 1e3, g.isi_mean_s[ok] * 1e3, "mean ISI", " (ms)")
    _scatter(axes[1], r.isi_std_s[ok] * 1e3, g.isi_std_s[ok] * 1e3, "std ISI", " (ms)")
    _save(plt, fig, path, left=0.08, right=0.99, top=0.92, bottom=0.12, wspace=0.25)


def _fig_corr(plt: Any, ev: Evaluation, path: Path) -> None:
    iu = np.triu_indices(ev.reference.corr.shape[0], k=1)
    x, y, z = ev.reference.corr[iu], ev.generated.corr[iu], ev.naive.corr[iu]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    size = 6 if x.size < 2000 else 2
    _scatter(axes[0], x, y, "pairwise correlation", "", s=size)
    _scatter(axes[1], x, z, "naive Poisson (reference point)", "", s=size)
    axes[1].set_ylabel("naive")
    for coll in axes[1].collections:
        coll.set_color(COLORS["naive"])
    _save(plt, fig, path, left=0.08, right=0.99, top=0.92, bottom=0.12, wspace=0.25)


def _fig_rates(plt: Any, ev: Evaluation, path: Path) -> None:
    r, g = ev.reference, ev.generated
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    _scatter(axes[0], r.rates_hz, g.rates_hz, "mean rate", " (Hz)")
    _scatter(axes[1], r.fano, g.fano, "Fano factor", "")
    _save(plt, fig, path, left=0.08, right=0.99, top=0.92, bottom=0.12, wspace=0.25)


def _fig_autocorr(plt: Any, ev: Evaluation, path: Path) -> None:
    lags = np.arange(1, ev.reference.autocorr.shape[0] + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, s in (("data", ev.reference), ("samples", ev.generated), ("naive", ev.naive)):
        ac = s.autocorr  # [K, N]
        if not np.isfinite(ac).any():
            continue
        med = np.nanmedian(ac, axis=1)
        q1, q3 = np.nanpercentile(ac, [25, 75], axis=1)
        ls = "--" if name == "naive" else "-"
        ax.plot(lags, med, marker="o", ms=3, color=COLORS[name], ls=ls, label=name)
        ax.fill_between(lags, q1, q3, color=COLORS[name], alpha=0.15, lw=0)
    ax.axhline(0, color="#999999", lw=0.8, zorder=0)
    ax.set_xlabel(f"lag (bins of {ev.bin_size_s * 1e3:g} ms)")
    ax.set_ylabel("autocorrelation")
    ax.set_title("count autocorrelation (median over neurons, IQR band)")
    ax.legend(frameon=False)
    _save(plt, fig, path, left=0.14, right=0.98, top=0.9, bottom=0.14)


def _fig_psd(plt: Any, ev: Evaluation, path: Path) -> None:
    freqs = ev.reference.psd_freqs_hz
    cutoff = ev.reference.psd_max_hz
    shown = (freqs > 0) & (freqs <= 2.5 * cutoff)
    n_pc = ev.reference.psd.shape[1]
    cols = max(n_pc, 1)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols + 0.6, 3.3), squeeze=False)
    for z in range(n_pc):
        ax = axes[0, z]
        for name, s in (("data", ev.reference), ("samples", ev.generated), ("naive", ev.naive)):
            p = np.where(s.psd[shown, z] > 0, s.psd[shown, z], np.nan)
            if np.isfinite(p).any():
                ls = "--" if name == "naive" else "-"
                ax.plot(freqs[shown], p, color=COLORS[name], ls=ls, lw=1.4, label=name)
        ax.axvspan(cutoff, freqs[shown].max(initial=cutoff), color="#eeeeee", zorder=0, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("frequency (Hz)")
        expl = ev.projection.explained[z] * 100 if z < len(ev.projection.explained) else 0
        ax.set_title(f"PC{z + 1} ({expl:.0f}% var.)")
    axes[0, 0].set_ylabel("power spectral density")
    axes[0, 0].legend(frameon=False)
    if n_pc == 0 or not shown.any():
        axes[0, 0].text(0.5, 0.5, "no PSD (trials too short)", ha="center")
    fig.suptitle(
        f"smoothed (σ = {ev.projection.sigma_bins * ev.bin_size_s * 1e3:.3g} ms) PCs; "
        f"the metric uses f ≤ {cutoff:.3g} Hz (grey: beyond, filtered away)",
        fontsize=9,
    )
    _save(plt, fig, path, left=0.06, right=0.99, top=0.8, bottom=0.16, wspace=0.35)


def _fig_rasters(plt: Any, ev: Evaluation, path: Path) -> None:
    sets = [("data", *ev.examples["reference"]), ("samples", *ev.examples["generated"])]
    n_cols = max(min(len(sets[0][2]), len(sets[1][2]), 4), 1)
    fig, axes = plt.subplots(2, n_cols, figsize=(2.7 * n_cols + 0.5, 5.6), squeeze=False)
    vmax = 2  # 1 spike mid-grey, ≥ 2 black
    for row, (name, counts, lengths) in enumerate(sets):
        for col in range(n_cols):
            ax = axes[row, col]
            if col >= len(lengths):
                ax.axis("off")
                continue
            c = counts[col, : lengths[col]].T  # [N, L]
            t_max = lengths[col] * ev.bin_size_s * 1e3
            ax.imshow(
                np.minimum(c, vmax),
                aspect="auto",
                cmap="Greys",
                vmin=0,
                vmax=vmax,
                interpolation="nearest",
                extent=(0, t_max, c.shape[0] - 0.5, -0.5),
            )
            ax.set_title(f"{name}, trial {col + 1}", color=COLORS[name])
            if col == 0:
                ax.set_ylabel("neuron")
            if row == 1:
                ax.set_xlabel("time (ms)")
    _save(plt, fig, path, left=0.06, right=0.99, top=0.94, bottom=0.09, wspace=0.25, hspace=0.3)


def _time_ms(n_bins: int, ev: Evaluation) -> np.ndarray:
    """Bin centres in ms relative to the alignment event (0 = the event)."""
    return ((np.arange(n_bins) + 0.5) * ev.bin_size_s + ev.align_offset_s) * 1e3


def _no_data(plt: Any, path: Path, text: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#555555")
    _save(plt, fig, path, left=0.01, right=0.99, top=0.99, bottom=0.01)


def _group_colors(plt: Any, kind: str, n_groups: int) -> list[Any]:
    """Circular conditions on a hue circle (neighbouring angles look alike), others tab10/20."""
    if kind == "circular":
        cmap = plt.get_cmap("hsv")
        return [cmap(0.9 * g / max(n_groups, 1)) for g in range(n_groups)]
    cmap = plt.get_cmap("tab10" if n_groups <= 10 else "tab20")
    return [cmap(g % cmap.N) for g in range(n_groups)]


def _grouped(ev: Evaluation) -> list[Any]:
    return [f for f in ev.condition_figures if f.psth_reference is not None]


def _fig_condition_psth(plt: Any, ev: Evaluation, path: Path, n_neurons: int = 4) -> None:
    conds = _grouped(ev)
    if not conds:
        _no_data(plt, path, "no condition with groups to compare (see the notes)")
        return
    height = 2.7 * len(conds) + 0.8
    fig, axes = plt.subplots(
        len(conds), n_neurons, figsize=(2.6 * n_neurons + 0.6, height), squeeze=False
    )
    for row, cf in enumerate(conds):
        ref, gen = cf.psth_reference, cf.psth_generated  # [G, L, N] Hz
        t = _time_ms(ref.shape[1], ev)
        # the neurons whose PSTH depends most on the condition: variance across groups
        spread = np.nanmean(np.nanvar(ref, axis=0), axis=0)  # [N]
        spread = np.where(np.isfinite(spread), spread, -1.0)
        top = np.argsort(spread)[::-1][:n_neurons]
        for col in range(n_neurons):
            ax = axes[row, col]
            if col >= len(top):
                ax.axis("off")
                continue
            n = int(top[col])
            colors = _group_colors(plt, cf.kind, len(cf.group_labels))
            for g, label in enumerate(cf.group_labels):
                color = colors[g]
                ax.plot(t, ref[g, :, n], color=color, lw=1.3, label=label)
                ax.plot(t, gen[g, :, n], color=color, lw=1.1, ls="--")
            if ev.align_offset_s != 0:
                ax.axvline(0, color="#b00000", lw=0.8)
            ax.set_title(f"{cf.name}: neuron {n}")
            ax.set_xlabel("time from event (ms)" if ev.align_offset_s else "time (ms)")
            if col == 0:
                ax.set_ylabel("rate (Hz)")
        if len(cf.group_labels) <= 8:
            axes[row, 0].legend(frameon=False, fontsize=6, ncol=2)
    top_margin, bottom_margin = 1 - 0.35 / height, 0.55 / height
    _save(plt, fig, path, left=0.06, right=0.99, top=top_margin, bottom=bottom_margin,
          wspace=0.3, hspace=0.6)  # fmt: skip


def _fig_trajectories(plt: Any, ev: Evaluation, path: Path) -> None:
    conds = _grouped(ev)
    proj = ev.projection
    if not conds or proj.components.shape[1] < 2:
        _no_data(plt, path, "no condition groups (or fewer than two principal components)")
        return
    w = proj.components[:, :2] / proj.scale[:, None]  # [N, 2]
    offset = proj.mean @ w
    fig, axes = plt.subplots(1, len(conds), figsize=(4.4 * len(conds), 4.2), squeeze=False)
    for col, cf in enumerate(conds):
        ax = axes[0, col]
        colors = _group_colors(plt, cf.kind, len(cf.group_labels))
        for g, label in enumerate(cf.group_labels):
            color = colors[g]
            for psth, ls in ((cf.psth_reference, "-"), (cf.psth_generated, "--")):
                z = (psth[g] * ev.bin_size_s) @ w - offset  # [L, 2], from Hz to spikes/bin
                ok = np.isfinite(z).all(axis=1)
                if ok.any():
                    ax.plot(z[ok, 0], z[ok, 1], color=color, ls=ls, lw=1.2,
                            label=label if ls == "-" else None)  # fmt: skip
                    ax.plot(z[ok, 0][:1], z[ok, 1][:1], "o", ms=3, color=color)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_title(f"{cf.name}: condition-averaged trajectories (dot = start)")
        if len(cf.group_labels) <= 8:
            ax.legend(frameon=False, fontsize=7)
    _save(plt, fig, path, left=0.08, right=0.99, top=0.9, bottom=0.12, wspace=0.3)


def _fig_condition_rasters(plt: Any, ev: Evaluation, path: Path, max_groups: int = 8) -> None:
    conds = _grouped(ev)
    if not conds:
        _no_data(plt, path, "no condition groups")
        return
    cf = conds[0]
    n_cols = min(len(cf.group_labels), max_groups)
    fig, axes = plt.subplots(2, n_cols, figsize=(2.2 * n_cols + 0.5, 5.2), squeeze=False)
    for row, (name, examples) in enumerate(
        (("data", cf.example_reference), ("samples", cf.example_generated))
    ):
        for col in range(n_cols):
            ax = axes[row, col]
            ex = examples[col]
            if ex is None:
                ax.axis("off")
                continue
            counts, length = ex
            c = counts[:length].T  # [N, L]
            t0 = ev.align_offset_s * 1e3
            t1 = t0 + length * ev.bin_size_s * 1e3
            ax.imshow(np.minimum(c, 2), aspect="auto", cmap="Greys", vmin=0, vmax=2,
                      interpolation="nearest", extent=(t0, t1, c.shape[0] - 0.5, -0.5))  # fmt: skip
            if t0 < 0 < t1:
                ax.axvline(0, color="#b00000", lw=1.0)
            ax.set_title(f"{name}: {cf.name} {cf.group_labels[col]}", color=COLORS[name],
                         fontsize=8)  # fmt: skip
            if col == 0:
                ax.set_ylabel("neuron")
            if row == 1:
                ax.set_xlabel("ms from event" if ev.align_offset_s else "ms")
    _save(plt, fig, path, left=0.06, right=0.99, top=0.93, bottom=0.1, wspace=0.25, hspace=0.35)


def _fig_isi_hist(plt: Any, ev: Evaluation, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, hist in ev.isi_hist.items():
        if hist.sum() == 0:
            continue
        p = hist / hist.sum()
        x = np.arange(len(p)) * ev.bin_size_s * 1e3
        ls = "--" if name == "naive" else "-"
        ax.step(x[:-1], np.where(p[:-1] > 0, p[:-1], np.nan), where="mid", color=COLORS[name],
                ls=ls, lw=1.3, label=name)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel(f"inter-spike interval (ms, in bins of {ev.bin_size_s * 1e3:g} ms)")
    ax.set_ylabel("fraction of ISIs")
    ax.set_title("pooled ISI distribution (0 = spikes sharing a bin)")
    ax.legend(frameon=False)
    _save(plt, fig, path, left=0.12, right=0.98, top=0.9, bottom=0.14)


def read_training_log(path: Path) -> dict[str, np.ndarray]:
    """A training CSV log as columns (empty cells read as NaN)."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    header = lines[0].split(",")
    rows = [[float(v) if v else np.nan for v in line.split(",")] for line in lines[1:]]
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return {h: table[:, i] for i, h in enumerate(header)}


def _fig_training(plt: Any, logs: list[Path], path: Path) -> None:
    readable = []
    for log in logs:
        try:
            readable.append((log, read_training_log(log)))
        except (OSError, ValueError):
            continue  # a damaged log leaves its panel out, not the report
    if not readable:
        _no_data(plt, path, "no training logs (give the model folder with -m)")
        return
    fig, axes = plt.subplots(1, len(readable), figsize=(4.6 * len(readable), 3.6), squeeze=False)
    for ax, (log, cols) in zip(axes[0], readable, strict=True):
        for key in cols:
            if key.startswith(("train_", "val_")) and key != "train_seconds":
                ok = np.isfinite(cols[key])
                if ok.any():
                    color = COLORS["data"] if key.startswith("train_") else COLORS["samples"]
                    ax.plot(cols["epoch"][ok], cols[key][ok], color=color, lw=1.3,
                            label=key.split("_")[0])  # fmt: skip
                    ax.set_ylabel(key.split("_", 1)[1].replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_title(log.stem.replace("_training", ""))
        ax.legend(frameon=False)
    _save(plt, fig, path, left=0.1, right=0.98, top=0.9, bottom=0.14, wspace=0.35)


# ----------------------------------------------------------------------------- html
def _html(payload: dict[str, Any]) -> str:
    esc = html.escape
    rows = "\n".join(
        ("<tr class='worse'>" if row[4].endswith("!") else "<tr>")
        + "".join(f"<td>{esc(v)}</td>" for v in row)
        + f"<td class='d'>{esc(payload['metrics'][row[0]]['description'])}</td></tr>"
        for row in table_rows(payload)
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in (*TABLE_HEADER, "definition"))
    ref, gen = payload["reference"], payload["generated"]
    proto = payload["protocol"]
    cond_rows = "\n".join(
        ("<tr class='worse'>" if row[5].endswith("!") else "<tr>")
        + "".join(f"<td>{esc(v)}</td>" for v in row)
        + "</tr>"
        for row in condition_rows(payload)
    )
    cond_head = "".join(f"<th>{esc(h)}</th>" for h in CONDITION_HEADER)
    cond_notes = "".join(
        f"<li>{esc(n)}</li>" for n in payload.get("notes", {}).get("conditions", [])
    )
    cond_html = (
        f"<h2>Per condition</h2><p>{esc(proto.get('conditions', ''))}.</p>"
        f"<table><thead><tr>{cond_head}</tr></thead><tbody>{cond_rows}</tbody></table>"
        if cond_rows
        else "<h2>Per condition</h2><p>No condition evaluated.</p>"
    ) + (f"<ul>{cond_notes}</ul>" if cond_notes else "")
    check_rows = model_check_rows(payload)
    if check_rows:
        check_head = "".join(f"<th>{esc(h)}</th>" for h in MODEL_CHECK_HEADER)
        check_body = "".join(
            "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in check_rows
        )
        cond_html += (
            "<h3>Condition checks stored with the models</h3><p>Decoders fitted on the real "
            "training trials, applied to the real validation trials, to Poisson draws of the "
            "autoencoder's rates of them and to samples for their conditions.</p>"
            f"<table><thead><tr>{check_head}</tr></thead><tbody>{check_body}</tbody></table>"
        )
    verdict_html = "".join(
        f"<li><b>{esc(group)}</b>: "
        + (f"<b class='worse'>{esc(text)}</b>" if bad else esc(text))
        + "</li>"
        for group, text, bad in verdicts(payload)
    )
    prov = gen.get("provenance", {})
    prov_html = (
        "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in sorted(prov.items())
        )
        or "<tr><td colspan='2'>the generated file records no provenance</td></tr>"
    )
    figs = "\n".join(
        f"<figure><img src='{esc(name)}' alt='{esc(caption)}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in FIGURES
    )

    def describe(label: str, d: dict[str, Any]) -> str:
        src = f" — {esc(str(d['path']))}" if "path" in d else ""
        return (
            f"<li><b>{label}</b>{src}: {d['trials']} trials × ≤{d['max_bins']} bins × "
            f"{d['neurons']} neurons, {d['bin_size_s'] * 1e3:g} ms bins, "
            f"mean rate {d['mean_rate_hz']:.2f} Hz</li>"
        )

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ldns evaluate report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child, td.d, th:last-child {{ text-align: left; }}
td.d {{ color: #666; font-size: 12px; }}
tr.worse td:nth-child(5), b.worse {{ color: #b00; font-weight: bold; }}
table.prov td {{ text-align: left; font-size: 12px; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>ldns evaluate</h1>
<ul>{describe("reference", ref)}{describe("generated", gen)}</ul>
<h2>Verdict</h2>
<ul>{verdict_html}</ul>
<p>Each metric: lower is better. <i>floor</i> = the reference against itself, <i>naive</i> =
homogeneous Poisson at the reference's mean rates, both at the same sample sizes as the model;
<i>score</i> = (model − floor)/(naive − floor): 0 is as good as the data, 1 no better than naive;
scores marked <b class='worse'>!</b> are worse than naive.
{proto["folds"]} folds, seed {proto["seed"]}; {esc(proto["description"])}.</p>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
{cond_html}
<h2>Figures</h2>
{figs}
<h2>Provenance of the samples</h2>
<table class='prov'><tbody>{prov_html}</tbody></table>
<p>Evaluated with ldns {esc(str(payload.get("ldns_version", "")))}, {proto["folds"]} folds,
seed {proto["seed"]}.</p>
</body></html>
"""


def write_report(
    ev: Evaluation, directory: Path, training_logs: list[Path] | None = None
) -> list[Path]:
    """Write the PNG figures and index.html into `directory` (which must exist); return paths.

    `training_logs`: the model folder's `*_training.csv` files, plotted as training curves."""
    plt = pyplot()
    min_isi = int(ev.payload["settings"]["min_isi"])
    makers = {
        "psc.png": lambda p: _fig_psc(plt, ev, p),
        "isi.png": lambda p: _fig_isi(plt, ev, p, min_isi),
        "correlations.png": lambda p: _fig_corr(plt, ev, p),
        "rates.png": lambda p: _fig_rates(plt, ev, p),
        "autocorr.png": lambda p: _fig_autocorr(plt, ev, p),
        "psd.png": lambda p: _fig_psd(plt, ev, p),
        "rasters.png": lambda p: _fig_rasters(plt, ev, p),
        "conditions_psth.png": lambda p: _fig_condition_psth(plt, ev, p),
        "trajectories.png": lambda p: _fig_trajectories(plt, ev, p),
        "conditions_rasters.png": lambda p: _fig_condition_rasters(plt, ev, p),
        "isi_hist.png": lambda p: _fig_isi_hist(plt, ev, p),
        "training.png": lambda p: _fig_training(plt, list(training_logs or []), p),
    }
    written = []
    for name, _caption in FIGURES:
        path = directory / name
        makers[name](path)
        written.append(path)
    index = directory / "index.html"
    index.write_text(_html(ev.payload), encoding="utf-8")
    written.append(index)
    return written
