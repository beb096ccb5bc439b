"""How a trial is timed: warm-up and timed windows (kept apart from :mod:`dstune.trial.measure`).

The orchestrating process builds these settings and ships them to trial
processes as JSON; it must not import torch to do so (it never touches the
device, and importing torch costs it seconds), so they live here, not beside
the timing code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NOISY_CV = 0.25  # windows that vary more than this were not measured on a quiet machine, or measured wrongly


@dataclass(frozen=True)
class MeasureSettings:
    """How long to warm up and how much to time; shipped to the trial process as JSON."""

    windows: int = 5
    window_s: float = 0.5
    min_warmup_steps: int = 3
    max_warmup_s: float = 60.0
    steady_tolerance: float = 0.10
    max_steps_per_window: int = 2000
    max_timed_s: float = 15.0  # steps slower than a window get fewer windows (never under two)
    # With a DataLoader, the timed steps cover at least this many epochs (within max_timed_s), so
    # the stall when an epoch ends and the workers start the next one is in the figure.
    loader_epochs: float = 2.0
    # With a DataLoader, each timed window is one whole epoch from its start where two epochs fit max_timed_s
    # (dstune.trial.measure.epoch_windows); False times from wherever the warm-up ended, as before 2026-12-02.
    epoch_aligned: bool = True
    # Training with synthetic batches: time micro-steps and the optimizer step apart (dstune.trial.measure).
    # False times whole steps, as the benchmarks do to check that both agree.
    by_parts: bool = True

    def applicable(self, has_dataset: bool) -> dict[str, Any]:
        """The settings that decide how a workload is measured (the loader's only where it has a dataset)."""
        settings = self.to_dict()
        if not has_dataset:
            settings.pop("loader_epochs")
            settings.pop("epoch_aligned")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
