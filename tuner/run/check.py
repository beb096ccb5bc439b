"""Check: re-measure incumbent and challenger interleaved, and estimate the speed-up.

Search results are optimistic: the best of many noisy trials is, on
average, luckier than it is fast.  So the challenger is measured again
against the incumbent, A B A B ..., each measurement in a fresh process, and
only the paired comparison decides.  Interleaving makes slow drift (thermal
state, a neighbour on the host) hit both sides alike.

A check whose answer is plain before its last round stops there: from
:data:`SETTLE_AFTER` pairs on, when even a 99% interval (stricter than the
95% the decision uses, since the check looks more than once) lies wholly
above or wholly below the minimum gain.  A speed-up of 7x is not made surer
by a fifth round of a minute each; a close call gets every round.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from dstune.knobs import Config
from dstune.trial.records import TrialOutcome

from .speedup import RatioEstimate, paired_ratio
from .workload_failure import last_line

Measure = Callable[[str, int, Config], TrialOutcome]
MayStart = Callable[[int], bool]  # whether round r (0-based) may start: the budget can still pay for it
ROLES = ("incumbent", "challenger")
SETTLE_AFTER = 2  # pairs before a check may stop early on a plain answer (Student's t makes two wide)
SETTLE_CONFIDENCE = 0.99


@dataclass
class CheckResult:
    """Throughputs per role in measurement order, and the speed-up of challenger over incumbent."""

    incumbent: list[float] = field(default_factory=list)
    challenger: list[float] = field(default_factory=list)
    gpu_busy: dict[str, list[float]] = field(default_factory=dict)  # NVML's mean utilisation (%), per role
    failures: dict[str, str] = field(default_factory=dict)
    estimate: RatioEstimate | None = None
    cut: str | None = None  # why the check stopped before its rounds were done (the budget ran out)
    settled: str | None = None  # why the check stopped early on a plain answer

    def to_dict(self) -> dict[str, Any]:
        return {"incumbent": self.incumbent, "challenger": self.challenger, "failures": self.failures,
                "estimate": self.estimate.to_dict() if self.estimate else None, "cut": self.cut,
                "settled": self.settled}


def settled(incumbent: list[float], challenger: list[float], min_gain: float, repeats: int) -> str | None:
    """Why the rounds so far already decide the check (a sentence), or None while more rounds could change it."""
    pairs = min(len(incumbent), len(challenger))
    if pairs < SETTLE_AFTER or pairs >= repeats:
        return None
    strict = paired_ratio(incumbent[:pairs], challenger[:pairs], SETTLE_CONFIDENCE)
    if strict.low > 1 + min_gain:
        side = "above"
    elif strict.high < 1 + min_gain:
        side = "below"
    else:
        return None
    return (f"settled after {pairs} of {repeats} rounds: the speed-up's 99% interval {strict} lies wholly {side} "
            f"1 + {min_gain:.0%}")


def _open(result: CheckResult, min_gain: float | None) -> bool:
    """Whether the decision's own 95% interval still holds 1 + ``min_gain``: another round could change the answer.

    Not after a failure (the failure is the answer), nor without a minimum gain to decide against.
    """
    pairs = min(len(result.incumbent), len(result.challenger))
    if result.failures or min_gain is None:
        return False
    if pairs < 2:
        return True
    estimate = paired_ratio(result.incumbent[:pairs], result.challenger[:pairs])
    return estimate.low <= 1 + min_gain <= estimate.high


def interleaved_check(measure: Measure, incumbent: Config, challenger: Config | None, repeats: int,
                      may_start: MayStart = lambda round_: True, min_gain: float | None = None,
                      most: int | None = None) -> CheckResult:
    """Measure ``repeats`` rounds of (incumbent, challenger); with no challenger, the incumbent alone.

    ``measure(role, round, config)`` runs one fresh-process measurement.  A
    role that fails once (crash, OOM, timeout) is not measured again: its
    failure is the finding.  A round starts only if ``may_start(round)``
    says the budget pays for it, and a measurement the budget cut short
    (status ``interrupted``) ends the check with the rounds done: neither is
    a failure of either configuration.  Given ``min_gain``, a check with a
    challenger stops once its answer is plain (:func:`settled`).

    ``repeats`` is what the budget was expected to pay for; up to ``most``
    rounds in all (``--check-repeats``), a check with a challenger whose 95%
    interval still holds the minimum gain after them goes on while
    ``may_start`` says the budget and its overrun pay for another round.  Two
    rounds give Student's t one degree of freedom: augmented_images' checklist
    ran 3.95x and 3.17x its default in two rounds on an H200, and was kept on
    the interval [0.871, 14.378] with a third round's time left unused.
    """
    result = CheckResult()
    configs = {"incumbent": incumbent, "challenger": challenger}
    most = max(repeats, most or 0) if challenger is not None and min_gain is not None else repeats
    for round_ in range(most):
        if round_ >= repeats and not _open(result, min_gain):
            break  # the rounds planned have answered: more would only spend the allowance
        if not may_start(round_):
            result.cut = f"the budget paid for {round_} of {most} rounds"
            break
        for role in ROLES:
            if configs[role] is None or role in result.failures:
                continue
            outcome = measure(role, round_, configs[role])
            if outcome.status == "interrupted":
                result.cut = f"the budget ran out in round {round_ + 1} of {most}"
                break
            if outcome.status == "ok" and outcome.metrics.get("samples_per_s"):
                getattr(result, role).append(float(outcome.metrics["samples_per_s"]))
                if outcome.metrics.get("gpu_util_mean") is not None:
                    result.gpu_busy.setdefault(role, []).append(float(outcome.metrics["gpu_util_mean"]))
            else:
                result.failures[role] = f"{outcome.status} in round {round_ + 1}: {last_line(outcome.error or '')[:300]}"
        if result.cut or len(result.failures) == sum(c is not None for c in configs.values()):
            break
        if challenger is not None and min_gain is not None and not result.failures:
            result.settled = settled(result.incumbent, result.challenger, min_gain, most)
            if result.settled:
                break
    if challenger is not None and not result.failures:  # a round the budget cut in half has no pair
        pairs = min(len(result.incumbent), len(result.challenger))
        result.incumbent, result.challenger = result.incumbent[:pairs], result.challenger[:pairs]
        if pairs >= 2:
            result.estimate = paired_ratio(result.incumbent, result.challenger)
    return result


# A configuration's check rounds differing by more than this factor were disturbed, as was a check whose median
# differs from the configuration's own trial by more: on a GPU-bound workload both agree within 2% (ResNet-50,
# GPT-2 and BERT on the H200); a loader-bound one's rounds varied with a cv of 7.9% (augmented_images, H100).
NOISY_SPREAD = 1.3
DISAGREES = 1.3
HOST_BOUND_BUSY = 50.0  # GPU busy (%) below which the host's CPUs, not the GPU, set a configuration's pace


def _disturbed(role: str, values: list[float], trial: float | None) -> str | None:
    """How one configuration's check rounds disagree with each other or with its trial (a clause), or None."""
    if len(values) >= 2 and min(values) > 0 and max(values) / min(values) > NOISY_SPREAD:
        return (f"the {role}'s check rounds ranged from {min(values):,.1f} to {max(values):,.1f} samples/s "
                f"({max(values) / min(values):.1f}x)")
    if trial and values:
        median = statistics.median(values)
        ratio = max(median, trial) / max(min(median, trial), 1e-12)
        if ratio > DISAGREES:
            return (f"the {role} ran {median:,.1f} samples/s in the check against {trial:,.1f} in its trial "
                    f"({ratio:.1f}x apart)")
    return None


def check_noise(result: CheckResult, trials: dict[str, float | None]) -> tuple[str, str] | None:
    """Why the check's figures say the machine was not quiet, and what to do about it (two sentences), or None
    when they look quiet.

    ``trials`` holds each role's figure in its trial of this iteration,
    where it had one.  A configuration the host's CPUs pace (the GPU busy
    less than :data:`HOST_BOUND_BUSY` percent) is named as such, since
    waiting for an idle GPU does not quiet its host: augmented_images'
    default (loading in the training process) on an H200 ran 626.9
    samples/s in its trial, then 509.3, 473.5 and 357.2 in the check, the
    GPU busy 7-12%.
    """
    for role in ROLES:
        why = _disturbed(role, getattr(result, role), trials.get(role))
        if why is None:
            continue
        busy = result.gpu_busy.get(role) or []
        if busy and max(busy) < HOST_BOUND_BUSY:
            low, high = f"{min(busy):.0f}", f"{max(busy):.0f}"  # "0-0%" on the H200's paced test: say "0%"
            busy_text = low if low == high else f"{low}-{high}"
            return (f"{why}; the GPU was busy only {busy_text}% of the time, so the host's CPUs set its pace, "
                    "and its figures move with whatever else runs on the host",
                    "Run where no other job shares the host's CPUs (--wait-idle waits for the GPU alone)")
        return why, "Run on an idle machine, or with --wait-idle"
    return None
