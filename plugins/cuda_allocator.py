"""CUDA caching allocator settings: expandable segments and the garbage-collection threshold.

Both are given to the allocator in ``dstune_configure_process``, before
the trial touches CUDA: through its runtime setter, since the environment
variable is read when torch is imported (the fork server imported it
already), and in ``PYTORCH_CUDA_ALLOC_CONF`` too, for processes the workload
starts.  Expandable segments grow one mapping instead of
carving new blocks, which cuts fragmentation when batch shapes vary and can
let a larger micro-batch fit; the threshold makes the allocator reclaim
cached blocks before it reaches that fraction of memory, instead of freeing
everything only after an allocation fails.  Options the user already set in
the environment are kept.
"""

from __future__ import annotations

import os
from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

EXPANDABLE = "expandable_segments"
GC_THRESHOLD = "gc_threshold"
ENV_NAMES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # the newer name first


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    cuda = lambda c: c.is_cuda  # noqa: E731
    return [
        Knob(EXPANDABLE, choices=(False, True), default=False, checklist=False, applies=cuda,
             help="allocator expandable_segments (less fragmentation)", relieves="memory"),
        Knob(GC_THRESHOLD, choices=(None, 0.6, 0.8), default=None, checklist=None, applies=cuda,
             help="allocator garbage_collection_threshold (None: reclaim only after a failed allocation)",
             relieves="memory"),
    ]


def alloc_conf(config: dict[str, Any], existing: str = "") -> str:
    """The allocator setting string: the user's options, then ours for the keys they did not set."""
    options = [part for part in existing.split(",") if part.strip()]
    given = {part.split(":", 1)[0].strip() for part in options}
    if config.get(EXPANDABLE) and "expandable_segments" not in given:
        options.append("expandable_segments:True")
    if config.get(GC_THRESHOLD) is not None and "garbage_collection_threshold" not in given:
        options.append(f"garbage_collection_threshold:{config[GC_THRESHOLD]}")
    return ",".join(options)


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    if not config.get(EXPANDABLE) and config.get(GC_THRESHOLD) is None:
        return
    name = next((n for n in ENV_NAMES if os.environ.get(n)), "PYTORCH_CUDA_ALLOC_CONF")
    conf = alloc_conf(config, os.environ.get(name, ""))
    os.environ[name] = conf
    if ctx.is_cuda:
        import torch

        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9
        if setter is None:
            setter = torch.cuda.memory._set_allocator_settings
        setter(conf)


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    conf = alloc_conf(config, "") if config.get(EXPANDABLE) or config.get(GC_THRESHOLD) is not None else ""
    return callback_or_note(config, {EXPANDABLE: False, GC_THRESHOLD: None}, target,
                            f"export PYTORCH_CUDA_ALLOC_CONF={conf} before the process starts")
