"""The workload contract: what a user's workload file declares.

A workload file defines functions decorated with :func:`workload`; each
returns a :class:`Workload` that says what to build (model, optimizer, data,
loss).  dstune, not the user, owns the step: device placement, autocast, grad
scaling, accumulation and synchronisation.  That is what lets strategy
plugins change how it runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UsageError

MODES = ("train", "inference")
WORKLOAD_ATTR = "__dstune_workload__"


@dataclass
class Workload:
    """What one workload is made of.

    Give either ``batch`` (a function ``(n, device) -> batch`` making a
    synthetic or cached batch of ``n`` samples on ``device``) or ``dataset`` (a
    ``torch.utils.data.Dataset``; dstune builds the DataLoader, so loader
    settings are tuned too).  Training needs ``optimizer`` (a function of the
    parameters and keyword arguments) and ``loss`` (a function of the model and
    a batch).  ``forward`` is used in inference mode; by default a dict batch
    is passed as keyword arguments, a tuple's first element positionally, and
    anything else as is.
    """

    model: Any
    optimizer: Callable[..., Any] | None = None
    batch: Callable[[int, Any], Any] | None = None
    dataset: Any = None
    loss: Callable[[Any, Any], Any] | None = None
    forward: Callable[[Any, Any], Any] | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None


@dataclass(frozen=True)
class WorkloadDef:
    """A decorated workload function and its declared settings."""

    name: str
    fn: Callable[[Any], Workload]
    mode: str
    global_batch_size: int | None
    batch_size: int | None
    source: str
    line: int
    data_parallel: bool = False  # trains data-parallel: a trial is one job of ctx.world_size ranks

    @property
    def default_batch_size(self) -> int:
        return self.batch_size or self.global_batch_size or 32

    def build(self, ctx: Any) -> Workload:
        """Call the user's function and check what it returned."""
        built = self.fn(ctx)
        where = f"{self.source}:{self.line}"
        if not isinstance(built, Workload):
            raise UsageError(
                f"workload {self.name!r} ({where}) returned {type(built).__name__}, not dstune.Workload. "
                "Return dstune.Workload(model=..., batch=..., loss=..., optimizer=...)."
            )
        if (built.batch is None) == (built.dataset is None):
            raise UsageError(
                f"workload {self.name!r} ({where}) must give exactly one of batch= or dataset=. "
                "Use batch= for synthetic batches, dataset= to have dstune build and tune the DataLoader."
            )
        if self.mode == "train" and (built.optimizer is None or built.loss is None):
            raise UsageError(
                f"workload {self.name!r} ({where}) is a training workload but lacks "
                f"{'optimizer=' if built.optimizer is None else 'loss='}. Add it, or declare "
                "@dstune.workload(mode='inference') to time forward passes only."
            )
        return built


def workload(
    fn: Callable[[Any], Workload] | None = None,
    *,
    name: str | None = None,
    mode: str = "train",
    global_batch_size: int | None = None,
    batch_size: int | None = None,
    data_parallel: bool = False,
) -> Any:
    """Declare a workload function; usable bare or with arguments.

    ``global_batch_size`` keeps training semantics fixed: the batch-size
    strategy then tunes the micro-batch and gradient accumulation makes up the
    rest.  ``batch_size`` is the batch the workload runs with when untuned
    (default: the global batch size, else 32).  With ``data_parallel=True``
    the workload trains data-parallel: each trial is one job of
    ``ctx.world_size`` processes (``dstune run --world-size N``), dstune wraps
    the model (DDP or FSDP, a knob), the global batch is shared among the
    ranks, and the function sees ``ctx.rank`` and ``ctx.world_size``.
    """
    if mode not in MODES:
        raise UsageError(f"@dstune.workload(mode={mode!r}): mode must be one of {', '.join(MODES)}.")
    if data_parallel and mode != "train":
        raise UsageError("@dstune.workload(data_parallel=True) trains data-parallel; an inference workload has no "
                         "gradients to share. Drop data_parallel=True, or use mode='train'.")
    for label, value in (("global_batch_size", global_batch_size), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"@dstune.workload({label}={value!r}): give a positive whole number.")

    def register(func: Callable[[Any], Workload]) -> Callable[[Any], Workload]:
        source = inspect.getsourcefile(func) or "<unknown>"
        line = inspect.getsourcelines(func)[1] if source != "<unknown>" else 0
        setattr(
            func,
            WORKLOAD_ATTR,
            WorkloadDef(
                name=name or func.__name__,
                fn=func,
                mode=mode,
                global_batch_size=global_batch_size,
                batch_size=batch_size,
                source=source,
                line=line,
                data_parallel=bool(data_parallel),
            ),
        )
        return func

    return register(fn) if fn is not None else register
