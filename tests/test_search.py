"""The search: seeds first, infeasible failures, Pareto front, and costly choices held back."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from dstune.errors import UsageError
from dstune.knobs import Knob
from dstune.pareto import pareto_front
from dstune.run.search import CostAwareSchedule, SearchSpace, create_study, enqueue_seeds, tell
from dstune.run.selection import faster_within_noise, parse_policy

KNOBS = (
    Knob("batch", choices=(8, 16, 32), default=16, checklist=32),
    Knob("mode", choices=("eager", "compiled"), default="eager", checklist="compiled", costly=("compiled",)),
    Knob("fixed", choices=("only",), default="only", checklist="only"),
)


def _study(seed: int = 0) -> optuna.Study:
    return create_study(optuna.storages.InMemoryStorage(), "s", seed=seed, trials=9)  # 3 random start-up trials


def test_seeds_run_first_and_fixed_knobs_are_not_searched():
    space = SearchSpace(KNOBS)
    study = _study()
    enqueue_seeds(study, space, [("default", {"batch": 16, "mode": "eager", "fixed": "only"}),
                                 ("checklist", {"batch": 32, "mode": "compiled", "fixed": "only"})])
    first, second = study.ask(), study.ask()
    assert space.config_from_trial(first) == {"batch": 16, "mode": "eager", "fixed": "only"}
    assert space.config_from_trial(second)["mode"] == "compiled"
    assert "fixed" not in first.params and first.user_attrs["dstune_seed"] == "default"


def test_failures_are_infeasible_and_crashes_failed():
    study = _study()
    space = SearchSpace(KNOBS)
    for status in ("ok", "oom", "crash"):
        trial = study.ask()
        space.config_from_trial(trial)
        tell(study, trial, status, {"samples_per_s": 5.0, "peak_memory_bytes": 10}, memory_budget=100)
    ok, oom, crash = study.trials
    assert ok.values == [5.0, 10.0] and max(ok.constraints.values()) <= 0
    assert oom.values[0] == 0.0 and max(oom.constraints.values()) > 0
    assert crash.state == optuna.trial.TrialState.FAIL


def test_a_p99_over_the_latency_limit_is_a_violated_constraint():
    study = _study()
    space = SearchSpace(KNOBS)
    for p99 in (0.02, 0.09):
        trial = study.ask()
        space.config_from_trial(trial)
        tell(study, trial, "ok", {"samples_per_s": 5.0, "peak_memory_bytes": 10, "latency_p99_s": p99},
             memory_budget=100, max_latency_s=0.05)
    in_time, late = study.trials
    assert max(in_time.constraints.values()) <= 0 and max(late.constraints.values()) > 0


def test_pareto_front_and_choice_under_budget():
    rows = [SimpleNamespace(id=i, samples_per_s=s, peak_memory_bytes=m, latency_p99_s=p99)
            for i, (s, m, p99) in enumerate([(100, 50, 0.08), (80, 20, 0.03), (90, 60, 0.05), (120, 200, 0.2),
                                             (70, 20, 0.02)])]
    front = pareto_front(rows)
    assert [r.id for r in front] == [3, 0, 1]
    fastest = parse_policy("max-throughput")
    assert fastest.choose(rows, memory_budget=100).id == 0
    assert fastest.choose(rows, memory_budget=10) is None
    # A latency limit leaves out the faster trials that answer too late, whatever their memory.
    assert fastest.choose(rows, memory_budget=1000, max_latency_s=0.06).id == 2
    assert fastest.choose(rows, memory_budget=1000, max_latency_s=0.01) is None
    assert parse_policy("knee").choose(rows, memory_budget=1000, max_latency_s=0.04).id == 1


def test_knee_and_weighted_policies():
    # Front: 10/s at 10 B, 60/s at 20 B (the knee), 65/s at 100 B.
    rows = [SimpleNamespace(id=i, samples_per_s=s, peak_memory_bytes=m, energy_per_sample_j=e, latency_p99_s=None)
            for i, (s, m, e) in enumerate([(10, 10, 1.0), (60, 20, 3.0), (65, 100, 2.0), (30, 50, 9.0)])]
    assert parse_policy("knee").choose(rows, memory_budget=1000).id == 1
    assert parse_policy("max-throughput").choose(rows, memory_budget=1000).id == 2
    assert parse_policy("weighted:memory=1").choose(rows, memory_budget=1000).id == 0
    assert parse_policy("weighted:throughput=1,energy=1").choose(rows, memory_budget=1000).id == 2
    assert str(parse_policy("weighted:throughput=1, memory=0.5")) == "weighted:memory=0.5,throughput=1"


@pytest.mark.parametrize("text", ["fastest", "weighted:speed=1", "weighted:memory=-1", "weighted:memory=0"])
def test_bad_selection_policy_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--select"):
        parse_policy(text)


def test_costly_choices_wait_for_exploration_then_promote_the_best():
    space = SearchSpace(KNOBS)
    study = _study(seed=3)
    schedule = CostAwareSchedule(space, trials=10, budget_s=1000)
    successes = []
    for done in range(5):
        schedule.before_ask(study, done, elapsed_s=done * 10, successes=successes)
        trial = study.ask()
        config = space.config_from_trial(trial)
        assert config["mode"] == "eager", "costly choices are held back while exploring"
        tell(study, trial, "ok", {"samples_per_s": float(config["batch"]), "peak_memory_bytes": 1}, 100)
        successes.append((config, float(config["batch"])))
    schedule.before_ask(study, 5, elapsed_s=50, successes=successes)
    promoted = study.ask()
    config = space.config_from_trial(promoted)
    best_batch = max(successes, key=lambda s: s[1])[0]["batch"]
    assert config == {"batch": best_batch, "mode": "compiled", "fixed": "only"}
    assert promoted.user_attrs["dstune_seed"] == "promoted"


def test_a_promotion_skips_a_configuration_already_measured_with_its_costly_choices():
    """The compiled checklist runs as a seed after the eager one; promoting the eager one again would be a wasted
    turn, so the next-best cheap configuration is promoted."""
    space = SearchSpace(KNOBS)
    study = _study(seed=3)
    schedule = CostAwareSchedule(space, trials=10, budget_s=1000, explore_fraction=0.0)
    successes = [({"batch": 32, "mode": "eager", "fixed": "only"}, 32.0),
                 ({"batch": 32, "mode": "compiled", "fixed": "only"}, 40.0),
                 ({"batch": 16, "mode": "eager", "fixed": "only"}, 16.0)]
    schedule.before_ask(study, 3, elapsed_s=30, successes=successes)
    promoted = study.ask()
    assert space.config_from_trial(promoted) == {"batch": 16, "mode": "compiled", "fixed": "only"}
    assert promoted.user_attrs["dstune_seed"] == "promoted"


def test_costly_choices_are_held_back_when_the_budget_cannot_pay_for_them():
    space = SearchSpace(KNOBS)
    study = _study(seed=1)
    schedule = CostAwareSchedule(space, trials=100, budget_s=100, explore_fraction=0.0)
    schedule.promotions = schedule.promote_top
    schedule.record({"batch": 8, "mode": "compiled", "fixed": "only"}, duration_s=60)
    for _ in range(6):
        schedule.before_ask(study, 50, elapsed_s=90, successes=[])
        trial = study.ask()
        assert space.config_from_trial(trial)["mode"] == "eager"
        tell(study, trial, "ok", {"samples_per_s": 1.0, "peak_memory_bytes": 1}, 100)


def test_the_fastest_gives_way_to_fewer_changes_within_noise():
    """ResNet-50 on the H200 applied intra_op_threads=8 for 0.6% over the compiled checklist: noise, not a setting."""
    base = {"compile": "off", "threads": None, "precision": "fp32"}
    checklist = {**base, "compile": "default", "precision": "bf16"}
    rows = [SimpleNamespace(id=i, config=c, samples_per_s=s, peak_memory_bytes=10, latency_p99_s=None)
            for i, (c, s) in enumerate([(base, 1961.0), (checklist, 6638.0), ({**checklist, "threads": 8}, 6680.8)])]
    fastest = parse_policy("max-throughput")
    assert fastest.choose(rows, memory_budget=100).id == 2  # without a baseline: the fastest, as before
    assert fastest.choose(rows, memory_budget=100, baseline=base).id == 1
    # Beyond 1% the extra change is worth applying; and an incumbent within noise of the fastest stays.
    rows[2].samples_per_s = 6720.0
    assert fastest.choose(rows, memory_budget=100, baseline=base).id == 2
    assert fastest.choose(rows, memory_budget=100, baseline={**checklist, "threads": 8}).id == 2
    rows[2].samples_per_s = 6680.8
    assert fastest.choose(rows, memory_budget=100, baseline=checklist).id == 1
    # The run then names the faster trial it passed over (ResNet-50's second iteration on the H200: reduce-overhead
    # ran 6,659.5 samples/s against the compiled incumbent's 6,625.6, and the run said only that the incumbent won).
    assert faster_within_noise(rows, rows[1], memory_budget=100).id == 2
    assert faster_within_noise(rows, rows[2], memory_budget=100) is None
    assert faster_within_noise(rows, rows[1], memory_budget=5) is None  # nothing fits: nothing passed over
