"""Summarise every iteration of a workload (PDCA decisions) in a dstune database as benchmark JSON.

    python benchmarks/summarize_pdca.py DB WORKLOAD OUT.json [--command "dstune run ..."]

Per iteration: environment changes, trials by status, incumbent and challenger, the check's measurements
(throughputs in A B A B order with their medians), the speed-up with its 95% interval, the decision and
the regression estimate; plus the device and versions from the fingerprint and the date.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from dstune.store import Store


def _iteration(store: Store, it) -> dict:
    measurements = store.measurements(it.id)
    by_role = {role: [m.samples_per_s for m in measurements if m.role == role and m.samples_per_s]
               for role in ("incumbent", "challenger")}
    check = it.check or {}
    return {
        "iteration": it.id, "started_at": it.started_at.isoformat(), "ended_at": it.ended_at.isoformat(),
        "wall_s": (it.ended_at - it.started_at).total_seconds(), "status": it.status,
        "environment_changes": it.fingerprint_diff, "trials": store.status_counts(it.id),
        "incumbent_source": it.incumbent_source, "incumbent_config": it.incumbent_config,
        "challenger_config": it.chosen_config, "select_policy": it.select_policy,
        "check_samples_per_s": by_role,
        "check_medians": {role: statistics.median(v) if v else None for role, v in by_role.items()},
        "check_durations_s": [m.metrics.get("duration_s") for m in measurements],
        "speedup": None if it.speedup is None else {"ratio": it.speedup, "ci95": [it.speedup_low, it.speedup_high]},
        "decision": it.decision, "reason": it.reason, "regression": it.regression,
        "regression_estimate_now_vs_then": check.get("regression_estimate"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("workload")
    parser.add_argument("out", type=Path)
    parser.add_argument("--command")
    args = parser.parse_args()
    store = Store(args.db)
    iterations = list(store.iterations_of(args.workload))
    env = iterations[-1].environment.facts if iterations[-1].environment else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": f"dstune PDCA iterations of {args.workload}", "command": args.command,
        "date": iterations[0].started_at.date().isoformat(), "dstune_commit": commit,
        "device": env.get("gpu") or "cpu", "driver": env.get("driver"), "cuda": env.get("cuda"),
        "cudnn": env.get("cudnn"), "torch": env.get("torch"), "python": env.get("python"),
        "iterations": [_iteration(store, it) for it in iterations],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({i["iteration"]: [i["decision"], i["speedup"], i["regression"]] for i in result["iterations"]}))


if __name__ == "__main__":
    main()
