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

from ldns_cli.scoring.evaluation import Evaluation
from ldns_cli.scoring.metrics import kde_on_grid

TABLE_HEADER = ("metric", "model (mean ± sd)", "floor", "naive", "score")
COLORS = {"data": "#222222", "samples": "#d95f02", "naive": "#7570b3"}

FIGURES = (
    ("psc.png", "Population spike count per bin: histograms (steps/dots) and KDEs (lines)."),
    ("isi.png", "Per-neuron mean and std of inter-spike intervals, samples against data."),
    ("correlations.png", "Pairwise correlations of bin counts (every pair i<j), samples vs data."),
    ("rates.png", "Per-neuron mean firing rate and Fano factor, samples against data."),
    ("autocorr.png", "Autocorrelation of bin counts at lags 1..k, neuron median and IQR."),
    ("psd.png", "Power spectra of the smoothed population's principal components."),
    ("rasters.png", "Example trials: data (top row) and samples (bottom row)."),
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
        if m["score"] is not None and m["score"] > 1:
            score += " !"  # worse than the naive Poisson reference
        rows.append((name, model, _fmt(m["floor"]["mean"]), _fmt(m["naive"]["mean"]), score))
    return rows


# ----------------------------------------------------------------------------- figures
def _plt():
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
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>ldns evaluate</h1>
<ul>{describe("reference", ref)}{describe("generated", gen)}</ul>
<p>Each metric: lower is better. <i>floor</i> = the reference against itself, <i>naive</i> =
homogeneous Poisson at the reference's mean rates, both at the same sample sizes as the model;
<i>score</i> = (model − floor)/(naive − floor): 0 is as good as the data, 1 no better than naive;
scores marked <b class='worse'>!</b> are worse than naive.
{proto["folds"]} folds, seed {proto["seed"]}; {esc(proto["description"])}.</p>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
{figs}
</body></html>
"""


def write_report(ev: Evaluation, directory: Path) -> list[Path]:
    """Write the PNG figures and index.html into `directory` (which must exist); return paths."""
    plt = _plt()
    min_isi = int(ev.payload["settings"]["min_isi"])
    makers = {
        "psc.png": lambda p: _fig_psc(plt, ev, p),
        "isi.png": lambda p: _fig_isi(plt, ev, p, min_isi),
        "correlations.png": lambda p: _fig_corr(plt, ev, p),
        "rates.png": lambda p: _fig_rates(plt, ev, p),
        "autocorr.png": lambda p: _fig_autocorr(plt, ev, p),
        "psd.png": lambda p: _fig_psd(plt, ev, p),
        "rasters.png": lambda p: _fig_rasters(plt, ev, p),
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
