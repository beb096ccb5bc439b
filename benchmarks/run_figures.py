"""The search's figures of one ``dstune run``, read from its store: time to the answer, wall time, trials by status.

    python -m benchmarks.run_figures RUN.db [--oracle results/oracle-WORKLOAD-DEVICE.json] [--wall-s 390.0]
        [--iteration ID]

The figures the search issue asks of every workload:

- **time to the answer**: when, counted from the iteration's start, the best
  trial so far first came within 2% of the trial of the configuration that
  was applied (the challenger);
- **wall time** of the iteration against its budget (``--wall-s``: the whole
  command's, measured outside it, probes and start-up included);
- **trials by status**, those refused before they ran (``invalid``,
  ``predicted_oom``) apart;
- **dstune / oracle** with ``--oracle``: the check's median of what the run
  applied (the challenger if promoted, else the incumbent: a challenger kept
  is not what the user gets) over the oracle grid's best point, both on the
  same kind of device. They
  were not measured side by side, so this is only as close as two machines
  of one kind are.

It reads the SQLite file with the standard library alone, as any SQLite
client would, so it runs where dstune is not installed.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.oracle import best_point

WITHIN = 0.98  # "the answer": the best so far within 2% of the applied configuration's trial
NOT_RUN = ("invalid", "predicted_oom")  # refused before a process started: not trials


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def figures(db: Path, iteration: int | None = None) -> dict[str, Any]:
    """The figures of iteration ``iteration`` in ``db`` (its id; the last iteration when None)."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            'select id, started_at, ended_at, options, "check", chosen_trial_id, decision, speedup '
            "from dstune_iterations where ? is null or id = ? order by id desc limit 1", (iteration, iteration)
        ).fetchone()
        if row is None:
            raise SystemExit(f"{db} holds no iteration {iteration}: give an id that `dstune history` lists")
        (iteration_id, started, ended, options, check, chosen_id, decision, speedup) = row
        trials = conn.execute("select id, number, seed_kind, status, samples_per_s, ended_at from dstune_trials "
                              "where iteration_id = ? order by ended_at", (iteration_id,)).fetchall()
    start = _seconds(started)
    ran = [t for t in trials if t[3] not in NOT_RUN]
    chosen = next((t for t in trials if t[0] == chosen_id), None)
    target = WITHIN * chosen[4] if chosen and chosen[4] else None
    answer = next((t for t in ran if t[3] == "ok" and target is not None and (t[4] or 0) >= target), None)
    by_status: dict[str, int] = {}
    for t in trials:
        by_status[t[3]] = by_status.get(t[3], 0) + 1
    check_data = json.loads(check) if check else {}
    challenger = check_data.get("challenger") or []
    applied = challenger if decision == "promoted" else check_data.get("incumbent") or []
    return {
        "budget_s": json.loads(options).get("budget_s") if options else None,
        "iteration_s": round(_seconds(ended) - start, 1) if ended else None,
        "trials_run": len(ran),
        "trials_by_status": by_status,
        "chosen_trial": chosen[1] if chosen else None,
        "chosen_trial_samples_per_s": chosen[4] if chosen else None,
        "time_to_answer_s": round(_seconds(answer[5]) - start, 1) if answer else None,
        "answer_trial": answer[1] if answer else None,
        "answer_seed_kind": answer[2] if answer else None,
        "check_rounds": len(challenger),
        "check_challenger_median": statistics.median(challenger) if challenger else None,
        "check_settled": check_data.get("settled"),
        "decision": decision,
        "applied_check_median": statistics.median(applied) if applied else None,
        "speedup": speedup,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--oracle", type=Path, help="an oracle cache of the same workload and device kind")
    parser.add_argument("--wall-s", type=float, help="the whole command's wall time, measured outside it")
    parser.add_argument("--iteration", type=int, help="the iteration's id (default: the last)")
    args = parser.parse_args(argv)
    result = figures(args.db, args.iteration)
    if args.wall_s is not None:
        result["wall_s"] = args.wall_s
        if result["budget_s"]:
            result["wall_over_budget"] = round(args.wall_s / result["budget_s"], 3)
    if args.oracle is not None:
        best = best_point(json.loads(args.oracle.read_text())["points"])
        rate = best["metrics"]["samples_per_s"]
        result["oracle_best"] = {"label": best["label"], "samples_per_s": rate}
        if result["applied_check_median"]:
            result["dstune_over_oracle"] = round(result["applied_check_median"] / rate, 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
