"""The memory model: what a configuration needs in memory, predicted before it runs.

A large model near the memory limit cannot afford to learn its limits by
running out of memory: each such trial costs a process start, a model build
and an allocation failure, and the tuning guide's seed (the largest batch)
fails first.  So before the trials, :mod:`dstune.run.memory_plan` measures
one training step at the three smallest micro-batches under each *variant*:
every combination of the memory labels that plugins give their knobs
(``Knob.memory``: precision, activation checkpointing).  Per variant and part
of a step (:mod:`dstune.trial.memory_probe`), a line at or above every point
(:meth:`Line.above`) gives the fixed memory (weights, gradients, optimizer
state: the intercept) and the memory per sample of micro-batch (the slope),
and so the peak of any micro-batch.

A part's peak is the largest of several moments in the step, each a line in
the micro-batch, so the peak bends upward where another moment takes over.
llama_1b with every block checkpointed (H200, 2026-12-03) peaked at 20.4, 20.6,
21.8, 25.9, 34.2 and 52.0 GiB at micro-batches 1 to 32 before its first update:
at tiny batches the moment with every gradient held binds, later the one with
the logits.  The line through 1 and 2 predicted 26.4 GiB at 32, half the
truth.  So while the last two lines disagree where the prediction is used
(:meth:`Variant.next_size`), the plan measures the next micro-batch too.

The planning process then refuses configurations predicted to exceed the
memory budget (they are told to Optuna as infeasible, reason ``predicted``,
without running), sizes the seeds to the largest micro-batch predicted to
fit, and records each trial's prediction beside its measured peak.  The model
learns from the trials: an out-of-memory trial caps its variant's micro-batch
below the one that failed, a trial that measured more than predicted raises
its variant's predictions by the same factor, and on CUDA the allocator's
cache over its live bytes (the budget is judged on reserved memory) is taken
from the trials' full-size peaks once there are some.  Before that it is the
median over the probe's variants: on GPT-2 (H200) they ranged from 1.06 to
about 1.12 at micro-batch 2, and full-size trials saw 1.01 to 1.08, so the
largest overstated the first trials' peaks by up to 19%.  The knobs outside the
variants (compile, optimizer implementation) are predicted as measured in the
probe's configuration, which uses their defaults.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from dstune.knobs import BatchPlan, Config, Knob
from dstune.units import format_bytes

PARTS = ("first", "later", "update")
NOISE = 0.05  # a peak this close to its prediction corrects nothing
SETTLED = 0.05  # two successive lines this close where the prediction is used: the line needs no further point
HEADROOM = 1.25  # a further point is measured only if the last line predicts it this far within the budget
MEMORY_ROOMY = 0.6  # within this share of the memory budget there is room: knobs that save memory have nothing to do


@dataclass(frozen=True)
class Line:
    """Bytes as a line in the micro-batch: ``fixed + per_sample * micro_batch``."""

    fixed: float
    per_sample: float

    def at(self, micro_batch: int) -> float:
        return self.fixed + self.per_sample * micro_batch

    @classmethod
    def above(cls, points: Sequence[tuple[int, float]]) -> "Line":
        """The line with the steepest slope between neighbouring points, raised until no point lies above it.

        Through two points it is the line through them.  Where the peak bends
        upward the last two points give the slope, and the line is lifted to
        the earlier points that bind at small batches; where a point falls
        below its neighbour (noise, or the allocator reusing a block) an earlier
        slope still holds: a prediction errs above what was measured, never
        below it.
        """
        ordered = sorted(points)
        slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in zip(ordered, ordered[1:]) if x2 != x1]
        slope = max([0.0, *slopes])
        return cls(max(y - slope * x for x, y in ordered), slope)

    @classmethod
    def through(cls, a: tuple[int, float], b: tuple[int, float]) -> "Line":
        """The line through two (micro-batch, bytes) points; never falling (noise at tiny batches)."""
        (x1, y1), (x2, y2) = sorted((a, b))
        slope = max(0.0, (y2 - y1) / (x2 - x1)) if x2 != x1 else 0.0
        return cls(y2 - slope * x2, slope)


@dataclass
class Variant:
    """One combination of memory labels: its lines per part, and what trials have taught about it."""

    label: str
    lines: dict[str, Line] = field(default_factory=dict)  # empty when the probe could not fit a line
    ceiling: int | None = None  # the smallest micro-batch that ran out of memory
    correction: float = 1.0  # the largest measured/predicted peak of a trial so far (never below 1)
    points: list[dict[str, Any]] = field(default_factory=list)  # what the probe measured, for the record

    def allocated(self, plan: BatchPlan) -> float | None:
        """The predicted peak of a step (the allocator's bytes), or None without lines."""
        if not self.lines:
            return None
        parts = [self.lines["first"].at(plan.micro_batch), self.lines["update"].at(plan.micro_batch)]
        if plan.accumulation > 1:
            parts.append(self.lines["later"].at(plan.micro_batch))
        return max(parts)

    def measured(self) -> list[tuple[int, dict[str, float]]]:
        """The probe's points that ran, as (micro-batch, allocated bytes per part), smallest first."""
        return sorted((p["micro_batch"], p["allocated"]) for p in self.points if "oom" not in p)

    def next_size(self, budget: float, sizes: Sequence[int]) -> int | None:
        """The micro-batch to measure next, or None when the line is settled.

        Settled means the line through the last two points predicts no more
        than the one through the two before, within :data:`SETTLED`, at the
        micro-batch where the prediction matters: the largest that the last
        line fits in ``budget`` (allocated bytes), or the largest in
        ``sizes`` if that is less.  (A line that bends down needs nothing:
        :meth:`Line.above` keeps the earlier, steeper slope.)  A next point is measured only where the
        last line puts it within the budget by :data:`HEADROOM` (the peak
        bends upward, so the line understates it) and below any micro-batch
        that ran out of memory.
        """
        points = self.measured()
        if len(points) < 3:
            return None
        (m1, p1), (m2, p2), (m3, p3) = points[-3:]
        old = {part: Line.through((m1, p1[part]), (m2, p2[part])) for part in PARTS}
        new = {part: Line.through((m2, p2[part]), (m3, p3[part])) for part in PARTS}
        fitting = Variant(self.label, new).largest_fitting(budget)
        reach = min(max(sizes), fitting if fitting is not None else float("inf"))
        if self.ceiling is not None:
            reach = min(reach, self.ceiling - 1)
        # Only a bend upward matters: a line that bends down is already above what it predicts (Line.above).
        if reach <= m3 or all(new[p].at(reach) - old[p].at(reach) <= SETTLED * max(new[p].at(reach), 1.0)
                              for p in PARTS):
            return None
        larger = [m for m in sorted(sizes) if m > m3 and (self.ceiling is None or m < self.ceiling)]
        if not larger or max(new[p].at(larger[0]) for p in PARTS) * HEADROOM > budget:
            return None
        return larger[0]

    def largest_fitting(self, budget: float) -> float | None:
        """The largest micro-batch (a real number) whose predicted peak stays within ``budget`` allocated bytes."""
        if not self.lines:
            return None
        bounds = []
        for part in PARTS:
            line = self.lines[part]
            if line.fixed > budget:
                return 0.0
            if line.per_sample > 0:
                bounds.append((budget - line.fixed) / line.per_sample)
        found = min(bounds) if bounds else float("inf")
        return min(found, self.ceiling - 1) if self.ceiling is not None else found


@dataclass
class MemoryModel:
    """Predicted peak memory per configuration, against one memory budget."""

    labels: dict[str, dict[str, str]]  # memory knob -> {choice key -> label}
    variants: dict[str, Variant]
    budget: int  # bytes, in the unit trials are judged by (peak_memory_bytes)
    reserve_ratio: float = 1.0  # the allocator's reserved/allocated bytes, measured (CUDA); 1 on the CPU
    base: dict[str, Any] = field(default_factory=dict)  # the probe's configuration, besides variants and size
    sized: tuple[str, ...] = ()  # the knobs that set the micro-batch (their values are the line's x)
    effects: dict[str, float] = field(default_factory=dict)  # "knob=value" -> what it does to the peak, learned
    reserve_seen: list[float] = field(default_factory=list)  # reserved/allocated of the trials' own peaks
    batch_plan: Callable[[Config], BatchPlan | None] = field(default=lambda config: None, repr=False)

    # -- what a configuration needs ---------------------------------------------------

    def variant_of(self, config: Config) -> Variant | None:
        return self.variants.get(variant_key(self.labels, config))

    def _others(self, config: Config) -> list[str]:
        """The knob values outside the variants and the micro-batch that differ from the probe's configuration."""
        return [f"{name}={value}" for name, value in sorted(config.items())
                if name in self.base and name not in self.labels and name not in self.sized
                and self.base[name] != value]

    def _base_prediction(self, config: Config) -> float | None:
        """The variant's line at the micro-batch, as the probe's configuration would peak."""
        variant, plan = self.variant_of(config), self.batch_plan(config)
        if variant is None or plan is None:
            return None
        allocated = variant.allocated(plan)
        return None if allocated is None else allocated * self.reserve_ratio * variant.correction

    def predict(self, config: Config) -> int | None:
        """The predicted peak (as ``peak_memory_bytes`` measures it) of ``config``; None when unknown."""
        base = self._base_prediction(config)
        if base is None:
            return None
        for other in self._others(config):
            base *= self.effects.get(other, 1.0)
        return int(base)

    def exceeds(self, config: Config) -> str | None:
        """Why ``config`` is predicted not to fit (a sentence beginning "predicted"), or None."""
        variant, plan = self.variant_of(config), self.batch_plan(config)
        if variant is None or plan is None:
            return None
        if variant.ceiling is not None and plan.micro_batch >= variant.ceiling:
            return (f"predicted: micro-batch {plan.micro_batch} with {variant.label} needs more memory than "
                    f"micro-batch {variant.ceiling}, which ran out of memory")
        peak = self.predict(config)
        if peak is not None and peak > self.budget:
            return (f"predicted: micro-batch {plan.micro_batch} with {variant.label} would peak at "
                    f"{format_bytes(peak)}, over the memory budget of {format_bytes(self.budget)}")
        return None

    def fit(self, config: Config, smaller: Callable[[Config], Config | None]) -> Config | None:
        """``config`` shrunk (by the plugins' ``smaller``) until it is predicted to fit; None if nothing does."""
        current: Config | None = config
        while current is not None and self.exceeds(current):
            current = smaller(current)
        return current

    def smallest_peak(self) -> tuple[float, str] | None:
        """The least any measured point needed (as the budget is judged), and where: what no budget may undercut."""
        found = [(max(point["allocated"].values()) * self.reserve_ratio,
                  f"{variant.label}, micro-batch {point['micro_batch']}")
                 for variant in self.variants.values() for point in variant.points if "oom" not in point]
        return min(found) if found else None

    # -- what trials teach -------------------------------------------------------------

    def observe(self, config: Config, status: str, metrics: Mapping[str, Any]) -> str | None:
        """Correct the model from one ended trial; a sentence saying what changed, or None.

        An out-of-memory trial caps its variant's micro-batch.  A successful
        one's peak is compared with the variant's line: in the probe's own
        configuration a peak above the line raises the variant's predictions;
        otherwise the ratio is what the other knob values it changed do to
        memory (compile fuses away activations, a fused optimizer saves
        temporaries), shared among those not seen before.
        """
        self._learn_reserve(status, metrics)
        variant, plan = self.variant_of(config), self.batch_plan(config)
        if variant is None or plan is None:
            return None
        if status == "oom" and (variant.ceiling is None or plan.micro_batch < variant.ceiling):
            variant.ceiling = plan.micro_batch
            return (f"micro-batch {plan.micro_batch} with {variant.label} ran out of memory: larger ones with it "
                    "are no longer tried")
        measured, base = metrics.get("peak_memory_bytes"), self._base_prediction(config)
        if status != "ok" or not measured or not base:
            return None
        others = self._others(config)
        known = [o for o in others if o in self.effects]
        new = [o for o in others if o not in self.effects]
        predicted = base
        for other in known:
            predicted *= self.effects[other]
        ratio = measured / predicted
        if new:
            share = ratio ** (1 / len(new))
            self.effects.update({other: share for other in new})
            if abs(share - 1) > NOISE:
                return f"{' and '.join(new)} change(s) the peak {share:.2f}x (measured at micro-batch {plan.micro_batch})"
            return None
        if ratio <= 1 + NOISE:
            return None
        if known:
            for other in known:
                self.effects[other] *= ratio ** (1 / len(known))
            what = " and ".join(known)
        else:
            variant.correction *= ratio
            what = variant.label
        return (f"micro-batch {plan.micro_batch} with {', '.join([variant.label, *known])} peaked at "
                f"{format_bytes(measured)}, above the {format_bytes(predicted)} predicted: predictions with "
                f"{what} are raised {ratio:.2f}x")

    def _learn_reserve(self, status: str, metrics: Mapping[str, Any]) -> None:
        """The allocator's cache over its live bytes, from full-size trials rather than the probe's tiny batches
        (llama_1b: 1.08 at micro-batch 2, 1.03 at 4 and 8 on an H200): the median of what the trials showed."""
        allocated, reserved = metrics.get("peak_allocated"), metrics.get("peak_reserved")
        if status != "ok" or not allocated or not reserved:
            return
        self.reserve_seen.append(max(1.0, reserved / allocated))
        ordered = sorted(self.reserve_seen)
        self.reserve_ratio = ordered[(len(ordered) - 1) // 2]

    # -- what the user reads -----------------------------------------------------------

    def describe(self) -> list[str]:
        """One line per variant: fixed memory, memory per sample, the largest micro-batch predicted to fit."""
        lines = []
        allocated_budget = self.budget / self.reserve_ratio
        for variant in self.variants.values():
            if not variant.lines:
                lines.append(f"{variant.label}: " + (f"out of memory at micro-batch {variant.ceiling}"
                                                     if variant.ceiling else "not measured"))
                continue
            top = variant.largest_fitting(allocated_budget / variant.correction)
            at = int(top) if top is not None and 1 <= top < float("inf") else 1
            grows = max(("later", "first"), key=lambda part: variant.lines[part].at(at))  # the part that binds there
            line, update = variant.lines[grows], variant.lines["update"].at(1)
            fits = ("nothing fits" if top is not None and top < 1 else
                    "any micro-batch fits" if top is None or top == float("inf") else f"fits up to micro-batch {int(top)}")
            lines.append(f"{variant.label}: {format_bytes(line.fixed)} + {format_bytes(line.per_sample)} per sample "
                         f"(update {format_bytes(update)}); {fits}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels, "budget": self.budget, "reserve_ratio": self.reserve_ratio, "base": self.base,
            "sized": list(self.sized), "effects": self.effects, "reserve_seen": self.reserve_seen,
            "variants": {key: {"label": v.label, "ceiling": v.ceiling, "correction": v.correction, "points": v.points,
                               "lines": {p: [line.fixed, line.per_sample] for p, line in v.lines.items()}}
                         for key, v in self.variants.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], batch_plan: Callable[[Config], BatchPlan | None]) -> "MemoryModel":
        variants = {key: Variant(v["label"], {p: Line(*pair) for p, pair in v["lines"].items()}, v.get("ceiling"),
                                 float(v.get("correction", 1.0)), list(v.get("points", [])))
                    for key, v in data["variants"].items()}
        return cls(dict(data["labels"]), variants, int(data["budget"]), float(data.get("reserve_ratio", 1.0)),
                   dict(data.get("base", {})), tuple(data.get("sized", ())), dict(data.get("effects", {})),
                   list(data.get("reserve_seen", [])), batch_plan)


def choice_key(choice: Any) -> str:
    """A knob choice as a JSON key (labels are keyed by it, so the model survives a round trip to the store)."""
    return json.dumps(choice)


def memory_labels(knobs: Sequence[Knob]) -> dict[str, dict[str, str]]:
    """The searched knobs whose choices change memory, with each choice's label."""
    return {k.name: {choice_key(c): k.memory.get(c, str(c)) for c in k.choices}
            for k in knobs if k.memory and k.tunable}


def variant_key(labels: Mapping[str, Mapping[str, str]], config: Config) -> str:
    """The variant a configuration belongs to: its memory labels, in knob order, as one text."""
    return ", ".join(labels[name].get(choice_key(config.get(name)), "?") for name in labels) or "as configured"


def representatives(knobs: Sequence[Knob]) -> list[dict[str, Any]]:
    """One configuration change per variant: for each memory knob, the first choice of each of its labels."""
    changes: list[dict[str, Any]] = [{}]
    for knob in knobs:
        if not (knob.memory and knob.tunable):
            continue
        firsts: dict[str, Any] = {}
        for choice in knob.choices:
            firsts.setdefault(knob.memory.get(choice, str(choice)), choice)
        changes = [{**c, knob.name: choice} for c in changes for choice in firsts.values()]
    return changes


def build(labels: dict[str, dict[str, str]], points: Sequence[Mapping[str, Any]], budget: int,
          batch_plan: Callable[[Config], BatchPlan | None], base: Config, sized: Sequence[str]) -> MemoryModel:
    """Fit each variant's lines from the probe's points (see :func:`dstune.trial.memory_probe.run_memory`)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for point in points:
        grouped.setdefault(variant_key(labels, point["config"]), []).append(point)
    variants: dict[str, Variant] = {}
    ratios: list[float] = []
    for key, found in grouped.items():
        variant = Variant(key, points=[dict(p) for p in found])
        ok = sorted((p for p in found if "oom" not in p), key=lambda p: p["micro_batch"])
        ooms = [p["micro_batch"] for p in found if "oom" in p and p.get("micro_batch")]
        variant.ceiling = min(ooms) if ooms else None
        if len(ok) >= 2:
            variant.lines = {part: Line.above([(p["micro_batch"], p["allocated"][part]) for p in ok]) for part in PARTS}
            b = ok[-1]
            ratios.append(b["reserved"] / max(b["allocated"].values()))
        variants[key] = variant
    ratio = max(1.0, statistics.median(ratios)) if ratios else 1.0
    return MemoryModel(labels, variants, budget, ratio, dict(base), tuple(sized), {}, [], batch_plan)
