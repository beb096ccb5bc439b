"""The budget of an iteration (run/budget.py): the check's minimum is paid for, and no round overruns.

A run's ``--budget`` is a promise: the whole iteration, check included, ends
within it plus 5% (or 30 s, whichever is more).  These tests drive the
budget's clock by hand, so they hold on any machine.
"""

from __future__ import annotations

import pytest

from dstune.run.act import decide
from dstune.run.budget import Budget, CheckClock
from dstune.run.check import SETTLE_AFTER, interleaved_check
from dstune.trial.records import TrialOutcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_trials_leave_the_check_its_minimum_even_past_the_usual_share(clock):
    """A slow incumbent: two check rounds take more than the 35% share the reserve is usually held to."""
    budget = Budget(600.0, check_repeats=5, incumbent_key="incumbent", clock=clock)
    budget.record_success("incumbent", duration_s=200.0, first_step_s=0.0, costly=False)
    budget.record_success("best", duration_s=10.0, first_step_s=0.0, costly=False)
    assert budget.check_reserve("best") == 2 * 210.0  # not 0.35 * 600
    clock.now += 150.0
    assert budget.for_trials("best") == 600.0 - 150.0 - 420.0
    # A quick workload keeps the usual reserve: five rounds plus a quarter, at most 35% of the budget.
    quick = Budget(600.0, check_repeats=5, incumbent_key="incumbent", clock=clock)
    quick.record_success("incumbent", 4.0, 0.0, False)
    quick.record_success("best", 4.0, 0.0, False)
    assert quick.check_reserve("best") == 1.25 * 5 * 8.0


def test_the_check_starts_no_round_that_would_end_past_the_budget(clock):
    budget = Budget(100.0, check_repeats=5, clock=clock)
    check = CheckClock(budget, first_round_s=60.0)

    def measure(role, round_, config):  # every measurement takes 30 s
        clock.now += 30.0
        check.measured(30.0)
        return TrialOutcome("ok", metrics={"samples_per_s": 100.0 if role == "incumbent" else 110.0})

    result = interleaved_check(measure, {"x": 1}, {"x": 2}, 5, check.may_start)
    assert len(result.incumbent) == len(result.challenger) == 2
    assert result.cut == "the budget paid for 2 of 5 rounds" and result.estimate is not None
    assert budget.elapsed() == 120.0 <= budget.budget_s + budget.overrun_s  # 30 s of overrun allowed at most
    assert budget.overrun_s == 30.0 and Budget(1200.0, 5).overrun_s == 60.0


def test_a_first_round_the_budget_cannot_pay_for_is_not_started(clock):
    budget = Budget(100.0, check_repeats=5, clock=clock)
    clock.now += 90.0  # the slow default took nearly all of it
    check = CheckClock(budget, first_round_s=45.0)
    result = interleaved_check(lambda *a: pytest.fail("measured"), {"x": 1}, None, 5, check.may_start)
    assert result.cut == "the budget paid for 0 of 5 rounds" and result.incumbent == []
    assert check.timeout_s(600.0) == 40.0  # a measurement started now would be cut at the budget's overrun


def test_a_check_without_a_challenger_ends_within_the_budget_itself(clock):
    """Re-measuring the incumbent alone decides nothing now, so it may not use the overrun a decision may."""
    budget = Budget(100.0, check_repeats=2, clock=clock)
    clock.now += 95.0
    assert CheckClock(budget, first_round_s=10.0).may_start(0)  # a challenger's check: 10 s fits 5 s + 30 s
    assert not CheckClock(budget, first_round_s=10.0, may_overrun=False).may_start(0)
    assert CheckClock(budget, first_round_s=4.0, may_overrun=False).may_start(0)


def test_an_incumbent_whose_trial_failed_after_a_while_is_not_re_measured_past_the_budget(clock):
    """GPT-2 on the 24 GiB CPU machine, --budget 2m: the default trial was OOM-killed after 97 s and no trial
    succeeded, yet the check re-measured the incumbent from 121 s on, to be cut at 151 s with nothing learned."""
    budget = Budget(120.0, check_repeats=5, incumbent_key="incumbent", clock=clock)
    budget.record_failure("incumbent", 97.0)
    assert budget.incumbent_s("") == 97.0 and budget.round_s("incumbent") == 2 * 97.0
    clock.now += 121.0
    check = CheckClock(budget, first_round_s=budget.incumbent_s(""))
    result = interleaved_check(lambda *a: pytest.fail("measured"), {"x": 1}, None, 5, check.may_start)
    assert result.cut == "the budget paid for 0 of 5 rounds"
    # Nothing known of what a round costs: a round starts only while the budget itself lasts, not in its overrun.
    assert not CheckClock(budget, first_round_s=0.0).may_start(0)
    assert CheckClock(Budget(120.0, 5, clock=clock), first_round_s=0.0).may_start(0)
    # A success says what the configuration costs, whatever failed before.
    budget.record_success("incumbent", duration_s=20.0, first_step_s=0.0, costly=False)
    assert budget.incumbent_s("") == 20.0


def test_a_measurement_the_budget_cut_short_blames_neither_side():
    outcomes = iter([TrialOutcome("ok", metrics={"samples_per_s": 100.0}),
                     TrialOutcome("ok", metrics={"samples_per_s": 120.0}),
                     TrialOutcome("ok", metrics={"samples_per_s": 101.0}),
                     TrialOutcome("interrupted", error="stopped after 40 s: the budget ran out")])
    result = interleaved_check(lambda *a: next(outcomes), {"x": 1}, {"x": 2}, 5)
    assert result.failures == {} and result.cut == "the budget ran out in round 2 of 5"
    assert result.incumbent == [100.0] and result.challenger == [120.0] and result.estimate is None
    made = decide(result, has_challenger=True, min_gain=0.02, reference=None)
    assert made.decision == "kept" and "an interval needs two" in made.reason


def _paced(rates: dict[str, list[float]]):
    """A measure that returns the given throughputs per role, round by round, and counts the rounds run."""
    ran: list[tuple[str, int]] = []

    def measure(role: str, round_: int, config: dict) -> TrialOutcome:
        ran.append((role, round_))
        return TrialOutcome("ok", metrics={"samples_per_s": rates[role][round_]})
    return measure, ran


def test_a_check_whose_answer_is_plain_stops_after_two_rounds():
    """GPT-2 on the H200: a 7.7x challenger, one round a minute; rounds three to five could not change the answer.
    Two pairs are enough only for so plain an answer: with one degree of freedom the 99% interval is wide."""
    measure, ran = _paced({"incumbent": [45.4, 45.5, 45.3, 45.4, 45.4], "challenger": [349.0, 348.6, 349.3, 349, 349]})
    result = interleaved_check(measure, {"x": 1}, {"x": 2}, 5, min_gain=0.02)
    assert SETTLE_AFTER == 2 and len(ran) == 4 and result.settled.startswith("settled after 2 of 5 rounds")
    assert "wholly above 1 + 2%" in result.settled
    assert decide(result, has_challenger=True, min_gain=0.02, reference=None).decision == "promoted"
    # As plain the other way: the challenger a third slower.
    measure, ran = _paced({"incumbent": [100.0, 101.0, 99.0, 100, 100], "challenger": [66.0, 67.0, 66.5, 66, 66]})
    result = interleaved_check(measure, {"x": 1}, {"x": 2}, 5, min_gain=0.02)
    assert len(ran) == 4 and "wholly below" in result.settled
    assert decide(result, has_challenger=True, min_gain=0.02, reference=None).decision == "kept"
    # 10% faster with 1% noise: two pairs leave the 99% interval wide; the third narrows it above 1 + 2%.
    measure, ran = _paced({"incumbent": [100.0, 101.0, 100.0, 100, 100], "challenger": [110.0, 112.5, 110.2, 110, 110]})
    result = interleaved_check(measure, {"x": 1}, {"x": 2}, 5, min_gain=0.02)
    assert len(ran) == 6 and result.settled.startswith("settled after 3 of 5 rounds")


def test_a_close_check_runs_every_round():
    """3% faster with 1% noise: the 99% interval after three rounds still straddles 1 + 2%."""
    measure, ran = _paced({"incumbent": [100.0, 99.0, 101.0, 100.0, 100.5],
                           "challenger": [103.0, 103.5, 102.0, 104.0, 102.5]})
    result = interleaved_check(measure, {"x": 1}, {"x": 2}, 5, min_gain=0.02)
    assert len(ran) == 10 and result.settled is None and result.estimate.n == 5
    # Without a minimum gain (the callers that want every round), no early stop either.
    measure, ran = _paced({"incumbent": [45.0] * 5, "challenger": [349.0, 348.0, 350.0, 349.0, 349.5]})
    assert interleaved_check(measure, {"x": 1}, {"x": 2}, 5).settled is None and len(ran) == 10


def _timed(measure, clock: Clock, check: CheckClock, seconds: float):
    """``measure``, each measurement taking ``seconds`` of the budget's clock."""
    def timed(role: str, round_: int, config: dict) -> TrialOutcome:
        clock.now += seconds
        check.measured(seconds)
        return measure(role, round_, config)
    return timed


AUGMENTED = {"incumbent": [613.8, 689.8, 640.0], "challenger": [2425.7, 2186.1, 2300.0]}


@pytest.mark.parametrize("trials_s", [160.0, 190.0])
def test_an_open_answer_after_the_rounds_planned_gets_another_round_where_the_allowance_pays(clock, trials_s):
    """augmented_images on an H200, --budget 5m: the check was planned for the two rounds of 54 s the budget left
    paid for; its checklist ran 3.95x and 3.17x the default in them, and it was kept on the interval [0.871,
    14.378] with the time of a third round unused.  An answer still open after the rounds planned gets more, up
    to --check-repeats, while the budget and its overrun pay for them (trials that took 160 s); where they do
    not (190 s), the decision says the budget cut the rounds that would tell."""
    budget = Budget(300.0, check_repeats=3, clock=clock)
    clock.now += trials_s
    check = CheckClock(budget, first_round_s=54.0)
    measure, ran = _paced(AUGMENTED)
    result = interleaved_check(_timed(measure, clock, check, 27.0), {"x": 1}, {"x": 2}, 2, check.may_start, 0.02,
                               most=3)
    made = decide(result, has_challenger=True, min_gain=0.02, reference=None)
    assert budget.elapsed() <= budget.budget_s + budget.overrun_s
    if trials_s == 160.0:
        assert len(ran) == 6 and result.estimate.n == 3 and result.cut is None
        assert made.decision == "promoted" and result.estimate.low > 2.5, made.reason
    else:
        assert len(ran) == 4 and result.cut == "the budget paid for 2 of 3 rounds"
        assert made.decision == "kept" and "2 rounds leave the interval wide: a longer --budget would pay for the " \
            "rest" in made.reason, made.reason


def test_a_plain_answer_after_the_rounds_planned_spends_nothing_more():
    measure, ran = _paced({"incumbent": [100.0, 101.0, 100.0], "challenger": [1000.0, 1010.0, 1000.0]})
    plain = interleaved_check(measure, {"x": 1}, {"x": 2}, 2, min_gain=0.02, most=3)
    assert len(ran) == 4 and plain.estimate.exceeds(0.02)
    measure, ran = _paced({"incumbent": [100.0, 101.0, 100.0], "challenger": [80.0, 79.0, 80.0]})
    assert interleaved_check(measure, {"x": 1}, {"x": 2}, 2, min_gain=0.02, most=3).estimate.high < 1.02
    assert len(ran) == 4
