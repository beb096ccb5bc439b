"""Measure what one training step needs in memory, part by part, under a few configurations.

The memory model (:mod:`dstune.run.memory_model`) fits a line per variant
(precision, checkpointing) through small micro-batches; this is the
trial-process side that measures the points.  A training step has three
moments where memory peaks, and they scale differently with the batch:

- ``first``: forward and backward of the first micro-batch of a step, with
  no gradients held yet (``zero_grad(set_to_none=True)`` freed them);
- ``later``: a further micro-batch of the same step, with the gradients of
  the earlier ones held (only with gradient accumulation);
- ``update``: the optimizer step, with gradients, optimizer state and the
  optimizer's temporaries, and no activations.

Each is measured over two cycles of a micro-step, a second micro-step and an
update (the first cycle creates the optimizer state), and the larger of the
two is kept.  On CUDA the allocator's peak is reset before each part, so one
process measures every variant in turn; on the CPU the only peak there is,
the process's peak RSS, cannot be reset, so each configuration is measured in
a process of its own and all three parts read the same figure.
"""

from __future__ import annotations

import gc
import resource
from typing import TYPE_CHECKING, Any, Callable

import pluggy
import torch

from dstune.context import TuneContext
from dstune.workload_api import WorkloadDef

from .out_of_memory import is_oom

if TYPE_CHECKING:
    from .composition import Composed

CYCLES = 2
PARTS = ("first", "later", "update")


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) peak since the last reset on CUDA; the process's peak RSS twice on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), int(torch.cuda.max_memory_reserved(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, rss


Compose = Callable[..., "Composed"]  # dstune.trial.composition.compose, passed in by the trial process


def measure_config(pm: pluggy.PluginManager, definition: WorkloadDef, config: dict[str, Any],
                   ctx: TuneContext, compose: Compose) -> dict[str, Any]:
    """Build the workload under ``config`` and return its peak memory per part (bytes) and its micro-batch."""
    composed = compose(pm, definition, config, ctx, guard=None)
    device = composed.device
    allocated: dict[str, int] = dict.fromkeys(PARTS, 0)
    reserved = 0
    try:
        for _ in range(CYCLES):
            if composed.micro_step is None or composed.optimizer_step is None:  # inference: one step is all
                _reset(device)
                composed.step()
                peak, top = _peak(device)
                allocated = dict.fromkeys(PARTS, max(peak, allocated["first"]))
                reserved = max(reserved, top)
                continue
            composed.begin_step()
            for part, run in (("first", composed.micro_step), ("later", composed.micro_step),
                              ("update", composed.optimizer_step)):
                _reset(device)
                run()
                peak, top = _peak(device)
                allocated[part] = max(allocated[part], peak)
                reserved = max(reserved, top)
        return {"config": config, "micro_batch": composed.plan.micro_batch, "allocated": allocated,
                "reserved": reserved}
    finally:
        del composed
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_memory(pm: pluggy.PluginManager, definition: WorkloadDef, variants: list[dict[str, Any]],
               ctx: TuneContext, compose: Compose,
               measured: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Measure every configuration in turn; one that runs out of memory is reported as such, not raised.
    ``measured`` is given the points so far before each point after the first, so a probe killed at its time
    leaves those it had; the last comes back with the result."""
    results: list[dict[str, Any]] = []
    for config in variants:
        if results and measured is not None:
            measured(results)
        try:
            results.append(measure_config(pm, definition, config, ctx, compose))
        except Exception as exc:  # noqa: BLE001 - an out-of-memory point is an answer; anything else is not
            if not is_oom(exc):
                raise
            gc.collect()
            if ctx.is_cuda:
                torch.cuda.empty_cache()
            plan = pm.hook.dstune_batch_plan(config=config, ctx=ctx)
            results.append({"config": config, "micro_batch": plan.micro_batch if plan else ctx.default_batch_size,
                            "oom": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return results
