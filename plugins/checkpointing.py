"""Activation checkpointing: trade recomputation for memory on repeated blocks.

Choices: off (``False``), every block (``True``), or ``every_other`` block,
which saves about half the memory for about half the recomputation.  For
every block, Hugging Face models use their own
``gradient_checkpointing_enable``.  Otherwise the children of every
``Sequential``/``ModuleList`` made of two or more blocks of one class (ResNet
stages, transformer layers) are recomputed in the backward pass.  Blocks are patched in place, so ``state_dict`` keys do not
change and a checkpoint saved from a tuned run loads into the plain model.
Freed activation memory can then buy a larger micro-batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart

KNOB = "activation_checkpointing"
EVERY_OTHER = "every_other"
MARK = "_dstune_checkpointed"


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Children of containers holding two or more non-leaf blocks of one class."""
    from torch import nn

    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            kids = list(module.children())
            if len(kids) >= 2 and len({type(k) for k in kids}) == 1 and any(True for _ in kids[0].children()):
                found.extend(kids)
                return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def _hf_supported(model: nn.Module) -> bool:
    return bool(getattr(model, "supports_gradient_checkpointing", False)) and hasattr(
        model, "gradient_checkpointing_enable"
    )


def _checkpoint_forward(block: nn.Module) -> None:
    import torch
    from torch.utils.checkpoint import checkpoint

    original = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    block.forward = forward  # type: ignore[method-assign]
    setattr(block, MARK, True)


@hookimpl
def dstune_model_facts(model: nn.Module, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    return {
        "checkpoint.hf": _hf_supported(model),
        "checkpoint.blocks": len(repeated_blocks(model)),
    }


def _applies(ctx: TuneContext) -> bool:
    return ctx.mode == "train" and (
        bool(ctx.facts.get("checkpoint.hf")) or ctx.facts.get("checkpoint.blocks", 0) >= 2
    )


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    # Every other block needs blocks of its own to pick from (HF's switch is all or nothing).
    choices = (False, EVERY_OTHER, True) if ctx.facts.get("checkpoint.blocks", 0) >= 2 else (False, True)
    return [
        Knob(KNOB, choices=choices, default=False, checklist=False,
             help="recompute repeated blocks in backward to save activation memory: off, every_other, every block",
             applies=_applies, relieves="memory",
             memory={False: "no checkpointing", EVERY_OTHER: "every other block", True: "every block"})
    ]


@hookimpl
def dstune_prepare_model(model: nn.Module, config: dict[str, Any], ctx: TuneContext) -> Any:
    setting = config.get(KNOB, False)
    if not setting:
        return None
    if setting == EVERY_OTHER:
        for block in repeated_blocks(model)[::2]:
            _checkpoint_forward(block)
        return model
    if _hf_supported(model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(getattr(model, "config", None), "use_cache", None):
            model.config.use_cache = False
        return model
    for block in repeated_blocks(model):
        _checkpoint_forward(block)
    return model


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    if KNOB not in config:
        return None
    setting = config[KNOB]
    if not setting:
        return ExportPart({"gradient_checkpointing": False} if target == "transformers" else {}, handled=(KNOB,))
    if target == "lightning":
        return ExportPart(callback={KNOB: setting}, handled=(KNOB,))
    if target == "transformers" and setting is True:
        return ExportPart({"gradient_checkpointing": True,
                           "gradient_checkpointing_kwargs": {"use_reentrant": False}}, handled=(KNOB,))
    return ExportPart(handled=(KNOB,), notes=(
        f"{KNOB}={setting!r}: {target} has no setting for it; wrap every "
        f"{'other ' if setting == EVERY_OTHER else ''}repeated block in torch.utils.checkpoint yourself",))
