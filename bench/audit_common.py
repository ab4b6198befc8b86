"""Shared by the `audit_*.py` benchmarks: run an `ldns audit --json` command and summarise it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from common import log

LDNS = [sys.executable, "-m", "ldns_cli"]


def audit_json(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run `ldns audit ARGS --json` (stderr passed through); return its payload and wall time."""
    cmd = [*LDNS, "audit", *args, "--json"]
    log("$ ldns " + " ".join(cmd[3:]))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout), time.perf_counter() - t0


def summary(payload: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an audit payload (what the closing notes quote)."""
    out: dict[str, Any] = {"sets": {k: v["trials"] for k, v in payload["sets"].items()}}
    for space, m in payload["memorisation"].items():
        out[f"memorisation_{space}"] = {
            "flagged": m["flagged"],
            "expected": m["expected_flagged"],
            "p_value": m["flagged_p_value"],
            "closer_than_heldout_auc": m["closer_than_heldout_auc"],
            "closer_than_heldout_auc_ci": m["closer_than_heldout_auc_ci"],
            "nearer_train_share": m["nearer_train_share"],
            "median_dcr_samples": m["dcr"]["samples_to_train"]["q50"],
            "median_dcr_heldout": m["dcr"]["heldout_to_train"]["q50"],
        }
    if payload["membership"] is not None:
        out["membership_auc"] = {
            k: [round(s["auc"], 4), [round(c, 4) for c in s["auc_ci"]]]
            for k, s in payload["membership"]["scores"].items()
        }
    out["realism_accuracy"] = {
        k: [r["accuracy"], r["accuracy_ci"]] for k, r in payload["realism"].items()
    }
    out["utility"] = {
        t["name"]: {
            "metric": t["metric"],
            "chance": t["chance"],
            **{
                k: [t[k]["value"], t[k]["ci"]] for k in ("real", "synthetic", "real_plus_synthetic")
            },
        }
        for t in payload["utility"]["targets"]
    }
    out["verdict"] = {v["aspect"]: v["status"] for v in payload["verdict"]}
    return out


def print_verdict(payload: dict[str, Any]) -> None:
    for v in payload["verdict"]:
        log(f"  {v['aspect']}: {v['text']}")
