"""Numeric precision of the forward pass: fp32, bf16 autocast, fp16 autocast with a GradScaler.

fp32 leaves PyTorch's defaults alone.  bf16 and fp16 run the forward pass and
loss under ``torch.autocast``; fp16 training also scales the loss so small
gradients do not flush to zero.  TensorFloat-32 for float32 matmuls is the
``matmul_precision`` knob.

On a CPU, bf16 is the checklist's choice only where the CPU has bf16
instructions (AVX512-BF16 or AMX).  Without them autocast converts and
computes in software: on an AVX2 host a small Mistral's checklist trial ran
at 1.0 samples/s against the default's 30, and a linear block's step took
10x its fp32 time.  bf16 stays a choice the search may measure there.
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
CPU_BF16 = "precision.cpu_bf16"  # fact: the CPU computes bf16 in hardware


def _choices(ctx: TuneContext) -> tuple[str, ...]:
    if ctx.is_cuda:
        choices = ["fp32"]
        if ctx.bf16_supported:
            choices.append("bf16")
        choices.append("fp16")
        return tuple(choices)
    return ("fp32", "bf16") if ctx.bf16_supported else ("fp32",)


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    import torch

    # Private probes, present since torch 2.0; a torch without them is taken to have neither.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@hookimpl
def dstune_model_facts(model: Any, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    return {} if ctx.is_cuda else {CPU_BF16: _cpu_has_bf16()}


def _fast(precision: str, ctx: TuneContext) -> bool:
    """Whether ``precision`` runs at the device's speed, not emulated: a CPU's bf16 needs its instructions.  The
    probe reports them; a context without the fact (``dstune plugins``, which builds no model) asks the CPU."""
    if ctx.is_cuda or precision != "bf16":
        return True
    native = ctx.facts.get(CPU_BF16)
    return _cpu_has_bf16() if native is None else bool(native)


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = _choices(ctx)
    checklist = next((p for p in ("bf16", "fp16") if p in choices and _fast(p, ctx)), "fp32")
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
