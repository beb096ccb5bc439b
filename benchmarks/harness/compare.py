"""Side-by-side measurement of every arm's configuration, in interleaved rounds.

Each round measures every distinct configuration once, in a rotated order,
so slow drift of the machine (clocks, temperature, a neighbour) spreads over
all arms instead of landing on one.  Arms that chose the same configuration
share its measurements.  The figures kept per configuration are the median
over rounds, the lowest and highest, the spread across rounds (CV) and the
median spread between timed windows inside a trial.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Mapping, Sequence

from .arms import Arm
from .trials import Bench, Measurement, config_key


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    return statistics.pstdev(values) / statistics.fmean(values)


def summarize(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """The figures of one configuration over its rounds."""
    ok = [m for m in measurements if m.ok]
    rates = [m.metrics["samples_per_s"] for m in ok]

    def med(key: str) -> float | None:
        return _median([m.metrics[key] for m in ok if m.metrics.get(key) is not None])

    return {
        "rounds": len(measurements),
        "ok_rounds": len(ok),
        "statuses": [m.status for m in measurements],
        "errors": sorted({(m.error or "")[-300:] for m in measurements if not m.ok and m.error}),
        "samples_per_s": rates,
        "samples_per_s_median": _median(rates),
        "samples_per_s_min": min(rates) if rates else None,
        "samples_per_s_max": max(rates) if rates else None,
        "cv_across_rounds": _cv(rates),
        "cv_within_trial_median": med("step_time_cv"),
        "peak_memory_bytes": med("peak_memory_bytes"),
        "energy_per_sample_j": med("energy_per_sample_j"),
        "latency_p50_s": med("latency_p50_s"),
        "latency_p99_s": med("latency_p99_s"),
        "micro_batch": ok[0].metrics.get("micro_batch") if ok else None,
        "accumulation": ok[0].metrics.get("accumulation") if ok else None,
    }


def side_by_side(bench: Bench, arms: Sequence[Arm], rounds: int, env: Mapping[str, str] | None = None,
                 say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Measure each distinct configuration ``rounds`` times, interleaved; figures by arm name."""
    distinct: dict[str, list[str]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm.failed:
            continue
        key = config_key(arm.config)
        distinct.setdefault(key, []).append(arm.name)
        configs[key] = arm.config
    keys = list(distinct)
    taken: dict[str, list[Measurement]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
        for key in order:
            label = "=".join(distinct[key])
            m = bench.measure(label, configs[key], env)
            taken[key].append(m)
            rate = f"{m.samples_per_s:.1f} samples/s" if m.ok else m.status
            say(f"round {r + 1}/{rounds}: {label}: {rate} ({m.duration_s:.0f} s)")
    figures: dict[str, dict[str, Any]] = {}
    for key in keys:
        summary = summarize(taken[key])
        summary["shared_with"] = distinct[key]
        summary["trials"] = [m.to_dict() for m in taken[key]]
        for name in distinct[key]:
            figures[name] = summary
    return figures
