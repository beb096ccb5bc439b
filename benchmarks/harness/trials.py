"""Measure any configuration of a workload with dstune's own trial process and timing code.

Every arm of the benchmark (default, checklist, the batch finders, dstune,
the oracle) ends as a configuration of the same knobs, and every one is
measured here the same way: a fresh process forked from dstune's fork
server, dstune's composition of the step, dstune's warm-up and timed
windows.  Only which configuration differs, so the ratios compare choices,
not measurement code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dstune.context import TuneContext
from dstune.knobs import Config, Knob, default_config
from dstune.plugin_calls import applicable_knobs, invalid_reason
from dstune.plugin_manager import plugin_manager
from dstune.run.options import RunOptions, trial_spec
from dstune.run.plan import probe
from dstune.trial.launch import run_in_subprocess, start_early
from dstune.trial.measure_settings import MeasureSettings
from dstune.trial.records import TrialOutcome

TRIAL_TIMEOUT_S = 600.0


def config_key(config: Mapping[str, Any]) -> str:
    """One text per configuration, to tell identical arms apart from different ones."""
    return json.dumps(dict(sorted(config.items())), sort_keys=True, default=str)


@dataclass
class Measurement:
    """One trial of one configuration: what it ended as and what it measured."""

    label: str
    config: Config
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def samples_per_s(self) -> float | None:
        return self.metrics.get("samples_per_s") if self.ok else None

    def to_dict(self) -> dict[str, Any]:
        keep = ("samples_per_s", "step_time_median_s", "step_time_cv", "first_step_s", "peak_memory_bytes",
                "energy_per_sample_j", "power_w_mean", "gpu_util_mean", "latency_p50_s", "latency_p99_s",
                "micro_batch", "accumulation", "samples_per_step", "warmup_s", "timed_wall_s", "parts_retimed")
        return {"label": self.label, "config": self.config, "status": self.status,
                "metrics": {k: self.metrics[k] for k in keep if k in self.metrics},
                "error": (self.error or "")[-600:] or None, "duration_s": round(self.duration_s, 2)}


class Bench:
    """A probed workload on this machine: its context, knobs and environment, and a way to measure configs."""

    def __init__(self, workload_file: Path, workload_name: str | None = None, workdir: Path | None = None,
                 measure: MeasureSettings | None = None, env: Mapping[str, str] | None = None,
                 world_size: int = 1) -> None:
        start_early()
        self.options = RunOptions(workload_file=Path(workload_file), workload_name=workload_name,
                                  measure=measure or MeasureSettings(), world_size=world_size)
        self.workdir = workdir
        self.env = dict(env or {})
        probed = probe(self.options, env=self.env)
        self.ctx_dict: dict[str, Any] = probed["ctx"]
        self.ctx = TuneContext.from_dict(self.ctx_dict)
        self.environment: dict[str, Any] = probed["environment"]
        self.pm = plugin_manager().pm
        self.knobs: list[Knob] = applicable_knobs(self.pm, self.ctx)
        self.default = default_config(self.knobs)

    @property
    def workload(self) -> str:
        return self.ctx.workload

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    def complete(self, overrides: Mapping[str, Any]) -> tuple[Config, list[str]]:
        """The default configuration with ``overrides`` applied where the knob exists here.

        Returns the configuration and a note for each override left out
        because no such knob applies on this machine and workload.
        """
        config = dict(self.default)
        notes = []
        for name, value in overrides.items():
            if name in config:
                config[name] = value
            else:
                notes.append(f"{name}={value!r} left out: the knob does not apply here")
        return config, notes

    def invalid(self, config: Config) -> str | None:
        return invalid_reason(self.pm, config, self.ctx)

    def measure(self, label: str, config: Config, env: Mapping[str, str] | None = None) -> Measurement:
        """Run one trial of ``config`` in a fresh process; a crash or OOM is a result, not an error."""
        reason = self.invalid(config)
        if reason:
            return Measurement(label, dict(config), "invalid", error=reason)
        spec = trial_spec(self.options, self.ctx_dict, dict(config))
        started = time.perf_counter()
        outcome: TrialOutcome = run_in_subprocess(spec, timeout_s=TRIAL_TIMEOUT_S, env={**self.env, **(env or {})},
                                                  workdir=self.workdir)
        error = outcome.error
        if outcome.status not in ("ok",) and outcome.stderr_tail and not error:
            error = outcome.stderr_tail
        return Measurement(label, dict(config), outcome.status, outcome.metrics, error,
                           time.perf_counter() - started)


def cache_env(root: Path) -> dict[str, str]:
    """Inductor and Triton caches under ``root``: one folder per arm that must start cold, one shared by the rest."""
    root.mkdir(parents=True, exist_ok=True)
    return {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton"),
            "DSTUNE_CACHE_DIR": str(root)}

