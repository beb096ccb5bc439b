"""What a trial's timed windows say about why they disagree, so the advice printed fits the cause.

A busy machine slows windows at random.  A configuration's own work has a
shape: a compile or CUDA-graph recording that runs late lands in the first
window alone; a configuration that redoes that work every step (compile's
reduce-overhead recording its CUDA graphs again, pytorch/pytorch#171672)
runs its first window at full speed and every one after it slower.  Only the
first is noise to be warned about; the others are the configuration, and the
median window is its figure.  Parts that disagree are timed again by whole
steps before any of this is said (:func:`dstune.trial.measure.measure`):
GPT-2's windows of that second shape on an H200 came from timing by parts.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from dstune.trial.measure_settings import NOISY_CV


def late_first_window(windows: Sequence[float]) -> float | None:
    """How many times the others' median the first timed window took, where it alone disagrees (the others
    within NOISY_CV of each other); None otherwise."""
    if len(windows) < 3:
        return None
    rest = windows[1:]
    spread = statistics.pstdev(rest) / statistics.fmean(rest)
    typical = statistics.median(rest)
    return windows[0] / typical if spread <= NOISY_CV and windows[0] > typical * (1 + 2 * NOISY_CV) else None


def slowed_after_first_window(windows: Sequence[float]) -> float | None:
    """How many times the first window the quickest of the others took, where every later one ran far slower
    than the first (by more than 2 x NOISY_CV); None otherwise.  A busy machine rarely slows every window but the
    first."""
    if len(windows) < 3:
        return None
    first, rest = windows[0], windows[1:]
    return min(rest) / first if min(rest) > first * (1 + 2 * NOISY_CV) else None


def windows_message(metrics: dict[str, Any]) -> tuple[str, bool] | None:
    """What to say of a trial whose windows disagree beyond NOISY_CV: (the sentence, whether it warns of a
    busy machine); None when they agree."""
    retimed = metrics.get("parts_retimed")
    if retimed and (metrics.get("step_time_cv") or 0.0) <= NOISY_CV:
        return (f"a trial's windows timed by its parts varied by {retimed['step_time_cv']:.0%}, so it was timed again "
                f"by whole steps, which agree: {metrics['samples_per_s']:,.1f} samples/s against "
                f"{retimed['samples_per_s']:,.1f} by parts; its figure is the whole steps'", False)
    cv = metrics.get("step_time_cv")
    if cv is None or cv <= NOISY_CV:
        return None
    windows = metrics.get("window_step_times_s") or []
    late = late_first_window(windows)
    if late is not None:  # the configuration's own late work, not the machine: the median stands
        return (f"a trial's first timed window took {late:.1f}x as long as the others, which agree: the "
                "configuration was still compiling or recording CUDA graphs, not a busy machine; its figure is the "
                "median window's", False)
    slowed = slowed_after_first_window(windows)
    if slowed is not None:
        return (f"a trial's timed windows after its first each took {slowed:.1f}x or more "
                f"as long as the first ({windows[0]:.3f} s, then {', '.join(f'{w:.3f}' for w in windows[1:])} s): "
                "the configuration slowed down as it ran, as compile's reduce-overhead does when it records its CUDA "
                "graphs again at every step (pytorch/pytorch#171672), unless another job began on this machine; "
                "its figure is the median window's, the slower pace", False)
    return (f"[warning] a trial's timed windows varied by {cv:.0%} (coefficient of variation): something else was "
            "using this machine, and its figures are unreliable. Run on an idle machine, or with --wait-idle.", True)
