"""One ``dstune run``: probe the workload, search with Optuna, record every trial.

The parent process never imports the user's workload: a probe process builds
it once to learn the device and the model, then each trial runs in a fresh
process.  Every trial is committed to the store when it ends.  The run stops
at ``trials`` trials or when the budget is spent, whichever comes first (a
trial in flight when the budget ends is allowed to finish).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import optuna

from .context import TuneContext
from .errors import UsageError
from .fingerprint import fingerprint_hash
from .knobs import Config, Knob, checklist_config, default_config
from .measure import MeasureSettings
from .plugin_manager import plugin_manager
from .search import SEED_ATTR, CostAwareSchedule, SearchSpace, config_key, create_study, enqueue_seeds, tell
from .trial_runner import TrialOutcome, run_in_subprocess
from .units import parse_memory_budget

log = logging.getLogger("dstune.run")

PROBE_TIMEOUT_S = 600.0
MAX_REPEATS = 40
PRUNE_RATIO = 0.25  # a trial whose warm-up shows under this fraction of the best is stopped early  # consecutive already-seen suggestions before the space counts as exhausted


@dataclass
class RunOptions:
    workload_file: Path
    workload_name: str | None = None
    db: str | None = None
    trials: int = 30
    budget_s: float = 15 * 60
    trial_timeout_s: float = 600.0
    memory_budget: str | None = None
    seed: int = 0
    disabled_plugins: tuple[str, ...] = ()
    strict_plugins: bool = False
    study_name: str | None = None
    measure: MeasureSettings = field(default_factory=MeasureSettings)


class Reporter(Protocol):
    """What the run tells the user while it goes (the CLI's progress display)."""

    def started(self, workload: str, ctx: TuneContext, knobs: Sequence[Knob], trials: int, budget_s: float) -> None: ...
    def trial_started(self, index: int, config: Config, seed_kind: str) -> None: ...
    def trial_finished(self, index: int, outcome: TrialOutcome, best_samples_per_s: float | None) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class RunResult:
    iteration_id: int
    workload: str
    stop_reason: str


def compile_cache_env(workload: str) -> dict[str, str]:
    """Share inductor/Triton caches among a workload's trials, unless the user set them."""
    root = Path(os.environ.get("DSTUNE_CACHE_DIR", Path.home() / ".cache" / "dstune")) / workload
    env = {}
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    if "TRITON_CACHE_DIR" not in os.environ:
        env["TRITON_CACHE_DIR"] = str(root / "triton")
    return env


def probe(options: RunOptions) -> dict[str, Any]:
    """Import and build the workload once in a fresh process; return its context and environment."""
    spec = {
        "kind": "probe",
        "workload_file": str(options.workload_file),
        "workload_name": options.workload_name,
        "disabled_plugins": list(options.disabled_plugins),
    }
    outcome = run_in_subprocess(spec, timeout_s=PROBE_TIMEOUT_S)
    if outcome.status == "usage_error":
        raise UsageError(outcome.error or "the workload file could not be used")
    if outcome.status != "ok":
        detail = (outcome.error or "").strip() or outcome.stderr_tail.strip()
        raise UsageError(
            f"building workload from {options.workload_file} failed ({outcome.status}): {detail[-1500:]}\n"
            "Fix the workload so that its function builds on this machine, then run again."
        )
    return outcome.payload


def trial_spec(options: RunOptions, ctx: dict[str, Any], config: Config) -> dict[str, Any]:
    """What a trial process needs: the workload, the config, the context, how to measure."""
    return {
        "kind": "trial", "workload_file": str(options.workload_file),
        "workload_name": options.workload_name or ctx["workload"], "config": config, "ctx": ctx,
        "disabled_plugins": list(options.disabled_plugins), "measure": options.measure.to_dict(),
        "seed": options.seed,
    }


def applicable_knobs(pm: Any, ctx: TuneContext) -> list[Knob]:
    """Collect the knobs of every plugin, tag each with its plugin, keep those that apply."""
    knobs: list[Knob] = []
    seen: dict[str, str] = {}
    for impl in reversed(pm.hook.dstune_knobs.get_hookimpls()):
        for knob in impl.function(ctx=ctx) or []:
            if knob.name in seen:
                raise UsageError(
                    f"plugins {seen[knob.name]!r} and {impl.plugin_name!r} both declare knob {knob.name!r}. "
                    f"Disable one with --disable-plugin."
                )
            seen[knob.name] = impl.plugin_name
            if knob.applicable(ctx):
                knobs.append(_tagged(knob, impl.plugin_name))
    return knobs


def _tagged(knob: Knob, plugin: str) -> Knob:
    return dataclasses.replace(knob, plugin=plugin)


def _invalid_reason(pm: Any, config: Config, ctx: TuneContext) -> str | None:
    reasons = [r for r in pm.hook.dstune_validate(config=config, ctx=ctx) if r]
    return "; ".join(reasons) if reasons else None


def run_iteration(options: RunOptions, reporter: Reporter) -> RunResult:
    """Plan and Do: probe, build the space, run trials until the budget or trial count is spent."""
    from dstune.store import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(options.db)
    plugins = plugin_manager(options.disabled_plugins, strict=options.strict_plugins)
    for problem in plugins.problems:
        reporter.message(f"[warning] {problem}")
    started = time.monotonic()
    probed = probe(options)
    ctx = TuneContext.from_dict(probed["ctx"])
    environment = probed["environment"]
    knobs = applicable_knobs(plugins.pm, ctx)
    space = SearchSpace(tuple(knobs))
    memory_budget = parse_memory_budget(options.memory_budget, ctx.device_memory)
    defaults, checklist = default_config(knobs), checklist_config(knobs)

    workload_id = store.workload_id(ctx.workload, str(options.workload_file.resolve()))
    environment_id = store.environment_id(fingerprint_hash(environment), environment)
    iteration_id = store.start_iteration(
        workload_id=workload_id, environment_id=environment_id, study_name="", phase="do",
        host=socket.gethostname(), context=probed["ctx"], memory_budget_bytes=memory_budget,
        knobs=[{"name": k.name, "plugin": k.plugin, "choices": list(k.choices), "default": k.default,
                "checklist": k.checklist} for k in knobs],
        default_config=defaults, checklist_config=checklist,
        options={"trials": options.trials, "budget_s": options.budget_s, "seed": options.seed,
                 "trial_timeout_s": options.trial_timeout_s, "disabled_plugins": list(options.disabled_plugins)},
    )
    study_name = options.study_name or f"{ctx.workload}-it{iteration_id}"
    store.update_iteration(iteration_id, study_name=study_name)
    study = create_study(store.optuna_storage(), study_name, options.seed,
                         startup_trials=min(10, max(3, options.trials // 3)))
    enqueue_seeds(study, space, [("default", defaults), ("checklist", checklist)])
    reporter.started(ctx.workload, ctx, knobs, options.trials, options.budget_s)

    env = {**compile_cache_env(ctx.workload), "DSTUNE_ITERATION": str(iteration_id)}
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    schedule = CostAwareSchedule(space, options.trials, options.budget_s)
    successes: list[tuple[Config, float]] = []
    done, repeats, best = 0, 0, None
    stop_reason = "trials"
    in_flight: tuple[int, Config, str] | None = None
    try:
        while True:
            if done >= options.trials:
                break
            if time.monotonic() - started >= options.budget_s:
                stop_reason = "budget"
                break
            schedule.before_ask(study, done, time.monotonic() - started, successes)
            trial = study.ask()
            config = space.config_from_trial(trial)
            seed_kind = trial.user_attrs.get(SEED_ATTR, "search")
            key = config_key(config)
            if key in seen:
                status, metrics = seen[key]
                tell(study, trial, status, metrics, memory_budget)
                repeats += 1
                if repeats >= MAX_REPEATS:
                    stop_reason = "exhausted"
                    reporter.message("every configuration the search proposes has been measured already: stopping")
                    break
                continue
            repeats = 0
            reason = _invalid_reason(plugins.pm, config, ctx)
            if reason:
                store.record_trial(iteration_id, number=trial.number, seed_kind=seed_kind, config=config,
                                   status="invalid", error=reason, host=socket.gethostname())
                tell(study, trial, "invalid", {}, memory_budget)
                seen[key] = ("invalid", {})
                continue
            reporter.trial_started(done + 1, config, seed_kind)
            in_flight = (trial.number, config, seed_kind)
            spec = trial_spec(options, probed["ctx"], config)
            if best and seed_kind == "search":
                spec["prune_below"] = best * PRUNE_RATIO
            outcome = run_in_subprocess(spec, timeout_s=options.trial_timeout_s, env=env)
            in_flight = None
            store.record_trial(
                iteration_id, number=trial.number, seed_kind=seed_kind, config=config, status=outcome.status,
                duration_s=outcome.duration_s, metrics=outcome.metrics, error=outcome.error,
                exit_code=outcome.exit_code, signal=outcome.signal,
                stderr_tail=outcome.stderr_tail if outcome.status != "ok" else None,
                host=socket.gethostname(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
            tell(study, trial, outcome.status, outcome.metrics, memory_budget)
            seen[key] = (outcome.status, outcome.metrics)
            schedule.record(config, outcome.duration_s)
            done += 1
            if outcome.status == "ok" and outcome.metrics.get("peak_memory_bytes", 0) <= memory_budget:
                best = max(best or 0.0, outcome.metrics["samples_per_s"])
                successes.append((config, outcome.metrics["samples_per_s"]))
            reporter.trial_finished(done, outcome, best)
    except BaseException:
        if in_flight is not None:
            number, config, seed_kind = in_flight
            store.record_trial(iteration_id, number=number, seed_kind=seed_kind, config=config,
                               status="interrupted", error="dstune run was interrupted during this trial",
                               host=socket.gethostname())
        store.finish_iteration(iteration_id, "interrupted", error="interrupted during the Do phase")
        raise
    store.update_iteration(iteration_id, phase="done")
    return RunResult(iteration_id, ctx.workload, stop_reason)
