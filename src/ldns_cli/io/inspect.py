"""What `ldns inspect` reports about a dataset: a pure function from `SpikeData` to a dict.

The dict is JSON-ready (plain floats, ints, strings, lists) and is also rendered as text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldns_cli.core.data import SpikeData

MAX_LISTED_VALUES = 20


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
    }


def _covariate(data: SpikeData, name: str, values: np.ndarray) -> dict[str, Any]:
    info = data.info(name)
    entry: dict[str, Any] = {
        "name": name,
        "kind": info.kind,
        "unit": info.unit,
        "shape": list(values.shape[1:]),
        "description": info.description,
    }
    if values.dtype.kind in "iuf" and info.kind != "categorical":
        flat = values.reshape(len(values), -1)
        entry["min"] = flat.min(axis=0).astype(float).tolist()
        entry["max"] = flat.max(axis=0).astype(float).tolist()
        if values.ndim == 1:
            entry["min"], entry["max"] = entry["min"][0], entry["max"][0]
    else:
        labels, counts = np.unique(
            values.reshape(len(values), -1)[:, 0].astype(str), return_counts=True
        )
        entry["n_values"] = len(labels)
        entry["values"] = {
            str(k): int(c) for k, c in list(zip(labels, counts, strict=True))[:MAX_LISTED_VALUES]
        }
    return entry


def summarize(data: SpikeData) -> dict[str, Any]:
    """Units, trials, lengths, bin size, covariates, behaviour and firing rates of `data`."""
    mask = data.mask()  # [B, L]
    rates_hz = data.mean_rate_hz()  # [N]
    total_spikes = int(data.counts.sum(dtype=np.int64))
    valid_bins = int(data.lengths.sum())
    out: dict[str, Any] = {
        "source": data.provenance.get("source_file", ""),
        "format": data.provenance.get("source_format", ""),
        "n_units": data.n_neurons,
        "n_trials": data.n_trials,
        "n_bins": data.n_bins,
        "bin_size_s": data.bin_size_s,
        "align_offset_s": data.align_offset_s,
        "lengths": {
            **_stats(data.lengths),
            "variable": bool(data.lengths.min() != data.lengths.max()),
        },
        "trial_duration_s": _stats(data.lengths * data.bin_size_s),
        "splits": None
        if data.split is None
        else {
            str(k): int(v) for k, v in zip(*np.unique(data.split, return_counts=True), strict=True)
        },
        "spikes": {
            "total": total_spikes,
            "mean_per_bin_per_unit": total_spikes / (valid_bins * data.n_neurons),
            "max_per_bin": int(data.counts.max()),
            "silent_units": int((rates_hz == 0).sum()),
        },
        "firing_rate_hz": _stats(rates_hz),
        "covariates": [_covariate(data, k, np.asarray(v)) for k, v in data.covariates.items()],
        "behavior": [
            {
                "name": name,
                "dim": int(v.shape[2]),
                "unit": data.info(name).unit,
                "columns": data.info(name).columns,
                "min": v[mask].min(axis=0).astype(float).tolist(),
                "max": v[mask].max(axis=0).astype(float).tolist(),
            }
            for name, v in data.behavior.items()
        ],
        "unit_columns": {
            name: (
                int(np.asarray(v).astype(bool).sum()) if np.asarray(v).dtype.kind == "b" else None
            )
            for name, v in data.unit_info.items()
        },
        "latents": None if data.latents is None else {"dim": int(data.latents.shape[2])},
        "rates": data.rates is not None,
        "skipped": [s for s in data.provenance.get("skipped", "").split("; ") if s],
        "provenance": dict(data.provenance),
    }
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


def render_text(summary: dict[str, Any]) -> str:
    """A compact human-readable view of `summarize`'s dict."""
    s = summary
    lines = [
        f"source       {s['source']} ({s['format']})",
        f"units        {s['n_units']}",
        f"trials       {s['n_trials']} x {s['n_bins']} bins of {s['bin_size_s'] * 1e3:g} ms"
        + (f" (bin 0 at {s['align_offset_s']:+g} s from the event)" if s["align_offset_s"] else ""),
    ]
    ln = s["lengths"]
    lines.append(
        f"lengths      {ln['min']:g}..{ln['max']:g} bins (mean {ln['mean']:.4g})"
        + (", variable" if ln["variable"] else "")
    )
    if s["splits"]:
        lines.append("splits       " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    fr = s["firing_rate_hz"]
    sp = s["spikes"]
    lines.append(
        f"rates        mean {fr['mean']:.3g} Hz, median {fr['median']:.3g} Hz, "
        f"range {fr['min']:.3g}..{fr['max']:.3g} Hz; {sp['mean_per_bin_per_unit']:.3g} spikes/bin"
    )
    lines.append(
        f"spikes       {sp['total']} total, max {sp['max_per_bin']} per bin, "
        f"{sp['silent_units']} silent unit(s)"
    )
    for c in s["covariates"]:
        unit = f" [{c['unit']}]" if c["unit"] else ""
        if "values" in c:
            vals = ", ".join(list(c["values"])[:8])
            more = "" if c["n_values"] <= 8 else ", ..."
            desc = f"{c['n_values']} values: {vals}{more}"
        else:
            desc = f"{_fmt(c['min'])}..{_fmt(c['max'])}"
        lines.append(f"covariate    {c['name']} ({c['kind']}{unit}) {desc}")
    for b in s["behavior"]:
        cols = f" ({','.join(b['columns'])})" if b["columns"] else ""
        unit = f" [{b['unit']}]" if b["unit"] else ""
        lines.append(
            f"behaviour    {b['name']}{cols}{unit} dim {b['dim']}, "
            f"range {_fmt(b['min'])}..{_fmt(b['max'])}"
        )
    for name, n_true in s["unit_columns"].items():
        lines.append(f"unit column  {name}" + (f" ({n_true} true)" if n_true is not None else ""))
    if s["latents"]:
        lines.append(
            f"ground truth latents (dim {s['latents']['dim']})" + (", rates" if s["rates"] else "")
        )
    elif s["rates"]:
        lines.append("ground truth rates")
    for note in s["skipped"]:
        lines.append(f"skipped      {note}")
    return "\n".join(lines)
