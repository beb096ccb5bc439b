"""The Do phase: trials taken from one Optuna study by every slot of every process that joins it.

One loop serves a plain ``dstune run`` (one slot), ``dstune run --gpus
0,1,2,3`` (a thread per GPU slot, each trial a process pinned to its GPU)
and ``dstune worker`` on other hosts.  What they share lives in the
database, not in memory:

- the trial count: each trial is claimed with one conditional UPDATE
  (:meth:`Store.claim_trial`), so all processes together run at most
  ``--trials``;
- what has been measured: every process folds the iteration's trial rows
  into its view (duplicates told from what another host measured, the best
  so far for pruning, the durations the budget is planned from);
- the deadline: the coordinating run works out when trials must stop to
  leave time for the check, and writes it (``do_until``) for the workers;
- liveness: each running trial beats through Optuna's heartbeat, and any
  process calling Optuna's ``fail_stale_trials`` marks the trial of a worker
  that died, in Optuna and (:meth:`Store.mark_stale`) in dstune's table.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Sequence

import optuna

from dstune.context import TuneContext
from dstune.devices.slots import Slot
from dstune.knobs import Config, config_key
from dstune.plugin_calls import shrinker, smaller_config
from dstune.trial.launch import KILL_GRACE_S, run_in_subprocess
from dstune.trial.numerics import GuardSettings
from dstune.trial.records import TrialOutcome, TrialSpec
from dstune.units import budget_minutes, format_duration

from .budget import Budget
from .failures import Ban, FailureMemory
from .findings import Findings
from .heartbeats import heartbeat_settings, optuna_trial_id, trial_heartbeat
from .memory_model import MemoryModel
from .neighbourhood import (
    CONVERGED,
    MAX_TRIAL_SHARE,
    NEIGHBOUR,
    LocalSearch,
    Measured,
    Neighbourhood,
    costly_choices,
    costly_factors,
    trial_cost,
)
from .options import LOCAL, RunOptions, trial_spec
from .search import SEED_ATTR, CostAwareSchedule, SearchSpace, tell
from .windows import windows_message
from .workload_failure import workload_failure

if TYPE_CHECKING:
    from dstune.store import Store

log = logging.getLogger("dstune.do")

MAX_REPEATS = 40  # consecutive already-seen suggestions before the space counts as exhausted
MAX_UNAFFORDABLE = 10  # consecutive sampler proposals too long for the time left before the trials stop
PRUNE_RATIO = 0.25  # a trial whose warm-up shows under this fraction of the best is stopped early
MAX_INVALID_STREAK = 20  # configurations refused in a row before the trials stop (a plugin refusing everything)
MIN_TRIAL_S = 10.0  # no trial starts with less budget left than this (or a tenth of the budget)
UNSEEDED = frozenset({"search", "promoted", NEIGHBOUR})  # trials the search chose: an out-of-memory one is data
PROPOSED = frozenset({"search", NEIGHBOUR})  # the search's own proposals: their cost is weighed where they are made
# Trials stopped after warm-up when far slower than the best: not the baseline, whose figure the check needs.  A
# checklist whose one choice is emulated (bf16 on an AVX2 CPU) ran at 1/30 of the default for 97 s of a 3-min budget.
PRUNABLE = PROPOSED | {"checklist-eager", "checklist", "promoted"}
MEASURED_AS_THEY_ARE = frozenset({"default", "incumbent"})  # run even when predicted not to fit: they are the baseline
WORKLOAD_FAILS = "the workload fails"
STOP_PRIORITY = (WORKLOAD_FAILS, CONVERGED, "exhausted", "invalid", "budget", "trials", "ended")


@dataclass
class DoSetup:
    """What the Do phase needs: the same for the coordinating run and for a worker."""

    options: RunOptions
    store: Store
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    space: SearchSpace
    iteration_id: int
    ctx: TuneContext
    ctx_dict: dict[str, Any]
    pm: Any
    memory_budget: int
    env: dict[str, str]
    host: str
    environment_id: int | None
    reporter: Any
    guard: Callable[[Config], GuardSettings | None]
    invalid_reason: Callable[[Config], str | None]
    wait_idle: Callable[[Slot], None]
    budget: Budget  # the coordinator's clock and check costs; a worker's clock is the coordinator's deadline
    coordinator: bool = True
    earlier: tuple[tuple[Measured, ...], ...] = ()  # earlier iterations' successful trials, for knob effects
    earlier_durations: tuple[tuple[tuple[Config, float], ...], ...] = ()  # and their seconds, for costly choices
    memory: MemoryModel | None = None  # predicted peaks (dstune.run.memory_model), when measured


@dataclass
class TrialPool:
    """Runs the Do phase on ``slots`` (a thread each when there are several) and says why it stopped."""

    setup: DoSetup
    slots: Sequence[Slot]
    lock: threading.RLock = field(default_factory=threading.RLock)
    cancel: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[int, optuna.Trial] = field(default_factory=dict)  # trial row id -> its Optuna trial
    reasons: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        options = self.setup.options
        self.schedule = CostAwareSchedule(self.setup.space, options.trials, options.budget_s)
        self.found = Findings(self.schedule, self.setup.budget, self.setup.memory_budget, options.max_latency_s,
                              FailureMemory(frozenset(k.name for k in self.setup.space.knobs if k.tunable)),
                              self.setup.memory)
        self.rows: list[Any] = []
        self.iteration_row: Any = None
        self.repeats = self.invalid_streak = self.unaffordable = 0
        self.stop_reason: str | None = None
        self.published_until: float | None = None  # time.time() of the deadline last written for the workers
        self.closed = False
        self.warned_noise = False
        self.said_why_stopped = False  # several slots reach the budget's end: one says why
        self.left_at_start = self.setup.budget.left()  # when the Do phase began: no trial could ever get more
        space = self.setup.space
        self.cost_factors = costly_factors(space.knobs, self.setup.earlier_durations)
        self.local = LocalSearch(Neighbourhood(space.knobs, space.normalised, self.schedule.is_costly,
                                               factors=self.cost_factors),
                                 self.setup.earlier) if options.search == LOCAL else None

    # -- what every process has measured --------------------------------------------

    def sync(self) -> None:
        """Fold the iteration's trial rows (this process's and every other's) into what this one knows."""
        setup = self.setup
        optuna.storages.fail_stale_trials(setup.study)  # marks the trials of dead workers (see stale_marker)
        self.rows = list(setup.store.trials(setup.iteration_id))
        self.found.running = {config_key(r.config) for r in self.rows if r.status == "running"}
        for row in self.rows:
            if row.status != "running" and row.id not in self.found.folded:
                self._learn(self.found.fold(row))
        if not setup.coordinator:
            self.iteration_row = setup.store.iteration(setup.iteration_id)

    def _learn(self, lessons: tuple[list[Ban], str | None]) -> None:
        """Say what a crash or a peak taught; the coordinator records every ban and the corrected memory model."""
        bans, memory = lessons
        for ban in bans:
            self.setup.reporter.message(f"[learned] {ban.reason}")
        if memory:
            self.setup.reporter.message(f"[memory] {memory}")
        if not self.setup.coordinator:
            return
        if bans:
            self.setup.store.update_iteration(self.setup.iteration_id,
                                              learned=[b.to_dict() for b in self.found.failures.bans.values()])
        if memory and self.setup.memory is not None:
            self.setup.store.update_iteration(self.setup.iteration_id, memory_model=self.setup.memory.to_dict())

    # -- the budget -------------------------------------------------------------------

    def check_rounds(self, challenger_key: str | None) -> int:
        """Rounds the check can do in the budget left (see :meth:`Budget.check_rounds`)."""
        return self.setup.budget.check_rounds(challenger_key, self.found.best_key)

    def elapsed(self) -> float:
        if self.setup.coordinator or self.iteration_row is None:
            return self.setup.budget.elapsed()
        from dstune.utc import as_utc

        return (self._now() - as_utc(self.iteration_row.started_at)).total_seconds()

    @staticmethod
    def _now() -> Any:
        from dstune.utc import utcnow

        return utcnow()

    def available(self) -> float:
        """Seconds trials may still take; the coordinator decides it and writes it down for the workers."""
        setup = self.setup
        if not setup.coordinator:
            from dstune.utc import as_utc

            row = self.iteration_row
            if row is not None and row.do_until is not None:
                return (as_utc(row.do_until) - self._now()).total_seconds()
            return setup.options.budget_s - self.elapsed()
        if self.closed:
            return 0.0
        available = setup.budget.for_trials(self.found.best_key)
        until = time.time() + available
        if self.published_until is None or abs(until - self.published_until) > 1.0:
            setup.store.update_iteration(setup.iteration_id, do_until=self._now() + timedelta(seconds=available))
            self.published_until = until
        return available

    def ceiling(self) -> float:
        """The longest trial this iteration's budget lets the search start: a share (``MAX_TRIAL_SHARE``) of the
        time left when the trials began, less the check's reserve as it stands (a worker leaves that to the
        coordinator).  A trial of nearly all that time (an autotuning compile of six minutes in a ten-minute
        budget) would leave no time for the search around it, for a gain nobody has measured."""
        if not self.setup.coordinator:
            return float("inf")
        return MAX_TRIAL_SHARE * (self.left_at_start - self.setup.budget.check_reserve(self.found.best_key))

    def ended_elsewhere(self) -> bool:
        """A worker stops when the coordinating run has left the Do phase (or ended)."""
        row = self.iteration_row
        return row is not None and (row.status != "running" or row.phase != "do")

    # -- one slot ---------------------------------------------------------------------

    def _pick(self, available: float) -> tuple[optuna.Trial, Config, str] | str:
        """Ask until the study proposes a configuration worth running; or why the trials should stop."""
        setup = self.setup
        study, space = setup.study, setup.space
        while True:
            if self.local is not None:
                turn = self.local.before_ask(
                    study, space, self.found, refused=lambda c: bool(self.found.failures.banned(c) or
                                                                     setup.invalid_reason(c)),
                    say=setup.reporter.message, elapsed_s=self.elapsed(), budget_s=setup.options.budget_s,
                    available_s=available, ceiling_s=self.ceiling())
                if turn in (CONVERGED, "budget"):
                    return turn
            else:
                self.schedule.before_ask(study, self.found.finished, self.elapsed(), self.found.successes)
            trial = study.ask()
            config = space.config_from_trial(trial)
            seed_kind = trial.user_attrs.get(SEED_ATTR, "search")
            key = config_key(config)
            known = key in self.found.seen or key in self.found.running
            if key in self.found.seen:
                status, metrics = self.found.seen[key]
                tell(study, trial, status, metrics, setup.memory_budget, setup.options.max_latency_s)
            elif known:  # another slot or host is measuring it now
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            # Measured, running, or out of reach (which is as good as measured): nothing new.
            if known or self._beyond_time(trial, config, seed_kind, self._reach()):
                stop = self._nothing_new()
                if stop:
                    return stop
                continue
            self.repeats = 0
            if self._beyond_time(trial, config, seed_kind, available):
                self.unaffordable += 1
                if self.unaffordable >= MAX_UNAFFORDABLE:
                    setup.reporter.message(f"the sampler's last {self.unaffordable} proposals would each take longer "
                                           f"than the {available:.0f} s left for trials: stopping the trials")
                    return "budget"
                continue
            self.unaffordable = 0
            ban = self.found.failures.banned(config)
            reason = ban.reason if ban is not None else setup.invalid_reason(config)
            status = "invalid"
            if not reason and seed_kind not in MEASURED_AS_THEY_ARE:
                reason, status = self._too_big(config), "predicted_oom"
            if reason:
                metrics = {"predicted_peak_bytes": setup.memory.predict(config)} if status == "predicted_oom" else {}
                setup.store.record_trial(setup.iteration_id, number=trial.number, seed_kind=seed_kind, config=config,
                                         status=status, error=reason, host=setup.host, pid=os.getpid(),
                                         metrics=metrics)
                tell(study, trial, status, metrics, setup.memory_budget, setup.options.max_latency_s)
                self.found.seen[key] = (status, metrics)
                if status == "predicted_oom":
                    setup.reporter.message(f"[memory] not run: {reason.removeprefix('predicted: ')}")
                    if seed_kind not in UNSEEDED:  # a seed made too big by what trials taught: the size that fits
                        self._retry_smaller(config, seed_kind)
                self.invalid_streak += 1
                if self.invalid_streak >= MAX_INVALID_STREAK:
                    setup.reporter.message(f"[warning] {self.invalid_streak} configurations in a row were refused "
                                           f"(last: {reason}); stopping the trials")
                    return "invalid"
                continue
            if self._seed_beyond_time(trial, config, seed_kind, available):
                continue
            self.invalid_streak = 0
            if self.local is not None:
                self.local.proposed(seed_kind, self.local.neighbourhood.cost(config, self.found.durations)
                                    if self.found.durations else 0.0)
            return trial, config, seed_kind

    def _reach(self) -> float:
        """The longest sampler proposal worth starting: the budget's reach (:meth:`ceiling`), and during the local
        search's sampler turns, what is left of their share."""
        reach = self.ceiling()
        if self.local is not None and self.local.exhausted_at is not None:
            reach = min(reach, self.local.sampler_left(self.setup.options.budget_s))
        return reach

    def _say_why_the_budget_stops(self, available: float) -> None:
        """Say why the budget ends the trials: the seeds it left unrun, what a trial takes and the budget that
        would run them (DistilBERT on a 2-core CPU with --budget 2m ran its default trial in 93 s and stopped,
        without a word on why the checklist never ran); else the time kept for the check (augmented_images
        at --budget 10m on an H200 stopped its trials with 3:48 left and said nothing of why)."""
        if not self.setup.coordinator or not self.found.durations or self.said_why_stopped:
            return
        self.said_why_stopped = True
        budget, best = self.setup.budget, self.found.best_key
        waiting = self.setup.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        kinds = [t.user_attrs.get(SEED_ATTR) for t in waiting if t.user_attrs.get(SEED_ATTR) not in (None, "search")]
        if not kinds:
            self.setup.reporter.message(
                f"stopping the trials: {max(available, 0.0):.0f} s were left for them, too few to start one; "
                f"{format_duration(budget.check_reserve(best))} of the {format_duration(budget.left())} left are "
                f"kept for the check, whose rounds take about {format_duration(budget.round_s(best))} each")
            return
        typical = statistics.median(self.found.durations.values())
        # What has run, the seeds left, and the check's reserve (two rounds at least) as it stands now.
        needed = self.elapsed() + len(kinds) * typical + budget.check_reserve(best)
        self.setup.reporter.message(
            f"stopping the trials with {len(kinds)} seed(s) not run ({', '.join(dict.fromkeys(kinds))}): "
            f"{max(available, 0.0):.0f} s were left for trials, the check's time kept back, and a trial of this "
            f"workload has taken about {format_duration(typical)}; --budget {budget_minutes(needed)} or more "
            "would run them and the check")

    def _nothing_new(self) -> str | None:
        """Count a proposal that brings nothing new within reach; once MAX_REPEATS came in a row, why the trials
        stop: the local search's sampler turns found nothing, so it has converged; else the space is exhausted."""
        setup = self.setup
        self.repeats += 1
        if self.repeats < MAX_REPEATS:
            return None
        if self.local is not None and self.local.exhausted_at is not None:
            setup.reporter.message(self.local.end_sentence(
                self.found.finished, self.elapsed(), setup.options.budget_s,
                "the sampler proposes only configurations measured already or beyond the budget's reach"))
            return self.local.ending
        setup.reporter.message("every configuration the search proposes has been measured already: stopping")
        return "exhausted"

    def _beyond_time(self, trial: optuna.Trial, config: Config, seed_kind: str, seconds: float) -> bool:
        """A sampler proposal of the local search expected to take longer than ``seconds`` (the time left for
        trials: a compile with two minutes left; or the budget's reach, :meth:`ceiling`) is not started only to be
        cut off: it is told to the study as failed, unrecorded."""
        if self.local is None or seed_kind != "search" or not self.found.durations:
            return False
        if self.local.neighbourhood.cost(config, self.found.durations) <= seconds:
            return False
        self.setup.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return True

    def _seed_beyond_time(self, trial: optuna.Trial, config: Config, seed_kind: str, seconds: float) -> bool:
        """A seed expected to take longer than the ``seconds`` left for trials is not started only to be cut off,
        and the run says what budget would run it.  bert_infer at ``--budget 2m`` on an H200 started its compiled
        checklist seed with 10 s left for trials (its eager trials had taken 7 and 22 s, so a compile was due to
        take about a minute and a half): the budget stopped it after those 10 s, which told nothing.  The
        baseline (``MEASURED_AS_THEY_ARE``) always runs; the search's own proposals are weighed elsewhere."""
        if seed_kind in MEASURED_AS_THEY_ARE or seed_kind in PROPOSED or not self.found.durations:
            return False
        setup = self.setup
        cost = trial_cost(setup.space.knobs, config, self.found.durations, self.cost_factors)
        if cost <= seconds:
            return False
        setup.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        costly = ", ".join(f"{name}={value}" for name, value in costly_choices(setup.space.knobs, config))
        if self.local is not None and not costly:  # its eager choices unmeasured: the search cannot converge
            self.local.unrun_seeds.append(seed_kind)
        needed = self.elapsed() + cost + setup.budget.check_reserve(self.found.best_key)
        setup.reporter.message(
            f"not starting the {seed_kind} seed{f' ({costly})' if costly else ''}: about {format_duration(cost)}, "
            f"longer than the {format_duration(max(seconds, 0.0))} left for trials, the check's time kept back; "
            f"--budget {budget_minutes(needed)} or more would run it")
        return True

    def _warn_if_noisy(self, outcome: TrialOutcome) -> None:
        """Say why a trial's timed windows disagree (``run/windows``): a busy machine is warned of once."""
        said = windows_message(outcome.metrics) if outcome.status == "ok" else None
        if said is None or (said[1] and self.warned_noise):
            return
        self.warned_noise = self.warned_noise or said[1]
        self.setup.reporter.message(said[0])

    def _workload_fails(self) -> bool:
        """The default configuration and another one failed alike, and nothing ran: the workload fails as written
        (``run/workload_failure``), so further trials would only fail the same way."""
        setup = self.setup
        ended = [r for r in self.rows if r.status not in ("running", "invalid", "predicted_oom")]
        if len(ended) < 2 or not any(r.seed_kind == "default" for r in ended):
            return False
        return workload_failure(self.rows, setup.options.workload_file) is not None

    def _too_big(self, config: Config) -> str | None:
        """Why the memory model says ``config`` would not fit (a sentence beginning "predicted"), or None."""
        return self.setup.memory.exceeds(config) if self.setup.memory is not None else None

    def _slot_loop(self, slot: Slot) -> str:
        setup, options = self.setup, self.setup.options
        while True:
            if self.stop_reason or self.cancel.is_set():
                return self.stop_reason or "interrupted"
            setup.wait_idle(slot)
            with self.lock:
                self.sync()
                if self.stop_reason:
                    return self.stop_reason
                if self.ended_elsewhere():
                    return "ended"
                available = self.available()
                if available < min(MIN_TRIAL_S, options.budget_s / 10):
                    row = self.iteration_row
                    if row is not None and row.trials_claimed >= options.trials:
                        return "trials"
                    self._say_why_the_budget_stops(available)
                    return "budget"
                claim = setup.store.claim_trial(setup.iteration_id, options.trials)
                if claim is None:
                    return "trials"
                picked = self._pick(available)
                if isinstance(picked, str):
                    setup.store.release_claim(setup.iteration_id)
                    self.stop_reason = picked
                    return picked
                trial, config, seed_kind = picked
                heartbeat = trial_heartbeat(setup.storage, setup.study, trial.number)
                expected = (trial_cost(setup.space.knobs, config, self.found.durations, self.cost_factors)
                            if self.found.durations else None)
                setup.reporter.trial_started(claim, config, seed_kind, expected_s=expected)
                row_id = setup.store.begin_trial(
                    setup.iteration_id, number=trial.number, seed_kind=seed_kind, config=config, host=setup.host,
                    gpu=slot.label, pid=os.getpid(), gpu_model=slot.device.model,
                    environment_id=setup.environment_id)
                self.in_flight[row_id] = trial
                spec = trial_spec(options, setup.ctx_dict, config, setup.guard(config),
                                  prune_below=self.found.best * PRUNE_RATIO if self.found.best and seed_kind in PRUNABLE else None)
            with heartbeat:
                outcome = self._run(spec, slot, available)
            with self.lock:
                if row_id not in self.in_flight:  # the run was interrupted meanwhile, and interrupt() recorded it
                    return "interrupted"
                predicted = setup.memory.predict(config) if setup.memory is not None else None
                forecast = {"predicted_peak_bytes": predicted, "expected_duration_s": expected}
                setup.store.end_trial(
                    row_id, status=outcome.status, duration_s=outcome.duration_s,
                    metrics={**outcome.metrics, **{k: v for k, v in forecast.items() if v is not None}},
                    error=outcome.error, exit_code=outcome.exit_code, signal=outcome.signal,
                    stderr_tail=outcome.stderr_tail if outcome.status != "ok" else None,
                )
                del self.in_flight[row_id]
                self._tell(trial, outcome)
                self.sync()
                setup.reporter.trial_finished(self.found.finished, outcome, self.found.best, number=claim)
                self._warn_if_noisy(outcome)
                if self._workload_fails():
                    self.stop_reason = WORKLOAD_FAILS
                    return WORKLOAD_FAILS
                if outcome.status == "oom" and seed_kind not in UNSEEDED:
                    self._retry_smaller(config, seed_kind)

    def _retry_smaller(self, config: Config, seed_kind: str) -> None:
        """A seed that ran out of memory (or is now predicted to) is tried again as the plugins shrink it, so it
        settles on what fits."""
        setup = self.setup
        smaller = smaller_config(setup.pm, setup.space.knobs, config, setup.ctx)
        if isinstance(smaller, str):
            setup.reporter.message(f"[warning] {smaller}")
            return
        if smaller is not None and setup.memory is not None:  # past the sizes the corrected model rules out
            smaller = setup.memory.fit(smaller, shrinker(setup.pm, setup.space.knobs, setup.ctx))
        if smaller is None or config_key(smaller) in self.found.seen or config_key(smaller) in self.found.running:
            return
        setup.study.enqueue_trial(setup.space.params(smaller), user_attrs={SEED_ATTR: seed_kind},
                                  skip_if_exists=True)
        changes = ", ".join(f"{k}={smaller[k]}" for k in smaller if smaller[k] != config.get(k))
        why = "ran out of memory" if self.found.seen.get(config_key(config), ("",))[0] == "oom" else "would not fit"
        setup.reporter.message(f"the {seed_kind} configuration {why}; trying it with {changes}")

    def _run(self, spec: TrialSpec, slot: Slot, available: float) -> TrialOutcome:
        """Run one trial in its own process on the slot's GPU; a trial may not outlive the budget."""
        options = self.setup.options
        budget_bound = available < options.trial_timeout_s
        outcome = run_in_subprocess(spec, timeout_s=min(options.trial_timeout_s, available),
                                    env={**self.setup.env, **slot.env},
                                    cancel=self.cancel if len(self.slots) > 1 else None)
        if outcome.status == "timeout" and budget_bound:
            outcome.status = "interrupted"
            outcome.error = (f"stopped after {outcome.duration_s:.0f} s because the budget ran out; "
                             "it says nothing about the configuration")
        return outcome

    def _tell(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        try:
            tell(self.setup.study, trial, outcome.status, outcome.metrics, self.setup.memory_budget,
                 self.setup.options.max_latency_s)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Declared stale while this process was cut off; its dstune row keeps what was measured.
            log.warning("Optuna trial %s was already failed as stale; its result is kept in dstune's table only",
                        trial.number)

    def _slot_thread(self, slot: Slot) -> None:
        try:
            self.reasons.append(self._slot_loop(slot))
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the main thread
            self.errors.append(exc)
            self.cancel.set()

    # -- the whole phase ----------------------------------------------------------------

    def run(self) -> str:
        """Run trials until the count, the budget or the search runs out; why it stopped.

        One slot runs in the calling thread, as a plain run always has.  With
        several, an interrupt in the main thread cancels every slot's trial,
        each recorded as interrupted, before it propagates.
        """
        if len(self.slots) == 1:
            return self._slot_loop(self.slots[0])
        threads = [threading.Thread(target=self._slot_thread, args=(slot,), name=f"dstune-slot-{slot.label}",
                                    daemon=True) for slot in self.slots]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except BaseException:
            self.cancel.set()
            for thread in threads:
                thread.join()
            raise
        if self.errors:
            raise self.errors[0]
        return min(self.reasons, key=lambda r: STOP_PRIORITY.index(r) if r in STOP_PRIORITY else len(STOP_PRIORITY))

    def close(self) -> None:
        """End the Do phase for every process: the deadline becomes now, so no worker starts another trial."""
        self.closed = True
        self.setup.store.update_iteration(self.setup.iteration_id, do_until=self._now())

    def wait_for_others(self, poll_s: float = 1.0) -> None:
        """After :meth:`close`: wait until the trials other processes run have ended or gone stale.

        Workers bound their trials by the deadline the coordinator wrote and
        by the trial timeout, so this ends soon after the slowest of them; a
        worker that died is found by Optuna's heartbeat within the grace
        period.  A trial still running well past its timeout (its worker
        alive but cut off from the database) is marked stale.
        """
        from dstune.utc import as_utc

        setup = self.setup
        _, grace = heartbeat_settings()
        overdue = timedelta(seconds=setup.options.trial_timeout_s + 2 * KILL_GRACE_S + grace + 30.0)
        announced: set[int] = set()
        while True:
            with self.lock:
                self.sync()
            running = [r for r in self.rows if r.status == "running" and r.id not in self.in_flight]
            if not running:
                return
            new = [r for r in running if r.id not in announced]
            if new:
                where = ", ".join(sorted({f"{r.host} GPU {r.gpu or '-'} (pid {r.pid})" for r in new}))
                setup.reporter.message(f"waiting for {len(new)} trial(s) running on other workers: {where}")
                announced.update(r.id for r in new)
            for row in running:
                if self._now() > as_utc(row.started_at) + overdue:
                    setup.store.mark_stale(setup.study.study_name, row.number,
                                           "its worker did not report it within its timeout")
                    try:
                        setup.storage.set_trial_state_values(
                            optuna_trial_id(setup.storage, setup.study.study_name, row.number),
                            state=optuna.trial.TrialState.FAIL)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        pass  # its worker told it in the meantime
            time.sleep(poll_s)

    def interrupt(self) -> None:
        """Record the trials still in flight as interrupted (the run was stopped), in dstune and in Optuna.

        Under the slots' lock: a slot ending its trial at the same moment records it either before (and it is no
        longer in flight) or after (and finds it recorded); unlocked, a Ctrl-C during two slots' trials once ended
        the run with a KeyError and exit 1, not 130.
        """
        with self.lock:
            for row_id, trial in list(self.in_flight.items()):
                self.setup.store.end_trial(row_id, status="interrupted",
                                           error="dstune run was interrupted during this trial")
                try:
                    self.setup.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                except Exception:  # noqa: BLE001 - already told by its slot, or the storage is gone
                    pass
                del self.in_flight[row_id]
