"""The knobs every installed plugin offers on this machine (``dstune plugins``, table or ``--json``).

The plugins are asked through the same ``dstune_knobs`` hook a run uses,
with a context describing this machine's device, so "applies here" is the
answer a run would get.
"""

from __future__ import annotations

import os
from typing import Any

from .context import TuneContext
from .plugin_calls import PluginFailure, call_each
from .plugin_manager import plugin_manager, plugin_version


def machine_context() -> TuneContext:
    import torch

    cuda = torch.cuda.is_available()
    return TuneContext(workload="-", device="cuda" if cuda else "cpu",
                       device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
                       capability=torch.cuda.get_device_capability(0) if cuda else None,
                       bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()) or not cuda,
                       cpu_count=os.cpu_count() or 1)


def knob_catalogue() -> tuple[str, list[dict[str, Any]], list[str]]:
    """This machine's device name, one record per (plugin, knob), and the plugins that failed to load."""
    plugin_set = plugin_manager()
    ctx = machine_context()
    rows = []
    problems = list(plugin_set.problems)
    for name, declared in reversed(list(call_each(plugin_set.pm, "dstune_knobs", ctx=ctx))):  # as registered
        if isinstance(declared, PluginFailure):
            problems.append(declared.message)
            continue
        for knob in declared or []:
            rows.append({"plugin": name, "version": plugin_version(plugin_set.pm, name), "knob": knob.name,
                         "choices": list(knob.choices), "default": knob.default, "checklist": knob.checklist,
                         "applies": bool(knob.applicable(ctx))})
    return ctx.device_name, rows, problems
