"""Memory format: channels_last (NHWC) for convolutional models.

Tensor cores and oneDNN run 2-D convolutions fastest with the channels
innermost.  Converting the model's parameters is enough: a convolution whose
weight is channels_last returns a channels_last output, so the layout carries
through the network without touching the user's batches.  The knob applies
only where the model has 2-D convolutions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

KNOB = "memory_format"
FACT = "memory_format.conv2d"


@hookimpl
def dstune_model_facts(model: nn.Module, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    from torch import nn

    return {FACT: sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))}


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    return [Knob(KNOB, choices=("contiguous", "channels_last"), default="contiguous", checklist="channels_last",
                 help="parameter layout of convolutional models (NCHW or NHWC)",
                 applies=lambda c: c.facts.get(FACT, 0) > 0)]


@hookimpl(tryfirst=True)
def dstune_prepare_model(model: nn.Module, config: dict[str, Any], ctx: TuneContext) -> Any:
    if config.get(KNOB) != "channels_last":
        return None
    import torch

    return model.to(memory_format=torch.channels_last)


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    return callback_or_note(config, {KNOB: "contiguous"}, target,
                            "call model.to(memory_format=torch.channels_last) before training")
