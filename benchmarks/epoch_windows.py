"""A DataLoader workload timed in whole epochs from an epoch's start, against windows begun anywhere, side by side.

An epoch's start has a pace of its own (the workers' first batches, a burst
from queues filled meanwhile), and windows begun wherever the warm-up ended
hold it or not: augmented_images' 16-worker trials on an H200 had windows of
0.04 to 0.15 s a step and a cv of up to 56%, which the run reported as a busy
machine.  dstune now times each window as one whole epoch from its start
(``MeasureSettings.epoch_aligned``).  This measures one configuration both
ways, in fresh processes, interleaved round by round (drift hits both alike):

    python -m benchmarks.epoch_windows examples/augmented_images.py --rounds 3 \\
        --set loader_workers=16 --set precision=bf16 -o results/DATE-GPU-epoch-windows.json

The JSON holds every measurement (samples/s, the windows' cv, the trial's
seconds), each timing's spread across processes (max / min), the device and
the versions; it is written after every measurement, so a cut run keeps
what it measured.
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

from benchmarks.harness.__main__ import _grid_axis
from benchmarks.harness.trials import Bench
from dstune.trial.measure_settings import MeasureSettings

TIMINGS = (("epochs", True), ("anywhere", False))
WINDOW_KEYS = ("windows", "steps_per_window", "steps_per_epoch", "window_step_times_s")


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per timing: the median figure, its spread across processes (max / min) and the median windows' cv."""
    found: dict[str, Any] = {}
    for timing, measured in runs.items():
        ok = [r for r in measured if r["status"] == "ok"]
        rates = [r["metrics"]["samples_per_s"] for r in ok]
        found[timing] = {
            "measurements": len(ok),
            "samples_per_s_median": statistics.median(rates) if rates else None,
            "spread_max_over_min": max(rates) / min(rates) if len(rates) > 1 else None,
            "cv_median": statistics.median(r["metrics"]["step_time_cv"] for r in ok) if ok else None,
            "trial_s_median": statistics.median(r["duration_s"] for r in ok) if ok else None,
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", type=Path, help="a workload file with dataset=")
    parser.add_argument("--name", help="the workload's name, where the file holds several")
    parser.add_argument("--set", type=_grid_axis, action="append", default=[],
                        help="a knob's value, KNOB=VALUE (repeatable); the rest stay at their defaults")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    bench = Bench(args.workload, args.name)
    if not bench.ctx.has_dataset:
        parser.error(f"{args.workload}: the workload has no dataset=, so it has no epochs to time")
    config, notes = bench.complete({name: values[0] for name, values in args.set})
    runs: dict[str, list[dict[str, Any]]] = {timing: [] for timing, _ in TIMINGS}
    result: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "workload": str(args.workload), "config": config, "notes": notes,
                              "rounds": args.rounds, "environment": bench.environment, "runs": runs}
    for index in range(args.rounds):
        order = TIMINGS if index % 2 == 0 else TIMINGS[::-1]
        for timing, aligned in order:
            bench.options = dataclasses.replace(bench.options,
                                                measure=dataclasses.replace(MeasureSettings(), epoch_aligned=aligned))
            trial = bench.measure(f"{timing} {index + 1}", config)
            measured = trial.to_dict()
            measured["metrics"].update({k: trial.metrics.get(k) for k in WINDOW_KEYS})
            runs[timing].append(measured)
            metrics = measured["metrics"]
            print(f"round {index + 1} {timing}: {measured['status']} {metrics.get('samples_per_s') or 0:.1f} samples/s,"
                  f" cv {metrics.get('step_time_cv') or 0:.1%}, {metrics.get('windows')} windows of "
                  f"{metrics.get('steps_per_window')} steps, trial {measured['duration_s']:.1f} s", flush=True)
            result["summary"] = summary(runs)
            args.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
