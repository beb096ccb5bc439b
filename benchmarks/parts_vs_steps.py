"""Timing a training step by its parts against timing whole steps, on the examples, side by side.

dstune times a training step as ``accumulation`` micro-steps plus one
optimizer step, measured apart, so that a trial's cost does not grow with
accumulation (``dstune.trial.measure``).  This benchmark shows that the
combined figure agrees with a measurement of whole steps, and what each
costs, on the examples as written and in bf16:

    python -m benchmarks.parts_vs_steps gpt2 llama_1b resnet50 --rounds 3 -o results/DATE-GPU-parts-vs-steps.json

Each configuration is measured in fresh processes, the two timings
interleaved round by round (drift hits both alike); the JSON holds every
measurement, the median ratio and its spread, the device and the versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness.trials import Bench
from dstune.trial.measure_settings import MeasureSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = {"as written": {}, "bf16": {"precision": "bf16"}}


def compare(name: str, rounds: int) -> dict[str, Any]:
    bench = Bench(EXAMPLES / f"{name}.py")
    settings = MeasureSettings()
    out: dict[str, Any] = {"workload": name, "param_count": bench.ctx.param_count, "configs": {}}
    for label, overrides in CONFIGS.items():
        config, notes = bench.complete(overrides)
        runs: dict[str, list[dict[str, Any]]] = {"parts": [], "whole": []}
        for _ in range(rounds):
            for timing, by_parts in (("parts", True), ("whole", False)):
                bench.options = dataclasses.replace(bench.options,
                                                    measure=dataclasses.replace(settings, by_parts=by_parts))
                measured = bench.measure(f"{label} {timing}", config)
                runs[timing].append({**measured.to_dict(), "micro_step_s": measured.metrics.get("micro_step_s"),
                                     "optimizer_step_s": measured.metrics.get("optimizer_step_s")})
                print(f"{name} {label} {timing}: {measured.status} {measured.samples_per_s} samples/s, "
                      f"trial {measured.duration_s:.1f} s", flush=True)
        rates = {t: [r["metrics"].get("samples_per_s") for r in rs if r["status"] == "ok"] for t, rs in runs.items()}
        pairs = [p / w for p, w in zip(rates["parts"], rates["whole"]) if p and w]
        cost = {t: statistics.median(r["duration_s"] for r in rs) for t, rs in runs.items()}
        out["configs"][label] = {
            "config": config, "notes": notes, "runs": runs,
            "ratio_median": statistics.median(pairs) if pairs else None,
            "ratio_min_max": [min(pairs), max(pairs)] if pairs else None,
            "trial_seconds_median": cost,
        }
        if pairs:
            print(f"{name} {label}: parts/whole {statistics.median(pairs):.4f} [{min(pairs):.4f}, {max(pairs):.4f}],"
                  f" trial {cost['parts']:.1f} s by parts vs {cost['whole']:.1f} s whole", flush=True)
    out["environment"] = bench.environment
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="+", help="example names (files in examples/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rounds": args.rounds,
               "workloads": []}
    for name in args.workloads:
        results["workloads"].append(compare(name, args.rounds))
        args.output.write_text(json.dumps(results, indent=2, default=str))  # what is done survives a cut
    return 0


if __name__ == "__main__":
    sys.exit(main())
