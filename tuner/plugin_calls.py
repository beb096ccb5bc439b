"""Every call the core makes into plugins, in one place.

A plugin is somebody else's code: when one of its hooks raises, the run
names the plugin and the hook and goes on without it (or, with
``--strict-plugins``, stops with that message).  :func:`call_each` is that
guard, written once; the functions below are what the planning process, the
trial process and production ask of the plugins through it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .context import TuneContext
from .errors import UsageError
from .knobs import BatchPlan, Config, Knob

if TYPE_CHECKING:
    import pluggy

    from .workload_api import WorkloadDef


@dataclass(frozen=True)
class PluginFailure:
    """One plugin's hook implementation raised: which plugin, which hook, what."""

    plugin: str
    hook: str
    error: BaseException

    @property
    def message(self) -> str:
        """For a hook whose failure leaves the plugin out of the run (knobs, model facts)."""
        return f"plugin {self.plugin!r} failed in {self.hook}: {type(self.error).__name__}: {self.error}"

    @property
    def raised(self) -> str:
        """For a hook asked about one configuration (validate, smaller config): the plugin stays in."""
        return f"plugin {self.plugin!r} raised in {self.hook}: {type(self.error).__name__}: {self.error}"

    def refuse_or_note(self, problems: list[str] | None) -> None:
        """Strict (``problems`` is None): a usage error naming the fix; else a note for the run's warnings."""
        if problems is None:
            raise UsageError(f"{self.message}. Fix the plugin, or leave it out with --disable-plugin {self.plugin} "
                             "(without --strict-plugins it is left out with a warning).") from None
        problems.append(f"{self.message}; it is disabled for this run.")


def call_impl(impl: Any, **kwargs: Any) -> Any:
    """Call one plugin's implementation of a hook, passing only the arguments it declares (as pluggy does)."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def call_each(pm: "pluggy.PluginManager", hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Call every implementation of ``hook`` in pluggy's call order; yield (plugin name, result or failure).

    A raising implementation yields a :class:`PluginFailure` instead of a
    result, and the others are still called.
    """
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        try:
            yield impl.plugin_name, call_impl(impl, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            yield impl.plugin_name, PluginFailure(impl.plugin_name, hook, exc)


def chain_hook(pm: "pluggy.PluginManager", hook_name: str, value: Any, **kwargs: Any) -> Any:
    """Call ``hook_name`` implementations in call order, feeding each the last result.

    Used for ``dstune_prepare_model``: each plugin receives the model the one
    before it returned.  Order follows pluggy's (``tryfirst`` first,
    ``trylast`` last).  A plugin that raises here fails the trial: its model
    is half-prepared.
    """
    caller = getattr(pm.hook, hook_name)
    first_arg = caller.spec.argnames[0]
    for impl in reversed(caller.get_hookimpls()):
        result = call_impl(impl, **{first_arg: value, **kwargs})
        if result is not None:
            value = result
    return value


def applicable_knobs(pm: "pluggy.PluginManager", ctx: TuneContext, problems: list[str] | None = None) -> list[Knob]:
    """Collect the knobs of every plugin, tag each with its plugin, keep those that apply.

    A plugin whose ``dstune_knobs`` raises is an error, unless ``problems``
    is given: then it is unregistered, a message naming it is appended, and
    the others go on.  Two plugins declaring one knob name is always an error.
    """
    knobs: list[Knob] = []
    seen: dict[str, str] = {}
    for plugin, declared in call_each(pm, "dstune_knobs", ctx=ctx):
        if isinstance(declared, PluginFailure):
            declared.refuse_or_note(problems)
            pm.unregister(name=plugin)
            continue
        for knob in declared or []:
            if knob.name in seen:
                raise UsageError(f"plugins {seen[knob.name]!r} and {plugin!r} both declare knob {knob.name!r}. "
                                 "Disable one with --disable-plugin.")
            seen[knob.name] = plugin
            if knob.applicable(ctx):
                knobs.append(dataclasses.replace(knob, plugin=plugin))
    return knobs


def pin_except(knobs: Sequence[Knob], only: Sequence[str], exclude: Sequence[str], values: Config) -> list[Knob]:
    """The knobs with those not in ``only`` (when given) or in ``exclude`` fixed at ``values``."""
    names = {k.name for k in knobs}
    for option, listed in (("--only", only), ("--exclude", exclude)):
        unknown = [name for name in listed if name not in names]
        if unknown:
            raise UsageError(f"{option} {' '.join(unknown)}: no such knob applies to this workload here. "
                             f"Knobs that apply: {', '.join(sorted(names))}.")
    tuned = (set(only) or names) - set(exclude)
    return [k if k.name in tuned else dataclasses.replace(k, choices=(values[k.name],), default=values[k.name],
                                                           checklist=values[k.name], costly=(), fallback=(),
                                                           active=None)
            for k in knobs]


def invalid_reason(pm: "pluggy.PluginManager", config: Config, ctx: TuneContext) -> str | None:
    """Why plugins refuse ``config``; a plugin that raises refuses it too, and is named."""
    reasons = [reason.raised if isinstance(reason, PluginFailure) else reason
               for _, reason in call_each(pm, "dstune_validate", config=config, ctx=ctx)]
    return "; ".join(r for r in reasons if r) or None


def smaller_config(pm: "pluggy.PluginManager", knobs: Sequence[Knob], config: Config, ctx: TuneContext
                   ) -> Config | str | None:
    """``config`` changed as the first plugin answering ``dstune_smaller_config`` says; None if none can.

    An answer that sets a knob outside the search space (one pinned with
    ``--only``, or a value that is not a choice) is ignored; a plugin that
    raises is named in the returned message instead.
    """
    choices = {k.name: k.choices for k in knobs if k.tunable}
    for _, changes in call_each(pm, "dstune_smaller_config", config=dict(config), ctx=ctx):
        if isinstance(changes, PluginFailure):
            return changes.raised
        if changes and all(k in choices and v in choices[k] for k, v in changes.items()):
            return {**config, **changes}
    return None


def shrinker(pm: "pluggy.PluginManager", knobs: Sequence[Knob], ctx: TuneContext) -> "Callable[[Config], Config | None]":
    """:func:`smaller_config` as the memory model's ``fit`` takes it: a plugin's failure counts as no smaller one."""

    def smaller(config: Config) -> Config | None:
        found = smaller_config(pm, knobs, config, ctx)
        return found if isinstance(found, dict) else None

    return smaller


def batch_plan(pm: "pluggy.PluginManager", config: Config, ctx: TuneContext) -> BatchPlan | None:
    """The micro-batch and accumulation ``config`` runs with (``dstune_batch_plan``); None if no plugin says.

    The planning process asks too (the memory model predicts by micro-batch); a
    plugin that raises here raises in every trial, so it is answered with None.
    """
    try:
        return pm.hook.dstune_batch_plan(config=dict(config), ctx=ctx)
    except Exception:  # noqa: BLE001 - the trials will report the plugin's error with its traceback
        return None


def device_context(definition: "WorkloadDef", world_size: int = 1) -> TuneContext:
    """The context of this process's device, before the workload is built (imports torch).

    A data-parallel workload's ranks share the host's CPUs, so each is given its share of them; on the CPU
    (gloo) the ranks are processes on the same cores.
    """
    import torch

    from .errors import UsageError

    if world_size > 1 and not definition.data_parallel:
        raise UsageError(f"--world-size {world_size}: workload {definition.name!r} ({definition.source}:"
                         f"{definition.line}) does not train data-parallel. Declare it with "
                         "@dstune.workload(data_parallel=True), or drop --world-size.")
    if definition.global_batch_size and definition.global_batch_size % world_size:
        raise UsageError(f"--world-size {world_size} does not divide workload {definition.name!r}'s "
                         f"global_batch_size={definition.global_batch_size}: each rank takes an equal share. Give a "
                         "world size that divides it.")
    cuda = torch.cuda.is_available()
    if cuda and world_size > torch.cuda.device_count():
        raise UsageError(f"--world-size {world_size}: this process sees {torch.cuda.device_count()} GPU(s). A "
                         "data-parallel trial takes one GPU per rank; give --gpus with as many GPUs, or a smaller "
                         "--world-size.")
    props = torch.cuda.get_device_properties(0) if cuda else None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return TuneContext(
        workload=definition.name,
        mode=definition.mode,
        device="cuda" if cuda else "cpu",
        device_name=props.name if props else "cpu",
        capability=(props.major, props.minor) if props else None,
        bf16_supported=bool(torch.cuda.is_bf16_supported()) if cuda else True,
        device_memory=int(props.total_memory) if props else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        cpu_count=max(1, cpus // world_size),
        global_batch_size=definition.global_batch_size,
        default_batch_size=definition.default_batch_size,
        data_parallel=definition.data_parallel,
        world_size=world_size,
    )


def probe_context(definition: "WorkloadDef", pm: "pluggy.PluginManager", strict: bool = True, world_size: int = 1
                  ) -> tuple[TuneContext, list[str], list[str]]:
    """Build the workload once and describe it: device, model class and size, plugin facts.

    Returns the context, the plugins whose ``dstune_model_facts`` raised, and
    a message for each; with ``strict`` the first such failure is an error.
    """
    ctx = device_context(definition, world_size)
    built = definition.build(ctx)
    model = built.model
    facts: dict[str, Any] = {}
    failed: list[str] = []
    problems: list[str] = []
    for plugin, found in call_each(pm, "dstune_model_facts", model=model, workload=built, ctx=ctx):
        if isinstance(found, PluginFailure):
            found.refuse_or_note(None if strict else problems)
            failed.append(plugin)
        else:
            facts.update(found or {})
    ctx = ctx.with_updates(
        has_dataset=built.dataset is not None,
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        param_count=sum(p.numel() for p in model.parameters()),
        facts=facts,
    )
    return ctx, failed, problems
