"""One ``dstune run``: a whole Plan-Do-Check-Act iteration of one workload.

- Plan: probe the workload, fingerprint the environment and diff it against
  the previous iteration, load the incumbent, seed the search.
- Do: Optuna trials, each in a fresh process, each committed when it ends.
- Check: pick the challenger from the Pareto front, re-measure it against the
  incumbent interleaved, estimate the speed-up with a 95% interval.
- Act: promote or keep, flag a regression, in one transaction.

The parent process never imports the user's workload.  ``budget_s`` bounds
the whole iteration: trials stop early enough to leave time for the check
(estimated from the trials' own durations).  An iteration interrupted in
any phase is recorded as interrupted in that phase and decides nothing.

The run holds its device's lock (:mod:`dstune.device_lock`) from the probe
to the decision, so no two iterations ever measure on one GPU at once.
With an idle gate (:mod:`dstune.idle_gate`, as the daemon runs it), each
trial waits for the device to be free of foreign work; time spent waiting
does not count against the budget, and a gate that gives up defers the
iteration (status ``deferred``, nothing decided).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import optuna

from .act import Decision, decide
from .check import CheckResult, interleaved_check
from .context import TuneContext
from .device_lock import Device, DeviceBusy, hold_device, resolve_device
from .errors import UsageError
from .fingerprint import fingerprint_hash
from .idle_gate import IdleGate
from .knobs import Config, Knob, checklist_config, default_config
from .numerics import GuardSettings, check_overrides, trial_tolerance
from .plan import Incumbent, adapt_config, copy_trials, diff_facts
from .plugin_manager import call_impl, plugin_manager
from .processes import process_alive
from .run_options import RunOptions
from .search import SEED_ATTR, CostAwareSchedule, SearchSpace, config_key, create_study, enqueue_seeds, tell
from .trial_runner import TrialOutcome, run_in_subprocess
from .units import parse_memory_budget

log = logging.getLogger("dstune.run")

PROBE_TIMEOUT_S = 600.0
MAX_REPEATS = 40  # consecutive already-seen suggestions before the space counts as exhausted
PRUNE_RATIO = 0.25  # a trial whose warm-up shows under this fraction of the best is stopped early
CHECK_RESERVE_FACTOR = 1.25
MAX_INVALID_STREAK = 20  # configurations refused in a row before the trials stop (a plugin refusing everything)
MIN_TRIAL_S = 10.0  # no trial starts with less budget left than this (or a tenth of the budget)
HEARTBEAT_S = 10.0  # how often a running iteration says it is alive (see Store.recover_stale)


class Reporter(Protocol):
    """What the run tells the user while it goes (the CLI's progress display)."""

    def started(self, workload: str, ctx: TuneContext, knobs: Sequence[Knob], trials: int, budget_s: float) -> None: ...
    def trial_started(self, index: int, config: Config, seed_kind: str) -> None: ...
    def trial_finished(self, index: int, outcome: TrialOutcome, best_samples_per_s: float | None) -> None: ...
    def message(self, text: str) -> None: ...
    def check_started(self, incumbent: Config, challenger: Config | None, repeats: int, why: str) -> None: ...
    def check_measured(self, role: str, round_: int, outcome: TrialOutcome) -> None: ...
    def planned(self, previous_id: int | None, diff: list[dict[str, Any]], incumbent: Incumbent, copied: int
                ) -> None: ...


@dataclass
class RunResult:
    iteration_id: int
    workload: str
    stop_reason: str
    decision: Decision | None = None


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
        "strict_plugins": options.strict_plugins,
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


def trial_spec(options: RunOptions, ctx: dict[str, Any], config: Config,
               numerics: GuardSettings | None = None) -> dict[str, Any]:
    """What a trial process needs: the workload, the config, the context, how to measure and guard."""
    return {
        "kind": "trial", "workload_file": str(options.workload_file),
        "workload_name": options.workload_name or ctx["workload"], "config": config, "ctx": ctx,
        "disabled_plugins": list(options.disabled_plugins), "measure": options.measure.to_dict(),
        "seed": options.seed, "numerics": numerics.to_dict() if numerics else None,
    }


def applicable_knobs(pm: Any, ctx: TuneContext, problems: list[str] | None = None) -> list[Knob]:
    """Collect the knobs of every plugin, tag each with its plugin, keep those that apply.

    A plugin whose ``dstune_knobs`` raises (or declares an invalid knob) is an
    error, unless ``problems`` is given: then it is unregistered, a message
    naming it is appended, and the others go on.
    """
    knobs: list[Knob] = []
    seen: dict[str, str] = {}
    for impl in reversed(pm.hook.dstune_knobs.get_hookimpls()):
        try:
            declared = list(call_impl(impl, ctx=ctx) or [])
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            message = f"plugin {impl.plugin_name!r} failed in dstune_knobs: {type(exc).__name__}: {exc}"
            if problems is None:
                raise UsageError(f"{message}. Fix the plugin, or leave it out with --disable-plugin "
                                 f"{impl.plugin_name} (without --strict-plugins it is left out with a warning).") from None
            problems.append(f"{message}; it is disabled for this run.")
            pm.unregister(name=impl.plugin_name)
            continue
        for knob in declared:
            if knob.name in seen:
                raise UsageError(
                    f"plugins {seen[knob.name]!r} and {impl.plugin_name!r} both declare knob {knob.name!r}. "
                    f"Disable one with --disable-plugin."
                )
            seen[knob.name] = impl.plugin_name
            if knob.applicable(ctx):
                knobs.append(_tagged(knob, impl.plugin_name))
    return knobs


def pin_except(knobs: Sequence[Knob], only: Sequence[str], exclude: Sequence[str], values: Config) -> list[Knob]:
    """The knobs with those not in ``only`` (when given) or in ``exclude`` fixed at ``values``."""
    names = {k.name for k in knobs}
    for option, listed in (("--only", only), ("--exclude", exclude)):
        unknown = [name for name in listed if name not in names]
        if unknown:
            raise UsageError(f"{option} {' '.join(unknown)}: no such knob applies to this workload here. "
                             f"Knobs that apply: {', '.join(sorted(names))}.")
    tuned = (set(only) or names) - set(exclude)
    return [k if k.name in tuned else dataclasses.replace(k, choices=(values[k.name],), default=values[k.name],
                                                           checklist=values[k.name], costly=(), active=None)
            for k in knobs]


def _tagged(knob: Knob, plugin: str) -> Knob:
    return dataclasses.replace(knob, plugin=plugin)


def _invalid_reason(pm: Any, config: Config, ctx: TuneContext) -> str | None:
    """Why plugins refuse ``config``; a plugin that raises refuses it too, and is named."""
    reasons = []
    for impl in pm.hook.dstune_validate.get_hookimpls():
        try:
            reason = call_impl(impl, config=config, ctx=ctx)
        except Exception as exc:  # noqa: BLE001 - recorded with the trial, the run goes on
            reason = f"plugin {impl.plugin_name!r} raised in dstune_validate: {type(exc).__name__}: {exc}"
        if reason:
            reasons.append(reason)
    return "; ".join(reasons) if reasons else None


class Iteration:
    """One iteration while it runs: the phases are methods, the state they share is attributes."""

    def __init__(self, options: RunOptions, reporter: Reporter, device: Device) -> None:
        from dstune.store import Store

        self.options, self.reporter = options, reporter
        self.gate = IdleGate(device, options.gate) if options.gate else None
        self._beating = threading.Event()
        self.store = Store(options.db)
        self.plugins = plugin_manager(options.disabled_plugins, strict=options.strict_plugins)
        self.host = socket.gethostname()
        self.started = time.monotonic()
        self.phase = "plan"
        self.env: dict[str, str] = {}
        self.reference_dir = tempfile.mkdtemp(prefix="dstune-references-")

    # -- Plan -------------------------------------------------------------------

    def plan(self) -> None:
        options, store = self.options, self.store
        for problem in self.plugins.problems:
            self.reporter.message(f"[warning] {problem}")
        probed = probe(options)
        self.ctx_dict = probed["ctx"]
        self.ctx = ctx = TuneContext.from_dict(self.ctx_dict)
        environment = probed["environment"]
        problems: list[str] = list(probed.get("plugin_problems", []))
        loaded = set(self.plugins.names())
        for name in probed.get("failed_plugins", []):
            self.plugins.pm.unregister(name=name)
        self.knobs = knobs = applicable_knobs(self.plugins.pm, ctx, None if options.strict_plugins else problems)
        for problem in problems:
            self.reporter.message(f"[warning] {problem}")
        # Plugins that failed (to load, or in a hook above) are left out of the trial processes too.
        failed = [*self.plugins.failed, *sorted(loaded - set(self.plugins.names()))]
        disabled = tuple(dict.fromkeys([*options.disabled_plugins, *failed]))
        self.options = options = dataclasses.replace(options, disabled_plugins=disabled)
        if options.numerics_guard:
            check_overrides(knobs, options.tolerances)
        self.memory_budget = parse_memory_budget(options.memory_budget, ctx.device_memory)
        self.defaults, checklist = default_config(knobs), checklist_config(knobs)

        for stale in store.recover_stale(self.host, process_alive):
            self.reporter.message(f"[warning] iteration {stale} was left running by a dstune process that died; "
                                  "it is now marked interrupted (its finished trials are kept)")
        workload_id = store.workload_id(ctx.workload, str(options.workload_file.resolve()))
        environment_id = store.environment_id(fingerprint_hash(environment), environment)
        previous = store.last_iteration(ctx.workload)
        diff = diff_facts(previous.environment.facts if previous and previous.environment else None, environment)
        self.incumbent = incumbent = self._incumbent()
        if options.only or options.exclude:
            knobs = pin_except(knobs, options.only, options.exclude, incumbent.config)
            checklist = {**checklist_config(knobs)}
        self.space = SearchSpace(tuple(knobs))
        past = [m.metrics.get("duration_s") for m in store.measurements(previous.id)] if previous else []
        past = [d for d in past if d]
        self.past_measure_s = statistics.median(past) if past else None
        self.iteration_id = store.start_iteration(
            workload_id=workload_id, environment_id=environment_id, study_name="", phase="plan",
            host=self.host, pid=os.getpid(), context=self.ctx_dict, memory_budget_bytes=self.memory_budget,
            knobs=[{"name": k.name, "plugin": k.plugin, "choices": list(k.choices), "default": k.default,
                    "checklist": k.checklist} for k in knobs],
            default_config=self.defaults, checklist_config=checklist,
            options={"trials": options.trials, "budget_s": options.budget_s, "seed": options.seed,
                     "trial_timeout_s": options.trial_timeout_s, "disabled_plugins": list(options.disabled_plugins),
                     "check_repeats": options.check_repeats, "min_gain": options.min_gain,
                     "only": list(options.only), "exclude": list(options.exclude), "numerics_guard": options.numerics_guard,
                     "tolerances": options.tolerances},
            previous_iteration_id=previous.id if previous else None, fingerprint_diff=diff,
            incumbent_config=incumbent.config, incumbent_source=incumbent.source, select_policy=str(options.select),
            schedule_id=options.schedule_id,
        )
        threading.Thread(target=self._heartbeat, name="dstune-heartbeat", daemon=True).start()
        study_name = options.study_name or f"{ctx.workload}-it{self.iteration_id}"
        store.update_iteration(self.iteration_id, study_name=study_name, phase="do")
        self.study = create_study(store.optuna_storage(), study_name, options.seed,
                                  startup_trials=min(10, max(3, options.trials // 3)))
        seeds: list[tuple[str, Config]] = []
        if incumbent.applied_id is not None:
            seeds.append(("incumbent", incumbent.config))
        if previous is not None and previous.chosen_config:
            seeds.append(("previous", adapt_config(previous.chosen_config, knobs)[0]))
        seeds += [("default", default_config(knobs)), ("checklist", checklist)]
        enqueue_seeds(self.study, self.space, seeds)
        copied = 0
        if previous is not None and not diff and previous.study_name:
            copied = self._copy_previous_trials(previous.study_name)
        self.env = {**compile_cache_env(ctx.workload), "DSTUNE_ITERATION": str(self.iteration_id)}
        self.reporter.planned(previous.id if previous else None, diff, incumbent, copied)
        self.reporter.started(ctx.workload, ctx, knobs, options.trials, options.budget_s)

    def _heartbeat(self) -> None:
        while not self._beating.wait(HEARTBEAT_S):
            try:
                self.store.iteration_heartbeat(self.iteration_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the run must go on
                log.warning("heartbeat of iteration %s failed: %s", self.iteration_id, exc)

    def wait_idle(self) -> None:
        """Hold the next trial until the device is idle; the wait does not use up the budget."""
        if self.gate is None:
            return
        before = time.monotonic()
        try:
            self.gate.wait(self.reporter.message)
        finally:
            self.started += time.monotonic() - before

    def _incumbent(self) -> Incumbent:
        applied = self.store.applied(self.ctx.workload)
        if applied is None:
            return Incumbent(dict(self.defaults), "default configuration (nothing applied yet)")
        config, notes = adapt_config(applied.config, self.knobs)
        from_iteration = applied.iteration_id or applied.source_iteration_id
        where = f" of iteration {from_iteration}" if from_iteration else ""
        source = f"applied #{applied.id} ({applied.reason}{where}, {applied.applied_at:%Y-%m-%d %H:%M})"
        return Incumbent(config, source, applied.id, notes)

    def _copy_previous_trials(self, study_name: str) -> int:
        try:
            source = optuna.load_study(study_name=study_name, storage=self.store.optuna_storage())
        except KeyError:
            return 0
        distributions = {k.name: optuna.distributions.CategoricalDistribution(list(k.choices))
                         for k in self.space.knobs if k.tunable}
        return copy_trials(source, self.study, distributions)

    # -- Do ---------------------------------------------------------------------

    def _guard(self, config: Config) -> GuardSettings | None:
        """The numerics guard of a trial of ``config``: its tolerance, and where references are shared."""
        if not self.options.numerics_guard:
            return None
        return GuardSettings(trial_tolerance(self.knobs, config, self.options.tolerances), self.reference_dir)

    def _check_reserve(self, eager_durations: list[float], costly_steady: list[float],
                       pair: tuple[float, float] | None = None) -> float:
        """Time to keep for the check: ``repeats`` measurements of each side, plus a quarter for slack.

        Best first: ``pair``, what this run's trials of the incumbent and of
        the best configuration so far took (a compiled one without its first
        step, since the check finds its compilation in the shared cache); the
        previous iteration's check measurements; this run's eager trials; its
        compiled trials without their first step.
        """
        repeats = self.options.check_repeats
        if pair is not None:
            return CHECK_RESERVE_FACTOR * repeats * (pair[0] + pair[1])
        if self.past_measure_s:
            per = self.past_measure_s
        elif eager_durations:
            per = statistics.median(eager_durations)
        elif costly_steady:
            per = 1.5 * min(costly_steady)
        else:
            return 0.0
        return CHECK_RESERVE_FACTOR * 2 * repeats * per

    def do(self) -> str:
        options, store, study, space = self.options, self.store, self.study, self.space
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        schedule = CostAwareSchedule(space, options.trials, options.budget_s)
        successes: list[tuple[Config, float]] = []
        eager_durations: list[float] = []
        costly_steady: list[float] = []
        measure_s: dict[str, float] = {}  # what a measurement of a config costs, by config key
        incumbent_key, best_key = config_key(self.incumbent.config), ""
        done, repeats, best, invalid_streak = 0, 0, None, 0
        self.in_flight: int | None = None  # the row of the trial running now
        while True:
            if done >= options.trials:
                return "trials"
            elapsed = time.monotonic() - self.started
            pair = None
            if incumbent_key in measure_s and best_key in measure_s:
                pair = (measure_s[incumbent_key], measure_s[best_key])
            available = options.budget_s - elapsed - self._check_reserve(eager_durations, costly_steady, pair)
            if available < min(MIN_TRIAL_S, options.budget_s / 10):
                return "budget"
            schedule.before_ask(study, done, elapsed, successes)
            trial = study.ask()
            config = space.config_from_trial(trial)
            seed_kind = trial.user_attrs.get(SEED_ATTR, "search")
            key = config_key(config)
            if key in seen:
                status, metrics = seen[key]
                tell(study, trial, status, metrics, self.memory_budget)
                repeats += 1
                if repeats >= MAX_REPEATS:
                    self.reporter.message("every configuration the search proposes has been measured already: stopping")
                    return "exhausted"
                continue
            repeats = 0
            reason = _invalid_reason(self.plugins.pm, config, self.ctx)
            if reason:
                store.record_trial(self.iteration_id, number=trial.number, seed_kind=seed_kind, config=config,
                                   status="invalid", error=reason, host=self.host)
                tell(study, trial, "invalid", {}, self.memory_budget)
                seen[key] = ("invalid", {})
                invalid_streak += 1
                if invalid_streak >= MAX_INVALID_STREAK:
                    self.reporter.message(f"[warning] {invalid_streak} configurations in a row were refused "
                                          f"(last: {reason}); stopping the trials")
                    return "invalid"
                continue
            invalid_streak = 0
            try:
                self.wait_idle()
            except DeviceBusy:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            self.reporter.trial_started(done + 1, config, seed_kind)
            self.in_flight = store.begin_trial(self.iteration_id, number=trial.number, seed_kind=seed_kind,
                                               config=config, host=self.host,
                                               gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
            spec = trial_spec(options, self.ctx_dict, config, self._guard(config))
            if best and seed_kind == "search":
                spec["prune_below"] = best * PRUNE_RATIO
            # A trial may not outlive the budget: the check still has to run after it.
            budget_bound = available < options.trial_timeout_s
            outcome = run_in_subprocess(spec, timeout_s=min(options.trial_timeout_s, available), env=self.env)
            if outcome.status == "timeout" and budget_bound:
                outcome.status = "interrupted"
                outcome.error = (f"stopped after {outcome.duration_s:.0f} s because the budget ran out; "
                                 "it says nothing about the configuration")
            store.end_trial(
                self.in_flight, status=outcome.status, duration_s=outcome.duration_s, metrics=outcome.metrics,
                error=outcome.error, exit_code=outcome.exit_code, signal=outcome.signal,
                stderr_tail=outcome.stderr_tail if outcome.status != "ok" else None,
            )
            self.in_flight = None
            tell(study, trial, outcome.status, outcome.metrics, self.memory_budget)
            seen[key] = (outcome.status, outcome.metrics)
            schedule.record(config, outcome.duration_s)
            done += 1
            if outcome.status == "ok":
                if schedule.is_costly(config):
                    steady = outcome.duration_s - float(outcome.metrics.get("first_step_s") or 0.0)
                    costly_steady.append(steady)
                    measure_s[key] = 1.5 * steady
                else:
                    eager_durations.append(outcome.duration_s)
                    measure_s[key] = outcome.duration_s
                if outcome.metrics.get("peak_memory_bytes", 0) <= self.memory_budget:
                    if outcome.metrics["samples_per_s"] > (best or 0.0):
                        best_key = key
                    best = max(best or 0.0, outcome.metrics["samples_per_s"])
                    successes.append((config, outcome.metrics["samples_per_s"]))
            self.reporter.trial_finished(done, outcome, best)

    # -- Check ------------------------------------------------------------------

    def check(self) -> tuple[CheckResult, Config | None, str]:
        options, store = self.options, self.store
        chosen = options.select.choose(store.trials(self.iteration_id, status="ok"), self.memory_budget)
        store.update_iteration(self.iteration_id, phase="check", chosen_trial_id=chosen.id if chosen else None,
                               chosen_config=chosen.config if chosen else None)
        challenger: Config | None = None
        why = ""
        if chosen is None:
            why = f"no trial succeeded within the memory budget ({self.memory_budget} bytes)"
        elif config_key(chosen.config) == config_key(self.incumbent.config):
            why = f"the best trial by {options.select} is the incumbent itself"
        else:
            challenger = chosen.config
        self.reporter.check_started(self.incumbent.config, challenger, options.check_repeats, why)

        def measure(role: str, round_: int, config: Config) -> TrialOutcome:
            self.wait_idle()
            outcome = run_in_subprocess(trial_spec(options, self.ctx_dict, config, self._guard(config)),
                                        timeout_s=options.trial_timeout_s, env=self.env)
            store.record_measurement(self.iteration_id, role=role, round=round_, config=config,
                                     status=outcome.status, metrics={**outcome.metrics, "duration_s": outcome.duration_s},
                                     error=outcome.error)
            self.reporter.check_measured(role, round_, outcome)
            return outcome

        return interleaved_check(measure, self.incumbent.config, challenger, options.check_repeats), challenger, why

    # -- Act --------------------------------------------------------------------

    def reference_throughputs(self, config: Config) -> list[float] | None:
        """The incumbent's throughputs in the newest earlier iteration that re-measured this very config."""
        key = config_key(config)
        for iteration in reversed(self.store.iterations_of(self.ctx.workload)):
            if iteration.id >= self.iteration_id or iteration.status != "completed":
                continue
            values = [m.samples_per_s for m in self.store.measurements(iteration.id)
                      if m.status == "ok" and m.samples_per_s and config_key(m.config) == key]
            if len(values) >= 2:
                return values
        return None

    def act(self, result: CheckResult, challenger: Config | None, why: str) -> Decision:
        decision = decide(result, challenger is not None, self.options.min_gain,
                          self.reference_throughputs(self.incumbent.config), why)
        applied: dict[str, Any] | None = None
        if decision.promoted:
            applied = {"config": challenger, "reason": "promoted", "note": decision.reason,
                       **self._medians("challenger")}
        elif self.incumbent.applied_id is None and "incumbent" not in result.failures:
            applied = {"config": self.incumbent.config, "reason": "baseline", "note": decision.reason,
                       **self._medians("incumbent")}
        estimate = result.estimate
        self.store.conclude_iteration(
            self.iteration_id, applied, decision=decision.decision, reason=decision.reason,
            speedup=estimate.ratio if estimate else None, speedup_low=estimate.low if estimate else None,
            speedup_high=estimate.high if estimate else None, regression=decision.regression,
            check={**result.to_dict(), **decision.to_dict(), "repeats": self.options.check_repeats,
                   "min_gain": self.options.min_gain, "incumbent_notes": self.incumbent.notes},
        )
        return decision

    def _medians(self, role: str) -> dict[str, Any]:
        rows = [m for m in self.store.measurements(self.iteration_id) if m.role == role and m.status == "ok"]
        out: dict[str, Any] = {}
        for column in ("samples_per_s", "peak_memory_bytes", "energy_per_sample_j"):
            values = [getattr(m, column) for m in rows if getattr(m, column) is not None]
            out[column] = statistics.median(values) if values else None
        if out["peak_memory_bytes"] is not None:
            out["peak_memory_bytes"] = int(out["peak_memory_bytes"])
        return out

    # -- the whole iteration ------------------------------------------------------

    def run(self) -> RunResult:
        try:
            self.plan()
            try:
                self.phase = "do"
                stop_reason = self.do()
                self.phase = "check"
                result, challenger, why = self.check()
                self.phase = "act"
                decision = self.act(result, challenger, why)
            except BaseException as exc:
                self._record_interruption(exc)
                raise
        finally:
            self._beating.set()
            shutil.rmtree(self.reference_dir, ignore_errors=True)
        return RunResult(self.iteration_id, self.ctx.workload, stop_reason, decision)

    def _record_interruption(self, exc: BaseException) -> None:
        in_flight = getattr(self, "in_flight", None)
        if in_flight is not None:
            self.store.end_trial(in_flight, status="interrupted", error="dstune run was interrupted during this trial")
        if isinstance(exc, DeviceBusy):
            self.store.finish_iteration(self.iteration_id, "deferred", phase=self.phase,
                                        error=f"deferred during the {self.phase} phase: {exc}; nothing was promoted")
        elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.store.finish_iteration(self.iteration_id, "interrupted", phase=self.phase,
                                        error=f"interrupted during the {self.phase} phase; nothing was promoted")
        else:
            self.store.finish_iteration(self.iteration_id, "failed", phase=self.phase,
                                        error=f"{type(exc).__name__} during the {self.phase} phase: {exc}")


def run_iteration(options: RunOptions, reporter: Reporter) -> RunResult:
    """Run one full Plan-Do-Check-Act iteration, holding the device's lock; return what it decided.

    Raises :class:`DeviceBusy` when the lock or the idle gate waited longer than allowed.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device()
    what = f"dstune run {options.workload_file}" + (f" for schedule {options.schedule_id}" if options.schedule_id else "")
    with hold_device(device, what, options.lock_timeout_s, reporter.message):
        return Iteration(options, reporter, device).run()
