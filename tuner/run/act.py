"""Act: promote the challenger only on a significant win; flag a regression of the incumbent.

- Promote when the lower bound of the 95% interval of the speed-up exceeds
  ``1 + min_gain``.  Anything less keeps the incumbent: a noisy 3% "win"
  is not worth a production change.
- Regression: the incumbent re-measured now against the same configuration's
  measurements in its last iteration (Welch's interval); flagged when the
  interval's upper bound lies below ``1 - min_gain``.  A driver or library
  upgrade that slows the job shows up here, next to the environment diff.
- An incumbent that no longer runs (crash, OOM) where it ran before is a
  regression too; one that never ran (a default batch that never fit) is
  not.  Either way a challenger that ran in every round replaces it.
- With a latency limit (``--max-latency``), the median p99 latency of each
  side's check rounds counts first: a challenger within the limit replaces
  an incumbent beyond it whatever their speeds (it was applied before the
  limit, or before the model grew), and a challenger beyond it is kept out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from dstune.units import format_latency

from .check import CheckResult
from .speedup import RatioEstimate, unpaired_ratio

PROMOTED, KEPT = "promoted", "kept"


@dataclass
class Decision:
    decision: str
    reason: str
    regression: bool | None = None
    regression_estimate: RatioEstimate | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "regression": self.regression,
                "regression_estimate": self.regression_estimate.to_dict() if self.regression_estimate else None}


def regression_of(reference: Sequence[float] | None, now: Sequence[float], min_loss: float
                  ) -> tuple[bool | None, RatioEstimate | None]:
    """Is ``now`` slower than ``reference`` beyond the noise?  None when there is nothing to compare."""
    if not reference or len(reference) < 2 or len(now) < 2:
        return None, None
    estimate = unpaired_ratio(reference, now)
    return estimate.falls_below(min_loss), estimate


def decide(check: CheckResult, has_challenger: bool, min_gain: float, reference: Sequence[float] | None,
           no_challenger_reason: str = "no challenger", max_latency_s: float | None = None,
           latency_p99_s: dict[str, float | None] | None = None) -> Decision:
    """The Act phase's decision from a finished check.

    ``latency_p99_s`` holds the median p99 latency of the incumbent's and the challenger's check rounds.
    """
    regression, regression_estimate = regression_of(reference, check.incumbent, min_gain)
    if "incumbent" in check.failures:
        regression = True if reference else None
        if has_challenger and "challenger" not in check.failures:
            return Decision(PROMOTED, f"the incumbent failed ({check.failures['incumbent']}); the challenger ran "
                            f"in every round (median {statistics.median(check.challenger):.1f} samples/s)", regression)
        return Decision(KEPT, f"the incumbent failed ({check.failures['incumbent']}) and no challenger ran in "
                        "every round: nothing better to apply", regression)
    if not has_challenger:
        return Decision(KEPT, no_challenger_reason, regression, regression_estimate)
    if "challenger" in check.failures:
        return Decision(KEPT, f"the challenger failed in the check ({check.failures['challenger']})",
                        regression, regression_estimate)
    if max_latency_s is not None:
        limit = format_latency(max_latency_s)
        incumbent_p99, challenger_p99 = ((latency_p99_s or {}).get(role) for role in ("incumbent", "challenger"))
        incumbent_late = incumbent_p99 is not None and incumbent_p99 > max_latency_s
        challenger_late = challenger_p99 is not None and challenger_p99 > max_latency_s
        if challenger_late and not incumbent_late:
            return Decision(KEPT, f"the challenger's p99 latency in the check, {format_latency(challenger_p99)}, "
                            f"breaks the limit of {limit}", regression, regression_estimate)
        if incumbent_late and challenger_p99 is not None and not challenger_late:
            return Decision(PROMOTED, f"the incumbent's p99 latency, {format_latency(incumbent_p99)}, breaks the "
                            f"limit of {limit}; the challenger's is {format_latency(challenger_p99)}",
                            regression, regression_estimate)
    estimate = check.estimate
    if estimate is None:
        return Decision(KEPT, f"the check measured {len(check.challenger)} round(s) ({check.cut or 'no more'}); "
                        "an interval needs two", regression, regression_estimate)
    if estimate.exceeds(min_gain):
        reason = f"speed-up {estimate} (95% CI) exceeds the minimum gain of {min_gain:.0%}"
        return Decision(PROMOTED, reason, regression, regression_estimate)
    reason = f"speed-up {estimate} (95% CI): lower bound not above 1 + {min_gain:.0%}"
    if check.cut and estimate.ratio > 1 + min_gain:  # promising, but the budget cut the rounds that would tell
        reason += (f"; {check.cut}, and {estimate.n} rounds leave the interval wide: a longer --budget would pay for "
                   "the rest")
    return Decision(KEPT, reason, regression, regression_estimate)
