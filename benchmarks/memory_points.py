"""A workload's peak memory point by point: the memory probe's parts at several micro-batches, and full trials.

The memory model (``dstune.run.memory_model``) predicts a configuration's
peak from a line per part of a step through small micro-batches (before
2026-12-03, the two smallest).  This benchmark shows where such a line holds
and where it does not: it
measures the probe's three parts (``first``, ``later``, ``update``) at each
micro-batch given, in one process as the Plan phase does on a GPU, then runs
full trials at the micro-batches given to ``--trials-at`` and records their
allocated and reserved peaks::

    python -m benchmarks.memory_points examples/llama_1b.py --set activation_checkpointing=true \
        --set precision=bf16 --micro 1 2 4 8 16 --trials-at 16 -o results/DATE-GPU-llama_1b-memory-points.json

For each micro-batch the JSON holds the measured parts, the line through the
two smallest micro-batches (the model's lines before 2026-12-03) and its
prediction, and each trial's peaks beside the prediction, so a miss can be put
down to the line (the probe's own point at that micro-batch disagrees with the
line) or to the trial (the probe's point agrees, the trial does not).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness.trials import Bench
from dstune.plugin_calls import batch_plan
from dstune.run.memory_model import PARTS, Line
from dstune.trial.launch import run_in_subprocess
from dstune.trial.records import MEMORY, TrialSpec

GIB = 1024 ** 3


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON where it parses (numbers, true, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def probe_points(bench: Bench, configs: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """The probe's parts for each configuration, measured in one process (the allocator's peak reset between)."""
    spec = TrialSpec(kind=MEMORY, workload_file=str(bench.options.workload_file),
                     workload_name=bench.options.workload_name, ctx=bench.ctx_dict, variants=configs)
    outcome = run_in_subprocess(spec, timeout_s=timeout_s, env=bench.env)
    if outcome.status != "ok":
        raise SystemExit(f"the memory probe ended {outcome.status}: {(outcome.error or outcome.stderr_tail)[-600:]}")
    return list(outcome.payload.get("points", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", type=Path, help="a workload file")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="a knob's value for every point (repeatable)")
    parser.add_argument("--size-knob", default="batch_size", help="the knob that sets the micro-batch")
    parser.add_argument("--micro", type=int, nargs="+", default=[1, 2, 4, 8], help="micro-batches to probe")
    parser.add_argument("--trials-at", type=int, nargs="*", default=[], help="micro-batches to run full trials at")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the probe's process")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    sets = dict(item.split("=", 1) for item in args.set)
    bench = Bench(args.workload)
    overrides = {name: parse_value(value) for name, value in sets.items()}
    configs = []
    for micro in args.micro:
        config, notes = bench.complete({**overrides, args.size_knob: micro})
        if notes:
            raise SystemExit("; ".join(notes))
        configs.append(config)
    points = probe_points(bench, configs, args.timeout)
    ok = sorted(((p["micro_batch"], p) for p in points if "allocated" in p), key=lambda pair: pair[0])
    if len(ok) < 2:
        raise SystemExit(f"fewer than two points measured: {points}")
    (x1, p1), (x2, p2) = ok[0], ok[1]
    lines = {part: Line.through((x1, p1["allocated"][part]), (x2, p2["allocated"][part])) for part in PARTS}
    rows = []
    for micro, point in ok:
        predicted = {part: lines[part].at(micro) for part in PARTS}
        rows.append({"micro_batch": micro, "allocated": point["allocated"], "reserved": point["reserved"],
                     "line_prediction": predicted,
                     "measured_over_line": {part: point["allocated"][part] / predicted[part] for part in PARTS}})
        print(f"probe micro-batch {micro}: " + ", ".join(
            f"{part} {point['allocated'][part] / GIB:.2f} GiB (line {predicted[part] / GIB:.2f})" for part in PARTS)
            + f"; reserved {point['reserved'] / GIB:.2f} GiB", flush=True)
    trials = []
    for micro in args.trials_at:
        config, _ = bench.complete({**overrides, args.size_knob: micro})
        plan = batch_plan(bench.pm, config, bench.ctx)
        measured = bench.measure(f"micro-batch {micro}", config)
        parts = [lines["first"].at(micro), lines["update"].at(micro)]
        if plan is not None and plan.accumulation > 1:
            parts.append(lines["later"].at(micro))
        line_peak = max(parts)
        metrics = measured.metrics
        row = {"micro_batch": micro, "accumulation": plan.accumulation if plan else None, "status": measured.status,
               "peak_allocated": metrics.get("peak_allocated"), "peak_reserved": metrics.get("peak_reserved"),
               "samples_per_s": metrics.get("samples_per_s"), "line_peak_allocated": line_peak,
               "error": measured.error}
        if metrics.get("peak_allocated"):
            row["allocated_over_line"] = metrics["peak_allocated"] / line_peak
            row["reserved_over_allocated"] = (metrics.get("peak_reserved") or 0) / metrics["peak_allocated"]
        trials.append(row)
        print(f"trial micro-batch {micro}: {measured.status}, allocated "
              f"{(metrics.get('peak_allocated') or 0) / GIB:.2f} GiB, reserved "
              f"{(metrics.get('peak_reserved') or 0) / GIB:.2f} GiB, line {line_peak / GIB:.2f} GiB", flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workload": str(args.workload),
              "set": overrides, "lines_through": [x1, x2],
              "lines": {part: {"fixed": line.fixed, "per_sample": line.per_sample} for part, line in lines.items()},
              "probe": rows, "trials": trials, "environment": bench.environment}
    args.output.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
