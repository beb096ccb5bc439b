"""Local search: after the seeds, try the neighbours of the best configuration, most promising per second first.

An expert tunes from the best configuration known, one setting at a time,
trying first what is cheap to try and likely to help.  The random start-up
trials of a sampler in a space of a dozen categorical knobs mostly measure
configurations nobody would try.  So, once the seeds have run:

1. the neighbours of the best configuration so far, one knob changed (a
   knob of numbers, the micro-batch, by one step), are proposed in order of
   expected gain per second of trial cost;
2. when those are measured, pairs of changes of the knobs that matter (a
   change that ran out of memory, or came within reach of the best) are
   proposed, since two changes can pay where each alone does not (a larger
   micro-batch that only fits with activation checkpointing);
3. a better configuration moves the centre, and its neighbours open up,
   except the changes this iteration measured to gain nothing (a compiled
   centre does not pay a compile to confirm what eager trials showed);
4. when nothing around the best is left, the neighbourhood is exhausted,
   and the sampler proposes a few configurations (the knobs the
   neighbourhood passed over held at the best's values) before the search
   has converged.

Not every knob is a neighbour everywhere.  A knob that can only lift one
limit (``Knob.relieves``) waits until the best configuration shows that
limit: thread counts and loader workers while the GPU is busy 97% of the
time have nothing to give, nor has checkpointing while the best uses less
than 60% of the memory budget and nothing ran out of memory, nor has a
compiler's treatment of changing shapes while every batch has one shape.  And a choice
kept for correctness (``Knob.fallback``: fp32 beside bf16, the SDPA math
kernel) is no step towards speed.  These are the trials an expert would not
spend, and the ones random start-up trials spent most.

The expected gain of a change is learned: from pairs of measured
configurations that differ in that knob alone, in this iteration and in the
earlier ones of the workload.  A change nobody has measured is given a small
optimistic prior, so every neighbour is tried once before the search ends.
What a trial costs is learned from this iteration's trials (a compiling
choice costs several eager trials).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna

from dstune.knobs import Config, Knob, config_key
from dstune.units import budget_minutes, format_duration

from .findings import Findings
from .memory_model import MEMORY_ROOMY
from .search import SEED_ATTR, SearchSpace

NEIGHBOUR = "neighbour"  # the seed kind of a trial the local search proposed
ENQUEUED, CONVERGED, BUDGET = "enqueued", "converged", "budget"
SAMPLER_PATIENCE = 3  # sampler trials tried once the neighbourhood is exhausted, before the search has converged
# The most of the budget those trials may take together.  They hedge against a best the neighbourhood cannot
# leave; they are the sampler's guesses, and on ResNet-50 on the H200 two compiled ones took 114 s of a
# 10-minute budget (one 47% slower than the best, one pruned).
SAMPLER_SHARE = 0.05
PRIOR_GAIN = 0.03  # expected log-gain of a change nobody has measured: try it, after what is known to help
UNTRIED_GAIN = 0.05  # the same for a knob no measured pair has changed yet: every knob is tried early
SKIP_BELOW = -0.10  # a change measured to cost more than this (log) is not proposed again
WITHIN_REACH = math.log(0.9)  # a single change this close to the best is worth combining with another
MATTERS = 0.02  # a knob matters when a change of it moved throughput by more than this (log), or ran out of memory
MAX_PAIRS = 8
NOT_WORTH = MATTERS / 2  # a change this iteration measured to gain no more than this (log) is not proposed again
COSTLY_FACTOR = 4.0  # a costly choice (compilation) before any was measured: this many eager trials
MAX_TRIAL_SHARE = 0.5  # the most of the time a budget gives trials that one trial may take: it is beyond reach
HOST_BUSY = 97.0  # GPU busy (% of the timed steps) from which knobs that relieve the host have nothing to gain
SHORT_OF_MEMORY = frozenset({"oom", "predicted_oom"})

Measured = tuple[Config, float]  # a configuration and its samples/s


@dataclass
class KnobEffects:
    """Log throughput ratios of single-knob changes, from pairs of measured configurations."""

    direct: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)  # (knob, from, to) -> logs

    def learn(self, measured: Sequence[Measured]) -> None:
        """Add every pair of configurations of one run that differ in exactly one knob."""
        for (a, ta), (b, tb) in itertools.combinations(measured, 2):
            if ta <= 0 or tb <= 0 or set(a) != set(b):
                continue
            differ = [k for k in a if a[k] != b[k]]
            if len(differ) == 1:
                k = differ[0]
                self.direct.setdefault((k, repr(a[k]), repr(b[k])), []).append(math.log(tb / ta))
                self.direct.setdefault((k, repr(b[k]), repr(a[k])), []).append(math.log(ta / tb))

    def gain(self, knob: str, old: object, new: object) -> float:
        """Expected log-gain of moving ``knob`` from ``old`` to ``new``; the prior when never measured.

        Measured directly, the mean of those measurements; else along the
        shortest chain of measured changes (8 to 16, 16 to 32 tell 8 to 32);
        else the prior, a little higher for a knob nothing has told about
        yet, so that each knob is tried before the known ones are refined.
        """
        return self.estimate(knob, old, new)[0]

    def estimate(self, knob: str, old: object, new: object) -> tuple[float, bool]:
        """:meth:`gain`, and whether it was measured (directly or along a chain) rather than a prior."""
        start, goal = repr(old), repr(new)
        paths = {start: 0.0}
        frontier = [start]
        while frontier and goal not in paths:
            step = []
            for here in frontier:
                for (k, a, b), logs in self.direct.items():
                    if k == knob and a == here and b not in paths:
                        paths[b] = paths[here] + statistics.fmean(logs)
                        step.append(b)
            frontier = step
        if goal in paths:
            return paths[goal], True
        mirrored = self._mirrored(knob, old, new, paths)
        if mirrored is not None:
            return mirrored, False
        return (PRIOR_GAIN if any(k == knob for k, _, _ in self.direct) else UNTRIED_GAIN), False

    def _mirrored(self, knob: str, old: object, new: object, paths: dict[str, float]) -> float | None:
        """For a numeric knob, a step the other way from one measured to hurt is promising (a micro-batch
        halved ran slower: doubling it may run faster).  None where nothing tells."""
        if not (_is_number(old) and _is_number(new)):
            return None
        hurt = [gain for shown, gain in paths.items()
                if gain < -MATTERS and shown != repr(old) and self._opposite(shown, old, new)]
        return UNTRIED_GAIN + min(0.2, -0.5 * max(hurt)) if hurt else None

    def _opposite(self, shown: str, old: object, new: object) -> bool:
        try:
            other = float(shown)
        except ValueError:
            return False
        return (other - float(old)) * (float(new) - float(old)) < 0  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


STEP_OVER = frozenset({"crash", "timeout", "numerics", "invalid"})  # failures that say nothing of the next number


def steps(knob: Knob, current: object, failed: Callable[[object], bool] = lambda value: False) -> list[object]:
    """The values one step away from ``current``: for a knob of numbers (a micro-batch), the next smaller and
    the next larger choice; for any other knob, every other choice.

    A step to a far number is not a neighbour: a micro-batch of 1 beside 32
    is a slow trial that tells nothing the step to 16 would not.  Stepping on
    from a better value goes on from there, once it is the best.  A value
    that ``failed`` (it crashed: a kernel without that size, a plugin's bug)
    is stepped over, since it says nothing of the number beyond it; one
    that ran out of memory is not, since the larger ones would too.
    """
    if not (_is_number(current) and all(_is_number(c) for c in knob.choices)):
        return [c for c in knob.choices if c != current]
    ordered = sorted(knob.choices)  # type: ignore[type-var]
    lower = [c for c in reversed(ordered) if c < current]  # type: ignore[operator]
    higher = [c for c in ordered if c > current]  # type: ignore[operator]
    found = []
    for side in (lower, higher):
        nearest = next((c for c in side if not failed(c)), None)
        if nearest is not None:
            found.append(nearest)
    return found


@dataclass(frozen=True)
class Headroom:
    """What the centre of the search left unused, which says whether knobs that relieve a limit can pay."""

    gpu_busy: float | None = None  # % of the centre's timed steps the GPU ran a kernel (None: not measured)
    memory_share: float | None = None  # the centre's peak over the memory budget (None: not known)
    short_of_memory: bool = False  # a configuration of this iteration ran out of memory, or was predicted to
    input_shapes: int | None = None  # distinct shapes of the centre's batches (1: a compiler never saw another)

    @classmethod
    def of(cls, metrics: Mapping[str, Any], memory_budget: float, outcomes: Mapping[str, tuple[str, float]]
           ) -> "Headroom":
        busy, peak, shapes = metrics.get("gpu_util_mean"), metrics.get("peak_memory_bytes"), metrics.get("input_shapes")
        return cls(float(busy) if busy is not None else None,
                   float(peak) / memory_budget if peak and memory_budget > 0 else None,
                   any(status in SHORT_OF_MEMORY for status, _ in outcomes.values()),
                   int(shapes) if shapes else None)

    def unneeded(self, knob: Knob) -> str | None:
        """Why ``knob``'s changes cannot pay around this centre (a sentence), or None when they may."""
        if knob.relieves == "host" and self.gpu_busy is not None and self.gpu_busy >= HOST_BUSY:
            return (f"the GPU ran kernels {self.gpu_busy:.0f}% of the best configuration's step time, so the host "
                    "does not hold it back")
        if (knob.relieves == "memory" and self.memory_share is not None and self.memory_share <= MEMORY_ROOMY
                and not self.short_of_memory):
            return (f"the best configuration used {self.memory_share:.0%} of the memory budget and nothing ran out "
                    "of memory, so saving memory buys nothing")
        if knob.relieves == "shapes" and self.input_shapes == 1:
            return ("every batch of the best configuration had the same shape, so the compiler never had a new "
                    "shape to treat one way or the other")
        return None


@dataclass(frozen=True)
class Candidate:
    """A neighbour of the best configuration, and why it is proposed when it is."""

    config: Config
    changes: tuple[tuple[str, object], ...]
    gain: float
    cost_s: float

    @property
    def score(self) -> float:
        return self.gain / max(self.cost_s, 1e-3)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.changes)


Costly = tuple[tuple[str, object], ...]  # a configuration's costly choices (:func:`costly_choices`)


def costly_choices(knobs: Sequence[Knob], config: Config) -> Costly:
    """The (knob, value) pairs of ``config`` that its plugins call costly (a compile mode)."""
    return tuple((k.name, config.get(k.name)) for k in knobs if k.costly and config.get(k.name) in k.costly)


def eager_twin(knobs: Sequence[Knob], config: Config) -> Config:
    """``config`` with its costly knobs at their defaults, and the knobs that only they made active too."""
    twin = {**config, **{name: next(k.default for k in knobs if k.name == name)
                         for name, _ in costly_choices(knobs, config)}}
    return {**twin, **{k.name: k.default for k in knobs if k.name in twin and not k.active_in(twin)}}


def costly_factors(knobs: Sequence[Knob], earlier: Sequence[Sequence[tuple[Config, float]]]) -> dict[Costly, float]:
    """What each costly choice cost in the workload's earlier iterations, in trials of its eager twin.

    ``earlier`` holds each iteration's successful trials with their seconds,
    in the order they started, newest iteration first.  The first trial with
    a choice in an iteration, which compiled from cold caches, is set against
    its twin's; the newest iteration that measured both tells.  On an H200 a
    compile of llama_1b took 4-5 times its twin, ResNet-50's 2.1-2.4 times:
    what one workload's compile cost last week says more than what the plugin
    knows of all workloads.
    """
    found: dict[Costly, float] = {}
    for trials in earlier:
        eager = {config_key(c): d for c, d in trials if not costly_choices(knobs, c)}
        seen: set[Costly] = set()
        for config, duration in trials:
            mine = costly_choices(knobs, config)
            if not mine or mine in seen:
                continue
            seen.add(mine)
            twin = eager.get(config_key(eager_twin(knobs, config)))
            if mine not in found and twin:
                found[mine] = duration / twin
    return found


def trial_cost(knobs: Sequence[Knob], config: Config, durations: dict[str, float],
               factors: Mapping[Costly, float] | None = None) -> float:
    """Seconds a trial of ``config`` should take, from what this iteration's successful trials took (``durations``,
    by configuration key, in the order they ended).

    With the same costly choices (compile mode) measured: what those trials
    took, after the first where there are several, since the first filled the
    compile caches the later ones read (ResNet-50 on an H200: 56 s, then 13-15
    s).  Else the eager twin of ``config`` (its costly knobs at their
    defaults) times what that choice cost in the workload's earlier
    iterations (``factors``, :func:`costly_factors`), else what the plugin
    says it costs (``Knob.cost``; COSTLY_FACTOR if it says nothing), the
    median eager trial standing in for a twin not measured.  The twin, not
    the median: the eager trials of one run differ 3x (cuDNN's autotuning, a
    larger micro-batch), and a compiled trial runs what its twin runs, plus
    the compile.  With no eager trial measured yet (a compiled incumbent runs
    first), the compiled trials' times over their factors stand in.
    """
    mine = costly_choices(knobs, config)
    choices = {key: costly_choices(knobs, json.loads(key)) for key in durations}
    same = [d for key, d in durations.items() if choices[key] == mine]
    if same:
        return statistics.median(same[1:] if mine and len(same) > 1 else same)
    eager = {key: d for key, d in durations.items() if not choices[key]}
    if eager:
        base = eager.get(config_key(eager_twin(knobs, config))) or statistics.median(eager.values())
    elif durations:  # only compiled trials so far (an applied compile is the incumbent, run first): undo their factor
        base = statistics.median(d / _factor(knobs, choices[key], factors) for key, d in durations.items())
    else:
        base = 1.0
    return base * _factor(knobs, mine, factors)


def _factor(knobs: Sequence[Knob], choices: Costly, factors: Mapping[Costly, float] | None) -> float:
    """How many times its eager twin a trial with costly ``choices`` takes: as the workload's earlier iterations
    measured it, else as the plugin says (``Knob.cost``; COSTLY_FACTOR if it says nothing); 1 for no choices."""
    if factors and choices in factors:
        return factors[choices]
    by_name = {k.name: k for k in knobs}
    return max((by_name[name].cost.get(value, COSTLY_FACTOR) for name, value in choices), default=1.0)


@dataclass
class Neighbourhood:
    """Proposes the next neighbour of the best configuration; None once there is none left."""

    knobs: Sequence[Knob]
    normalise: Callable[[Config], Config]  # inactive knobs back to their defaults, as the search space has them
    is_costly: Callable[[Config], bool]
    effects: KnobEffects = field(default_factory=KnobEffects)  # this iteration's and earlier ones': the order
    settled: KnobEffects = field(default_factory=KnobEffects)  # this iteration's alone: what is not tried again
    passed_over: dict[str, str] = field(default_factory=dict)  # knob -> why the last centre's search left it out
    factors: Mapping[Costly, float] = field(default_factory=dict)  # costly choices' cost in earlier iterations

    def cost(self, config: Config, durations: dict[str, float]) -> float:
        """Seconds a trial of ``config`` should take (:func:`trial_cost`)."""
        return trial_cost(self.knobs, config, durations, self.factors)

    def _settled(self, knob: str, old: object, new: object) -> bool:
        """Whether this iteration measured the change to gain nothing worth a trial (NOT_WORTH): around a new
        centre it is not tried again.  Above all around a compiled centre, whose every trial compiles: a
        change that did nothing in eager trials is not paid a compile to confirm it.  Earlier iterations'
        measurements only order the changes (the software may have changed since)."""
        gain, measured = self.settled.estimate(knob, old, new)
        return measured and gain <= NOT_WORTH

    def _flat(self, knob: Knob, current: object = None) -> str | None:
        """Why the other values of a knob that relieves the host are not worth a trial: this iteration measured
        a change of it, and none moved throughput by more than MATTERS.  A thread count that changed nothing
        says the host does not hold the step back, so the other counts have nothing to give either (on ResNet-50
        on the H200, five thread trials measured within 0.6% of each other).  None when it may still pay."""
        if knob.relieves != "host":
            return None
        moved = [(a, b, statistics.fmean(logs)) for (k, a, b), logs in self.settled.direct.items() if k == knob.name]
        if not moved or any(abs(gain) > MATTERS for _, _, gain in moved):
            return None
        old, new, gain = max(moved, key=lambda m: (m[0] == repr(current), abs(m[2])))  # told from the centre
        return (f"{knob.name} {old} -> {new} changed throughput by {math.expm1(gain):+.1%}, within noise, so the host "
                "does not hold the best configuration back")

    def _singles(self, best: Config, outcomes: dict[str, tuple[str, float]], headroom: Headroom
                 ) -> Iterable[tuple[str, object]]:
        self.passed_over = {}
        for knob in self.knobs:
            if knob.tunable and knob.name in best and knob.active_in(best):
                unneeded = headroom.unneeded(knob) or self._flat(knob, best[knob.name])
                if unneeded is not None:
                    self.passed_over[knob.name] = unneeded
                    continue

                def failed(value: object, name: str = knob.name) -> bool:
                    found = outcomes.get(config_key(self.normalise({**best, name: value})))
                    return found is not None and found[0] in STEP_OVER

                yield from ((knob.name, value) for value in steps(knob, best[knob.name], failed)
                            if not knob.is_fallback(value))

    def candidates(self, best: Config, best_rate: float, outcomes: dict[str, tuple[str, float]],
                   durations: dict[str, float], refused: Callable[[Config], bool],
                   headroom: Headroom = Headroom()) -> list[Candidate]:
        """Unmeasured neighbours of ``best``, best gain per second first; singles before pairs.

        ``outcomes`` maps a configuration key to (status, samples/s) for every
        configuration measured (or refused, or running: status ``running``).
        ``headroom`` is what ``best`` left unused: knobs that relieve a limit
        it does not show are passed over (:attr:`passed_over` says why).
        """
        singles: list[Candidate] = []
        promising: list[tuple[str, object, float]] = []  # single changes worth combining, with their gain
        for name, value in self._singles(best, outcomes, headroom):
            config = self.normalise({**best, name: value})
            key = config_key(config)
            if key in outcomes:
                status, rate = outcomes[key]
                if status in ("oom", "predicted_oom"):  # too big alone: with a change that saves memory, maybe not
                    promising.append((name, value, PRIOR_GAIN))
                elif status == "ok" and best_rate > 0 and rate > 0:
                    change = math.log(rate / best_rate)
                    if change >= WITHIN_REACH and abs(change) > MATTERS:
                        promising.append((name, value, change))
                continue
            if refused(config):
                continue
            gain = self.effects.gain(name, best[name], value)
            if gain > SKIP_BELOW and not self._settled(name, best[name], value):
                singles.append(Candidate(config, ((name, value),), gain, self.cost(config, durations)))
        if singles:
            return sorted(singles, key=lambda c: -c.score)
        pairs: list[Candidate] = []
        for (k1, v1, g1), (k2, v2, g2) in itertools.combinations(promising, 2):
            if k1 == k2:
                continue
            config = self.normalise({**best, k1: v1, k2: v2})
            if config_key(config) in outcomes or refused(config):
                continue
            pairs.append(Candidate(config, ((k1, v1), (k2, v2)), g1 + g2 + PRIOR_GAIN,
                                   self.cost(config, durations)))
        return sorted(pairs, key=lambda c: -c.score)[:MAX_PAIRS]


@dataclass
class LocalSearch:
    """The local search's turn before each ask: enqueue a neighbour, leave the ask to the sampler, or stop.

    Once no neighbour of the best is left, the sampler gets
    ``SAMPLER_PATIENCE`` proposals, within ``SAMPLER_SHARE`` of the budget,
    to find something better (whose neighbourhood then opens); if it finds
    nothing, or a proposal at the best's costly choices (its compile) would
    not fit that share, the search has converged.
    """

    neighbourhood: Neighbourhood
    earlier: tuple[tuple[Measured, ...], ...] = ()  # earlier iterations' successful trials
    exhausted_at: str | None = None  # the best configuration whose neighbourhood ran out
    sampler_tries: int = 0  # sampler proposals since then
    sampler_spent_s: float = 0.0  # what the sampler's proposals in this iteration were expected to take
    centres: dict[int, tuple[Config, float]] = field(default_factory=dict)  # 0: eager, 1: overall
    told: set[str] = field(default_factory=set)  # what the run was told was passed over, not to repeat it
    unrun_seeds: list[str] = field(default_factory=list)  # eager seeds the time left did not pay for

    def before_ask(self, study: optuna.Study, space: SearchSpace, found: Findings, refused: Callable[[Config], bool],
                   say: Callable[[str], None], elapsed_s: float, budget_s: float,
                   available_s: float = float("inf"), ceiling_s: float = float("inf")) -> str | None:
        """``enqueued`` a neighbour, ``converged``, ``budget``, or None: the sampler proposes the next trial.

        Seeds and retries waiting in the study go first; before anything has
        succeeded there is no best to search around.  A neighbour expected to
        take longer than the ``available_s`` seconds left for trials is not
        started only to be cut off: when no neighbour fits, the trials stop.
        One expected to take longer than ``ceiling_s``, the most the budget
        lets one trial take (``MAX_TRIAL_SHARE`` of the time it gives trials:
        an autotuning compile of six minutes in a ten-minute budget would
        leave the search around it no room), is out of this budget's reach:
        it is left out of the neighbourhood, and said so, and the search can
        converge without it.
        """
        if found.best_config is None or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return None
        effects, settled = KnobEffects(), KnobEffects()
        for measured in (*self.earlier, found.rates()):
            effects.learn(measured)
        settled.learn(found.rates())
        self.neighbourhood.effects, self.neighbourhood.settled = effects, settled
        candidates: list[Candidate] = []
        affordable: list[Candidate] = []
        centres = self._centres(found)
        outcomes = found.outcomes()
        for centre, rate in centres:  # the best eager configuration's neighbours first
            metrics = found.seen.get(config_key(centre), ("", {}))[1]
            around = self.neighbourhood.candidates(centre, rate, outcomes, found.durations, refused,
                                                   Headroom.of(metrics, found.memory_budget, outcomes))
            self._tell_passed_over(say)
            around = self._within_reach(around, ceiling_s, budget_s, say)
            candidates = candidates or around  # the first centre's, for the message when none fits the time left
            affordable = [c for c in around if c.cost_s <= available_s]
            if affordable:  # else the next centre's cheaper neighbours (a compiled best's) may still fit
                break
        if candidates and not affordable:
            say(f"the most promising neighbours would take longer than the {available_s:.0f} s left for trials "
                f"(the next, {candidates[0].describe()}, about {candidates[0].cost_s:.0f} s): stopping the trials")
            return BUDGET
        if affordable:
            study.enqueue_trial(space.params(affordable[0].config), user_attrs={SEED_ATTR: NEIGHBOUR},
                                skip_if_exists=True)
            self.exhausted_at, self.sampler_tries = None, 0
            return ENQUEUED
        if found.running:
            return None  # what runs elsewhere may move the best: keep this slot busy with the sampler meanwhile
        where = "|".join(config_key(c) for c, _ in centres)
        centre = centres[-1][0]
        left = self.sampler_left(budget_s)
        try_s = self.neighbourhood.cost(centre, found.durations) if found.durations else 0.0
        if self.exhausted_at != where and try_s > left:
            say(self.end_sentence(found.finished, elapsed_s, budget_s,
                                  f"a sampler trial with its costly choices (about {format_duration(try_s)}) would "
                                  f"take more than the {format_duration(left)} left of the {SAMPLER_SHARE:.0%} of the "
                                  "budget the sampler's trials may take"))
            return self.ending
        if self.exhausted_at != where:
            self.exhausted_at, self.sampler_tries = where, 0
            say(f"the neighbourhood of the best configuration is exhausted after {found.finished} trials; "
                f"the sampler gets up to {SAMPLER_PATIENCE} trials ({format_duration(left)} of the budget) to find "
                "a better one")
        if self.sampler_tries < SAMPLER_PATIENCE:
            self._pin_passed_over(study, centre)
            return None
        say(self.end_sentence(found.finished, elapsed_s, budget_s,
                              f"{SAMPLER_PATIENCE} sampler trials found nothing better"))
        return self.ending

    @property
    def ending(self) -> str:
        """How a search with no neighbour of its best left stops: ``converged``; or ``budget`` when a seed without
        a costly choice did not fit the time left (:attr:`unrun_seeds`), since what it would have measured is
        unknown.  A seed whose only unmeasured part is a costly choice (the compiled checklist, after its eager
        twin) leaves nothing within reach unmeasured, and the search may still converge."""
        return BUDGET if self.unrun_seeds else CONVERGED

    def end_sentence(self, trials: int, elapsed_s: float, budget_s: float, why: str) -> str:
        """The sentence that ends the search once no neighbour of the best is left and ``why`` the sampler found
        nothing better; not "converged" when an eager seed did not run for want of time (a 20-s budget on a quick
        CI host skipped its checklist with 2 s left for trials, then called the default alone converged)."""
        used = f"{trials} trials, {format_duration(elapsed_s)} of {format_duration(budget_s)} used"
        if self.unrun_seeds:
            seeds = ", ".join(dict.fromkeys(self.unrun_seeds))
            return (f"stopping the trials after {used}, with the seed(s) the time left did not pay for not run "
                    f"({seeds}; the budget that would run them is above): no neighbour of the best configuration "
                    f"is left within this budget's reach, and {why}")
        return f"converged after {used}: no neighbour of the best configuration is left, and {why}"

    def _within_reach(self, around: list[Candidate], ceiling_s: float, budget_s: float,
                      say: Callable[[str], None]) -> list[Candidate]:
        """The candidates the budget could ever pay for; the others are said once, with the budget that would.
        Those of one estimate and one budget share a line: a 20-s budget on the CPU had its six thread and
        optimizer neighbours each refused on a line of its own, every one "about 0:03"."""
        alike: dict[tuple[str, str], list[str]] = {}
        for candidate in around:
            # once, though its estimate moves as trials teach costs
            if candidate.cost_s > ceiling_s and candidate.describe() not in self.told:
                self.told.add(candidate.describe())
                needed = budget_s + (candidate.cost_s - ceiling_s) / MAX_TRIAL_SHARE
                key = (format_duration(candidate.cost_s), budget_minutes(needed))
                alike.setdefault(key, []).append(candidate.describe())
        for (cost, needed), names in alike.items():
            say(f"not trying {'; '.join(names)}: about {cost}{' each' if len(names) > 1 else ''}, longer than the "
                f"{format_duration(ceiling_s)} one trial may take within a budget of {format_duration(budget_s)} "
                f"({MAX_TRIAL_SHARE:.0%} of the time for trials: more would crowd out the search around it); "
                f"--budget {needed} or more would try {'them' if len(names) > 1 else 'it'}")
        return [c for c in around if c.cost_s <= ceiling_s]

    def _pin_passed_over(self, study: optuna.Study, centre: Config) -> None:
        """Hold the knobs the neighbourhood passed over (nothing to gain where the best is) and the costly ones
        (the best's compile mode) at the best's values in the sampler's next proposal: it samples the others.
        Random start-up trials spent most of their budget on the first (every block checkpointed with 100 GiB
        free); an eager guess cannot beat a compiled best, and a guess at another compile mode is a compile's
        time spent on a guess."""
        knobs = {k.name: k for k in self.neighbourhood.knobs}
        held = [*self.neighbourhood.passed_over, *(k.name for k in self.neighbourhood.knobs if k.costly)]
        pinned = {name: centre[name] for name in held
                  if name in knobs and knobs[name].tunable and knobs[name].active is None and name in centre}
        if pinned:
            study.enqueue_trial(pinned, user_attrs={SEED_ATTR: "search"}, skip_if_exists=False)

    def _tell_passed_over(self, say: Callable[[str], None]) -> None:
        """Say once which knobs the search leaves out around its centre, and why."""
        by_reason: dict[str, list[str]] = {}
        for knob, reason in self.neighbourhood.passed_over.items():
            by_reason.setdefault(reason, []).append(knob)
        for reason, knobs in by_reason.items():
            text = f"not trying {', '.join(knobs)}: {reason}"
            if text not in self.told:
                self.told.add(text)
                say(text)

    def _centres(self, found: Findings) -> list[tuple[Config, float]]:
        """Where to search from: the best configuration without a costly choice, then the best of all.

        Eager trials are cheap: the neighbourhood of the best eager
        configuration, costly choices (compilation) on top of it included,
        is searched before that of a compiled best, whose every neighbour
        compiles again.
        """
        eager = [(c, r) for c, r in found.successes if not self.neighbourhood.is_costly(c)]
        best_all = [(found.best_config, found.best or 0.0)] if found.best_config is not None else []
        centres = [self._stay(0, max(eager, key=lambda cr: cr[1])) if eager else None,
                   self._stay(1, best_all[0]) if best_all else None]
        unique = {config_key(c): (c, r) for c, r in (x for x in centres if x is not None)}
        return list(unique.values())

    def _stay(self, which: int, best: tuple[Config, float]) -> tuple[Config, float]:
        """The centre moves to a new best only when it is faster beyond noise (MATTERS), so that a trial that
        measured a hair faster does not reopen a whole neighbourhood of near-copies."""
        current = self.centres.get(which)
        if current is None or best[1] > current[1] * math.exp(MATTERS) or config_key(best[0]) == config_key(current[0]):
            self.centres[which] = best
        return self.centres[which]

    def sampler_left(self, budget_s: float) -> float:
        """Seconds left of the share of the budget the sampler's tries may take (SAMPLER_SHARE)."""
        return max(0.0, SAMPLER_SHARE * budget_s - self.sampler_spent_s)

    def proposed(self, seed_kind: str, cost_s: float = 0.0) -> None:
        """A trial the sampler chose is about to run, expected to take ``cost_s``: one of its tries, once the
        neighbourhood ran out."""
        if seed_kind == "search" and self.exhausted_at is not None:
            self.sampler_tries += 1
            self.sampler_spent_s += cost_s
