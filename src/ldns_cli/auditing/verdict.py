"""The verdict: one plain sentence per question, with its numbers, from the audit payload.

Each entry has an `aspect` (memorisation, membership, realism, utility), a `status` word for
scripts and a `text` for people. The rules:

- memorisation: "copies" when more samples are flagged than chance allows (beta-binomial
  p < COPY_P_VALUE) and at least COPY_EXCESS times the expected rate; "close" when not, but
  samples come closer to the training trials than held-out trials do (the closer-than-held-out
  AUC's interval above 0.5); else "ok". Per feature space.
- membership: "leaks" when the combined AUC's interval lies above 0.5, else "ok"; "not run"
  without a model.
- realism: "indistinguishable" when the accuracy's interval reaches down to 0.5, else
  "distinguishable", placed between chance and the naive Poisson surrogate.
- utility: per condition, "useful" when the decoder trained on samples beats chance (interval
  above it) and "useless" otherwise; augmentation "helps"/"hurts" when the difference's interval
  excludes 0 and the difference is at least NEGLIGIBLE of the real decoder's margin over chance.
  "not run" when no condition can be decoded.
"""

from __future__ import annotations

from typing import Any

COPY_P_VALUE = 0.01  # flagged count's p-value below which samples are said to copy
COPY_EXCESS = 2.0  # ... if also at least this many times the rate expected without copying
NEGLIGIBLE = 0.02  # augmentation effects below this fraction of (real - chance) are negligible


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci_pct(ci: list[float | None]) -> str:
    return f"{_pct(ci[0])}–{_pct(ci[1])}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _ci_num(ci: list[float | None]) -> str:
    return f"{_num(ci[0])}–{_num(ci[1])}"


def _memorisation(space: str, m: dict[str, Any]) -> dict[str, str]:
    flagged, ci, expected = m["flagged"], m["flagged_ci"], m["expected_flagged"]
    auc, auc_ci = m["closer_than_heldout_auc"], m["closer_than_heldout_auc_ci"]
    base = (
        f"{_pct(flagged)} of samples (95% CI {_ci_pct(ci)}) lie closer to a training trial than "
        f"held-out trials do ({_pct(expected)} expected if nothing is copied, p = "
        f"{m['flagged_p_value']:.2g})"
    )
    near = (
        f"a sample is closer to the training trials than a held-out trial is with probability "
        f"{auc:.2f} (CI {auc_ci[0]:.2f}–{auc_ci[1]:.2f}; 0.5 expected)"
    )
    if m["flagged_p_value"] < COPY_P_VALUE and flagged >= COPY_EXCESS * expected:
        status = "copies"
        text = f"COPIES: {base}; {near}. Inspect the closest pairs."
    elif auc_ci[0] > 0.5:
        status = "close"
        text = f"samples follow the training trials closely without copying them: {near}; {base}."
    else:
        status = "ok"
        text = f"no sign of copying: {base}; {near}."
        if auc_ci[1] < 0.5:
            text += " Samples lie farther from the training trials than new real trials do: "
            text += "a realism gap, not a leak."
    return {"aspect": f"memorisation ({space})", "status": status, "text": text}


def _membership(mem: dict[str, Any] | None) -> dict[str, str]:
    if mem is None:
        return {
            "aspect": "membership",
            "status": "not run",
            "text": "membership inference needs the model: pass -m MODELS.",
        }
    scores = mem["scores"]
    key = "combined" if "combined" in scores else next(iter(scores))
    auc, ci = scores[key]["auc"], scores[key]["auc_ci"]
    detail = ", ".join(f"{k} {scores[k]['auc']:.3f}" for k in scores if k != key)
    numbers = f"membership AUC {auc:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f}; {detail}; 0.5 = no leak)"
    if ci[0] > 0.5:
        return {
            "aspect": "membership",
            "status": "leaks",
            "text": f"LEAKS: the model scores its training trials differently from held-out "
            f"ones: {numbers}.",
        }
    return {
        "aspect": "membership",
        "status": "ok",
        "text": f"no detectable membership leak: {numbers}.",
    }


def _realism(real: dict[str, Any]) -> dict[str, str]:
    model, naive, floor = real["model"], real["naive"], real["floor"]
    acc, ci = model["accuracy"], model["accuracy_ci"]
    refs = f"naive Poisson {_pct(naive['accuracy'])}, real training vs held-out {_pct(floor['accuracy'])}"
    numbers = (
        f"a classifier tells samples from held-out trials {_pct(acc)} of the time (95% CI "
        f"{_ci_pct(ci)}; chance 50%; {refs})"
    )
    if acc is None:
        return {"aspect": "realism", "status": "not run", "text": "too few trials to classify."}
    if ci[0] <= 0.5:
        return {"aspect": "realism", "status": "indistinguishable", "text": f"{numbers}."}
    naive_acc = naive["accuracy"]
    if naive_acc is not None and naive_acc > 0.5 and acc < naive_acc:
        where = f"{100 * (acc - 0.5) / (naive_acc - 0.5):.0f}% of the way from chance to naive"
    else:
        where = "as easy to tell apart as the naive Poisson surrogate, or easier"
    return {"aspect": "realism", "status": "distinguishable", "text": f"{numbers}: {where}."}


def _utility(util: dict[str, Any]) -> list[dict[str, str]]:
    if not util["targets"]:
        why = "; ".join(f"{k}: {v}" for k, v in util["skipped"].items())
        return [
            {
                "aspect": "utility",
                "status": "not run",
                "text": "no condition to decode (an unconditional model, or the samples carry "
                "no condition the recordings share)" + (f" ({why})" if why else "") + ".",
            }
        ]
    out = []
    for t in util["targets"]:
        real, syn, aug = t["real"], t["synthetic"], t["real_plus_synthetic"]
        diff = t["real_plus_synthetic_minus_real"]
        numbers = (
            f"decoding {t['name']} ({t['metric']}) in held-out trials: trained on samples "
            f"{_num(syn['value'])} (95% CI {_ci_num(syn['ci'])}), on real trials "
            f"{_num(real['value'])} ({_ci_num(real['ci'])}), chance {_num(t['chance'])}"
        )
        # a difference counts when its interval excludes 0 and it is not negligible next to
        # what the real decoder gains over chance
        matters = abs(diff["value"]) >= NEGLIGIBLE * abs(real["value"] - t["chance"])
        if diff["ci"][0] > 0 and matters:
            aug_text = f"adding the samples to the real trials helps (+{_num(diff['value'])})"
        elif diff["ci"][1] < 0 and matters:
            aug_text = f"adding the samples to the real trials hurts ({_num(diff['value'])})"
        else:
            aug_text = (
                f"adding the samples to the real trials changes little ({_num(diff['value'])})"
            )
        aug_text += f": {_num(aug['value'])} (CI {_ci_num(aug['ci'])})"
        useful = syn["ci"][0] > t["chance"]
        out.append(
            {
                "aspect": f"utility ({t['name']})",
                "status": "useful" if useful else "useless",
                "text": f"{'' if useful else 'NO USE: '}{numbers}; {aug_text}.",
            }
        )
    return out


def verdict(payload: dict[str, Any]) -> list[dict[str, str]]:
    """The verdict entries of an audit payload (see the module for the rules)."""
    out = [_memorisation(space, m) for space, m in payload["memorisation"].items()]
    out.append(_membership(payload["membership"]))
    out.append(_realism(payload["realism"]))
    out.extend(_utility(payload["utility"]))
    return out
