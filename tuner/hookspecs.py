"""The hooks a strategy plugin implements.

Every knob dstune turns lives in a plugin, built-in ones included.  A plugin
is a module or object with ``@hookimpl`` functions; it implements only the
hooks it needs.  Hooks run in the trial process (fresh per trial) unless said
otherwise, in this order: ``dstune_configure_process``, the workload is
imported and built, ``dstune_prepare_model``, ``dstune_optimizer_kwargs``,
``dstune_grad_scaler``, ``dstune_batch_plan`` and ``dstune_loader_kwargs``,
then ``dstune_step_context`` around every forward pass.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dstune")
hookimpl = pluggy.HookimplMarker("dstune")


@hookspec
def dstune_knobs(ctx: Any) -> list[Any] | None:
    """Return the plugin's knobs (a list of :class:`dstune.Knob`) for context ``ctx``.

    Called in the parent process to build the search space, and by
    ``dstune plugins``.  Choices may depend on ``ctx`` (bf16 only where the
    device supports it, say); a knob that does not apply sets ``applies``.
    """


@hookspec
def dstune_model_facts(model: Any, workload: Any, ctx: Any) -> dict[str, Any] | None:
    """Report facts about the freshly built model, once per run, in the probe process.

    Returned dicts are merged into ``ctx.facts``; ``dstune_knobs`` reads them
    to decide applicability (e.g. whether the model has blocks to checkpoint).
    """


@hookspec
def dstune_validate(config: dict[str, Any], ctx: Any) -> str | None:
    """Return a reason why ``config`` cannot run in ``ctx``, or None.

    Called in the parent before a trial is spent: a non-None answer records the
    trial as ``invalid`` and tells the search it is infeasible.
    """


@hookspec
def dstune_configure_process(config: dict[str, Any], ctx: Any) -> None:
    """Set process-wide state before CUDA initialises and before the workload is imported.

    Environment variables (allocator settings), thread counts, global backend
    flags.  The trial process is fresh, so nothing leaks into other trials.
    """


@hookspec
def dstune_prepare_model(model: Any, config: dict[str, Any], ctx: Any) -> Any:
    """Return the model to use, possibly wrapped or changed; None keeps it as is.

    Implementations are chained in call order, each receiving the previous
    result.  The model is already on the device.  Wrappers that must see the
    final module (``torch.compile``) use ``trylast=True``.
    """


@hookspec
def dstune_optimizer_kwargs(config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """Keyword arguments for the workload's optimizer factory (``fused=True``, say); merged."""


@hookspec(firstresult=True)
def dstune_grad_scaler(config: dict[str, Any], ctx: Any) -> Any:
    """A gradient scaler (``torch.amp.GradScaler``) for the training step, or None."""


@hookspec(firstresult=True)
def dstune_batch_plan(config: dict[str, Any], ctx: Any) -> Any:
    """The micro-batch size and accumulation steps (:class:`dstune.BatchPlan`), or None.

    With no answer the workload runs its default batch with no accumulation.
    """


@hookspec
def dstune_loader_kwargs(config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """DataLoader keyword arguments for ``dataset=`` workloads (workers, pinning); merged."""


@hookspec
def dstune_step_context(config: dict[str, Any], ctx: Any) -> Any:
    """A context manager to enter around each forward pass and loss (autocast), or None.

    Called anew for every micro-step, so a fresh context manager is returned each time.
    """
