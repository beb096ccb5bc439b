"""Knobs: the values a strategy plugin offers to the search.

A knob is declared by a plugin through ``dstune_knobs(ctx)``.  The core never
names a knob; it only reads these declarations to build the Optuna search
space, the default configuration and the expert-checklist configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from .context import TuneContext

Choice = Any  # None, bool, int, float or str: what Optuna's categorical takes
Config = dict[str, Choice]
RELIEVES = (None, "host", "memory", "shapes")  # what a knob's choices can relieve, where that is all they can do


@dataclass(frozen=True)
class Knob:
    """One tunable setting.

    ``default`` is what the workload gets when nobody tunes it (PyTorch's own
    default); ``checklist`` is what the PyTorch performance tuning guide would
    pick.  ``applies`` says whether the knob means anything in this context
    (cuDNN knobs only on CUDA, say); a knob that does not apply stays out of
    the search and out of the configuration.  ``costly`` lists choices that
    make a trial far dearer (compilation): the search explores without them
    first, then tries them on the most promising configurations while the
    budget allows.  ``tolerance`` maps choices that may change results
    (reduced precision) to the relative error they are allowed against the
    fp32 eager reference; the numerics guard uses the largest that applies.
    ``active`` says, from the values of other knobs, whether this one means
    anything (prefetching only with loader workers, a compile option only
    with compile on); an inactive knob keeps its default and is not searched,
    which is how Optuna's define-by-run spaces express conditions.  ``cost``
    says, for costly choices, how many ordinary trials one trial with that
    choice is expected to cost, until this run has measured it.  ``memory``
    labels the choices that change what a micro-batch needs in memory
    (precision, activation checkpointing): the memory model
    (:mod:`dstune.run.memory_model`) measures each label once, and choices
    with one label (bf16 and fp16) share that measurement.  ``relieves`` names
    the one limit a knob's choices can lift, for knobs that cannot speed a
    step any other way: ``host`` (thread pools, the input pipeline: nothing to
    gain while the GPU is busy all the time) or ``memory`` (checkpointing, the
    allocator: they trade speed for memory, which pays only near the memory
    budget) or ``shapes`` (how a compiler treats input shapes that change:
    nothing to choose while every batch has one shape).  ``fallback`` lists
    the choices kept for correctness, not speed (fp32 beside tensor-core
    precisions, the SDPA math kernel, a for-loop optimizer): the local search
    does not step to them from a working configuration, though the sampler
    may still propose them.
    """

    name: str
    choices: tuple[Choice, ...]
    default: Choice
    checklist: Choice
    help: str = ""
    applies: Callable[[TuneContext], bool] | None = None
    costly: tuple[Choice, ...] = ()
    tolerance: Mapping[Choice, float] = field(default_factory=dict, compare=False, hash=False)
    active: Callable[[Mapping[str, Choice]], bool] | None = field(default=None, compare=False)
    plugin: str = field(default="", compare=False)
    # What a trial with a costly choice is expected to cost, in trials of its eager twin (the same configuration
    # with this knob at its default): what the plugin knows before anything is measured (autotuning compiles far
    # longer than a plain compile).
    cost: Mapping[Choice, float] = field(default_factory=dict, compare=False, hash=False)
    # Choice -> memory label, for knobs whose choices change the memory per sample or the fixed memory.
    memory: Mapping[Choice, str] = field(default_factory=dict, compare=False, hash=False)
    relieves: str | None = field(default=None, compare=False)  # RELIEVES: the only limit its choices lift
    fallback: tuple[Choice, ...] = field(default=(), compare=False)  # choices for correctness, not for speed

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"knob name {self.name!r} must be letters, digits, '_' or '.'")
        if not self.choices:
            raise ValueError(f"knob {self.name!r} declares no choices")
        for label, value in (("default", self.default), ("checklist", self.checklist)):
            if value not in self.choices:
                raise ValueError(
                    f"knob {self.name!r}: {label} value {value!r} is not one of its choices {list(self.choices)}"
                )
        if any(c not in self.choices for c in self.costly) or self.default in self.costly:
            raise ValueError(f"knob {self.name!r}: costly choices must be non-default choices")
        if self.relieves not in RELIEVES:
            raise ValueError(f"knob {self.name!r}: relieves={self.relieves!r}; give one of {list(RELIEVES)}")
        if not all(any(_same(f, c) for c in self.choices) for f in self.fallback):
            raise ValueError(f"knob {self.name!r}: fallback choices {list(self.fallback)} must be among its choices")
        for choice, rel in self.tolerance.items():  # choices offered elsewhere only are ignored
            if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not rel >= 0:
                raise ValueError(f"knob {self.name!r}: tolerance for {choice!r} is {rel!r}; give a relative error >= 0")

    def applicable(self, ctx: TuneContext) -> bool:
        return self.applies is None or bool(self.applies(ctx))

    def is_fallback(self, choice: Choice) -> bool:
        """Whether ``choice`` is one of the fallbacks (by type too: 1 is not True, 0 not False)."""
        return any(_same(choice, f) for f in self.fallback)

    def active_in(self, config: Mapping[str, Choice]) -> bool:
        return self.active is None or bool(self.active(config))

    @property
    def tunable(self) -> bool:
        return len(self.choices) > 1


def _same(a: Choice, b: Choice) -> bool:
    """Equal choices of one type: 1 == True in Python, but a thread count of 1 is not the choice True."""
    return a == b and type(a) is type(b)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step is fed: ``accumulation`` micro-batches of ``micro_batch`` samples.

    A plugin answers ``dstune_batch_plan`` with one; the core builds the step from it.
    """

    micro_batch: int
    accumulation: int = 1

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * self.accumulation


def default_config(knobs: Sequence[Knob]) -> Config:
    return {k.name: k.default for k in knobs}


def checklist_config(knobs: Sequence[Knob]) -> Config:
    return {k.name: k.checklist for k in knobs}


def describe_config(config: Mapping[str, Choice], base: Mapping[str, Choice] | None = None) -> str:
    """Short text of a configuration; with ``base``, only what differs from it."""
    items = [
        f"{k}={v}" for k, v in sorted(config.items()) if base is None or base.get(k) != v
    ]
    return ", ".join(items) if items else "(defaults)"


def config_key(config: Config) -> str:
    """A configuration as a canonical string: equal configurations, equal keys."""
    return json.dumps(config, sort_keys=True, default=str)
