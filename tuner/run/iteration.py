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

The run holds its devices' locks (:mod:`dstune.devices.lock`) from the probe
to the decision, so no two iterations ever measure on one GPU at once.
With ``--gpus`` the Do phase runs a trial on each GPU at once, and
``dstune worker`` processes on other hosts may join it through the shared
database (:mod:`dstune.run.do`); Plan, Check and Act stay here, on the
first GPU, and compare only trials measured on that GPU's model.
With an idle gate (:mod:`dstune.devices.idle_gate`, as the daemon runs it), each
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
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import optuna

from dstune.compile_cache import compile_cache_env
from dstune.context import TuneContext
from dstune.devices.idle_gate import IdleGate
from dstune.devices.lock import DeviceBusy
from dstune.devices.processes import process_alive
from dstune.devices.slots import Slot, hold_slots, resolve_slots
from dstune.environment_diff import diff_facts
from dstune.errors import UsageError
from dstune.heartbeat import Heartbeat
from dstune.knobs import Config, Knob, checklist_config, config_key, default_config, describe_config
from dstune.plugin_calls import applicable_knobs, invalid_reason, pin_except, shrinker
from dstune.plugin_manager import plugin_manager
from dstune.trial.fingerprint import fingerprint_hash
from dstune.trial.launch import run_in_subprocess
from dstune.trial.numerics import check_overrides
from dstune.trial.records import TrialOutcome
from dstune.units import format_bytes, format_latency, parse_memory_budget

from .act import Decision, decide
from .budget import Budget, CheckClock
from .check import CheckResult, check_noise, interleaved_check
from .do import DoSetup, TrialPool
from .heartbeats import study_storage
from .memory_model import MemoryModel
from .memory_plan import measure_model
from .options import RunOptions, guard_for, trial_spec
from .plan import Incumbent, adapt_config, copy_trials, earlier_trials, probe
from .search import SearchSpace, create_study, enqueue_seeds
from .selection import WITHIN_NOISE, faster_within_noise
from .workload_failure import workload_failure

__all__ = ["RunOptions", "RunResult", "compile_cache_env", "probe", "run_iteration"]

log = logging.getLogger("dstune.run")

HEARTBEAT_S = 10.0  # how often a running iteration says it is alive (see Store.recover_stale)


class Reporter(Protocol):
    """What the run tells the user while it goes (the CLI's progress display)."""

    def started(self, workload: str, ctx: TuneContext, knobs: Sequence[Knob], trials: int, budget_s: float,
                elapsed_s: float = 0.0) -> None: ...
    def trial_started(self, index: int, config: Config, seed_kind: str, expected_s: float | None = None) -> None: ...
    def trial_finished(self, index: int, outcome: TrialOutcome, best_samples_per_s: float | None,
                       number: int | None = None) -> None: ...
    def message(self, text: str) -> None: ...
    def check_started(self, incumbent: Config, challenger: Config | None, repeats: int, why: str, most: int = 0
                      ) -> None: ...
    def check_measured(self, role: str, round_: int, outcome: TrialOutcome) -> None: ...
    def planned(self, previous_id: int | None, diff: list[dict[str, Any]], incumbent: Incumbent, copied: int
                ) -> None: ...


@dataclass
class RunResult:
    iteration_id: int
    workload: str
    stop_reason: str
    decision: Decision | None = None
    workload_error: str | None = None  # every trial failed with the workload's own error (run/workload_failure)


class Iteration:
    """One iteration while it runs: the phases are methods, the state they share is attributes."""

    def __init__(self, options: RunOptions, reporter: Reporter, slots: list[Slot]) -> None:
        from dstune.store import Store

        self.options, self.reporter, self.slots = options, reporter, slots
        self.gates = {slot: IdleGate(slot.device, options.gate) for slot in slots} if options.gate else {}
        self.gpu_model = slots[0].device.model
        self.pool: TrialPool | None = None
        self.check_repeats = options.check_repeats  # the check's rounds: fewer when the budget left is short
        self.heartbeat: Heartbeat | None = None
        self.store = Store(options.db)
        self.plugins = plugin_manager(options.disabled_plugins, strict=options.strict_plugins)
        self.host = socket.gethostname()
        self.budget = Budget(options.budget_s, options.check_repeats)
        self.phase = "plan"
        self.env: dict[str, str] = {}
        self.reference_dir = tempfile.mkdtemp(prefix="dstune-references-")
        self.memory: MemoryModel | None = None
        self.workload_error: str | None = None

    # -- Plan -------------------------------------------------------------------

    def plan(self) -> None:
        options, store = self.options, self.store
        for problem in self.plugins.problems:
            self.reporter.message(f"[warning] {problem}")
        probed = probe(options, env=self.slots[0].env)
        self.ctx_dict = probed["ctx"]
        self.ctx = ctx = TuneContext.from_dict(self.ctx_dict)
        if options.max_latency_s is not None and ctx.mode != "inference":
            raise UsageError(
                f"--max-latency {format_latency(options.max_latency_s)}: workload {ctx.workload!r} in "
                f"{options.workload_file} trains ({ctx.mode} mode), and only inference steps have a latency to "
                "keep within. Leave --max-latency out, or declare a serving workload with "
                "@dstune.workload(mode=\"inference\").")
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
        self.guard = guard_for(options, knobs, self.reference_dir)
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
        self.budget.incumbent_key = config_key(incumbent.config)
        self.budget.past_measure_s = statistics.median(past) if past else None
        if options.wants_memory_model(ctx.is_cuda):  # before the iteration is recorded: it may refuse the budget
            self.memory = measure_model(options, ctx, self.ctx_dict, knobs, self.plugins.pm, self.memory_budget,
                                        {**compile_cache_env(ctx.workload), **self.slots[0].env},
                                        lambda config: invalid_reason(self.plugins.pm, config, ctx),
                                        self.reporter.message)
            if self.memory is not None:
                self._refuse_a_budget_nothing_fits(self.memory)
        self.iteration_id = store.start_iteration(
            workload_id=workload_id, environment_id=environment_id, study_name="", phase="plan",
            host=self.host, pid=os.getpid(), context=self.ctx_dict, memory_budget_bytes=self.memory_budget,
            knobs=[{"name": k.name, "plugin": k.plugin, "choices": list(k.choices), "default": k.default,
                    "checklist": k.checklist} for k in knobs],
            default_config=self.defaults, checklist_config=checklist,
            options=options.to_record(ctx.workload, [slot.label for slot in self.slots]),
            gpu_model=self.gpu_model,
            previous_iteration_id=previous.id if previous else None, fingerprint_diff=diff,
            incumbent_config=incumbent.config, incumbent_source=incumbent.source, select_policy=str(options.select),
            schedule_id=options.schedule_id,
        )
        self.heartbeat = Heartbeat(lambda: store.iteration_heartbeat(self.iteration_id), HEARTBEAT_S,
                                   f"iteration {self.iteration_id}").start()
        study_name = options.study_name or f"{ctx.workload}-it{self.iteration_id}"
        store.update_iteration(self.iteration_id, study_name=study_name)
        self.environment_id = environment_id
        self.storage = study_storage(store)
        self.study = create_study(self.storage, study_name, options.seed, options.trials)
        self.env = {**compile_cache_env(ctx.workload), "DSTUNE_ITERATION": str(self.iteration_id)}
        if self.memory is not None:
            store.update_iteration(self.iteration_id, memory_model=self.memory.to_dict())
        seeds: list[tuple[str, Config]] = []
        if incumbent.applied_id is not None:
            seeds.append(("incumbent", incumbent.config))
        if previous is not None and previous.chosen_config:
            seeds.append(("previous", adapt_config(previous.chosen_config, knobs)[0]))
        seeds.append(("default", default_config(knobs)))
        eager = self.space.normalised({**checklist, **{k.name: k.default for k in knobs if k.costly and k.tunable}})
        if eager != self.space.normalised(checklist):
            # The checklist without its costly choices: cheap, the local search's centre, the twin the compiled
            # checklist is costed from, and a gain on record should the budget cut that one short (the sampler
            # without it kept a 336M Qwen2's default on an H200: its compiled checklist ran out of the budget).
            seeds.append(("checklist-eager", eager))
        seeds.append(("checklist", checklist))
        enqueue_seeds(self.study, self.space, [(kind, self._sized(kind, config)) for kind, config in seeds])
        copied = 0
        if previous is not None and not diff and previous.study_name:
            copied = self._copy_previous_trials(previous.study_name)
        # Only now may workers join (they wait for this phase): the study exists and its seeds come first.
        store.update_iteration(self.iteration_id, phase="do")
        self.reporter.planned(store.iteration_number(previous.id) if previous else None, diff, incumbent, copied)
        self.reporter.started(ctx.workload, ctx, knobs, options.trials, options.budget_s, self.budget.elapsed())

    def _refuse_a_budget_nothing_fits(self, memory: MemoryModel) -> None:
        """A memory budget below what the smallest micro-batch needs in every variant leaves nothing to run."""
        smallest = memory.smallest_peak()
        if smallest is None or smallest[0] <= self.memory_budget:
            return
        peak, where = smallest
        given = self.options.memory_budget
        raise UsageError(
            f"--memory-budget {given} ({format_bytes(self.memory_budget)}) is below what workload "
            f"{self.ctx.workload!r} needs at its smallest: {format_bytes(peak)} ({where}), as measured before the "
            "trials. Give a budget above that, or leave --memory-budget out (90% of the device's memory).")

    def _sized(self, kind: str, config: Config) -> Config:
        """A seed the search chose (not the default or incumbent, which are measured as they are), shrunk until
        the memory model predicts it fits: the tuning guide's "largest batch that fits" without the failures."""
        if self.memory is None or kind in ("default", "incumbent"):
            return config

        sized = self.memory.fit(config, shrinker(self.plugins.pm, self.space.knobs, self.ctx))
        if sized is None:
            self.reporter.message(f"[memory] the {kind} seed is predicted not to fit at any micro-batch; it runs as "
                                  "it is, to find out")
            return config
        if sized != config:
            changes = ", ".join(f"{k}={sized[k]}" for k in sized if sized[k] != config.get(k))
            self.reporter.message(f"[memory] the {kind} seed starts at {changes}, the largest predicted to fit")
        return sized

    def wait_idle(self, slot: Slot) -> None:
        """Hold the slot's next trial until its device is idle; the wait does not use up the budget."""
        gate = self.gates.get(slot)
        if gate is None:
            return
        with self.budget.not_counting():
            gate.wait(self.reporter.message)

    def _same_model(self, gpu_model: str | None) -> bool:
        """Whether a row measured on ``gpu_model`` compares with this run (rows from before schema 6 name none)."""
        return gpu_model in (None, self.gpu_model)

    def _incumbent(self) -> Incumbent:
        applied = self.store.applied(self.ctx.workload, self.gpu_model)
        if applied is None:
            return Incumbent(dict(self.defaults), "default configuration (nothing applied yet)")
        config, notes = adapt_config(applied.config, self.knobs)
        from_iteration = applied.iteration_id or applied.source_iteration_id
        where = f" of iteration {self.store.iteration_number(from_iteration)}" if from_iteration else ""
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

    def do(self) -> str:
        """Trials on every slot (and on the workers that join), until the count, budget or search runs out."""
        earlier, durations = earlier_trials(self.store, self.ctx.workload, self.gpu_model, self.iteration_id)
        setup = DoSetup(
            options=self.options, store=self.store, storage=self.storage, study=self.study, space=self.space,
            iteration_id=self.iteration_id, ctx=self.ctx, ctx_dict=self.ctx_dict, pm=self.plugins.pm,
            memory_budget=self.memory_budget, env=self.env, host=self.host, environment_id=self.environment_id,
            reporter=self.reporter, guard=self.guard,
            invalid_reason=lambda config: invalid_reason(self.plugins.pm, config, self.ctx),
            wait_idle=self.wait_idle, budget=self.budget, coordinator=True,
            earlier=earlier, earlier_durations=durations,
            memory=self.memory,
        )
        self.pool = pool = TrialPool(setup, self.slots)
        stop_reason = pool.run()
        pool.close()
        pool.wait_for_others()
        return stop_reason

    # -- Check ------------------------------------------------------------------

    def check(self) -> tuple[CheckResult, Config | None, str]:
        options, store = self.options, self.store
        # Throughput means something only on the GPU model it was measured on: the check runs on this one.
        ok = [t for t in store.trials(self.iteration_id, status="ok") if self._same_model(t.gpu_model)]
        self.workload_error = None if ok else workload_failure(store.trials(self.iteration_id), options.workload_file)
        if self.workload_error is not None:  # the incumbent would fail as every trial did: nothing to check
            why = "no trial ran: the workload fails by itself (below), so there is nothing to check"
            store.update_iteration(self.iteration_id, phase="check")
            self.check_repeats = 0
            return CheckResult(), None, why
        chosen = options.select.choose(ok, self.memory_budget, options.max_latency_s, self.incumbent.config)
        store.update_iteration(self.iteration_id, phase="check", chosen_trial_id=chosen.id if chosen else None,
                               chosen_config=chosen.config if chosen else None)
        challenger: Config | None = None
        why = ""
        if not ok:
            why = "no trial ran to the end"
        elif chosen is None:
            why = f"no trial succeeded within the memory budget ({format_bytes(self.memory_budget)})" + (
                f" and a p99 latency of {format_latency(options.max_latency_s)}" if options.max_latency_s else "")
        elif config_key(chosen.config) == config_key(self.incumbent.config):
            why = f"the best trial by {options.select} is the incumbent itself"
            faster = (faster_within_noise(ok, chosen, self.memory_budget, options.max_latency_s)
                      if options.select.name == "max-throughput" else None)
            if faster is not None:
                why += (f": the fastest, {describe_config(faster.config, self.incumbent.config)} at "
                        f"{faster.samples_per_s:,.1f} samples/s, ran within {WITHIN_NOISE:.0%} of its "
                        f"{chosen.samples_per_s:,.1f}, closer than one trial each can tell apart")
        else:
            challenger = chosen.config
        repeats = (self.pool.check_rounds(config_key(challenger) if challenger else None)
                   if self.pool is not None else options.check_repeats)
        self.check_repeats = repeats
        best_key = config_key(challenger) if challenger else self.pool.found.best_key if self.pool else ""
        # Without a challenger a round measures the incumbent alone.
        clock = CheckClock(self.budget, self.budget.round_s(best_key) if challenger else
                           self.budget.incumbent_s(best_key), may_overrun=challenger is not None)
        affordable = clock.may_start(0)  # else the check is announced as measuring nothing, not as N rounds
        self.reporter.check_started(self.incumbent.config, challenger, repeats if affordable else 0, why,
                                    options.check_repeats)

        slot = self.slots[0]

        def measure(role: str, round_: int, config: Config) -> TrialOutcome:
            self.wait_idle(slot)
            timeout_s = clock.timeout_s(options.trial_timeout_s)
            outcome = run_in_subprocess(trial_spec(options, self.ctx_dict, config, self.guard(config)),
                                        timeout_s=timeout_s, env={**self.env, **slot.env})
            clock.measured(outcome.duration_s)
            if outcome.status == "timeout" and timeout_s < options.trial_timeout_s:
                outcome.status = "interrupted"
                outcome.error = f"stopped after {outcome.duration_s:.0f} s: the budget ran out"
            store.record_measurement(self.iteration_id, role=role, round=round_, config=config,
                                     status=outcome.status, metrics={**outcome.metrics, "duration_s": outcome.duration_s},
                                     error=outcome.error)
            self.reporter.check_measured(role, round_, outcome)
            return outcome

        result = interleaved_check(measure, self.incumbent.config, challenger, repeats, clock.may_start,
                                   options.min_gain, most=options.check_repeats)
        if result.cut and affordable:
            self.reporter.message(f"the check stopped early: {result.cut}")
        if result.settled:
            self.reporter.message(f"the check {result.settled}")
        incumbent_key = config_key(self.incumbent.config)  # its trial's figure, where this iteration ran one
        incumbent_trial = max((t.samples_per_s for t in ok
                               if t.samples_per_s and config_key(t.config) == incumbent_key), default=None)
        noise = check_noise(result, {"challenger": chosen.samples_per_s if chosen is not None and challenger else None,
                                     "incumbent": incumbent_trial})
        if noise:
            self.reporter.message(f"[warning] {noise[0]}: the machine was not quiet, so the decision below rests on "
                                  f"unreliable figures. {noise[1]}.")
        return result, challenger, why

    # -- Act --------------------------------------------------------------------

    def reference_throughputs(self, config: Config) -> list[float] | None:
        """The incumbent's throughputs in the newest earlier iteration that re-measured this very config."""
        key = config_key(config)
        for iteration in reversed(self.store.iterations_of(self.ctx.workload)):
            if (iteration.id >= self.iteration_id or iteration.status != "completed"
                    or not self._same_model(iteration.gpu_model)):
                continue
            values = [m.samples_per_s for m in self.store.measurements(iteration.id)
                      if m.status == "ok" and m.samples_per_s and config_key(m.config) == key]
            if len(values) >= 2:
                return values
        return None

    def act(self, result: CheckResult, challenger: Config | None, why: str) -> Decision:
        decision = decide(result, challenger is not None, self.options.min_gain,
                          self.reference_throughputs(self.incumbent.config), why, self.options.max_latency_s,
                          {role: self._median_latency(role) for role in ("incumbent", "challenger")})
        applied: dict[str, Any] | None = None
        if decision.promoted:
            applied = {"config": challenger, "reason": "promoted", "note": decision.reason,
                       "gpu_model": self.gpu_model, **self._medians("challenger")}
        elif self.incumbent.applied_id is None and "incumbent" not in result.failures and self.workload_error is None:
            applied = {"config": self.incumbent.config, "reason": "baseline", "note": decision.reason,
                       "gpu_model": self.gpu_model, **self._medians("incumbent")}
        estimate = result.estimate
        self.store.conclude_iteration(
            self.iteration_id, applied, decision=decision.decision, reason=decision.reason,
            speedup=estimate.ratio if estimate else None, speedup_low=estimate.low if estimate else None,
            speedup_high=estimate.high if estimate else None, regression=decision.regression,
            check={**result.to_dict(), **decision.to_dict(), "repeats": self.check_repeats,
                   "min_gain": self.options.min_gain, "incumbent_notes": self.incumbent.notes},
            **({"error": f"the workload fails by itself: {self.workload_error}"} if self.workload_error else {}),
        )
        return decision

    def _check_rows(self, role: str) -> list[Any]:
        """One side's successful check rounds."""
        return [m for m in self.store.measurements(self.iteration_id) if m.role == role and m.status == "ok"]

    def _median_latency(self, role: str) -> float | None:
        """The median p99 latency of one side's check rounds (None for training, or when none ran)."""
        values = [v for m in self._check_rows(role) if (v := m.metrics.get("latency_p99_s")) is not None]
        return statistics.median(values) if values else None

    def _medians(self, role: str) -> dict[str, Any]:
        rows = self._check_rows(role)
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
            if self.heartbeat is not None:
                self.heartbeat.stop()
            shutil.rmtree(self.reference_dir, ignore_errors=True)
        return RunResult(self.iteration_id, self.ctx.workload, stop_reason, decision, self.workload_error)

    def _record_interruption(self, exc: BaseException) -> None:
        if self.pool is not None:
            self.pool.interrupt()
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
    from dstune.store import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Store(options.db)  # a store that cannot be opened is a usage error now, not after waiting for a device
    slots = resolve_slots(options.gpus, reporter.message, options.world_size)
    what = f"dstune run {options.workload_file}" + (f" for schedule {options.schedule_id}" if options.schedule_id else "")
    with hold_slots(slots, what, options.lock_timeout_s, reporter.message):
        return Iteration(options, reporter, slots).run()
