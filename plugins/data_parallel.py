"""Data-parallel training: how the ranks of a ``data_parallel=True`` workload share the model.

``dp_wrapper`` picks PyTorch's DistributedDataParallel (every rank holds the
whole model, gradients are all-reduced in buckets) or FSDP2's
``fully_shard`` (parameters, gradients and optimizer state sharded over the
ranks, gathered block by block).  DDP is faster while the model fits; FSDP
is what lets a model that does not fit on one GPU train at all, and frees
memory a larger micro-batch can use.  Each wrapper's own settings are knobs
that mean something only with it:

- DDP: ``ddp_bucket_cap_mb`` (larger buckets: fewer, larger all-reduces),
  ``ddp_gradient_as_bucket_view`` (gradients live in the buckets: one copy
  less; PyTorch's docs recommend it) and ``ddp_static_graph`` (the autograd
  graph is the same every step, so DDP can skip its per-step search);
- FSDP: ``fsdp_reshard_after_forward`` (free gathered parameters after the
  forward pass and gather them again for backward, or keep them: memory
  against communication) and ``fsdp_mixed_precision`` (bf16 parameters for
  compute, with gradients reduced in bf16 or fp32).

FSDP shards each repeated block (transformer layers, ResNet stages, as
activation checkpointing finds them) and then the root.  Wrapping runs after
the other plugins have changed the model and before ``torch.compile``
(``trylast``, registered after compile), so compile sees the wrapped model as
PyTorch recommends.  The optimizer is built after wrapping, on the sharded
parameters.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart

WRAPPER = "dp_wrapper"
BUCKET = "ddp_bucket_cap_mb"
BUCKET_VIEW = "ddp_gradient_as_bucket_view"
STATIC = "ddp_static_graph"
RESHARD = "fsdp_reshard_after_forward"
FSDP_PRECISION = "fsdp_mixed_precision"
BF16, BF16_FP32_REDUCE = "bf16", "bf16-reduce-fp32"
TOLERANCE = {BF16: 5e-2, BF16_FP32_REDUCE: 5e-2}  # as precision's bf16: the same rounding of the forward pass
DDP_KNOBS = (BUCKET, BUCKET_VIEW, STATIC)
FSDP_KNOBS = (RESHARD, FSDP_PRECISION)


def _ddp(config: Any) -> bool:
    return config.get(WRAPPER, "ddp") == "ddp"


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    if not ctx.data_parallel:
        return []
    precisions = ("off", BF16, BF16_FP32_REDUCE) if ctx.bf16_supported else ("off",)
    return [
        # Sharded state per rank is the memory model's "sharded" variant: it measures each wrapper once.
        Knob(WRAPPER, choices=("ddp", "fsdp"), default="ddp", checklist="ddp", memory={"ddp": "ddp", "fsdp": "fsdp"},
             help="DistributedDataParallel, or FSDP2 fully_shard (sharded parameters, gradients, optimizer state)"),
        Knob(BUCKET, choices=(10, 25, 50, 100), default=25, checklist=25, active=_ddp,
             help="DDP gradient bucket size in MiB (PyTorch's default 25)"),
        Knob(BUCKET_VIEW, choices=(False, True), default=False, checklist=True, active=_ddp,
             help="DDP gradients as views into the all-reduce buckets (one copy less)"),
        Knob(STATIC, choices=(False, True), default=False, checklist=False, active=_ddp,
             help="DDP static_graph: the same autograd graph every step"),
        Knob(RESHARD, choices=(True, False), default=True, checklist=True, active=lambda c: not _ddp(c),
             help="FSDP: free gathered parameters after forward (True) or keep them for backward"),
        Knob(FSDP_PRECISION, choices=precisions, default="off", checklist="off", tolerance=TOLERANCE,
             active=lambda c: not _ddp(c), help="FSDP mixed precision: bf16 parameters, gradients reduced in bf16 "
             "or fp32"),
    ]


def ddp_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """DistributedDataParallel's keyword arguments for ``config`` (besides the model and device_ids)."""
    return {"bucket_cap_mb": config.get(BUCKET, 25), "gradient_as_bucket_view": bool(config.get(BUCKET_VIEW)),
            "static_graph": bool(config.get(STATIC))}


def fsdp_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """``fully_shard``'s settings for ``config``: reshard_after_forward, and the mixed-precision dtypes by name."""
    precision = config.get(FSDP_PRECISION, "off")
    return {"reshard_after_forward": bool(config.get(RESHARD, True)),
            "param_dtype": None if precision == "off" else "bfloat16",
            "reduce_dtype": "bfloat16" if precision == BF16 else ("float32" if precision == BF16_FP32_REDUCE else None)}


@hookimpl(trylast=True)
def dstune_prepare_model(model: Any, config: dict[str, Any], ctx: TuneContext) -> Any:
    import torch
    import torch.distributed as dist

    if not ctx.data_parallel or WRAPPER not in config:
        return None
    if not dist.is_initialized():
        raise RuntimeError("dp_wrapper: no torch.distributed process group. Start the script with torchrun (or "
                           "call torch.distributed.init_process_group) before dstune.apply.")
    if _ddp(config):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.is_cuda else None,
                                       **ddp_arguments(config))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from dstune.plugins.checkpointing import repeated_blocks

    settings = fsdp_arguments(config)
    dtype = {None: None, "bfloat16": torch.bfloat16, "float32": torch.float32}
    mesh = init_device_mesh("cuda" if ctx.is_cuda else "cpu", (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype[settings["param_dtype"]],
                                  reduce_dtype=dtype[settings["reduce_dtype"]])
    for block in repeated_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=settings["reshard_after_forward"], mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=settings["reshard_after_forward"], mp_policy=policy)
    return model


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    """DDP and FSDP as each tool sets them; what it has no argument for is named, with the call to write."""
    if WRAPPER not in config:
        return None
    handled = (WRAPPER, *DDP_KNOBS, *FSDP_KNOBS)
    ddp = ddp_arguments(config)
    fsdp = fsdp_arguments(config)
    if target == "transformers":
        if _ddp(config):
            notes = tuple(f"{key}={value}: TrainingArguments has no argument for it; Trainer wraps the model "
                          f"itself" for key, value in (("ddp_gradient_as_bucket_view", ddp["gradient_as_bucket_view"]),)
                          if value)
            return ExportPart({"ddp_bucket_cap_mb": ddp["bucket_cap_mb"], "ddp_static_graph": ddp["static_graph"]},
                              handled=handled, notes=notes)
        notes = () if config.get(FSDP_PRECISION, "off") == "off" else (
            f"{FSDP_PRECISION}={config[FSDP_PRECISION]}: set it in fsdp_config's mixed_precision_policy, or train "
            "with bf16=True",)
        return ExportPart({"fsdp": True, "fsdp_config": {"version": 2,
                                                         "reshard_after_forward": fsdp["reshard_after_forward"]}},
                          handled=handled, notes=notes)
    if target == "lightning":
        call = (f"DDPStrategy({', '.join(f'{k}={v!r}' for k, v in ddp.items())})" if _ddp(config) else
                f"FSDPStrategy(reshard_after_forward={fsdp['reshard_after_forward']!r})")
        return ExportPart({"strategy": "ddp" if _ddp(config) else "fsdp"}, handled=handled, notes=(
            f"{WRAPPER}={config[WRAPPER]}: for the tuned settings pass strategy=lightning.pytorch.strategies."
            f"{call} instead of the string",))
    kind = "MULTI_GPU" if _ddp(config) else "FSDP"
    settings = ", ".join(f"{k}={v!r}" for k, v in (ddp if _ddp(config) else fsdp).items())
    handler = (f"kwargs_handlers=[DistributedDataParallelKwargs({settings})]" if _ddp(config)
               else f"fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2, {settings})")
    return ExportPart({}, handled=handled, notes=(
        f"{WRAPPER}={config[WRAPPER]}: launch with `accelerate launch` ({kind}) and pass {handler} to Accelerator",))
