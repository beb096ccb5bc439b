"""Optimizer implementation: PyTorch's pick, multi-tensor (foreach), per-parameter loop, or fused kernels.

The built-in optimizers take ``foreach=`` and, for SGD, Adam, AdamW and
Adagrad, ``fused=``.  Fused kernels update every parameter in one launch,
which matters most for models with many small tensors.  Which arguments the
workload's optimizer accepts is read once, in the probe, from the optimizer
its factory builds; the knob offers only those.
"""

from __future__ import annotations

import inspect
from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart

KNOB = "optimizer_impl"
FACT = "optimizer.accepts"
KWARGS: dict[str, dict[str, Any]] = {
    "default": {},
    "foreach": {"foreach": True},
    "for-loop": {"foreach": False},
    "fused": {"fused": True},
}


@hookimpl
def dstune_model_facts(model: Any, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    if ctx.mode != "train" or workload.optimizer is None:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    try:  # foreach=None is PyTorch's default: this only asks whether the factory passes keywords on
        optimizer = workload.optimizer(params, foreach=None)
    except TypeError:
        return {FACT: [], "optimizer.class": type(workload.optimizer(params)).__qualname__}
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {FACT: [name for name in ("foreach", "fused") if name in accepted],
            "optimizer.class": type(optimizer).__qualname__}


def _choices(ctx: TuneContext) -> tuple[str, ...]:
    accepts = ctx.facts.get(FACT) or []
    choices = ["default"]
    if "foreach" in accepts:
        choices += ["foreach", "for-loop"]
    if "fused" in accepts:
        choices.append("fused")
    return tuple(choices)


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = _choices(ctx)
    checklist = "fused" if "fused" in choices else "default"
    # On a GPU a per-parameter loop of small kernels is the slow reference the foreach and fused kernels replace.
    fallback = ("for-loop",) if ctx.is_cuda and "for-loop" in choices else ()
    return [Knob(KNOB, choices=choices, default="default", checklist=checklist, fallback=fallback,
                 help="optimizer kernels: PyTorch's pick, foreach, for-loop or fused",
                 applies=lambda c: c.mode == "train" and len(_choices(c)) > 1)]


@hookimpl
def dstune_optimizer_kwargs(config: dict[str, Any], ctx: TuneContext) -> dict[str, Any] | None:
    return dict(KWARGS.get(config.get(KNOB, "default"), {})) or None


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    """Transformers builds the optimizer itself (AdamW by default): ``optim`` names the kernel."""
    value = config.get(KNOB)
    if value is None:
        return None
    if target == "transformers":
        return ExportPart({"optim": "adamw_torch_fused" if value == "fused" else "adamw_torch"}, handled=(KNOB,))
    if value == "default":
        return ExportPart(handled=(KNOB,))
    return ExportPart(handled=(KNOB,), notes=(
        f"{KNOB}={value}: {target} takes the optimizer you build; pass {value}=True to it",))
