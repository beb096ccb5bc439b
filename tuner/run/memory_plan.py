"""Measuring the memory model in the Plan phase: which points, in which processes, within what time.

The points are the three smallest micro-batches the plugins offer (found by
shrinking the checklist configuration with ``dstune_smaller_config`` until it
cannot shrink) under each variant of the memory knobs
(:func:`dstune.run.memory_model.representatives`); every other knob keeps its
default.  Where a variant's peak still bends at the third, the next
micro-batch is measured too, round by round, until its line settles
(:meth:`dstune.run.memory_model.Variant.next_size`) or the time is spent; the
extra rounds only refine, and a round that fails keeps the lines before it.

On a GPU one process measures every point, resetting the allocator's peak
between them; on the CPU each point needs a process of its
own (a process's peak RSS cannot be reset), which the fork server makes
cheap.  The whole measurement gets a share of the budget
(:data:`BUDGET_SHARE`).  When it fails or runs out of time, the points
measured so far stay (the probe writes them as it goes) and predict what
they cover; with none, the run goes on without predictions, as runs did
before the model existed.

The variants that save memory (a knob that ``relieves`` memory, such as
activation checkpointing, at a choice other than its default) are measured
only when memory is tight: when, without them, the largest micro-batch on
offer is predicted to need more than :data:`MEMORY_ROOMY` of the budget.
Otherwise the search never proposes them (their knobs wait for a memory
limit, :mod:`dstune.run.neighbourhood`), and any of them needs less than its
measured twin without saving.  GPT-2 on the H200 spent 41 s measuring six
variants, four of them checkpointed, at 38% of its budget.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from dstune.context import TuneContext
from dstune.knobs import Config, Knob, checklist_config, config_key, default_config
from dstune.plugin_calls import batch_plan, smaller_config
from dstune.trial.launch import run_in_subprocess
from dstune.trial.records import MEMORY, TrialSpec
from dstune.units import format_bytes

from .memory_model import MEMORY_ROOMY, MemoryModel, build, memory_labels, representatives
from .options import RunOptions

BUDGET_SHARE = 0.2  # of the run's budget, at most, for measuring the model
MAX_SECONDS = 300.0
# llama_1b's six variants took 33 s at two micro-batches on an H200, building the model twelve times; at three,
# GPT-2's took 47 s and llama_1b's about 60, and a further round about 15 s more (H200, 2026-12-03).
MIN_SECONDS = 75.0
FIRST_SIZES = 3  # micro-batches measured per variant at first: two give a line, a third says whether it bends
MAX_ROUNDS = 4  # further rounds, each one more micro-batch for the variants whose line still bends
ROUND_SECONDS = 15.0  # a further round is not started with less time than this left


def probe_sizes(pm: Any, knobs: Sequence[Knob], ctx: TuneContext) -> list[tuple[int, Config]]:
    """Each micro-batch on offer, smallest first, with the values it takes of the knobs that set the micro-batch
    (empty when nothing sets one)."""
    start = checklist_config(knobs)
    chain = [start]
    while len(chain) < 64:
        smaller = smaller_config(pm, knobs, chain[-1], ctx)
        if not isinstance(smaller, dict) or config_key(smaller) == config_key(chain[-1]):
            break
        chain.append(smaller)
    plans = [batch_plan(pm, config, ctx) for config in chain]
    sized = sorted({plan.micro_batch: config for plan, config in zip(plans, chain) if plan is not None}.items())
    if len(sized) < 2:
        return []
    names = sorted({k for _, config in sized for k, v in config.items() if start.get(k) != v})
    return [(micro, {name: config.get(name) for name in names}) for micro, config in sized]


def probe_configs(pm: Any, knobs: Sequence[Knob], ctx: TuneContext, invalid: Callable[[Config], str | None]
                  ) -> tuple[list[Config], tuple[str, ...], list[tuple[int, Config]]]:
    """Every (variant, micro-batch) configuration to measure first, the default for every other knob; the knobs
    that set the micro-batch; and every micro-batch on offer with those knobs' values, for the further rounds."""
    base = default_config(knobs)
    ladder = probe_sizes(pm, knobs, ctx)
    configs = [{**base, **variant, **size} for variant in representatives(knobs) for _, size in ladder[:FIRST_SIZES]]
    sized = tuple(sorted({name for _, size in ladder for name in size}))
    return [config for config in configs if not invalid(config)], sized, ladder


def saves_memory(knobs: Sequence[Knob], config: Config) -> bool:
    """Whether ``config`` sets a knob that relieves memory (checkpointing) to anything but its default."""
    return any(k.relieves == "memory" and k.memory and config.get(k.name, k.default) != k.default for k in knobs)


def largest_micro_batch(pm: Any, knobs: Sequence[Knob], ctx: TuneContext, config: Config, sized: Sequence[str]
                        ) -> Config:
    """``config`` at the largest micro-batch its micro-batch knobs offer."""
    largest, micro = config, -1
    for knob in knobs:
        if knob.name in sized:
            for choice in knob.choices:
                plan = batch_plan(pm, {**config, knob.name: choice}, ctx)
                if plan is not None and plan.micro_batch > micro:
                    largest, micro = {**config, knob.name: choice}, plan.micro_batch
    return largest


def measure_model(options: RunOptions, ctx: TuneContext, ctx_dict: dict[str, Any], knobs: Sequence[Knob], pm: Any,
                  memory_budget: int, env: dict[str, str], invalid: Callable[[Config], str | None],
                  say: Callable[[str], None]) -> MemoryModel | None:
    """Measure the points and fit the model; None (and a warning said) when it cannot be had."""
    configs, sized, ladder = probe_configs(pm, knobs, ctx, invalid)
    if not configs:
        say("[memory] no micro-batch to vary: the memory model is skipped, and trials learn the limit by running")
        return None
    labels = memory_labels(knobs)
    micro = sorted({p.micro_batch for c in configs if (p := batch_plan(pm, c, ctx)) is not None})
    first = [c for c in configs if not saves_memory(knobs, c)]
    saving = [c for c in configs if saves_memory(knobs, c)]
    per_variant = max(1, len(micro))
    shown = ", ".join(map(str, micro[:-1])) + f" and {micro[-1]}" if len(micro) > 1 else str(micro[0])
    say(f"[memory] measuring {len(first) // per_variant} variant(s) at micro-batches {shown}"
        + (f"; the {len(saving) // per_variant} that save memory only if it is tight" if saving else ""))
    # Never more than half the budget: the trials and the check need the rest.
    allotted = min(max(MIN_SECONDS, min(MAX_SECONDS, BUDGET_SHARE * options.budget_s)), 0.5 * options.budget_s)
    started = time.perf_counter()

    def fitted(measured: list[dict[str, Any]]) -> MemoryModel:
        return build(labels, measured, memory_budget, lambda config: batch_plan(pm, config, ctx),
                     default_config(knobs), sized)

    points, why = _measure(first, allotted, options, ctx, ctx_dict, env)
    model = fitted(points)
    if not any(variant.lines for variant in model.variants.values()):
        say(f"[warning] the memory model could not be measured ({why or 'no variant ran at two micro-batches'}); "
            "trials run without predictions")
        return None
    if why:
        say(f"[warning] the memory model was measured only in part ({why}): {len(points)} of {len(first)} points; "
            "predictions cover the variants measured at two micro-batches")
    if saving:
        needs = [model.predict(largest_micro_batch(pm, knobs, ctx, c, sized)) for c in first]
        known = [n for n in needs if n is not None]
        share = max(known) / max(memory_budget, 1) if known and len(known) == len(needs) else None
        largest = "without saving memory the largest micro-batch on offer"
        if share is not None and share <= MEMORY_ROOMY:
            say(f"[memory] {largest} needs {share:.0%} of the memory budget: the {len(saving) // per_variant} "
                "variant(s) that save memory are not measured")
        else:
            say(f"[memory] {largest} needs {'an unknown share' if share is None else f'{share:.0%}'} of the memory "
                f"budget: measuring the {len(saving) // per_variant} variant(s) that save memory")
            more, why = _measure(saving, allotted - (time.perf_counter() - started), options, ctx, ctx_dict, env)
            if why:  # what was measured before stays: a 336M-parameter Qwen2 lost all its points to this on an H200
                say(f"[warning] the variants that save memory were measured only in part ({why}): {len(more)} of "
                    f"{len(saving)} points; predictions cover the variants measured at two micro-batches")
            points += more
            model = fitted(points)
    points, model = _settle(points, model, fitted, ladder, allotted - (time.perf_counter() - started), options, ctx,
                            ctx_dict, env, say)
    took = time.perf_counter() - started
    say(f"[memory] measured in {took:.0f} s; memory budget {format_bytes(memory_budget)}:")
    for line in model.describe():
        say(f"[memory]   {line}")
    return model


def _settle(points: list[dict[str, Any]], model: MemoryModel, fitted: Callable[[list[dict[str, Any]]], MemoryModel],
            ladder: Sequence[tuple[int, Config]], allotted: float, options: RunOptions, ctx: TuneContext,
            ctx_dict: dict[str, Any], env: dict[str, str], say: Callable[[str], None]
            ) -> tuple[list[dict[str, Any]], MemoryModel]:
    """Measure the next micro-batch of each variant whose line still bends, round by round, within ``allotted``
    seconds; a round that fails or runs out of time leaves the lines as they were."""
    started = time.perf_counter()
    changes = dict(ladder)
    sizes = [micro for micro, _ in ladder]
    for _ in range(MAX_ROUNDS):
        wanted = []
        for variant in model.variants.values():
            size = variant.next_size(model.budget / model.reserve_ratio / variant.correction, sizes)
            largest = max(variant.points, key=lambda p: p["micro_batch"] if "oom" not in p else -1, default=None)
            if size is not None and largest is not None:
                wanted.append((variant.label, size, {**largest["config"], **changes[size]}))
        left = allotted - (time.perf_counter() - started)
        if not wanted:
            break
        if left < ROUND_SECONDS:
            say(f"[memory] not measuring {', '.join(f'{label} at micro-batch {size}' for label, size, _ in wanted)}"
                ": the line still bends there, but the memory model's time is spent; predictions there may be low")
            break
        say("[memory] the peak still bends with the micro-batch, so measuring "
            + ", ".join(f"{label} at micro-batch {size}" for label, size, _ in wanted))
        more, why = _measure([config for _, _, config in wanted], left, options, ctx, ctx_dict, env)
        points = points + more
        model = fitted(points)
        if why:
            say(f"[warning] a further memory point could not be measured ({why}); the lines stay as they were "
                "where it was not")
            break
    return points, model


def _measure(configs: Sequence[Config], allotted: float, options: RunOptions, ctx: TuneContext,
             ctx_dict: dict[str, Any], env: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """The probe's points of ``configs``, in one process on a GPU, one each on the CPU, within ``allotted``
    seconds, and why it stopped short (None when every point came back).  A probe killed at its time gives
    back the points it had written (it writes them after each one); the processes before a failed one, theirs."""
    started = time.perf_counter()
    groups = [list(configs)] if ctx.is_cuda else [[c] for c in configs]
    points: list[dict[str, Any]] = []
    for group in groups:
        left = allotted - (time.perf_counter() - started)
        spec = TrialSpec(kind=MEMORY, workload_file=str(options.workload_file),
                         workload_name=options.workload_name or ctx.workload, ctx=ctx_dict,
                         disabled_plugins=options.disabled_plugins, seed=options.seed, variants=group)
        outcome = run_in_subprocess(spec, timeout_s=max(1.0, left), env=env) if left > 0 else None
        if outcome is not None:
            points.extend(outcome.payload.get("points", []))
        if outcome is None or outcome.status != "ok":
            return points, ("it ran out of its time" if outcome is None or outcome.status == "timeout" else
                            f"it ended {outcome.status}: {(outcome.error or outcome.stderr_tail).strip()[-300:]}")
    return points, None
