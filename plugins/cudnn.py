"""cuDNN benchmark mode: let cuDNN time its algorithms for each input shape and keep the fastest.

Pays off for convolutional models with fixed input shapes; means nothing off CUDA.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl

KNOB = "cudnn_benchmark"


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    return [
        Knob(KNOB, choices=(False, True), default=False, checklist=True,
             help="torch.backends.cudnn.benchmark", applies=lambda c: c.is_cuda)
    ]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    if config.get(KNOB) and not ctx.is_cuda:
        return "cudnn_benchmark needs a CUDA device"
    return None


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    import torch

    if KNOB in config:
        torch.backends.cudnn.benchmark = bool(config[KNOB])
