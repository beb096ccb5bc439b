"""The trial process: ``python -m dstune.trial.process SPEC.json RESULT.json``.

Every trial runs here, in a fresh interpreter, so process-global state
(thread pools, cuDNN flags, allocator settings, a CUDA context poisoned by an
out-of-memory error) never leaks into the next trial.  The same entry point
runs the probe that opens each run.  The outcome is written to RESULT.json;
a process that dies before writing it is classified by the parent.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .out_of_memory import is_oom
from .records import MEMORY, TrialSpec

STDERR_TAIL_CHARS = 4000


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Write atomically: the parent sees a whole result or none."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, path)


def run_probe(spec: TrialSpec) -> dict[str, Any]:
    """Import and build the workload once; report the context and environment."""
    from dstune.plugin_calls import probe_context
    from dstune.plugin_manager import plugin_manager

    from .fingerprint import environment_facts
    from .workload_file import select_workload

    plugins = plugin_manager(spec.disabled_plugins)
    definition = select_workload(spec.workload_file, spec.workload_name)
    ctx, failed, problems = probe_context(definition, plugins.pm, strict=spec.strict_plugins,
                                          world_size=spec.world_size)
    for name in failed:
        plugins.pm.unregister(name=name)
    return {
        "status": "ok",
        "ctx": json.loads(ctx.to_json()),
        "environment": environment_facts(plugins.pm, spec.workload_file),
        "plugin_problems": problems,
        "failed_plugins": failed,
    }


def run_trial(spec: TrialSpec, rank: bool = False) -> dict[str, Any]:
    """Configure the process, build, measure; as one rank of a data-parallel job when ``rank``."""
    import torch

    from dstune.context import TuneContext
    from dstune.plugin_manager import plugin_manager

    from .composition import compose, configure_process
    from .distributed import join_process_group, rank_context
    from .measure import measure
    from .measure_settings import MeasureSettings
    from .numerics import Guard, GuardSettings
    from .workload_file import select_workload

    started = time.perf_counter()
    ctx = TuneContext.from_dict(spec.ctx)
    if rank:
        ctx = rank_context(ctx)
    config = spec.config
    plugins = plugin_manager(spec.disabled_plugins)
    configure_process(plugins.pm, config, ctx)
    if rank:
        join_process_group(ctx)
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    definition = select_workload(spec.workload_file, spec.workload_name)
    guard = Guard(GuardSettings(**spec.numerics)) if spec.numerics else None
    composed = compose(plugins.pm, definition, config, ctx, guard)
    built = time.perf_counter()
    metrics = measure(composed, MeasureSettings(**spec.measure), prune_below=spec.prune_below)
    # Where the trial's time went: the workload's import and build with the numerics reference, then the steps.
    metrics.update(setup_s=built - started, measure_s=time.perf_counter() - built)
    return {"status": "ok", "metrics": metrics}


def run_memory_spec(spec: TrialSpec, rank: bool = False, result_path: str | None = None) -> dict[str, Any]:
    """Measure the peak memory of a training step under each of ``spec.variants`` (dstune.trial.memory_probe).
    With ``result_path``, the points so far are written there after each one, marked as cut short, so a probe
    killed at its time still gives them (``run_in_subprocess``); the last write, on success, replaces them."""
    from dstune.context import TuneContext
    from dstune.plugin_manager import plugin_manager

    from .composition import compose, configure_process
    from .distributed import join_process_group, rank_context
    from .memory_probe import run_memory
    from .workload_file import select_workload

    ctx = TuneContext.from_dict(spec.ctx)
    if rank:
        ctx = rank_context(ctx)
    plugins = plugin_manager(spec.disabled_plugins)
    configure_process(plugins.pm, spec.variants[0] if spec.variants else spec.config, ctx)
    if rank:
        join_process_group(ctx)
    torch_seed(spec.seed)
    definition = select_workload(spec.workload_file, spec.workload_name)
    measured = None if result_path is None else (
        lambda points: write_result(result_path, {"status": "timeout", "points": points}))
    return {"status": "ok", "points": run_memory(plugins.pm, definition, spec.variants, ctx, compose, measured)}


def torch_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _partial_memory() -> dict[str, Any]:
    try:
        import torch

        from .measure import peak_memory

        device = torch.device("cuda", 0) if torch.cuda.is_available() and torch.cuda.is_initialized() else torch.device("cpu")
        return peak_memory(device)
    except Exception:  # noqa: BLE001 - best effort after a failure
        return {}


def main(argv: list[str] | None = None, rank: bool = False) -> int:
    """Run the spec; ``rank``: as one rank of a data-parallel job (:mod:`dstune.trial.rank`)."""
    argv = sys.argv[1:] if argv is None else argv
    spec_path, result_path = argv
    spec = TrialSpec.from_json(Path(spec_path).read_text())
    from dstune.errors import UsageError

    from .measure import HopelessTrial
    from .numerics import NumericsError

    try:
        if spec.ctx.get("data_parallel") and not spec.is_probe and not rank:
            from .distributed import run_job

            result = run_job(spec, spec_path, result_path)  # this process launches the ranks and judges them
        else:
            result = (run_probe(spec) if spec.is_probe else run_memory_spec(spec, rank, None if rank else result_path)
                      if spec.kind == MEMORY
                      else run_trial(spec, rank))
    except UsageError as exc:
        write_result(result_path, {"status": "usage_error", "error": str(exc)})
        return 2
    except HopelessTrial as exc:
        write_result(result_path, {"status": "pruned", "error": str(exc), "metrics": exc.metrics})
        return 0
    except NumericsError as exc:
        write_result(result_path, {"status": "numerics", "error": str(exc), "metrics": _partial_memory()})
        return 0
    except BaseException as exc:  # noqa: BLE001 - every end is classified
        if isinstance(exc, Exception) and is_oom(exc):
            write_result(result_path, {"status": "oom", "error": f"{type(exc).__name__}: {exc}"[:STDERR_TAIL_CHARS],
                                       "metrics": _partial_memory()})
            return 0
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        write_result(result_path, {"status": "crash", "error": tb[-STDERR_TAIL_CHARS:]})
        return 1
    write_result(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
