"""Selection policies: which configuration of the Pareto front is the challenger.

The front trades throughput against peak memory (and energy).  A policy
turns it into one choice, always among trials that fit the memory budget
and, for an inference workload given ``--max-latency``, whose p99 latency of
one batch stays within it (serving has a latency target; the fastest
throughput usually comes from a batch far too large to meet it):

- ``max-throughput`` (default): the fastest.  Where trials within 1% of it
  (:data:`WITHIN_NOISE`, below what one trial can tell apart) change fewer
  knobs from the incumbent (the default, before anything was applied), the
  one changing fewest is chosen: a knob that measured a hair faster is
  noise, not a setting to apply (ResNet-50 on the H200 applied
  ``intra_op_threads=8`` for 0.6%), and an incumbent within noise of the
  fastest stays without a check.
- ``knee``: the point of the front farthest from the line between its two
  extremes, once both objectives are scaled to [0, 1]; the configuration
  after which more speed costs disproportionately more memory.
- ``weighted:throughput=1,memory=0.5,energy=0``: the best weighted sum of
  throughput, memory and energy, each scaled relative to the best value
  among the candidates (1.0 = best).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from dstune.errors import UsageError
from dstune.pareto import pareto_front

OBJECTIVES = ("throughput", "memory", "energy")
WITHIN_NOISE = 0.01  # trials this close to the fastest are as fast, as far as one trial each can tell


@dataclass(frozen=True)
class SelectionPolicy:
    name: str
    weights: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        if self.name != "weighted":
            return self.name
        return "weighted:" + ",".join(f"{k}={v:g}" for k, v in self.weights)

    def choose(self, rows: Sequence[Any], memory_budget: int, max_latency_s: float | None = None,
               baseline: Mapping[str, Any] | None = None) -> Any | None:
        """The challenger among successful trials ``rows`` (or None when none fits the limits); ``baseline``
        (the incumbent's configuration) breaks near-ties of ``max-throughput`` towards fewer changes from it."""
        fitting = [r for r in rows if r.samples_per_s
                   and fits(r.peak_memory_bytes, r.latency_p99_s, memory_budget, max_latency_s)]
        if not fitting:
            return None
        if self.name == "max-throughput":
            fastest = max(fitting, key=lambda r: r.samples_per_s)
            if baseline is None:
                return fastest
            close = [r for r in fitting if r.samples_per_s >= (1 - WITHIN_NOISE) * fastest.samples_per_s]
            return min(close, key=lambda r: (_changes(r.config, baseline), -r.samples_per_s))
        if self.name == "knee":
            return _knee(pareto_front(fitting))
        return max(fitting, key=lambda r: _weighted_score(r, fitting, dict(self.weights)))


def faster_within_noise(rows: Sequence[Any], chosen: Any, memory_budget: int, max_latency_s: float | None = None
                        ) -> Any | None:
    """The fastest trial among ``rows`` when it is not ``chosen`` but ran faster, within :data:`WITHIN_NOISE`: the
    trial ``max-throughput`` passed over for one changing fewer knobs.  The run names it, so a user who sees a
    faster configuration in the front knows why it was not applied."""
    fitting = [r for r in rows if r.samples_per_s
               and fits(r.peak_memory_bytes, r.latency_p99_s, memory_budget, max_latency_s)]
    fastest = max(fitting, key=lambda r: r.samples_per_s, default=None)
    if fastest is None or fastest.samples_per_s <= (chosen.samples_per_s or 0) or fastest.config == chosen.config:
        return None
    return fastest


def _changes(config: Mapping[str, Any], baseline: Mapping[str, Any]) -> int:
    return sum(1 for k, v in config.items() if k in baseline and baseline[k] != v)


def fits(peak_memory: int | None, latency_p99_s: float | None, memory_budget: int,
         max_latency_s: float | None) -> bool:
    """Whether a measurement keeps within the memory budget and the latency limit (when there is one)."""
    if peak_memory is None or peak_memory > memory_budget:
        return False
    return max_latency_s is None or (latency_p99_s is not None and latency_p99_s <= max_latency_s)


def parse_policy(text: str) -> SelectionPolicy:
    """Parse ``--select``; a bad value is a usage error naming the value and the accepted forms."""
    forms = "max-throughput, knee, or weighted:throughput=1,memory=0.5,energy=0"
    value = text.strip()
    if value in ("max-throughput", "knee"):
        return SelectionPolicy(value)
    if value.startswith("weighted:"):
        weights: dict[str, float] = {}
        for part in value[len("weighted:"):].split(","):
            key, _, number = part.partition("=")
            key = key.strip()
            try:
                weight = float(number)
            except ValueError:
                weight = -1.0
            if key not in OBJECTIVES or weight < 0:
                raise UsageError(f"--select {text!r}: {part!r} is not OBJECTIVE=WEIGHT with OBJECTIVE one of "
                                 f"{', '.join(OBJECTIVES)} and WEIGHT >= 0. Use {forms}.")
            weights[key] = weight
        if not any(weights.values()):
            raise UsageError(f"--select {text!r}: give at least one positive weight. Use {forms}.")
        return SelectionPolicy("weighted", tuple(sorted(weights.items())))
    raise UsageError(f"--select {text!r} is not a selection policy. Use {forms}.")


def _knee(front: Sequence[Any]) -> Any:
    if len(front) <= 2:
        return max(front, key=lambda r: r.samples_per_s)
    speeds = [r.samples_per_s for r in front]
    memories = [float(r.peak_memory_bytes) for r in front]
    s_lo, s_span = min(speeds), (max(speeds) - min(speeds)) or 1.0
    m_lo, m_span = min(memories), (max(memories) - min(memories)) or 1.0
    # Scaled so that both objectives are "higher is better" in [0, 1]; the extremes are (0, 1) and (1, 0).
    points = [((s - s_lo) / s_span, 1.0 - (m - m_lo) / m_span) for s, m in zip(speeds, memories)]
    distances = [x + y - 1.0 for x, y in points]  # distance to the line x + y = 1, up to a constant factor
    return front[max(range(len(front)), key=lambda i: (distances[i], speeds[i]))]


def _weighted_score(row: Any, rows: Sequence[Any], weights: dict[str, float]) -> float:
    score = weights.get("throughput", 0.0) * row.samples_per_s / max(r.samples_per_s for r in rows)
    score += weights.get("memory", 0.0) * min(r.peak_memory_bytes for r in rows) / max(row.peak_memory_bytes, 1)
    energies = [r.energy_per_sample_j for r in rows if r.energy_per_sample_j]
    if weights.get("energy") and energies and row.energy_per_sample_j:
        score += weights["energy"] * min(energies) / row.energy_per_sample_j
    return score
