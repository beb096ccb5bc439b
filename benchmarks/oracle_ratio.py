"""dstune / oracle from files already measured: a run's promoted configuration placed in an oracle grid.

    python -m benchmarks.oracle_ratio ORACLE.json HISTORY.json [HISTORY.json ...]

ORACLE.json is a grid cache (``python -m benchmarks.harness oracle``), HISTORY.json a run's
``dstune history --json``.  The promoted configuration is looked up among the grid's points (every knob
equal); its samples/s, measured in the grid's session, is divided by the best point's.  The grid may be
incomplete (a device call's limit): the ratio is then against the best point measured so far, and says so.
The best point is the harness's (``best_point``): a compiled point whose eager twin diverged is left out.
This is not the harness's side-by-side comparison (``python -m benchmarks.harness run``), which measures
both again in one session; it costs no device time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.oracle import best_point


def place(oracle: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Where ``config`` stands in the grid: its point, the best point, and the ratio (None where not in it)."""
    ok = [p for p in oracle["points"] if p["status"] == "ok" and p["metrics"].get("samples_per_s")]
    best = best_point(oracle["points"])
    same = next((p for p in ok if all(config.get(k) == v for k, v in p["config"].items())), None)
    ratio = (same["metrics"]["samples_per_s"] / best["metrics"]["samples_per_s"]) if same and best else None
    return {"point": same and same["label"], "samples_per_s": same and same["metrics"]["samples_per_s"],
            "best": best and best["label"], "best_samples_per_s": best and best["metrics"]["samples_per_s"],
            "best_config": best and best["config"], "ratio": ratio, "grid_complete": oracle.get("complete", True),
            "points_measured": len(oracle["points"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.oracle_ratio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("oracle", type=Path)
    parser.add_argument("histories", type=Path, nargs="+")
    args = parser.parse_args(argv)
    oracle = json.loads(args.oracle.read_text())
    for path in args.histories:
        for iteration in json.loads(path.read_text()):
            if iteration.get("decision") != "promoted":
                print(f"{path.name} iteration {iteration['number']}: {iteration.get('decision')}, nothing applied")
                continue
            found = place(oracle, iteration["challenger_config"])
            where = "the grid" if found["grid_complete"] else f"the {found['points_measured']} points measured so far"
            if found["ratio"] is None:
                print(f"{path.name} iteration {iteration['number']}: the applied configuration is not a point of "
                      f"{where}")
                continue
            print(f"{path.name} iteration {iteration['number']}: applied = {found['point']}, "
                  f"{found['samples_per_s']:.1f} samples/s; best of {where} = {found['best']}, "
                  f"{found['best_samples_per_s']:.1f}: dstune / oracle {found['ratio']:.4f}")
            print(json.dumps(found, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
