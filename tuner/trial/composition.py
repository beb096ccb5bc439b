"""Compose a runnable step from a workload, a configuration and the plugins.

This is the one place where plugin hooks are turned into a model, an
optimizer and a step function.  Trials use it, and so does production code
through ``dstune.apply``, so what was measured is what runs.  A trial feeds
the step the workload's own batches; a production loop hands it its own
(``step(batch)``: a global batch, split into the tuned micro-batches), and
builds its DataLoader and evaluation context from the same configuration
(``loader(dataset)``, ``autocast()``).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import pluggy
import torch

from dstune.context import TuneContext
from dstune.errors import UsageError
from dstune.knobs import BatchPlan
from dstune.plugin_calls import chain_hook
from dstune.workload_api import Workload, WorkloadDef

from .distributed import gradient_sync
from .numerics import Guard


@dataclass
class Composed:
    """A workload made runnable under one configuration: what a trial times and what ``dstune.apply`` returns.

    - ``step()`` runs one optimizer step on the workload's own batches (the
      synthetic ``batch=`` tensors, or its ``dataset=``); ``step(batch)`` on a
      global batch the caller supplies, split into ``plan.micro_batch``-sized
      micro-batches with the loss scaled for accumulation, under the tuned
      autocast and grad scaler, ``zero_grad`` inside.  It returns the loss.
    - ``micro_step(batch)`` and ``optimizer_step()`` are the two halves, for
      loops that accumulate themselves: each micro-batch's loss is divided by
      ``plan.accumulation`` before its backward pass.
    - ``loader(dataset)`` is a DataLoader with the tuned loader settings,
      yielding global batches for ``step``; ``loader()`` is the workload's own.
    - ``autocast()`` enters the contexts a step runs under (autocast, SDPA
      backend), for evaluation code.
    """

    workload: Workload
    model: Any
    optimizer: Any
    scaler: Any
    plan: BatchPlan
    device: torch.device
    step: Callable[..., torch.Tensor]
    mode: str
    data_loader: Any = None  # the DataLoader of a dataset= workload, as the plugins configured it
    guard: Guard | None = None
    # Training only: the parts of ``step``, so a measurement can time them apart (dstune.trial.measure).
    micro_step: Callable[..., torch.Tensor] | None = None  # forward and backward of one micro-batch
    optimizer_step: Callable[[], None] | None = None  # the update and zero_grad, after the micro-batches
    begin_step: Callable[[], None] = lambda: None  # a new optimizer step begins (CUDA graphs are told)
    step_contexts: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    loader_kwargs: dict[str, Any] | None = None  # what the plugins give a DataLoader (workers, pinning, ...)
    # The shapes of the workload's own batches so far, one entry per distinct set, up to two: one entry means
    # torch.compile never saw a new shape, so its automatic dynamic shapes and dynamic=False compiled one graph.
    input_shapes: set[tuple[tuple[int, ...], ...]] = field(default_factory=set)
    epoch: EpochPosition | None = None  # where the DataLoader's batches stand in its epoch (None: no loader)

    def autocast(self) -> ContextManager[Any]:
        """The contexts a step runs under (autocast with the tuned dtype, the SDPA backend): for evaluation."""
        return self.step_contexts()

    def loader(self, dataset: Any = None, *, batch_size: int | None = None, shuffle: bool = True,
               collate_fn: Callable[..., Any] | None = None, drop_last: bool = False,
               **overrides: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over ``dataset`` with the tuned workers, pinning and prefetching, in global batches
        (``plan.samples_per_step`` samples, what ``step(batch)`` takes) unless ``batch_size`` says otherwise;
        with no dataset, the workload's own loader."""
        if dataset is None:
            if self.data_loader is None:
                raise UsageError("loader(): this workload has no dataset= of its own. Pass your dataset: "
                                 "loader(my_dataset).")
            return self.data_loader
        kwargs = {**(self.loader_kwargs or {}), **overrides}
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size or self.plan.samples_per_step,
                                           shuffle=shuffle, drop_last=drop_last, collate_fn=collate_fn, **kwargs)


@dataclass
class EpochPosition:
    """Where a DataLoader's endless batches stand in its epoch: ``drawn`` of its ``length`` batches.

    An epoch's start has a pace of its own (the workers' first batches of it,
    new workers without ``persistent_workers``, then a burst from queues
    filled meanwhile), so two spans of two epochs begun anywhere may hold one
    start or two.  A measurement that times whole epochs from an epoch's start
    holds as many in every window and every process.
    """

    length: int
    drawn: int = 0

    @property
    def at_start(self) -> bool:
        """The next batch drawn begins an epoch."""
        return self.drawn % self.length == 0


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


def batch_rows(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor."""
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise UsageError(f"step(batch): found no tensor with a batch dimension in a {type(batch).__name__}. Pass "
                         "a tensor, or a tuple, list or dict of tensors whose first dimension is the batch.")
    return int(tensor.shape[0])


def split_batch(batch: Any, size: int) -> list[Any]:
    """``batch`` cut into chunks of ``size`` rows along the first dimension (the last may be smaller); values that
    are not tensors (a list of ids, a flag) go whole into every chunk."""
    rows = batch_rows(batch)
    starts = range(0, rows, size)

    def cut(value: Any, start: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if value.shape[0] != rows:
                raise UsageError(f"step(batch): the batch's tensors disagree on its size ({rows} and "
                                 f"{value.shape[0]} rows). Give every tensor the batch as its first dimension.")
            return value[start:start + size]
        if isinstance(value, dict):
            return {k: cut(v, start) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(cut(v, start) for v in value)
        return value

    return [cut(batch, start) for start in starts]


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


def shape_signature(batch: Any) -> tuple[tuple[int, ...], ...]:
    """The shapes of a batch's tensors, in a fixed order (a dict's by key)."""
    if isinstance(batch, torch.Tensor):
        return (tuple(batch.shape),)
    if isinstance(batch, dict):
        return tuple(s for key in sorted(batch, key=str) for s in shape_signature(batch[key]))
    if isinstance(batch, (list, tuple)):
        return tuple(s for value in batch for s in shape_signature(value))
    return ()


def _batches(workload: Workload, plan: BatchPlan, device: torch.device, loader_kwargs: dict[str, Any],
             name: str, shapes: set[tuple[tuple[int, ...], ...]], ranked: bool = False
             ) -> tuple[Iterator[Any], Any, EpochPosition | None]:
    """The workload's batches without end, its DataLoader and where they stand in its epoch (None, None for
    synthetic batches); every distinct set of shapes they have goes into ``shapes``."""
    if workload.batch is not None:
        # Two distinct batches, made once: data generation stays out of the timing.
        fixed = [workload.batch(plan.micro_batch, device) for _ in range(2)]
        shapes.update(shape_signature(batch) for batch in fixed)
        return itertools.cycle(fixed), None, None
    # Data-parallel ranks each read their own share of the dataset, as a DistributedSampler gives it.
    sampler = (torch.utils.data.DistributedSampler(workload.dataset, shuffle=True, drop_last=True)
               if ranked and torch.distributed.is_initialized() else None)
    loader = torch.utils.data.DataLoader(
        workload.dataset, batch_size=plan.micro_batch, shuffle=sampler is None, sampler=sampler, drop_last=True,
        collate_fn=workload.collate_fn, **loader_kwargs,
    )
    if len(loader) == 0:
        raise UsageError(
            f"workload {name!r}: its dataset has {len(workload.dataset)} samples, fewer than one "
            f"micro-batch of {plan.micro_batch}. Give a larger dataset or a smaller batch_size."
        )
    pinned = bool(loader_kwargs.get("pin_memory"))
    position = EpochPosition(len(loader))

    def forever() -> Iterator[Any]:
        while True:
            position.drawn = 0
            for batch in loader:
                position.drawn += 1
                if len(shapes) < 2:  # one shape or several is all that is asked: no more work once it is several
                    shapes.add(shape_signature(batch))
                yield to_device(batch, device, non_blocking=pinned)

    return forever(), loader, position


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
    shapes: set[tuple[tuple[int, ...], ...]] = set()
    batches, loader, epoch = _batches(workload, plan, device, loader_kwargs, definition.name, shapes,
                                      ctx.data_parallel)
    pinned = bool(loader_kwargs.get("pin_memory"))
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

        def infer_step(given: Any = None) -> torch.Tensor:
            batch = next(batches) if given is None else to_device(given, device, non_blocking=pinned)
            mark_step()
            with torch.inference_mode(), contexts():
                out = forward(model, batch)
            tensor = first_tensor(out)
            if tensor is None:
                raise UsageError(f"workload {definition.name!r}: forward returned no tensor; return the model output.")
            if guard is not None:
                guard.check(tensor)
            return tensor

        return Composed(workload, model, None, None, plan, device, infer_step, ctx.mode, loader, guard,
                        step_contexts=contexts, loader_kwargs=loader_kwargs, input_shapes=shapes, epoch=epoch)

    optimizer_kwargs = _merged(pm.hook.dstune_optimizer_kwargs(config=config, ctx=ctx))
    optimizer = workload.optimizer(model.parameters(), **optimizer_kwargs)
    scaler = pm.hook.dstune_grad_scaler(config=config, ctx=ctx)
    loss_fn = workload.loss
    accumulation = plan.accumulation

    def backward(batch: Any, weight: float) -> torch.Tensor:
        with contexts():
            loss = loss_fn(model, batch)
        if guard is not None:
            guard.check(loss)
        scaled = loss * weight if weight != 1.0 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        return loss.detach()

    def micro_step(given: Any = None) -> torch.Tensor:
        batch = next(batches) if given is None else to_device(given, device, non_blocking=pinned)
        return backward(batch, 1.0 / accumulation)

    def optimizer_step() -> None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Data-parallel: gradients are all-reduced in an accumulation's last backward pass only (DDP's no_sync).
    sync = (lambda last: gradient_sync(model, last)) if ctx.data_parallel else (lambda last: None)

    def train_step(given: Any = None) -> torch.Tensor:
        mark_step()
        if given is None:
            for i in range(accumulation):
                sync(i == accumulation - 1)
                loss = micro_step()
            optimizer_step()
            return loss
        rows = batch_rows(given)
        total = torch.zeros((), device=device)
        chunks = split_batch(given, plan.micro_batch)
        for i, chunk in enumerate(chunks):  # each chunk's share of the global batch's mean
            share = batch_rows(chunk) / rows
            sync(i == len(chunks) - 1)
            total += backward(to_device(chunk, device, non_blocking=pinned), share) * share
        optimizer_step()
        return total

    return Composed(workload, model, optimizer, scaler, plan, device, train_step, ctx.mode, loader, guard,
                    micro_step=micro_step, optimizer_step=optimizer_step, begin_step=mark_step,
                    step_contexts=contexts, loader_kwargs=loader_kwargs, input_shapes=shapes, epoch=epoch)
