"""``python -m benchmarks.harness run WORKLOAD``, ``... oracle WORKLOAD`` and ``... table RESULT.json...``."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from datetime import date
from pathlib import Path

from .oracle import run_oracle
from .registry import REPO, WORKLOADS, BenchWorkload, bench_for
from .report import markdown
from .runner import ALL_ARMS, BenchmarkRun, RunSettings
from .trials import Bench, cache_env


def _arms(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_ARMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown or text!r}; choose from {', '.join(ALL_ARMS)}")
    return names


def _grid_axis(text: str) -> tuple[str, tuple[object, ...]]:
    """``knob=v1,v2``: values read as JSON where they parse (64, true, null), else as text."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"--grid {text!r}: write KNOB=VALUE,VALUE (e.g. batch_size=64,128)")

    def value(token: str) -> object:
        try:
            return json.loads(token)
        except json.JSONDecodeError:
            return token

    return name.strip(), tuple(value(t.strip()) for t in values.split(","))


def _measure_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-warmup", type=float, help="most seconds of warm-up per trial (dstune's default: 60)")
    parser.add_argument("--windows", type=int, help="timed windows per measurement (dstune's default: 5)")
    parser.add_argument("--window-time", type=float, help="seconds per timed window (dstune's default: 0.5)")


def _settings(args: argparse.Namespace, **more: object) -> RunSettings:
    return RunSettings(max_warmup_s=args.max_warmup, windows=args.windows, window_s=args.window_time, **more)


def _oracle_only(args: argparse.Namespace, spec: BenchWorkload) -> int:
    """Measure (or go on measuring) the grid and print every point, best first."""
    out = args.out or REPO / ".bench" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    env = cache_env(out / "cache-shared")
    bench = Bench(spec.file, workdir=None, env=env, measure=_settings(args).measure(), world_size=spec.world_size)
    found = run_oracle(bench, spec, args.results, env, stop_after_s=args.stop_after)
    ranked = sorted(found["points"], key=lambda p: -(p["metrics"].get("samples_per_s") or 0.0))
    for point in ranked:
        varied = {k: point["config"].get(k) for k in spec.grid}
        print(f"{point['label']:>8} {point['status']:>8} {point['metrics'].get('samples_per_s') or 0.0:10.1f} "
              f"samples/s  {varied}")
    print(f"{len(found['points'])} points, complete: {found['complete']}, {found['grid_s']} s; "
          f"cache {args.results / found['cache_file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="benchmark one workload: every arm, then side-by-side rounds")
    run.add_argument("workload", help=f"a registered workload ({', '.join(WORKLOADS)}) or a workload file")
    run.add_argument("--arms", type=_arms, default=ALL_ARMS, help="comma-separated, in the order to run them")
    run.add_argument("--budget", default="15m", help="dstune run's --budget")
    run.add_argument("--dstune-args", default="", help="more arguments for dstune run, e.g. '--trials 20'")
    run.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (each arm measured once a round)")
    run.add_argument("--out", type=Path, help="work folder (databases, caches, log); default .bench/WORKLOAD")
    run.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                     help="where the result JSON and the oracle caches go")
    run.add_argument("--fresh-oracle", action="store_true", help="measure the grid even if a matching cache exists")
    run.add_argument("--resume", action="store_true", help="reuse the stages a cut-short run saved in --out")
    run.add_argument("--checklist-cap", type=int, help="largest batch the checklist's doubling tries")
    run.add_argument("--grid", type=_grid_axis, action="append", default=[],
                     help="an oracle axis for an unregistered workload file: KNOB=V1,V2 (repeatable)")
    _measure_args(run)
    run.add_argument("--tag", default="", help="text put in the result file's name, e.g. the device kind")
    grid = sub.add_parser("oracle", help="measure a workload's oracle grid alone (cached as the run's is)")
    grid.add_argument("workload", help=f"a registered workload ({', '.join(WORKLOADS)}) or a workload file")
    grid.add_argument("--grid", type=_grid_axis, action="append", default=[],
                      help="an axis for an unregistered workload file: KNOB=V1,V2 (repeatable)")
    grid.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                      help="where the oracle cache is read and written")
    grid.add_argument("--stop-after", type=float, help="start no point after this many seconds (the cache is kept "
                      "incomplete, and the next call goes on from it)")
    grid.add_argument("--out", type=Path, help="work folder (compile cache, log); default .bench/WORKLOAD")
    _measure_args(grid)
    table = sub.add_parser("table", help="print the markdown table of result files")
    table.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "table":
        for path in args.files:
            result = json.loads(path.read_text())
            print(f"### {result['workload']} ({result['machine'].get('gpu') or 'cpu'}, {result['date'][:10]})\n")
            print(markdown(result))
        return 0

    spec = bench_for(args.workload, dict(args.grid) or None)
    if not spec.file.exists():
        parser.error(f"workload {args.workload!r}: no such registered workload or file ({spec.file})")
    if args.command == "oracle":
        return _oracle_only(args, spec)
    settings = _settings(args, arms=args.arms, budget=args.budget, rounds=args.rounds,
                         dstune_args=tuple(shlex.split(args.dstune_args)), reuse_oracle=not args.fresh_oracle,
                         resume=args.resume, checklist_cap=args.checklist_cap)
    out = args.out or REPO / ".bench" / spec.name
    result = BenchmarkRun(spec, out, args.results, settings).run()
    gpu = re.sub(r"[^a-z0-9]+", "-", (result["machine"].get("gpu") or "cpu").lower()).strip("-")
    name = "-".join(p for p in (date.today().isoformat(), args.tag or gpu, spec.name, "bench") if p) + ".json"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / name).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(result["table"])
    print(f"written: {args.results / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
