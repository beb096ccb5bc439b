"""cuDNN benchmark mode: let cuDNN time its algorithms for each input shape and keep the fastest.

Pays off for convolutional models with fixed input shapes.  It only picks
convolution algorithms, so it is offered only on CUDA and only for a model
with convolution modules (the probe counts them): on a transformer every
trial of it would measure noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

if TYPE_CHECKING:
    from torch import nn

KNOB = "cudnn_benchmark"
FACT = "cudnn.convolutions"


@hookimpl
def dstune_model_facts(model: nn.Module, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    from torch import nn

    return {FACT: sum(1 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))}


def _applies(ctx: TuneContext) -> bool:
    return ctx.is_cuda and ctx.facts.get(FACT, 0) > 0


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    return [
        Knob(KNOB, choices=(False, True), default=False, checklist=True,
             help="torch.backends.cudnn.benchmark (models with convolutions)", applies=_applies)
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


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    if KNOB not in config:
        return None
    if target == "lightning":
        return ExportPart({"benchmark": bool(config[KNOB])}, handled=(KNOB,))
    return callback_or_note(config, {KNOB: False}, target, "set torch.backends.cudnn.benchmark = True")
