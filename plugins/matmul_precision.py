"""float32 matmul precision: ``torch.set_float32_matmul_precision``.

``highest`` computes float32 matmuls in float32 (PyTorch's default).
``high`` lets them use TensorFloat-32 on CUDA (Ampere and newer) and oneDNN's
TF32 path on CPUs that have one; ``medium`` lets them use bfloat16 internally.
Only float32 matmuls change: autocast regions (see ``precision``) already run
in reduced precision.  Each step down is a speed-for-accuracy trade, so each
carries a numerics tolerance for the guard.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

KNOB = "matmul_precision"
CHOICES = ("highest", "high", "medium")
TOLERANCE = {"high": 1e-2, "medium": 5e-2}


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    # The tuning guide's advice is TF32 on Ampere and newer GPUs.
    checklist = "high" if ctx.is_cuda and ctx.capability and ctx.capability >= (8, 0) else "highest"
    # Where TF32 exists, full fp32 matmuls are there for numerics, not speed.
    return [Knob(KNOB, choices=CHOICES, default="highest", checklist=checklist, tolerance=TOLERANCE,
                 fallback=("highest",) if checklist == "high" else (),
                 help="torch.set_float32_matmul_precision: highest (fp32), high (TF32), medium (bf16)")]


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    import torch

    if config.get(KNOB, "highest") != "highest":
        torch.set_float32_matmul_precision(config[KNOB])


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    if KNOB not in config:
        return None
    value = config[KNOB]
    if target == "transformers" and value in ("highest", "high") and (ctx is None or ctx.is_cuda):
        return ExportPart({"tf32": value == "high"}, handled=(KNOB,))  # TrainingArguments' tf32 is CUDA's switch
    return callback_or_note(config, {KNOB: "highest"}, target,
                            f"call torch.set_float32_matmul_precision({value!r}) before training")
