"""The budget of one iteration: what is spent, what the check will need, what the trials may still take.

``--budget`` covers the whole iteration.  The Do phase stops its trials
early enough for the check, which measures incumbent and challenger again
in rounds; what a round costs is learned from the trials themselves.  Time
spent waiting for an idle device (the daemon's gate) is not counted: the
budget is for tuning, not for waiting on somebody else's job.

One :class:`Budget` is made when the iteration starts and handed to every
phase, so the accounting lives in one object rather than in the phases.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

CHECK_RESERVE_FACTOR = 1.25  # the check's reserve is its rounds' cost plus a quarter for slack
MAX_CHECK_SHARE = 0.35  # the most of the budget held back from the trials for the check
MIN_CHECK_ROUNDS = 2  # an interval needs two rounds; the check does at least these, even over the budget
COSTLY_MEASURE_FACTOR = 1.5  # a compiled trial re-measured: its steady part, plus half again for the cache load
OVERRUN_SHARE, OVERRUN_MIN_S = 0.05, 30.0  # what a run may end past its budget: 5% of it, or 30 s if more


@dataclass
class Budget:
    """Seconds of one iteration, and the measured costs the check is planned from."""

    budget_s: float
    check_repeats: int
    incumbent_key: str = ""
    past_measure_s: float | None = None  # median check measurement of the previous iteration
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    started: float = -1.0  # clock() when the iteration started (set on creation)
    waited_s: float = 0.0  # time spent waiting for an idle device: not counted
    measure_s: dict[str, float] = field(default_factory=dict)  # what re-measuring a config costs, by config key
    eager_s: list[float] = field(default_factory=list)  # durations of successful cheap trials
    costly_steady_s: list[float] = field(default_factory=list)  # successful costly trials, first step left out
    unfinished_s: dict[str, float] = field(default_factory=dict)  # how long a failed trial of a config ran, by key

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    # -- the clock ----------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of the iteration so far, waits for an idle device left out."""
        return self.clock() - self.started - self.waited_s

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    @property
    def overrun_s(self) -> float:
        """How far past ``budget_s`` the iteration may end: the promise is the budget plus this."""
        return max(OVERRUN_SHARE * self.budget_s, OVERRUN_MIN_S)

    def pays_for(self, seconds: float) -> bool:
        """Whether something taking ``seconds`` still ends within the budget and its overrun."""
        return seconds <= self.left() + self.overrun_s

    def timeout_within(self, timeout_s: float) -> float:
        """``timeout_s``, shortened so a process started now ends within the budget and its overrun."""
        return max(1.0, min(timeout_s, self.left() + self.overrun_s))

    @contextmanager
    def not_counting(self) -> Iterator[None]:
        """Time spent inside is not charged to the budget (the idle gate's wait)."""
        before = self.clock()
        try:
            yield
        finally:
            self.waited_s += self.clock() - before

    # -- what measurements cost -----------------------------------------------------------

    def record_success(self, key: str, duration_s: float, first_step_s: float, costly: bool) -> None:
        """A trial of config ``key`` succeeded in ``duration_s``; a costly one re-measures from the compile cache."""
        if costly:
            steady = duration_s - first_step_s
            self.costly_steady_s.append(steady)
            self.measure_s[key] = COSTLY_MEASURE_FACTOR * steady
        else:
            self.eager_s.append(duration_s)
            self.measure_s[key] = duration_s

    def record_failure(self, key: str, duration_s: float) -> None:
        """A trial of config ``key`` failed after ``duration_s``: measuring it again costs at least as much (an
        out-of-memory kill after 97 s says so), unless a success says what it costs."""
        self.unfinished_s[key] = max(duration_s, self.unfinished_s.get(key, 0.0))

    def _cost_of(self, key: str) -> float | None:
        return self.measure_s.get(key, self.unfinished_s.get(key))

    def incumbent_s(self, best_key: str) -> float:
        """What measuring the incumbent alone should take: its own trial's time, else half a round."""
        own = self._cost_of(self.incumbent_key)
        return own if own is not None else self.round_s(best_key) / 2

    def round_s(self, challenger_key: str) -> float:
        """What one check round (the incumbent and the challenger measured once each) should take.

        Best first: what this run's trials of the incumbent and of the
        challenger took, a compiled one without its first step, since the
        check finds its compilation in the shared cache (a failed trial: how
        long it ran before it failed); the previous
        iteration's check measurements; this run's eager trials; its compiled
        trials without their first step.  0 while nothing is known.
        """
        incumbent, challenger = self._cost_of(self.incumbent_key), self._cost_of(challenger_key)
        if incumbent is not None and challenger is not None:
            return incumbent + challenger
        if self.past_measure_s:
            per = self.past_measure_s
        elif self.eager_s:
            per = statistics.median(self.eager_s)
        elif self.costly_steady_s:
            per = COSTLY_MEASURE_FACTOR * min(self.costly_steady_s)
        else:
            return 0.0
        return 2 * per

    # -- what the check needs, and what is left for trials ------------------------------------

    def check_reserve(self, best_key: str) -> float:
        """Time to keep for the check: ``--check-repeats`` rounds plus a quarter for slack.

        Never more than ``MAX_CHECK_SHARE`` of the budget, so that with a short
        budget and a slow workload the trials still run and the check does
        the rounds the time left pays for (:meth:`check_rounds`); never less
        than the check's minimum of two rounds, so trials stop soon enough
        for those.
        """
        round_s = self.round_s(best_key)
        reserve = min(CHECK_RESERVE_FACTOR * self.check_repeats * round_s, MAX_CHECK_SHARE * self.budget_s)
        return max(reserve, MIN_CHECK_ROUNDS * round_s)  # the check's minimum is never left unpaid

    def for_trials(self, best_key: str) -> float:
        """Seconds trials may still take, the check's reserve kept back."""
        return self.left() - self.check_reserve(best_key)

    def check_rounds(self, challenger_key: str | None, best_key: str) -> int:
        """Rounds the check can do in the budget left: ``--check-repeats`` at most, never under 2.

        Without a challenger only the incumbent is measured: a round is its measurement alone.
        """
        per_round = self.round_s(challenger_key) if challenger_key else self.incumbent_s(best_key)
        if per_round <= 0:
            return self.check_repeats
        return max(MIN_CHECK_ROUNDS, min(self.check_repeats, int(self.left() / per_round)))


@dataclass
class CheckClock:
    """The check's account of its time: what its measurements took, and whether another round still fits.

    A round starts only if it ends within the budget and its overrun: as long
    as the rounds before it took, or, for the first, as long as ``first_round_s``
    (the budget's estimate).  So a slow incumbent, the workload's slow default
    say, never pushes the check past the budget.  Without a challenger
    (``may_overrun`` False) the check decides nothing now: it re-measures the
    incumbent for a later iteration's regression check, so its rounds must
    end within the budget itself.  A 10 s budget whose one trial was cut by it
    re-measured that default twice after it, ending at 40 s.
    """

    budget: Budget
    first_round_s: float
    may_overrun: bool = True
    measured_s: list[float] = field(default_factory=list)

    def timeout_s(self, trial_timeout_s: float) -> float:
        """The timeout of the next measurement: the trial timeout, or less where the budget ends sooner."""
        return self.budget.timeout_within(trial_timeout_s)

    def measured(self, seconds: float) -> None:
        self.measured_s.append(seconds)

    def may_start(self, round_: int) -> bool:
        expected = sum(self.measured_s) / round_ if round_ else self.first_round_s
        if expected <= 0:  # nothing says what a round costs: only while the budget itself lasts
            return self.budget.left() > 0
        return self.budget.pays_for(expected) if self.may_overrun else expected <= self.budget.left()
