"""The records that cross the boundary of a trial process: :class:`TrialSpec` in, :class:`TrialOutcome` out.

The planning process builds a :class:`TrialSpec` (the probe that opens a run,
a trial of the Do phase, a round of the check), :mod:`dstune.trial.launch`
writes it as JSON beside the new process, and :mod:`dstune.trial.process`
reads it back.  How the process ended comes back as a :class:`TrialOutcome`.
One dataclass on each side keeps the field names in one place; nothing here
imports torch, so the planning process and the views may read them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PROBE, TRIAL, MEMORY = "probe", "trial", "memory"
# predicted_oom: never run, because the memory model (dstune.run.memory_model) said it would not fit.
STATUSES = ("ok", "pruned", "oom", "crash", "timeout", "numerics", "invalid", "predicted_oom", "interrupted")


@dataclass(frozen=True)
class TrialSpec:
    """One process's job: build the workload and describe it (``probe``), measure ``config`` (``trial``), or
    measure the peak memory of one training step under each of ``variants`` (``memory``)."""

    workload_file: str
    workload_name: str | None = None
    kind: str = TRIAL
    disabled_plugins: tuple[str, ...] = ()
    strict_plugins: bool = False  # probe: a plugin failing in dstune_model_facts is an error, not a warning
    config: dict[str, Any] = field(default_factory=dict)
    ctx: dict[str, Any] = field(default_factory=dict)  # the probe's TuneContext, as a dict
    measure: dict[str, Any] = field(default_factory=dict)  # MeasureSettings, as a dict
    seed: int = 0
    numerics: dict[str, Any] | None = None  # GuardSettings, as a dict; None: no numerics guard
    prune_below: float | None = None  # stop after warm-up when the estimate is under this many samples/s
    variants: list[dict[str, Any]] = field(default_factory=list)  # memory: the configurations to measure
    world_size: int = 1  # probe: the ranks a data-parallel workload's trials will run as (dstune run --world-size)

    @property
    def is_probe(self) -> bool:
        return self.kind == PROBE

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        """Read a spec; keys this version does not know are an error (a launcher and process out of step)."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"trial spec has keys this dstune does not know: {', '.join(unknown)}")
        data["disabled_plugins"] = tuple(data.get("disabled_plugins", ()))
        return cls(**data)


@dataclass
class TrialOutcome:
    """How a trial process ended, and what it measured."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    duration_s: float = 0.0
    stderr_tail: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
