"""Scaled-dot-product attention backend on CUDA: PyTorch's pick, or one kernel family forced.

PyTorch picks among FlashAttention, memory-efficient attention, cuDNN
attention and the math fallback by input properties; its pick is not always
the fastest for a given shape and GPU.  The knob applies only to models that
call ``torch.nn.functional.scaled_dot_product_attention``, which the probe
finds out by running one forward pass on a one-sample batch (where the
model is) and watching for the call.  The probe keeps the calls' arguments
and tries each backend on them on the GPU, in half precision and, for
training, backward too: a backend that refuses the model's real attention
(FlashAttention and cuDNN attention take no arbitrary mask, which BERT
passes) is not offered, instead of crashing trial after trial.  Flash and
cuDNN attention need fp16 or bf16 inputs, so they are refused with fp32.  The choice is made with the process-wide
backend switches rather than a context around the forward pass: activation
checkpointing recomputes attention during the backward pass, outside any such
context, and must pick the same kernel again.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any, Callable

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

KNOB = "sdpa_backend"
FACT = "sdpa.used"
ACCEPTED = "sdpa.backends"  # the backends the model's own attention calls run with (probed on the GPU)
REFUSED = "sdpa.refused"  # backend -> what it said when tried on those calls
MAX_CALLS = 4  # distinct attention calls tried (self- and cross-attention, masked or not)
SDP_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}
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
            self.calls: dict[str, tuple[Any, dict[str, Any]]] = {}  # distinct calls by shape, mask and flags

        def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            if func is F.scaled_dot_product_attention:
                self.seen = True
                kwargs = dict(kwargs or {})
                shown = repr([(tuple(a.shape), a.dtype) if hasattr(a, "shape") else a
                              for a in (*args, *kwargs.values())])
                if shown not in self.calls and len(self.calls) < MAX_CALLS:
                    self.calls[shown] = (tuple(args), kwargs)
            return func(*args, **(kwargs or {}))

    return WatchSDPA


def uses_sdpa(run_once: Callable[[], Any]) -> bool:
    """Whether calling ``run_once`` (one forward pass) calls scaled_dot_product_attention."""
    return bool(attention_calls(run_once)[0])


def attention_calls(run_once: Callable[[], Any]) -> tuple[bool, list[tuple[Any, dict[str, Any]]]]:
    """Whether ``run_once`` calls scaled_dot_product_attention, and its distinct calls' arguments."""
    import torch

    with torch.no_grad(), _watch_sdpa()() as watch:
        run_once()
    return bool(watch.seen), list(watch.calls.values())


def _on_gpu(value: Any, dtype: Any) -> Any:
    """A call's argument as the GPU would get it in half precision (a float mask too; a bool mask stays bool)."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    moved = value.detach().to("cuda")
    return moved.to(dtype) if moved.is_floating_point() else moved


def backends_accepting(calls: list[tuple[Any, dict[str, Any]]], train: bool) -> tuple[list[str], dict[str, str]]:
    """The backends that run every call (forward, and backward in training); what the others said."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    accepted, refused = [], {}
    for name, member in SDP_BACKENDS.items():
        try:
            for args, kwargs in calls:
                query, key, value, *rest = (_on_gpu(a, dtype) for a in args)
                if train:
                    query, key, value = (t.requires_grad_(True) for t in (query, key, value))
                extra = {k: _on_gpu(v, dtype) for k, v in kwargs.items()}
                with sdpa_kernel([getattr(SDPBackend, member)]), torch.set_grad_enabled(train):
                    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, *rest, **extra)
                    if train:
                        out.float().sum().backward()
            torch.cuda.synchronize()
            accepted.append(name)
        except Exception as exc:  # noqa: BLE001 - whatever a kernel says, it will say it in a trial too
            said = str(exc).strip()
            refused[name] = f"{type(exc).__name__}: {said.splitlines()[-1][:200]}" if said else type(exc).__name__
    return accepted, refused


def _one_sample(workload: Any, device: Any) -> Any:
    import torch

    if workload.batch is not None:
        return workload.batch(1, device)
    sample = workload.dataset[0]
    collate = workload.collate_fn or torch.utils.data.default_collate
    from dstune.trial.composition import to_device

    return to_device(collate([sample]), device)


def _device_of(model: Any) -> Any:
    """Where the model's weights are (a workload may build its model on the GPU directly)."""
    import torch

    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


@hookimpl
def dstune_model_facts(model: Any, workload: Any, ctx: TuneContext) -> dict[str, Any]:
    if not ctx.is_cuda:  # the knob is CUDA-only: spare CPU runs the extra forward pass
        return {}
    from dstune.trial.composition import default_forward

    try:
        batch = _one_sample(workload, _device_of(model))
        if ctx.mode == "train":
            run = lambda: workload.loss(model, batch)  # noqa: E731
        else:
            run = lambda: (workload.forward or default_forward)(model, batch)  # noqa: E731
        used, calls = attention_calls(run)
    except Exception as exc:  # noqa: BLE001 - a model whose forward cannot be traced just gets no SDPA knob
        log.info("could not trace one forward pass to look for attention: %s", exc)
        return {FACT: False}
    if not used:
        return {FACT: False}
    accepted, refused = backends_accepting(calls, train=ctx.mode == "train")
    for name, said in refused.items():
        log.info("sdpa_backend=%s is not offered: the model's attention call refuses it (%s)", name, said)
    return {FACT: True, ACCEPTED: accepted, REFUSED: refused}


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    offered = ctx.facts.get(ACCEPTED, list(BACKENDS))  # older contexts probed no backend
    choices = ("auto", *(b for b in BACKENDS if b in offered))
    # The math kernel is the reference the fused kernels replace: a fallback where one of them takes the call.
    fallback = ("math",) if "math" in choices and len(choices) > 2 else ()
    return [Knob(KNOB, choices=choices, default="auto", checklist="auto", fallback=fallback,
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


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    return callback_or_note(config, {KNOB: "auto"}, target,
                            "train under torch.nn.attention.sdpa_kernel(...) with that backend")
