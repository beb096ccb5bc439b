"""Summarise the latest iteration of a workload in a dstune database as benchmark JSON.

    python benchmarks/summarize_run.py DB WORKLOAD OUT.json [--command "dstune run ..."]

Records the device and versions (from the iteration's environment fingerprint), the date, the default and
chosen trials side by side (samples/s, ratio, peak memory, CV across windows, energy per sample), and the
trials by status.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from dstune.store import Store


def _trial(row) -> dict | None:
    if row is None:
        return None
    return {
        "number": row.number, "status": row.status, "config": row.config,
        "samples_per_s": row.samples_per_s, "peak_memory_bytes": row.peak_memory_bytes,
        "step_time_median_s": row.step_time_median_s, "step_time_cv": row.step_time_cv,
        "first_step_s": row.first_step_s, "energy_per_sample_j": row.energy_per_sample_j,
        "gpu_util_mean": row.gpu_util_mean, "duration_s": row.duration_s,
    }


def summarize(db: str, workload: str, command: str | None) -> dict:
    store = Store(db)
    iteration = store.iterations_of(workload)[-1]
    trials = store.trials(iteration.id)
    default = next((t for t in trials if t.seed_kind == "default"), None)
    chosen = next((t for t in trials if t.id == iteration.chosen_trial_id), None)
    ok = [t for t in trials if t.status == "ok"]
    env = iteration.environment.facts if iteration.environment else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "workload": workload,
        "command": command,
        "date": iteration.started_at.isoformat(),
        "device": env.get("gpu") or "cpu",
        "versions": {k: env.get(k) for k in ("driver", "cuda", "cudnn", "torch", "python", "dstune")},
        "dstune_commit": commit,
        "wall_s": (iteration.ended_at - iteration.started_at).total_seconds() if iteration.ended_at else None,
        "trials_by_status": store.status_counts(iteration.id),
        "default": _trial(default),
        "chosen": _trial(chosen),
        "speedup_chosen_over_default": (chosen.samples_per_s / default.samples_per_s
                                        if chosen and default and default.status == "ok" else None),
        "cv_median_over_ok_trials": sorted(t.step_time_cv for t in ok)[len(ok) // 2] if ok else None,
        "trials": [_trial(t) for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("workload")
    parser.add_argument("out", type=Path)
    parser.add_argument("--command")
    args = parser.parse_args()
    summary = summarize(args.db, args.workload, args.command)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({k: summary[k] for k in ("workload", "device", "trials_by_status",
                                               "speedup_chosen_over_default", "cv_median_over_ok_trials")}))


if __name__ == "__main__":
    main()
