"""Build the plugin manager: built-in strategies first, then installed ones.

Built-in strategies are registered exactly as third-party ones are; the core
only sees hooks.  Third-party plugins register under the entry-point group
``dstune``.  A plugin that fails to import or to register is reported and
left out (``strict=True`` makes that fatal).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pluggy

from . import hookspecs
from .errors import UsageError

log = logging.getLogger("dstune.plugins")

DEFAULT_PLUGINS: tuple[str, ...] = (
    "dstune.plugins.batch_size",
    "dstune.plugins.precision",
    "dstune.plugins.matmul_precision",
    "dstune.plugins.memory_format",
    "dstune.plugins.checkpointing",
    "dstune.plugins.optimizer_impl",
    "dstune.plugins.threads",
    "dstune.plugins.data_loader",
    "dstune.plugins.cudnn",
    "dstune.plugins.cuda_allocator",
    "dstune.plugins.sdpa",
    "dstune.plugins.compile",
    "dstune.plugins.data_parallel",  # after compile: its trylast wrapping then runs before compile's
)

ENTRY_POINT_GROUP = "dstune"


class DstunePluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution (and version) provided each entry-point plugin."""

    def __init__(self) -> None:
        super().__init__("dstune")
        self.distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)


@dataclass
class PluginSet:
    """The plugin manager plus what happened while loading it."""

    pm: pluggy.PluginManager
    problems: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # names of plugins that failed to load

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin() if name is not None]


def plugin_manager(disabled: Iterable[str] = (), strict: bool = False) -> PluginSet:
    """The one way to get a plugin manager, in the parent and in every trial process.

    ``disabled`` names plugins to leave out (the short names ``dstune plugins``
    shows).  ``DSTUNE_LOAD_PLUGINS`` set to a comma-separated list limits the
    entry points loaded; set to an empty string it loads none.
    """
    disabled = set(disabled)
    pm = DstunePluginManager()
    pm.add_hookspecs(hookspecs)
    plugins = PluginSet(pm)
    for module_name in DEFAULT_PLUGINS:
        short = module_name.rsplit(".", 1)[1]
        if short in disabled:
            continue
        module = importlib.import_module(module_name)
        pm.register(module, name=short)
    for ep in _entry_points():
        if ep.name in disabled:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            if ep.dist is not None:
                pm.distributions[ep.name] = (ep.dist.name, ep.dist.version)
        except Exception as exc:  # noqa: BLE001 - any failure disables that plugin only
            message = (
                f"plugin {ep.name!r} (entry point {ep.value} of package "
                f"{ep.dist.name if ep.dist else '?'}) failed to load: {type(exc).__name__}: {exc}"
            )
            if strict:
                raise UsageError(message + ". Fix or uninstall it, or run without --strict-plugins.") from None
            plugins.problems.append(message + "; it is disabled for this run.")
            plugins.failed.append(ep.name)
            log.warning("%s; it is disabled for this run", message)
    return plugins


def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    only = os.environ.get("DSTUNE_LOAD_PLUGINS")
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if only is not None:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        eps = [ep for ep in eps if ep.name in wanted]
    return eps


def plugin_version(pm: pluggy.PluginManager, name: str) -> str:
    """Version of the distribution that provides plugin ``name`` (dstune's own for built-in ones)."""
    if name in getattr(pm, "distributions", {}):
        return pm.distributions[name][1]
    from .version import __version__

    return __version__
