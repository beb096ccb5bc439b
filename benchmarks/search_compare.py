"""The local search against the sampler, side by side: what each finds, how soon, and how much budget it uses.

    python -m benchmarks.search_compare examples/quickstart.py --budget 2m --seeds 0 1 2 \\
        -o benchmarks/results/DATE-MACHINE-search-local-vs-sampler.json

Each search runs ``dstune run`` on the workload with each seed, alternating
between the two searches (drift on the machine hits both alike), every run
in a store of its own.  For each run it records the best trial's samples/s,
the time to the answer, the trials by status (both as
:mod:`benchmarks.run_figures` reads them from the store), the iteration's
whole wall time and why the trials stopped; then the medians by search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.run_figures import figures

STOPPED = re.compile(r"\(stopped:\s*([^)]+?)\s*\)")


def stop_reason(output: str) -> str | None:
    """Why the trials stopped, from the run's summary line (which the console may have wrapped)."""
    found = STOPPED.search(output)
    return " ".join(found.group(1).split()) if found else None


def one_run(workload: Path, search: str, seed: int, budget: str, folder: Path,
            logs: Path | None = None) -> dict[str, Any]:
    db = folder / f"{search}-{seed}.db"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dstune", "run", str(workload), "--db", str(db), "--search", search,
                           "--seed", str(seed), "--budget", budget, "--trials", "40"],
                          capture_output=True, text=True, cwd=folder, env={**os.environ, "COLUMNS": "160"})
    wall = time.monotonic() - started
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{search}-{seed}.log").write_text(done.stdout + done.stderr)
    with sqlite3.connect(db) as conn:
        (best,) = conn.execute("select max(samples_per_s) from dstune_trials where status = 'ok'").fetchone()
    found = figures(db)
    stopped = stop_reason(done.stdout)
    return {"search": search, "seed": seed, "returncode": done.returncode, "wall_s": round(wall, 1),
            "best_samples_per_s": best or 0.0, "time_to_answer_s": found["time_to_answer_s"],
            "trials": found["trials_by_status"], "trials_run": found["trials_run"], "stopped": stopped,
            "decision": found["decision"], "speedup": found["speedup"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", type=Path)
    parser.add_argument("--budget", default="2m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--logs", type=Path, help="keep each run's output here, as SEARCH-SEED.log")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="dstune-search-") as tmp:
        for seed in args.seeds:
            for search in (("local", "sampler") if seed % 2 == 0 else ("sampler", "local")):
                runs.append(one_run(args.workload.resolve(), search, seed, args.budget, Path(tmp), args.logs))
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for search in ("local", "sampler"):
        mine = [r for r in runs if r["search"] == search]
        summary[search] = {
            "best_samples_per_s_median": statistics.median(r["best_samples_per_s"] for r in mine),
            "time_to_answer_s_median": statistics.median(r["time_to_answer_s"] or 0.0 for r in mine),
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "trials_median": statistics.median(r["trials_run"] for r in mine),
            "stopped": [r["stopped"] for r in mine],
        }
    import torch

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workload": str(args.workload),
              "budget": args.budget, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                                                  else None, "torch": torch.__version__,
                                                  "python": platform.python_version()},
              "runs": runs, "summary": summary}
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
