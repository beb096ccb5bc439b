"""Production side: ``dstune.best`` reads the applied configuration, ``dstune.apply`` runs it.

``apply`` calls the very functions a trial process calls, in the same order
(``configure_process``, then ``compose``), with the context recorded when
the configuration was tuned, so what runs in production is what was
measured.  ``DSTUNE_CONFIG=path.json`` (written by ``dstune export --format
json``) replaces the store, for machines that have no access to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .best_config import BestConfig, applied_best
from .context import TuneContext
from .errors import UsageError
from .workload_api import WORKLOAD_ATTR, WorkloadDef

if TYPE_CHECKING:
    from dstune.trial.composition import Composed


def _from_file(path: str, workload: str) -> BestConfig:
    where = f"DSTUNE_CONFIG={path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file. Write it with `dstune export {workload} --format json -o {path}`, "
                         "or unset DSTUNE_CONFIG to read the store.") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
                         f"Write it with `dstune export {workload} --format json`.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, found {type(data).__name__}.")
    if isinstance(data.get("config"), dict):
        if data.get("workload") not in (None, workload):
            raise UsageError(f"{where} holds the configuration of workload {data['workload']!r}, not {workload!r}. "
                             "Export the right workload, or ask for that one.")
        known = {k: v for k, v in data.items() if k in BestConfig.__dataclass_fields__}
        return BestConfig(**{**known, "workload": workload, "source": where})
    return BestConfig(workload=workload, config=data, source=where)


def best(workload: str, db: str | None = None) -> BestConfig:
    """The configuration applied to ``workload``: from ``DSTUNE_CONFIG`` if set, else from the store."""
    path = os.environ.get("DSTUNE_CONFIG")
    if path:
        return _from_file(path, workload)
    from .store.lookup import open_existing_store

    store = open_existing_store(db)
    found = applied_best(store, workload, _this_gpu_model())
    if found is None:
        known = ", ".join(store.workload_names()) or "none"
        raise UsageError(f"no configuration has been applied to workload {workload!r} in {store.shown_url} "
                         f"(workloads there: {known}). Run `dstune run` on it first, or set DSTUNE_CONFIG.")
    return found


def _this_gpu_model() -> str | None:
    """The model of the GPU this process runs on ("cpu" without one); None when it cannot be told."""
    from dstune.devices.lock import resolve_device

    try:
        return resolve_device().model
    except UsageError:
        return None


def _definition(workload_fn: Any) -> WorkloadDef:
    definition = workload_fn if isinstance(workload_fn, WorkloadDef) else getattr(workload_fn, WORKLOAD_ATTR, None)
    if definition is None:
        raise UsageError(f"dstune.apply: {workload_fn!r} is not a @dstune.workload function. "
                         "Pass the decorated function itself.")
    return definition


def apply(workload_fn: Callable[..., Any], cfg: BestConfig | dict[str, Any],
          disabled_plugins: tuple[str, ...] = ()) -> "Composed":
    """Configure this process and build the workload under ``cfg``; return model, optimizer and ``step``.

    Call it before anything initialises CUDA, as a trial does: process-wide
    settings (threads, allocator, backend flags) are made first.  A
    data-parallel workload runs under ``torchrun --nproc-per-node N`` with the
    N it was tuned for: each rank calls ``apply``, which joins the process
    group (unless the script already has) and wraps the model as the trial did
    (DDP or FSDP, with the tuned settings).
    """
    import os

    import torch

    from dstune.trial.composition import compose, configure_process
    from dstune.trial.distributed import join_process_group, rank_context

    from .compile_cache import compile_cache_env
    from .plugin_calls import applicable_knobs, probe_context
    from .plugin_manager import plugin_manager

    definition = _definition(workload_fn)
    # Compile from the kernels the trials built; before the probe, whose plugins may fix inductor's cache. Not a
    # knob (where kernels are cached changes no step), so it may precede the config's check below.
    os.environ.update(compile_cache_env(definition.name))
    chosen = cfg if isinstance(cfg, BestConfig) else BestConfig(definition.name, dict(cfg))
    plugins = plugin_manager(disabled_plugins)
    if chosen.context:
        ctx = TuneContext.from_dict(chosen.context)
        if ctx.is_cuda and not torch.cuda.is_available():
            raise UsageError(f"the configuration of {chosen.workload!r} was tuned on {ctx.device_name}, but this "
                             "process sees no CUDA device. Run on a GPU, or tune a configuration for the CPU.")
    else:
        ranks = int(os.environ.get("WORLD_SIZE", "1")) if definition.data_parallel else 1
        ctx = probe_context(definition, plugins.pm, strict=True, world_size=ranks)[0]
    if ctx.data_parallel:
        launched = int(os.environ.get("WORLD_SIZE", "0"))
        if launched != ctx.world_size:
            raise UsageError(f"{chosen.workload!r} was tuned as a data-parallel job of {ctx.world_size} ranks, but "
                             + (f"this process is one of {launched}" if launched else "this process was not started "
                                "by torchrun") + f". Start it with `torchrun --nproc-per-node {ctx.world_size} "
                             "SCRIPT.py`, or tune again with the world size you train with.")
        ctx = rank_context(ctx)
    config = checked_config(chosen, applicable_knobs(plugins.pm, ctx))
    configure_process(plugins.pm, config, ctx)
    if ctx.data_parallel:
        join_process_group(ctx)
    return compose(plugins.pm, definition, config, ctx)


def checked_config(chosen: BestConfig, knobs: Any) -> dict[str, Any]:
    """Refuse a config naming a knob no plugin declares here, or a value the knob does not offer.

    Nothing is applied before this check passes, so a bad config is never half-applied.
    Knobs the config does not name take their default, as in a trial.
    """
    by_name = {k.name: k for k in knobs}
    where = chosen.source or "the configuration"
    for name, value in chosen.config.items():
        knob = by_name.get(name)
        if knob is None:
            raise UsageError(f"{where}: knob {name!r} is not declared by any plugin here (known: "
                             f"{', '.join(sorted(by_name))}). Remove it, or install the plugin that declares it.")
        if value not in knob.choices:
            raise UsageError(f"{where}: {name}={value!r} is not one of its choices {list(knob.choices)}. "
                             f"Use one of those, or re-export the configuration with `dstune export`.")
    return {k.name: chosen.config.get(k.name, k.default) for k in knobs}
