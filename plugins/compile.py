"""torch.compile: off, or one of its modes, with or without automatic dynamic shapes.

Modes: ``default``; ``reduce-overhead`` (CUDA graphs, for launch-bound
steps); ``max-autotune`` (Triton GEMM and convolution autotuning, plus CUDA
graphs) and ``max-autotune-no-cudagraphs``.  ``compile_dynamic=static``
passes ``dynamic=False``: every new input shape is compiled afresh instead of
once as a shape-generic graph, which keeps the fastest kernels when shapes
are fixed.  Compilation wraps the finished model, so this hook runs last.
Compile time shows up in the trial's first-step time, kept apart from the
steady-state step time, and trials of one run share the inductor and Triton
caches on disk.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import PREPARE_IN_PLACE, ExportPart

KNOB = "compile"
DYNAMIC = "compile_dynamic"
CUDA_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CPU_MODES = ("off", "default")
# A compiled trial in trials of its eager twin (the same configuration, eager), before this run has measured one.
# The compiled checklist against the eager one in ten runs on an H200: augmented_images 1.7 and 1.7, bert_infer
# 1.6 and 2.1, ResNet-50 2.1, 2.4 and 2.4, GPT-2 3.3, llama_1b 4.0, 4.6 and 5.2 (median 2.4).  Six times the
# median eager trial, the estimate before, was 1.3-3x too long on every one of them, and kept ResNet-50's
# compiled checklist (66 s) out of a 4-minute budget as "about 1:42".  max-autotune-no-cudagraphs was still
# autotuning ResNet-50's convolutions after 300 s.
COST = {"default": 3.0, "reduce-overhead": 3.0, "max-autotune-no-cudagraphs": 40.0, "max-autotune": 40.0}


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    choices = CUDA_MODES if ctx.is_cuda else CPU_MODES
    return [
        Knob(KNOB, choices=choices, default="off", checklist="default",
             help="torch.compile mode ('off': eager)", costly=choices[1:],
             cost={mode: COST[mode] for mode in choices[1:]}),
        Knob(DYNAMIC, choices=("auto", "static"), default="auto", checklist="auto",
             active=lambda config: config.get(KNOB, "off") != "off", relieves="shapes",
             help="torch.compile dynamic: auto (shape-generic after a shape changes) or static (dynamic=False)"),
    ]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    mode = config.get(KNOB, "off")
    allowed = CUDA_MODES if ctx.is_cuda else CPU_MODES
    if mode not in allowed:
        return f"compile={mode} is not offered on {ctx.device}"
    if mode == "off" and config.get(DYNAMIC, "auto") != "auto":
        return f"compile_dynamic={config[DYNAMIC]} needs compile on"
    return None


@hookimpl(trylast=True)
def dstune_prepare_model(model: Any, config: dict[str, Any], ctx: TuneContext) -> Any:
    mode = config.get(KNOB, "off")
    if mode == "off":
        return None
    import torch

    dynamic = False if config.get(DYNAMIC) == "static" else None
    if ctx.facts.get(PREPARE_IN_PLACE):  # a Lightning module's child: compiled in place, its names unchanged
        model.compile(mode=None if mode == "default" else mode, dynamic=dynamic)
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=dynamic)


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    if KNOB not in config:
        return None
    mode, static = config[KNOB], config.get(DYNAMIC) == "static"
    handled = tuple(k for k in (KNOB, DYNAMIC) if k in config)
    if mode == "off":
        return ExportPart({"torch_compile": False} if target == "transformers" else {}, handled=handled)
    if target == "lightning":
        return ExportPart(callback={KNOB: mode, **({DYNAMIC: "static"} if static else {})}, handled=handled)
    notes = (f"{DYNAMIC}=static: {target} has no setting for it; call torch.compile(model, dynamic=False) "
             "yourself",) if static else ()
    if target == "transformers":
        return ExportPart({"torch_compile": True, "torch_compile_backend": "inductor", "torch_compile_mode": mode},
                          handled=handled, notes=notes)
    if mode != "default":
        notes += (f"{KNOB}={mode}: pass dynamo_plugin=accelerate.utils.TorchDynamoPlugin(backend='inductor', "
                  f"mode='{mode}') instead of dynamo_backend",)
    return ExportPart({"dynamo_backend": "inductor"}, handled=handled, notes=notes)
