"""The oracle: every point of a workload's reduced grid, measured once, cached per device.

Running the grid costs minutes of compiles, so it runs once per device kind
and its result is kept as JSON beside the other results.  A later run reuses
it only when the GPU, the driver, the torch version, the workload file and
the measurement settings are the same; otherwise it says which differ and
measures again.  When only the grid changed (a batch size added), the points
both grids share are reused and only the new ones are measured.  The cache
is written after every point, marked incomplete until the last: a grid
longer than one device call (the 1.3B decoder's compiled points take a
minute each) goes on where the call's limit cut it.  Where the workload
names knobs whose values grow the memory (``memory_order``: the
micro-batch, less checkpointing), the smaller points of each block are
measured first, and a point that needs at least as much memory as one that
ran out of memory, every other knob equal, is recorded as out of memory
without a run (``implied_by`` names the point that did): on the 1.3B
decoder, each compiled point out of memory costs a minute.  The oracle's
configuration is the grid point with the highest throughput, leaving out a
compiled point whose eager twin (every other knob equal) went NaN or
strayed from the reference: compiling trains the same model, so the twin
shows the training diverges, and the compiled point passed only because
its trial ended first (ResNet-50 in fp16 on the H200 passed compiled in the
grid, then failed three rounds of three).  The harness re-measures the
oracle beside the other arms, so the ratio to the oracle compares numbers
taken in the same session.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .registry import BenchWorkload
from .trials import Bench, Measurement

CACHE_KEYS = ("gpu", "driver", "torch", "workload_source")
GRID_DIFFERS = "the grid's points differ"
PARTIAL = "the cached grid was cut short"


def grid_points(bench: Bench, spec: BenchWorkload) -> tuple[list[dict[str, Any]], list[str]]:
    """Every configuration of the grid that this machine offers, and notes on what was dropped."""
    notes: list[str] = []
    axes: list[tuple[str, list[Any]]] = []
    for name, values in spec.grid.items():
        knob = bench.knob(name)
        if knob is None:
            notes.append(f"grid knob {name} does not apply here: left out")
            continue
        offered = [v for v in values if v in knob.choices]
        dropped = [v for v in values if v not in knob.choices]
        if dropped:
            notes.append(f"{name}: {dropped} not offered here (choices {list(knob.choices)}): left out")
        if offered:
            axes.append((name, offered))
    fixed, fixed_notes = bench.complete({k: v for k, v in spec.fixed.items()
                                         if bench.knob(k) is None or v in bench.knob(k).choices})
    notes += [f"fixed {n}" for n in fixed_notes]
    points = []
    for values in itertools.product(*(v for _, v in axes)):
        config = {**fixed, **dict(zip((n for n, _ in axes), values))}
        for knob in bench.knobs:  # a knob that is inactive here (prefetching without workers) keeps its default
            if not knob.active_in(config):
                config[knob.name] = knob.default
        if bench.invalid(config) is None and config not in points:
            points.append(config)
    return points, notes


def cache_path(results: Path, workload: str, gpu: str | None) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu or "cpu").lower()).strip("-")
    return results / f"oracle-{workload}-{slug}.json"


def cache_identity(bench: Bench, points: list[dict[str, Any]]) -> dict[str, Any]:
    """What a cached grid must share to be reused: device and versions, the grid, and the measurement settings
    that apply to this workload (a loader's only where it has one, so adding one re-measures no other)."""
    env = bench.environment
    measure = bench.options.measure.applicable(bench.ctx.has_dataset)
    return {**{k: env.get(k) for k in CACHE_KEYS}, "grid": points, "measure": measure}


def cache_mismatch(cached: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """What differs between a cached oracle and this machine's (empty: reusable)."""
    old = cached.get("identity", {})
    differ = [f"{k}: cached {old.get(k)!r}, here {identity.get(k)!r}" for k in (*CACHE_KEYS, "measure")
              if old.get(k) != identity.get(k)]
    if old.get("grid") != identity.get("grid"):
        differ.append(GRID_DIFFERS)
    return differ


def _rank(order: dict[str, tuple[Any, ...]], config: dict[str, Any]) -> dict[str, int]:
    return {k: values.index(config[k]) for k, values in order.items() if config.get(k) in values}


def implied_oom(order: dict[str, tuple[Any, ...]], config: dict[str, Any],
                measured: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The measured point that ran out of memory and needs no more memory than ``config``: the same in every
    knob outside ``order``, and no later in any knob's order.  None when no such point was measured."""
    mine = _rank(order, config)
    for point in measured:
        if point["status"] != "oom" or point.get("implied_by"):
            continue
        other = point["config"]
        if any(other.get(k) != v for k, v in config.items() if k not in mine) or set(other) != set(config):
            continue
        theirs = _rank(order, other)
        if theirs.keys() == mine.keys() and all(theirs[k] <= mine[k] for k in mine):
            return point
    return None


def measuring_order(order: dict[str, tuple[Any, ...]], points: list[dict[str, Any]]) -> list[int]:
    """Indices of ``points`` in the order to measure them: the grid's, except that within a block of points
    equal outside ``order`` the ones needing less memory go first (so the larger are implied once one fails)."""
    block_of = [_key({k: v for k, v in config.items() if k not in order}) for config in points]
    first = {key: i for i, key in reversed(list(enumerate(block_of)))}  # where each block first appears
    return sorted(range(len(points)), key=lambda i: (first[block_of[i]], sum(_rank(order, points[i]).values()), i))


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def diverged_twin(points: list[dict[str, Any]], point: dict[str, Any]) -> dict[str, Any] | None:
    """The eager twin of compiled ``point`` (every other knob equal) if its numerics failed, else None."""
    compiled = point["config"].get("compile")
    if compiled in (None, "off"):
        return None
    twin = _key({**point["config"], "compile": "off"})
    return next((p for p in points if p["status"] == "numerics" and _key(p["config"]) == twin), None)


def best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest point that ran, leaving out those whose training diverged eager (:func:`diverged_twin`)."""
    ok = [p for p in points if p["status"] == "ok" and p["metrics"].get("samples_per_s")
          and diverged_twin(points, p) is None]
    return max(ok, key=lambda p: p["metrics"]["samples_per_s"]) if ok else None


def set_aside(points: list[dict[str, Any]]) -> list[str]:
    """A note for each point that ran faster than the oracle's but is left out by :func:`best_point`."""
    best = best_point(points)
    floor = best["metrics"]["samples_per_s"] if best else 0.0
    notes = []
    for p in points:
        twin = diverged_twin(points, p) if p["status"] == "ok" else None
        if twin is not None and (p["metrics"].get("samples_per_s") or 0.0) > floor:
            notes.append(f"{p['label']} ({p['metrics']['samples_per_s']:.1f} samples/s) left out: its eager twin "
                         f"{twin['label']} failed its numerics ({(twin.get('error') or '')[:80]})")
    return notes


def run_oracle(bench: Bench, spec: BenchWorkload, results: Path, env: dict[str, str],
               say: Callable[[str], None] = print, reuse: bool = True, stop_after_s: float | None = None
               ) -> dict[str, Any]:
    """Load the cached grid or measure it; return the oracle record (and write the cache).

    With ``stop_after_s``, no point is started once that many seconds have
    passed: the cache is left marked incomplete, to go on in a later call,
    rather than losing the point a device call's limit would cut.
    """
    points, notes = grid_points(bench, spec)
    identity = cache_identity(bench, points)
    path = cache_path(results, spec.name, bench.environment.get("gpu"))
    known: dict[str, dict[str, Any]] = {}
    earlier_s = 0.0
    if reuse and path.exists():
        cached = json.loads(path.read_text())
        differ = cache_mismatch(cached, identity)
        if not differ and not cached.get("complete", True):
            differ = [PARTIAL]
        if not differ:
            say(f"oracle: reusing {path.name} (measured {cached['date']}, {len(cached['points'])} points)")
            return {**cached, "source": "cache", "cache_file": path.name}
        if differ in ([GRID_DIFFERS], [PARTIAL]):
            wanted = {_key(c) for c in points}
            known = {_key(p["config"]): p for p in cached["points"] if _key(p["config"]) in wanted}
            earlier_s = sum(p.get("duration_s") or 0.0 for p in known.values())
            why = "was cut short" if differ == [PARTIAL] else "has another grid"
            say(f"oracle: {path.name} {why}; reusing the {len(known)} points both share "
                f"(measured {cached['date']}), measuring {len(points) - len(known)}")
        else:
            say(f"oracle: {path.name} is for another setup ({'; '.join(differ)}); measuring the grid again")
    started = time.perf_counter()
    found_points: dict[str, dict[str, Any]] = dict(known)
    results.mkdir(parents=True, exist_ok=True)

    def record(complete: bool) -> dict[str, Any]:
        measured = [found_points[_key(c)] for c in points if _key(c) in found_points]  # in the grid's order
        found = {
            "workload": spec.name, "identity": identity, "notes": notes, "space": spec.note,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": complete,
            "grid_s": round(time.perf_counter() - started + earlier_s, 1), "points": measured,
            "reused_points": len(known), "best": best_point(measured),
        }
        path.write_text(json.dumps(found, indent=1, default=str) + "\n")
        return found

    for index in measuring_order(spec.memory_order, points):
        config, i = points[index], index + 1
        if _key(config) in known:
            continue
        if stop_after_s is not None and time.perf_counter() - started > stop_after_s:
            left = sum(_key(c) not in found_points for c in points)
            say(f"oracle: stopping after {stop_after_s:.0f} s with {left} of {len(points)} points not measured; "
                "run again to measure them")
            return {**record(complete=False), "source": "measured", "cache_file": path.name}
        failed = implied_oom(spec.memory_order, config, list(found_points.values()))
        if failed is not None:
            found_points[_key(config)] = {"label": f"grid {i}", "config": config, "status": "oom", "metrics": {},
                                          "error": f"not run: {failed['label']} ran out of memory and needs no "
                                                   "more memory than this point", "duration_s": 0.0,
                                          "implied_by": failed["label"]}
            say(f"oracle: point {i}/{len(points)} oom, implied by {failed['label']} (not run)")
            record(complete=False)
            continue
        m: Measurement = bench.measure(f"grid {i}", config, env)
        rate = f"{m.samples_per_s:.1f} samples/s" if m.ok else m.status
        say(f"oracle: point {i}/{len(points)} {rate} ({m.duration_s:.0f} s)")
        found_points[_key(config)] = m.to_dict()
        record(complete=False)
    return {**record(complete=True), "source": "measured", "cache_file": path.name}
