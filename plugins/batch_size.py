"""Batch size: the micro-batch, with gradient accumulation keeping a global batch fixed.

With ``global_batch_size`` the choices are the power-of-two divisions of the
global batch, and accumulation makes up the rest, so the model trains the
same.  Without it the batch is free (throughput only): on a GPU the choices
range from a quarter of the workload's batch to 512 times it (at most 65536),
since inference throughput often keeps rising far past a training-sized
batch; on the CPU, where running out of memory means the host's and
throughput flattens early, to sixteen times it.

A data-parallel workload's ranks share the global batch: the micro-batch is
each rank's, and accumulation makes up each rank's share of the global batch.

The tuning guide's advice is the largest batch that fits, so that is the
checklist value; it starts at the largest choice and, each time that runs
out of memory, ``dstune_smaller_config`` halves it, until it fits.
"""

from __future__ import annotations

from typing import Any

from dstune import BatchPlan, Knob, TuneContext, hookimpl
from dstune.export import ExportPart

KNOB = "batch_size"
FREE_DOUBLINGS_GPU = 9  # up to 512 times the workload's batch
FREE_DOUBLINGS_CPU = 4  # up to 16 times
FREE_BATCH_CAP = 65536


def _choices(ctx: TuneContext) -> tuple[int, ...]:
    if ctx.global_batch_size:
        g = ctx.rank_batch_size or ctx.global_batch_size
        values = {g // 2**k for k in range(7) if g % 2**k == 0}
    else:
        b = ctx.default_batch_size
        doublings = FREE_DOUBLINGS_GPU if ctx.is_cuda else FREE_DOUBLINGS_CPU
        values = {max(1, b // 4), max(1, b // 2), b,
                  *(b * 2**k for k in range(1, doublings + 1) if b * 2**k <= FREE_BATCH_CAP)}
    return tuple(sorted(values))


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = _choices(ctx)
    default = ctx.default_batch_size if ctx.default_batch_size in choices else max(choices)
    # The tuning guide: the largest micro-batch that fits (the largest choice,
    # halved on out-of-memory). With a fixed global batch that is the whole
    # global batch, with no accumulation. On the CPU a free batch keeps the
    # workload's own: the advice is about filling a GPU.
    checklist = max(choices) if ctx.global_batch_size or ctx.is_cuda else default
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
    share = ctx.rank_batch_size
    if micro and share and share % micro:
        if ctx.world_size > 1:
            return (f"batch_size={micro} does not divide each rank's {share} of global_batch_size="
                    f"{ctx.global_batch_size} over {ctx.world_size} ranks")
        return f"batch_size={micro} does not divide global_batch_size={ctx.global_batch_size}"
    return None


@hookimpl
def dstune_batch_plan(config: dict[str, Any], ctx: TuneContext) -> BatchPlan | None:
    micro = config.get(KNOB)
    if micro is None:
        return None
    share = ctx.rank_batch_size
    accumulation = share // micro if share else 1
    return BatchPlan(micro_batch=micro, accumulation=accumulation)


@hookimpl
def dstune_smaller_config(config: dict[str, Any], ctx: TuneContext) -> dict[str, Any] | None:
    """The next smaller micro-batch (with a global batch, accumulation makes up the difference)."""
    micro = config.get(KNOB)
    smaller = [c for c in _choices(ctx) if micro is not None and c < micro]
    return {KNOB: max(smaller)} if smaller else None


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    """Micro-batch and accumulation; a Trainer takes the first as its per-device batch, Lightning and
    Accelerate from the user's DataLoader (the callback checks it)."""
    micro = config.get(KNOB)
    if micro is None:
        return None
    share = ctx.rank_batch_size if ctx is not None else None
    accumulation = share // micro if share else 1
    if target == "transformers":
        return ExportPart({"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation},
                          handled=(KNOB,))
    if target == "lightning":
        return ExportPart({"accumulate_grad_batches": accumulation}, callback={"batch_size": micro}, handled=(KNOB,))
    return ExportPart({"gradient_accumulation_steps": accumulation}, handled=(KNOB,), notes=(
        f"batch_size={micro}: Accelerate takes the micro-batch from your DataLoader; build it with "
        f"batch_size={micro}",))
