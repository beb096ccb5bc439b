"""Scaled-dot-product attention backend on CUDA: PyTorch's pick, or one kernel family forced.

PyTorch picks among FlashAttention, memory-efficient attention, cuDNN
attention and the math fallback by input properties; its pick is not always
the fastest for a given shape and GPU.  The knob applies only to models that
call ``torch.nn.functional.scaled_dot_product_attention``, which the probe
finds out by running one forward pass on a one-sample batch on the CPU and
watching for the call.  Flash and cuDNN attention need fp16 or bf16 inputs,
so they are refused with fp32.  The choice is made with the process-wide
backend switches rather than a context around the forward pass: activation
checkpointing recomputes attention during the backward pass, outside any such
context, and must pick the same kernel again.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any, Callable

from dstune import Knob, TuneContext, hookimpl

KNOB = "sdpa_backend"
FACT = "sdpa.used"
# The torch.backends.cuda switch of each backend.
BACKENDS = {
    "flash": "enable_flash_sdp",
    "efficient": "enable_mem_efficient_sdp",
    "cudnn": "enable_cudnn_sdp",
    "math": "enable_math_sdp",
}
HALF_ONLY = ("flash", "cudnn")

log = logging.getLogger("dstune.plugins.sdpa")


@cache
def _watch_sdpa() -> type:
    """The torch function mode that notes whether scaled_dot_product_attention is called; it changes nothing.

    Made on first use: the process that plans trials loads this plugin but never imports torch.
    """
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class WatchSDPA(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen = False

        def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            if func is F.scaled_dot_product_attention:
                self.seen = True
            return func(*args, **(kwargs or {}))

    return WatchSDPA


def uses_sdpa(run_once: Callable[[], Any]) -> bool:
    """Whether calling ``run_once`` (one forward pass) calls scaled_dot_product_attention."""
    import torch

    with torch.no_grad(), _watch_sdpa()() as watch:
        run_once()
    return bool(watch.seen)


def _one_sample(workload: Any) -> Any:
    import torch

    if workload.batch is not None:
        return workload.batch(1, torch.device("cpu"))
    sample = workload.dataset[0]
    collate = workload.collate_fn or torch.utils.data.default_collate
    return collate([sample])


@hookimpl
def dstune_model_facts(model: Any, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    if not ctx.is_cuda:  # the knob is CUDA-only: spare CPU runs the extra forward pass
        return {}
    from dstune.trial.composition import default_forward

    batch = _one_sample(workload)
    if ctx.mode == "train":
        run = lambda: workload.loss(model, batch)  # noqa: E731
    else:
        run = lambda: (workload.forward or default_forward)(model, batch)  # noqa: E731
    try:
        return {FACT: uses_sdpa(run)}
    except Exception as exc:  # noqa: BLE001 - a model that cannot run on the CPU just gets no SDPA knob
        log.info("could not trace one CPU forward pass to look for attention: %s", exc)
        return {FACT: False}


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    return [Knob(KNOB, choices=("auto", *BACKENDS), default="auto", checklist="auto",
                 applies=lambda c: c.is_cuda and bool(c.facts.get(FACT)),
                 help="scaled_dot_product_attention kernel: PyTorch's pick, flash, efficient, cudnn or math")]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    backend = config.get(KNOB, "auto")
    if backend in HALF_ONLY and config.get("precision", "fp32") not in ("bf16", "fp16"):
        return f"sdpa_backend={backend} needs precision bf16 or fp16"
    return None


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    backend = config.get(KNOB, "auto")
    if backend == "auto":
        return
    import torch

    for name, switch in BACKENDS.items():
        getattr(torch.backends.cuda, switch)(name == backend)
