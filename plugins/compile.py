"""torch.compile: off, or one of its modes.

Compilation wraps the finished model, so this hook runs last.  Compile time
shows up in the trial's first-step time, kept apart from the steady-state
step time.  Trials of one run share the inductor and Triton caches on disk.
"""

from __future__ import annotations

from typing import Any

import torch

from dstune import Knob, TuneContext, hookimpl

KNOB = "compile"
CUDA_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CPU_MODES = ("off", "default")


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = CUDA_MODES if ctx.is_cuda else CPU_MODES
    return [Knob(KNOB, choices=choices, default="off", checklist="default",
                 help="torch.compile mode ('off': eager)", costly=choices[1:])]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    mode = config.get(KNOB, "off")
    allowed = CUDA_MODES if ctx.is_cuda else CPU_MODES
    if mode not in allowed:
        return f"compile={mode} is not offered on {ctx.device}"
    return None


@hookimpl(trylast=True)
def dstune_prepare_model(model: Any, config: dict[str, Any], ctx: TuneContext) -> Any:
    mode = config.get(KNOB, "off")
    if mode == "off":
        return None
    return torch.compile(model, mode=None if mode == "default" else mode)
