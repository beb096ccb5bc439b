"""Compose a runnable step from a workload, a configuration and the plugins.

This is the one place where plugin hooks are turned into a model, an
optimizer and a step function.  Trials use it, and so does production code
through ``dstune.apply``, so what was measured is what runs.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pluggy
import torch

from dstune.context import TuneContext
from dstune.errors import UsageError
from dstune.knobs import BatchPlan
from dstune.plugin_calls import chain_hook
from dstune.workload_api import Workload, WorkloadDef

from .numerics import Guard


@dataclass
class Composed:
    """A workload made runnable under one configuration."""

    workload: Workload
    model: Any
    optimizer: Any
    scaler: Any
    plan: BatchPlan
    device: torch.device
    step: Callable[[], torch.Tensor]
    mode: str
    loader: Any = None  # the DataLoader of a dataset= workload, as the plugins configured it
    guard: Guard | None = None
    # Training only: the parts of ``step``, so a measurement can time them apart (dstune.trial.measure).
    micro_step: Callable[[], torch.Tensor] | None = None  # forward and backward of one micro-batch
    optimizer_step: Callable[[], None] | None = None  # the update and zero_grad, after the micro-batches
    begin_step: Callable[[], None] = lambda: None  # a new optimizer step begins (CUDA graphs are told)


def configure_process(pm: pluggy.PluginManager, config: dict[str, Any], ctx: TuneContext) -> None:
    """Run the process-wide hooks; call before CUDA initialises."""
    pm.hook.dstune_configure_process(config=config, ctx=ctx)


def _merged(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in results:
        if part:
            merged.update(part)
    return merged


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a batch (tensor, or nested tuple/list/dict of tensors) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a model output (tensor, tuple, dict or HF ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def default_forward(model: Any, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def _batches(workload: Workload, plan: BatchPlan, device: torch.device, loader_kwargs: dict[str, Any],
             name: str) -> tuple[Iterator[Any], Any]:
    if workload.batch is not None:
        # Two distinct batches, made once: data generation stays out of the timing.
        fixed = [workload.batch(plan.micro_batch, device) for _ in range(2)]
        return itertools.cycle(fixed), None
    loader = torch.utils.data.DataLoader(
        workload.dataset, batch_size=plan.micro_batch, shuffle=True, drop_last=True,
        collate_fn=workload.collate_fn, **loader_kwargs,
    )
    if len(loader) == 0:
        raise UsageError(
            f"workload {name!r}: its dataset has {len(workload.dataset)} samples, fewer than one "
            f"micro-batch of {plan.micro_batch}. Give a larger dataset or a smaller batch_size."
        )
    pinned = bool(loader_kwargs.get("pin_memory"))

    def forever() -> Iterator[Any]:
        while True:
            for batch in loader:
                yield to_device(batch, device, non_blocking=pinned)

    return forever(), loader


def step_begin(cuda: bool) -> Callable[[], None]:
    """What starts an optimizer step: CUDA graphs (compile's reduce-overhead) are told a new step begins."""
    return torch.compiler.cudagraph_mark_step_begin if cuda else (lambda: None)


def compose(pm: pluggy.PluginManager, definition: WorkloadDef, config: dict[str, Any],
            ctx: TuneContext, guard: Guard | None = None) -> Composed:
    """Build the workload and wire every plugin hook into its step.

    With a ``guard``, the fp32 eager reference is computed on the first
    micro-batch before the plugins change the model, and the first step's
    loss or output on that batch is checked against it.
    """
    workload = definition.build(ctx)
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.is_cuda else torch.device("cpu")
    model = workload.model.to(device)
    model.train(ctx.mode == "train")
    plan = pm.hook.dstune_batch_plan(config=config, ctx=ctx) or BatchPlan(ctx.default_batch_size)
    loader_kwargs = _merged(pm.hook.dstune_loader_kwargs(config=config, ctx=ctx))
    batches, loader = _batches(workload, plan, device, loader_kwargs, definition.name)
    forward = workload.forward or default_forward
    if guard is not None:
        first = next(batches)
        batches = itertools.chain([first], batches)
        if workload.batch is not None:
            guard.cache_key = f"{ctx.mode}-{plan.micro_batch}"
        if ctx.mode == "train":
            guard.compute_reference(model, lambda: workload.loss(model, first), device)
        else:
            guard.compute_reference(model, lambda: first_tensor(forward(model, first)), device)
    model = chain_hook(pm, "dstune_prepare_model", model, config=config, ctx=ctx)
    mark_step = step_begin(ctx.is_cuda)

    def contexts() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for manager in pm.hook.dstune_step_context(config=config, ctx=ctx):
            stack.enter_context(manager)
        return stack

    if ctx.mode == "inference":

        def infer_step() -> torch.Tensor:
            batch = next(batches)
            mark_step()
            with torch.inference_mode(), contexts():
                out = forward(model, batch)
            tensor = first_tensor(out)
            if tensor is None:
                raise UsageError(f"workload {definition.name!r}: forward returned no tensor; return the model output.")
            if guard is not None:
                guard.check(tensor)
            return tensor

        return Composed(workload, model, None, None, plan, device, infer_step, ctx.mode, loader, guard)

    optimizer_kwargs = _merged(pm.hook.dstune_optimizer_kwargs(config=config, ctx=ctx))
    optimizer = workload.optimizer(model.parameters(), **optimizer_kwargs)
    scaler = pm.hook.dstune_grad_scaler(config=config, ctx=ctx)
    loss_fn = workload.loss
    accumulation = plan.accumulation

    def micro_step() -> torch.Tensor:
        batch = next(batches)
        with contexts():
            loss = loss_fn(model, batch)
        if guard is not None:
            guard.check(loss)
        scaled = loss / accumulation if accumulation > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        return loss.detach()

    def optimizer_step() -> None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_step() -> torch.Tensor:
        mark_step()
        for _ in range(accumulation):
            loss = micro_step()
        optimizer_step()
        return loss

    return Composed(workload, model, optimizer, scaler, plan, device, train_step, ctx.mode, loader, guard,
                    micro_step=micro_step, optimizer_step=optimizer_step, begin_step=mark_step)
