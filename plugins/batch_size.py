"""Batch size: the micro-batch, with gradient accumulation keeping a global batch fixed.

With ``global_batch_size`` the choices are the power-of-two divisions of the
global batch, and accumulation makes up the rest, so the model trains the
same.  Without it the batch is free (throughput only) and the choices range
from a quarter to sixteen times the workload's batch.
"""

from __future__ import annotations

from typing import Any

from dstune import BatchPlan, Knob, TuneContext, hookimpl

KNOB = "batch_size"


def _choices(ctx: TuneContext) -> tuple[int, ...]:
    if ctx.global_batch_size:
        g = ctx.global_batch_size
        values = {g // 2**k for k in range(7) if g % 2**k == 0}
    else:
        b = ctx.default_batch_size
        values = {max(1, b // 4), max(1, b // 2), b, *(b * 2**k for k in range(1, 5))}
    return tuple(sorted(values))


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = _choices(ctx)
    default = ctx.default_batch_size if ctx.default_batch_size in choices else max(choices)
    # The tuning guide: the largest micro-batch that fits. With a fixed global
    # batch that is the whole global batch (no accumulation).
    checklist = max(choices) if ctx.global_batch_size else default
    return [
        Knob(
            KNOB,
            choices=choices,
            default=default,
            checklist=checklist,
            help="micro-batch size; with global_batch_size, accumulation keeps the global batch",
        )
    ]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    micro = config.get(KNOB)
    if micro and ctx.global_batch_size and ctx.global_batch_size % micro:
        return f"batch_size={micro} does not divide global_batch_size={ctx.global_batch_size}"
    return None


@hookimpl
def dstune_batch_plan(config: dict[str, Any], ctx: TuneContext) -> BatchPlan | None:
    micro = config.get(KNOB)
    if micro is None:
        return None
    accumulation = ctx.global_batch_size // micro if ctx.global_batch_size else 1
    return BatchPlan(micro_batch=micro, accumulation=accumulation)
