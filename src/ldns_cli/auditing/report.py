"""The audit's table (shared by stdout and HTML) and its report folder: PNG figures + index.html.

Matplotlib runs headless (Agg), as in `scoring.report`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from ldns_cli.auditing.run import Audit
from ldns_cli.scoring.report import pyplot

TABLE_HEADER = ("check", "measure", "value", "95% CI", "reference")
COLORS = {"samples": "#d95f02", "heldout": "#222222", "train": "#1b9e77", "naive": "#7570b3"}


# ----------------------------------------------------------------------------- table
def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.3g}"


def _ci(ci: list[float | None], fmt=_num) -> str:
    return f"{fmt(ci[0])} – {fmt(ci[1])}"


def table_rows(payload: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows of (check, measure, value, 95% CI, reference) for every number the verdict uses."""
    rows = []
    for space, m in payload["memorisation"].items():
        check = f"memorisation [{space}]"
        rows.append(
            (check, "samples flagged (DCR below threshold)", _pct(m["flagged"]),
             _ci(m["flagged_ci"], _pct), f"{_pct(m['expected_flagged'])} if none copied")
        )  # fmt: skip
        rows.append(
            (check, "P(sample closer to training than held-out)", _num(m["closer_than_heldout_auc"]),
             _ci(m["closer_than_heldout_auc_ci"]), "0.5")
        )  # fmt: skip
        rows.append(
            (check, "nearest trial is a training trial (equal sets)",
             _pct(m["nearer_train_share"]), "", "≈ 50%")
        )  # fmt: skip
        dcr = m["dcr"]
        rows.append(
            (check, "median distance sample → training", _num(dcr["samples_to_train"]["q50"]), "",
             f"held-out → training {_num(dcr['heldout_to_train']['q50'])}")
        )  # fmt: skip
    mem = payload["membership"]
    if mem is not None:
        for name, s in mem["scores"].items():
            rows.append(
                ("membership", f"AUC, {name} score", _num(s["auc"]), _ci(s["auc_ci"]), "0.5")
            )
    labels = {
        "model": "accuracy, samples vs held-out",
        "naive": "accuracy, naive Poisson vs held-out",
        "floor": "accuracy, real training vs held-out",
    }
    for key, label in labels.items():
        r = payload["realism"][key]
        rows.append(("realism", label, _pct(r["accuracy"]), _ci(r["accuracy_ci"], _pct), "50%"))
    for t in payload["utility"]["targets"]:
        check = f"utility [{t['name']}]"
        for key, label in (
            ("real", "trained on real"),
            ("synthetic", "trained on samples"),
            ("real_plus_synthetic", "trained on real + samples"),
        ):
            rows.append(
                (check, f"{t['metric']}, {label}", _num(t[key]["value"]), _ci(t[key]["ci"]),
                 f"chance {_num(t['chance'])}")
            )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- figures
def _save(plt: Any, fig: Any, path: Path, rows: int = 1) -> None:
    """Fixed margins (tight_layout doubles the rendering time), in inches for any row count."""
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.08, right=0.98, top=1 - 0.45 / height, bottom=0.55 / height, wspace=0.28,
        hspace=0.9 / (height / rows),
    )  # fmt: skip
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fig_distances(plt: Any, audit: Audit, path: Path) -> None:
    spaces = list(audit.memorisation)
    fig, axes = plt.subplots(len(spaces), 2, figsize=(10, 3.6 * len(spaces)), squeeze=False)
    for row, space in enumerate(spaces):
        a = audit.memorisation[space]
        ax = axes[row, 0]
        both = np.concatenate([a.samples_to_train, a.heldout_to_train])
        lo, hi = float(both.min()), float(both.max())
        pad = 0.02 * (hi - lo) + 1e-12
        bins = np.linspace(lo - pad, hi + pad, 60)
        ax.hist(a.heldout_to_train, bins, density=True, alpha=0.5, color=COLORS["heldout"],
                label="held-out → training")  # fmt: skip
        ax.hist(a.samples_to_train, bins, density=True, alpha=0.5, color=COLORS["samples"],
                label="sample → training")  # fmt: skip
        ax.axvline(a.threshold, color="#b2182b", lw=1.2, ls="--", label="threshold")
        ax.set_xlabel("distance to the nearest training trial")
        ax.set_ylabel("density")
        ax.set_title(f"distance to closest record [{space}]")
        ax.legend(frameon=False)
        ax = axes[row, 1]
        ax.scatter(a.samples_to_heldout, a.samples_to_train, s=6, alpha=0.5,
                   color=COLORS["samples"], edgecolors="none")  # fmt: skip
        lo = float(min(a.samples_to_heldout.min(), a.samples_to_train.min()))
        top = float(max(a.samples_to_heldout.max(), a.samples_to_train.max()))
        ax.plot([lo, top], [lo, top], color="#999999", lw=0.8)
        ax.axhline(a.threshold, color="#b2182b", lw=1.0, ls="--")
        ax.set_xlabel("sample → nearest held-out trial")
        ax.set_ylabel("sample → nearest training trial")
        ax.set_title("below the diagonal: nearer a training trial")
    _save(plt, fig, path, rows=len(spaces))


def _roc(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([member, nonmember])
    label = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    order = np.argsort(-scores, kind="stable")
    tpr = np.concatenate([[0.0], np.cumsum(label[order]) / max(len(member), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - label[order]) / max(len(nonmember), 1)])
    return fpr, tpr


def _fig_membership(plt: Any, audit: Audit, payload: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (inside, outside) in audit.membership.items():
        fpr, tpr = _roc(inside, outside)
        auc = payload["membership"]["scores"][name]["auc"]
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8)
    ax.set_xlabel("false positive rate (held-out called training)")
    ax.set_ylabel("true positive rate (training called training)")
    ax.set_title("membership inference ROC")
    ax.legend(frameon=False)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.13)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(ax: Any, labels: list[str], values: list, cis: list, colors: list[str]) -> None:
    x = np.arange(len(labels))
    v = np.array([np.nan if a is None else a for a in values], dtype=float)
    lo = np.array([np.nan if c[0] is None else c[0] for c in cis], dtype=float)
    hi = np.array([np.nan if c[1] is None else c[1] for c in cis], dtype=float)
    ax.bar(x, v, color=colors, alpha=0.8)
    # a percentile interval need not contain its point estimate: clip the bars at 0
    err = [np.maximum(v - lo, 0.0), np.maximum(hi - v, 0.0)]
    ax.errorbar(x, v, yerr=err, fmt="none", ecolor="#333333", capsize=4, lw=1)
    ax.set_xticks(x, labels)


def _fig_realism_utility(plt: Any, payload: dict[str, Any], path: Path) -> None:
    targets = payload["utility"]["targets"]
    fig, axes = plt.subplots(1, 1 + len(targets), figsize=(4.2 * (1 + len(targets)), 3.8),
                             squeeze=False)  # fmt: skip
    r = payload["realism"]
    keys = ("floor", "model", "naive")
    ax = axes[0, 0]
    _bars(ax, ["real vs real", "samples", "naive"], [r[k]["accuracy"] for k in keys],
          [r[k]["accuracy_ci"] for k in keys],
          [COLORS["train"], COLORS["samples"], COLORS["naive"]])  # fmt: skip
    ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy vs held-out trials")
    ax.set_title("two-sample classifier (0.5 = indistinguishable)")
    for col, t in enumerate(targets, start=1):
        ax = axes[0, col]
        keys = ("real", "synthetic", "real_plus_synthetic")
        _bars(ax, ["real", "samples", "real+samples"], [t[k]["value"] for k in keys],
              [t[k]["ci"] for k in keys],
              [COLORS["train"], COLORS["samples"], COLORS["naive"]])  # fmt: skip
        ax.axhline(t["chance"], color="#999999", lw=0.8, ls="--", label="chance")
        ax.set_ylabel(t["metric"])
        ax.set_title(f"decoding {t['name']} in held-out trials")
        ax.legend(frameon=False)
    _save(plt, fig, path)


# ----------------------------------------------------------------------------- html
def _html(payload: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    esc = html.escape
    verdict = "\n".join(
        f"<li><b>{esc(v['aspect'])}</b> — <i>{esc(v['status'])}</i>: {esc(v['text'])}</li>"
        for v in payload["verdict"]
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table_rows(payload)
    )
    pair_rows = ""
    for space, m in payload["memorisation"].items():
        for p in m["closest_pairs"]:
            pair_rows += (
                f"<tr><td>{esc(space)}</td><td>{esc(str(p['sample_trial_id']))}</td>"
                f"<td>{esc(str(p['train_trial_id']))}</td><td>{_num(p['distance'])}</td>"
                f"<td>{_num(p['heldout_distance'])}</td>"
                f"<td>{'yes' if p['flagged'] else 'no'}</td></tr>\n"
            )
    sets = "".join(
        f"<li><b>{esc(k)}</b>{esc(' — ' + str(d['path'])) if 'path' in d else ''}: "
        f"{d['trials']} trials × {d['neurons']} neurons, mean {d['mean_bins']:.0f} bins of "
        f"{d['bin_size_s'] * 1e3:g} ms, {d['mean_rate_hz']:.2f} Hz</li>"
        for k, d in payload["sets"].items()
    )
    spaces = "".join(
        f"<li>{esc(k)}: {esc(v)}</li>" for k, v in payload["settings"]["feature_space"].items()
    )
    figs = "\n".join(
        f"<figure><img src='{esc(name)}' alt='{esc(caption)}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ldns audit report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; margin: 1em 0; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
li {{ margin: 0.3em 0; }} figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>ldns audit</h1>
<ul>{sets}</ul>
<h2>Verdict</h2>
<ul>{verdict}</ul>
<h2>Numbers</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<p>Memorisation feature spaces:</p><ul>{spaces}</ul>
<p>Realism: {esc(payload["settings"]["classifier"])}. Seed {payload["settings"]["seed"]}.</p>
<h2>Closest sample / training pairs</h2>
<table><thead><tr><th>space</th><th>sample trial</th><th>training trial</th><th>distance</th>
<th>to nearest held-out</th><th>flagged</th></tr></thead><tbody>
{pair_rows}</tbody></table>
{figs}
</body></html>
"""


def write_report(audit: Audit, payload: dict[str, Any], directory: Path) -> list[Path]:
    """Write the PNG figures and index.html into `directory` (which must exist); return paths.

    `payload`: the JSON-ready payload (`jsonable(audit.payload)`, with any paths added).
    """
    plt = pyplot()
    figures = [
        ("distances.png", "Distances to the closest training trial: samples against held-out "
         "trials (left; dashed: the threshold), and each sample's nearest training vs nearest "
         "held-out distance (right)."),
    ]  # fmt: skip
    _fig_distances(plt, audit, directory / "distances.png")
    if audit.membership:
        figures.append(("membership.png", "ROC of the membership attack scores."))
        _fig_membership(plt, audit, payload, directory / "membership.png")
    figures.append(
        ("realism_utility.png", "Two-sample classifier accuracy (left) and decoders of each "
         "condition tested on held-out trials (right), with 95% intervals.")
    )  # fmt: skip
    _fig_realism_utility(plt, payload, directory / "realism_utility.png")
    index = directory / "index.html"
    index.write_text(_html(payload, figures), encoding="utf-8")
    return [directory / name for name, _ in figures] + [index]
