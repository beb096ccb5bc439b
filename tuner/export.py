"""The tuned configuration in the terms of the tools people train with: Transformers, Lightning, Accelerate.

``dstune.export.transformers(cfg)`` returns keyword arguments that
``transformers.TrainingArguments(output_dir=..., **kw)`` accepts; likewise
``lightning(cfg)`` for ``lightning.Trainer(**kw)`` (its ``.callback`` holds
what Lightning has no flag for, for
:class:`dstune.integrations.lightning.DstuneCallback`) and ``accelerate(cfg)``
for ``accelerate.Accelerator(**kw)``.

Each knob is mapped by the plugin that declares it, through the
``dstune_export`` hook, so a third-party plugin's knobs export too.  A knob
set away from its default that no plugin maps, or that the target has no
argument for, is named in a :class:`DstuneExportWarning`: nothing is dropped
silently.  ``cfg`` is what ``dstune.best`` returns, or a plain dict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .context import TuneContext
from .errors import UsageError

if TYPE_CHECKING:
    from .best_config import BestConfig

TARGETS = ("transformers", "lightning", "accelerate")
# A context fact set by integrations that prepare a model they cannot replace (a LightningModule's children): a
# plugin whose dstune_prepare_model wraps the model (compile) changes it in place instead.
PREPARE_IN_PLACE = "prepare.in_place"


class DstuneExportWarning(UserWarning):
    """A tuned setting the export target cannot express: set it by hand, as the message says."""


@dataclass(frozen=True)
class ExportPart:
    """One plugin's share of an export: the target's arguments, the callback's settings, the knobs it covers,
    and sentences on what the target cannot express."""

    arguments: Mapping[str, Any] = field(default_factory=dict)
    callback: Mapping[str, Any] = field(default_factory=dict)
    handled: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class Exported(dict):  # type: ignore[type-arg]
    """The target's keyword arguments (this dict), with ``target``, ``callback`` (Lightning's callback settings)
    and ``warnings`` (what could not be expressed, also issued as :class:`DstuneExportWarning`)."""

    def __init__(self, target: str, arguments: dict[str, Any], callback: dict[str, Any], notes: list[str],
                 launch: str | None = None) -> None:
        super().__init__(arguments)
        self.target = target
        self.callback = callback
        self.warnings = notes
        self.launch = launch  # a data-parallel configuration: how to start its ranks


# Settings of a target that no knob maps but that decide whether it trains as fast as dstune measured.  With
# transformers' default ``logging_nan_inf_filter=True`` the Trainer tests every micro-step's loss for NaN in Python,
# which waits for the GPU each step: GPT-2 with the tuned configuration trained at 0.950x dstune's figure with it
# and 0.984x without, side by side on an H200 (benchmarks/results/2026-12-01-h200-gpt2-trainer-vs-check.json).
# Without the filter a NaN loss shows in the logged average instead of being left out; training is the same.
TARGET_SETTINGS: dict[str, dict[str, Any]] = {"transformers": {"logging_nan_inf_filter": False}}

LAUNCHERS = {"transformers": "torchrun --standalone --nproc-per-node {n} YOUR_SCRIPT.py",
             "lightning": "torchrun --standalone --nproc-per-node {n} YOUR_SCRIPT.py (or Trainer(devices={n}))",
             "accelerate": "accelerate launch --num-processes {n} YOUR_SCRIPT.py"}


def export(cfg: "BestConfig | Mapping[str, Any]", target: str, disabled_plugins: tuple[str, ...] = (),
           warn: bool = True) -> Exported:
    """``cfg`` as keyword arguments of ``target``; see the module's docstring."""
    from .best_config import BestConfig
    from .plugin_calls import PluginFailure, call_each
    from .plugin_manager import plugin_manager

    if target not in TARGETS:
        raise UsageError(f"export target {target!r} is not one of {', '.join(TARGETS)}.")
    chosen = cfg if isinstance(cfg, BestConfig) else BestConfig("", dict(cfg))
    ctx = TuneContext.from_dict(chosen.context) if chosen.context else None
    pm = plugin_manager(disabled_plugins).pm
    config = dict(chosen.config)
    arguments: dict[str, Any] = {}
    callback: dict[str, Any] = {}
    handled: set[str] = set()
    notes: list[str] = []
    for plugin, part in call_each(pm, "dstune_export", config=config, target=target, ctx=ctx):
        if isinstance(part, PluginFailure):
            notes.append(f"{part.message}; the knobs it maps are named below")
            continue
        if not isinstance(part, ExportPart):
            continue
        arguments.update(part.arguments)
        callback.update(part.callback)
        handled.update(part.handled)
        notes.extend(part.notes)
    for name, value in TARGET_SETTINGS.get(target, {}).items():
        arguments.setdefault(name, value)
    defaults = _defaults(pm, ctx)
    for name, value in sorted(config.items()):
        if name not in handled and (name not in defaults or value != defaults[name]):
            notes.append(f"{name}={value!r} has no {target} setting that dstune knows: no plugin maps it. "
                         "Set it in your own code, or give its plugin a dstune_export hook.")
    if warn:
        for note in notes:
            warnings.warn(note, DstuneExportWarning, stacklevel=3)
    launch = LAUNCHERS[target].format(n=ctx.world_size) if ctx is not None and ctx.data_parallel else None
    return Exported(target, arguments, callback, notes, launch)


def _defaults(pm: Any, ctx: TuneContext | None) -> dict[str, Any]:
    """Every declared knob's default (applicable here or not): a value at its default needs no setting."""
    from .plugin_calls import call_each

    found: dict[str, Any] = {}
    for _, knobs in call_each(pm, "dstune_knobs", ctx=ctx or TuneContext(workload="export")):
        for knob in knobs if isinstance(knobs, list) else ():
            found.setdefault(knob.name, knob.default)
    return found


def transformers(cfg: "BestConfig | Mapping[str, Any]", disabled_plugins: tuple[str, ...] = ()) -> Exported:
    """Keyword arguments for ``transformers.TrainingArguments(output_dir=..., **kw)``."""
    return export(cfg, "transformers", disabled_plugins)


def lightning(cfg: "BestConfig | Mapping[str, Any]", disabled_plugins: tuple[str, ...] = ()) -> Exported:
    """Keyword arguments for ``lightning.Trainer(**kw)``; ``.callback`` for ``DstuneCallback(**result.callback)``."""
    return export(cfg, "lightning", disabled_plugins)


def accelerate(cfg: "BestConfig | Mapping[str, Any]", disabled_plugins: tuple[str, ...] = ()) -> Exported:
    """Keyword arguments for ``accelerate.Accelerator(**kw)``."""
    return export(cfg, "accelerate", disabled_plugins)


def callback_or_note(config: Mapping[str, Any], defaults: Mapping[str, Any], target: str, hint: str) -> ExportPart:
    """For knobs a target has no argument for: Lightning's callback applies them; for the other targets each
    value away from its default is named in a note saying how to set it by hand (``hint``)."""
    present = {name: config[name] for name in defaults if name in config}
    changed = {name: value for name, value in present.items() if value != defaults[name]}
    if target == "lightning":
        return ExportPart(callback=changed, handled=tuple(present))
    return ExportPart(handled=tuple(present), notes=tuple(
        f"{name}={value!r}: {target} has no setting for it; {hint}" for name, value in changed.items()))
