"""The hooks a strategy plugin implements.

Every knob dstune turns lives in a plugin, built-in ones included.  A plugin
is a module or object with ``@hookimpl`` functions; it implements only the
hooks it needs.  Hooks run in the trial process (fresh per trial) unless said
otherwise, in this order: ``dstune_configure_process``, the workload is
imported and built, ``dstune_batch_plan`` and ``dstune_loader_kwargs``,
``dstune_prepare_model``, ``dstune_optimizer_kwargs``, ``dstune_grad_scaler``,
then ``dstune_step_context`` around every forward pass.  The docstrings
below are the README's hook reference (``dstune.hook_reference``).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dstune")
hookimpl = pluggy.HookimplMarker("dstune")


@hookspec
def dstune_knobs(ctx: Any) -> list[Any] | None:
    """Return the plugin's knobs (a list of :class:`dstune.Knob`) for context ``ctx``.

    Runs in the parent, once per run, to build the search space, and in
    ``dstune plugins``.  A knob has a name, its choices, a ``default``
    (PyTorch's own behaviour) and a ``checklist`` value (the tuning guide's
    advice).  Choices may depend on ``ctx`` (bf16 only where the device
    supports it); ``applies`` leaves the knob out where it means nothing;
    ``active`` makes it conditional on other knobs' values; ``costly`` marks
    choices that make a trial far dearer, and ``cost`` says how many
    ordinary trials one with such a choice is expected to cost (until the
    run has measured one); ``tolerance`` maps choices that change results to
    the relative error the numerics guard allows them; ``relieves`` says a
    knob can only lift one limit (``host``, ``memory`` or ``shapes``), so the local
    search waits until the best configuration shows that limit; ``fallback``
    lists choices kept for numerics rather than speed, which the local
    search does not step to.
    """


@hookspec
def dstune_model_facts(model: Any, workload: Any, ctx: Any) -> dict[str, Any] | None:
    """Report facts about the freshly built model, once per run, in the probe process.

    The model is on the CPU, as the workload built it.  Returned dicts are
    merged into ``ctx.facts``; ``dstune_knobs`` reads them to decide
    applicability (whether the model has blocks to checkpoint, convolutions,
    attention).  Prefix keys with the plugin's name.
    """


@hookspec
def dstune_validate(config: dict[str, Any], ctx: Any) -> str | None:
    """Return a reason why ``config`` cannot run in ``ctx``, or None.

    Runs in the parent before each trial is spent: a non-None answer records
    the trial as ``invalid`` and tells the search it is infeasible.  Use it for
    impossible combinations across knobs (flash attention in fp32).
    """


@hookspec(firstresult=True)
def dstune_smaller_config(config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """A configuration like ``config`` that needs less memory, or None when the plugin has none.

    Runs in the parent when a seed configuration (the default, the checklist,
    the incumbent) ran out of memory: the answer is tried in its place, with
    the same seed kind, and again on each further out-of-memory, so a seed
    settles on the largest setting that fits (the tuning guide's "largest
    batch that fits").  Return only the knobs to change.
    """


@hookspec
def dstune_configure_process(config: dict[str, Any], ctx: Any) -> None:
    """Set process-wide state before CUDA initialises and before the workload is imported.

    Runs in the trial process (and in ``dstune.apply``): environment
    variables read when CUDA starts (allocator settings), thread counts,
    global backend flags.  The trial process is fresh, so nothing leaks into
    other trials.
    """


@hookspec
def dstune_prepare_model(model: Any, config: dict[str, Any], ctx: Any) -> Any:
    """Return the model to use, possibly wrapped or changed; None keeps it as is.

    Runs in the trial process.  Implementations are chained in call order,
    each receiving the previous result.  The model is already on the device,
    and the numerics guard has taken its fp32 reference from it.  Changes of
    the module itself (memory format) use ``tryfirst=True``; wrappers that must
    see the final module (``torch.compile``) use ``trylast=True``.
    """


@hookspec
def dstune_optimizer_kwargs(config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """Keyword arguments for the workload's optimizer factory (``fused=True``, say).

    Runs in the trial process, training only; the dicts of all plugins are merged.
    """


@hookspec(firstresult=True)
def dstune_grad_scaler(config: dict[str, Any], ctx: Any) -> Any:
    """A gradient scaler (``torch.amp.GradScaler``) for the training step, or None.

    Runs in the trial process, training only.
    """


@hookspec(firstresult=True)
def dstune_batch_plan(config: dict[str, Any], ctx: Any) -> Any:
    """The micro-batch size and accumulation steps (:class:`dstune.BatchPlan`), or None.

    Runs in the trial process.  With no answer the workload runs its default
    batch with no accumulation.
    """


@hookspec
def dstune_loader_kwargs(config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
    """DataLoader keyword arguments for ``dataset=`` workloads (workers, pinning, prefetching).

    Runs in the trial process; the dicts of all plugins are merged.
    """


@hookspec
def dstune_step_context(config: dict[str, Any], ctx: Any) -> Any:
    """A context manager to enter around each forward pass and loss (autocast, an attention backend), or None.

    Runs in the trial process, anew for every micro-step, so return a fresh
    context manager each time.
    """


@hookspec
def dstune_export(config: dict[str, Any], target: str, ctx: Any) -> Any:
    """How this plugin's knobs are set in a training tool: an :class:`dstune.export.ExportPart`, or None.

    ``target`` is ``transformers`` (``TrainingArguments`` keywords),
    ``lightning`` (``Trainer`` keywords, and ``callback`` settings for
    :class:`dstune.integrations.lightning.DstuneCallback`) or ``accelerate``
    (``Accelerator`` keywords).  List the knobs you account for in
    ``handled``, and in ``notes`` say what the target cannot express (a
    non-default value with no argument); a knob no plugin handles is named
    in a warning.  ``ctx`` is the tuning run's context, or None when the
    configuration came without one.  Runs in the exporting process.
    """
