"""The benchmark's figures: a row per arm, the targets checked, and the markdown table.

Ratios are of medians over the side-by-side rounds.  MFU is the model's
FLOPs per sample times samples/s over the bf16 matrix-product rate measured
on the same GPU in the same session, so it is a fraction of what this chip
actually delivers, not of its data-sheet peak.
"""

from __future__ import annotations

from typing import Any

from dstune.knobs import describe_config

ARMS = ("default", "checklist", "lightning", "accelerate", "dstune", "oracle")
GIB = 1024**3


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm, in the fixed order, with its ratios to the default and the oracle."""
    figures = result["figures"]
    arms = {a["name"]: a for a in result["arms"]}
    default = (figures.get("default") or {}).get("samples_per_s_median")
    oracle = (figures.get("oracle") or {}).get("samples_per_s_median")
    flops = result.get("flops_per_sample")
    peak = (result.get("machine") or {}).get("bf16_matmul_flops")
    out = []
    for name in ARMS:
        if name not in arms:
            continue
        arm, fig = arms[name], figures.get(name) or {}
        rate = fig.get("samples_per_s_median")
        out.append({
            "arm": name,
            "samples_per_s": rate,
            "samples_per_s_min": fig.get("samples_per_s_min"),
            "samples_per_s_max": fig.get("samples_per_s_max"),
            "cv_across_rounds": fig.get("cv_across_rounds"),
            "cv_within_trial": fig.get("cv_within_trial_median"),
            "ratio_to_default": _ratio(rate, default),
            "ratio_to_oracle": _ratio(rate, oracle),
            "peak_memory_gib": fig["peak_memory_bytes"] / GIB if fig.get("peak_memory_bytes") else None,
            "energy_per_sample_j": fig.get("energy_per_sample_j"),
            "latency_p99_ms": fig["latency_p99_s"] * 1e3 if fig.get("latency_p99_s") else None,
            "tuning_s": arm.get("tuning_s"),
            "mfu": rate * flops / peak if rate and flops and peak else None,
            "config": describe_config(arm["config"], result.get("default_config")),
            "shared_with": [n for n in fig.get("shared_with", [name]) if n != name],
            "status": arm.get("failed") or (", ".join(sorted(set(fig.get("statuses", [])) - {"ok"})) or "ok"),
        })
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for one workload: each with its figure, its threshold and whether it was met."""
    by = {r["arm"]: r for r in rows(result)}
    dstune = (by.get("dstune") or {}).get("samples_per_s")
    checks = []

    def add(name: str, value: float | None, threshold: float, higher: bool = True) -> None:
        met = None if value is None else (value >= threshold if higher else value <= threshold)
        checks.append({"target": name, "value": value, "threshold": threshold, "met": met})

    add("dstune / oracle", _ratio(dstune, (by.get("oracle") or {}).get("samples_per_s")), 0.97)
    add("dstune / checklist", _ratio(dstune, (by.get("checklist") or {}).get("samples_per_s")), 1.00)
    for finder in ("lightning", "accelerate"):
        add(f"dstune / {finder}", _ratio(dstune, (by.get(finder) or {}).get("samples_per_s")), 1.00)
    if result.get("flops_per_sample"):
        add("dstune MFU", (by.get("dstune") or {}).get("mfu"), 0.45)
    cvs = [r["cv_across_rounds"] for r in by.values() if r.get("cv_across_rounds") is not None]
    add("largest CV across rounds", max(cvs) if cvs else None, 0.01, higher=False)
    return checks


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(result: dict[str, Any]) -> str:
    """The workload's table and its targets, as they go into benchmarks/README.md."""
    inference = result.get("mode") == "inference"
    head = ["arm", "samples/s (min-max)", "x default", "x oracle", "peak GiB", "J/sample"]
    head += ["p99 ms"] if inference else []
    head += ["MFU"] if result.get("flops_per_sample") else []
    head += ["tuning", "configuration (vs default)"]
    lines = [f"| {' | '.join(head)} |", f"|{'---|' * len(head)}"]
    for r in rows(result):
        rate = (f"{r['samples_per_s']:.1f} ({r['samples_per_s_min']:.1f}-{r['samples_per_s_max']:.1f})"
                if r["samples_per_s"] else r["status"])
        cells = [r["arm"], rate, _num(r["ratio_to_default"], ".2f"), _num(r["ratio_to_oracle"], ".3f"),
                 _num(r["peak_memory_gib"], ".1f"), _num(r["energy_per_sample_j"], ".3f")]
        cells += [_num(r["latency_p99_ms"], ".1f")] if inference else []
        cells += [_num(r["mfu"] and r["mfu"] * 100, ".1f") + ("%" if r["mfu"] else "")] if result.get(
            "flops_per_sample") else []
        same = f" (same as {', '.join(r['shared_with'])})" if r["shared_with"] else ""
        cells += [_duration(r["tuning_s"]), r["config"] + same]
        lines.append(f"| {' | '.join(cells)} |")
    lines.append("")
    for t in targets(result):
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"- {t['target']}: {value} (target {'<=' if 'CV' in t['target'] else '>='} "
                     f"{t['threshold']}): {mark}")
    return "\n".join(lines) + "\n"
