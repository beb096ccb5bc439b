"""Numeric precision of the forward pass: fp32, bf16 autocast, fp16 autocast with a GradScaler.

fp32 leaves PyTorch's defaults alone.  bf16 and fp16 run the forward pass and
loss under ``torch.autocast``; fp16 training also scales the loss so small
gradients do not flush to zero.  TensorFloat-32 for float32 matmuls is the
``matmul_precision`` knob.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart

KNOB = "precision"
TOLERANCE = {"bf16": 5e-2, "fp16": 2e-2}
MEMORY = {"fp32": "fp32", "bf16": "16-bit", "fp16": "16-bit"}  # bf16 and fp16 keep activations of one size


def _choices(ctx: TuneContext) -> tuple[str, ...]:
    if ctx.is_cuda:
        choices = ["fp32"]
        if ctx.bf16_supported:
            choices.append("bf16")
        choices.append("fp16")
        return tuple(choices)
    return ("fp32", "bf16") if ctx.bf16_supported else ("fp32",)


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = _choices(ctx)
    checklist = "bf16" if "bf16" in choices else ("fp16" if "fp16" in choices else "fp32")
    # With tensor cores (Volta and newer) fp32 is there for numerics, not speed: a fallback, not a neighbour.
    tensor_cores = ctx.is_cuda and ctx.capability is not None and ctx.capability >= (7, 0)
    return [
        Knob(KNOB, choices=choices, default="fp32", checklist=checklist, tolerance=TOLERANCE, memory=MEMORY,
             help="fp32, bf16 autocast, fp16 autocast + GradScaler", fallback=("fp32",) if tensor_cores else ())
    ]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    value = config.get(KNOB, "fp32")
    if value not in _choices(ctx):
        return f"precision={value} is not supported on {ctx.device_name}"
    return None


def _dtype(config: dict[str, Any]) -> torch.dtype | None:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.get(KNOB, "fp32"))


@hookimpl
def dstune_step_context(config: dict[str, Any], ctx: TuneContext) -> Any:
    dtype = _dtype(config)
    if dtype is None:
        return None
    import torch

    return torch.autocast(device_type=ctx.device, dtype=dtype)


@hookimpl
def dstune_grad_scaler(config: dict[str, Any], ctx: TuneContext) -> Any:
    if config.get(KNOB) == "fp16" and ctx.mode == "train":
        import torch

        return torch.amp.GradScaler(ctx.device)
    return None


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    if KNOB not in config:
        return None
    value = config[KNOB]
    arguments: dict[str, Any] = {
        "transformers": {"bf16": value == "bf16", "fp16": value == "fp16"},
        "lightning": {"precision": {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(value, "32-true")},
        "accelerate": {"mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(value, "no")},
    }.get(target, {})
    return ExportPart(arguments=arguments, handled=(KNOB,))
