"""Time a composed step the way a benchmark should.

Warm up until step time is steady (the first step, which pays for
compilation, is recorded on its own), then time several windows of steps with
the device synchronised only at window edges (CUDA events on the GPU).  The
result is the median step time across windows and the spread between them,
so later phases can tell a real speed-up from noise.

A ``dataset=`` workload is measured differently, because its batches come
from DataLoader workers that run ahead of the model: while the first step
compiles, every worker fills its prefetch queue, and steps served from that
queue are as fast as the model alone.  Its warm-up therefore consumes the
whole queue before anything is timed, its timed steps cover
``loader_epochs`` epochs (the workers' stall at an epoch's end is a cost the
user pays), and its throughput is the timed samples over the timed time, not
the median window.  Where two epochs fit ``max_timed_s``, the timed steps
begin at an epoch's start and each window is one whole epoch, so every window
and every process holds as many epoch starts.  On augmented_images (H200, 16
workers) windows begun anywhere ran 0.04 to 0.15 s a step, a cv of up to 56%
that the run reported as a busy machine; in whole epochs the cv was 2-8%
(``benchmarks/epoch_windows``).

A training step with synthetic batches is timed by its parts, so that what a
trial costs does not grow with gradient accumulation: the micro-step
(forward and backward of one micro-batch) and the optimizer step are timed
apart, and the step time is ``accumulation`` micro-steps plus one update.  A
micro-batch of 4 accumulated 8 times then costs no more to measure than a
micro-batch of 32, and a slow configuration of a large model is measured in
tens of seconds rather than minutes.  Each warm-up cycle and each timed
window runs micro-steps and then one update, as training does, so the peak
memory holds activations, gradients and optimizer state together; the second
cycle (the first after the optimizer state exists) runs two micro-steps, so
it also holds a micro-step's activations with the gradients of the one
before, as every step of accumulation does.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .composition import Composed

from .distributed import agree_all, agree_any, agree_max, world
from .gpu_monitor import GpuMonitor
from .measure_settings import NOISY_CV, MeasureSettings
from .numerics import NumericsError

PRUNE_AFTER = 3  # warm-up steps after the first before a trial may be judged hopeless: by the fastest of them


class HopelessTrial(Exception):
    """Warm-up already shows throughput far below the best so far: not worth timing."""

    def __init__(self, estimate: float, metrics: dict[str, Any]) -> None:
        super().__init__(f"about {estimate:.1f} samples/s in warm-up, under the pruning threshold")
        self.metrics = metrics


class _Clock:
    """Device-aware timing: CUDA events on the GPU, the host clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start


def _check_finite(tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor.detach()).all()):
        raise NumericsError("loss/output is NaN or infinite")


def _steady(times: list[float], tolerance: float) -> bool:
    tail = times[-3:]
    return len(tail) == 3 and max(tail) <= min(tail) * (1 + tolerance)


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak memory of this process: allocator peaks on CUDA, peak RSS on the CPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        allocated = int(torch.cuda.max_memory_allocated(device))
        reserved = int(torch.cuda.max_memory_reserved(device))
        return {"peak_allocated": allocated, "peak_reserved": reserved, "peak_rss": rss,
                "peak_memory_bytes": reserved}
    return {"peak_rss": rss, "peak_memory_bytes": rss}


def loader_queue(loader: Any) -> int:
    """How many batches a DataLoader's workers hold ready (``num_workers * prefetch_factor``); 0 without workers."""
    if loader is None or not getattr(loader, "num_workers", 0):
        return 0
    return int(loader.num_workers) * int(loader.prefetch_factor or 2)


def _timed_steps(settings: MeasureSettings, typical: float, loader: Any) -> tuple[int, int]:
    """(windows, steps per window): ``settings.windows`` windows of ``window_s``, fewer for slow steps.

    With a DataLoader the windows are lengthened to span ``loader_epochs``
    epochs together, as far as ``max_timed_s`` allows.
    """
    steps_per_window = int(min(settings.max_steps_per_window, max(1, math.ceil(settings.window_s / typical))))
    windows = settings.windows
    if steps_per_window * typical * windows > settings.max_timed_s:
        windows = max(2, min(windows, int(settings.max_timed_s / (steps_per_window * typical))))
    if loader is not None:
        wanted = min(math.ceil(settings.loader_epochs * len(loader)), int(settings.max_timed_s / typical))
        steps_per_window = max(steps_per_window, math.ceil(wanted / windows))
    return windows, steps_per_window


def epoch_windows(settings: MeasureSettings, typical: float, steps_per_epoch: int) -> tuple[int, int] | None:
    """(windows, steps per window) that time a DataLoader's epochs whole, one to a window: ``settings.windows``
    of them where an epoch is shorter than ``window_s``, else ``loader_epochs`` (at least two), as far as
    ``max_timed_s`` allows.  None where two epochs would outlast it (each epoch's start then weighs little)."""
    epoch_s = steps_per_epoch * typical
    if 2 * epoch_s > settings.max_timed_s:
        return None
    windows = settings.windows if epoch_s < settings.window_s else math.ceil(settings.loader_epochs)
    return max(2, min(windows, int(settings.max_timed_s // epoch_s))), steps_per_epoch


def _align_to_epoch(composed: Composed, settings: MeasureSettings, typical: float,
                    windows: int, steps_per_window: int) -> tuple[int, int, int | None]:
    """Run untimed steps up to the next epoch's start where the epochs can be timed whole (:func:`epoch_windows`);
    return the windows, steps per window and the steps of an epoch (None where not aligned)."""
    epoch = composed.epoch
    draws = composed.plan.accumulation if composed.mode == "train" else 1
    if epoch is None or not settings.epoch_aligned or epoch.length % draws:  # steps straddling epochs start none
        return windows, steps_per_window, None
    steps_per_epoch = epoch.length // draws
    planned = epoch_windows(settings, typical, steps_per_epoch)
    if not agree_all(planned is not None) or planned is None:  # every rank aligns, or none does
        return windows, steps_per_window, None
    while not epoch.at_start:
        composed.step()
    return *planned, steps_per_epoch


def measure(composed: Composed, settings: MeasureSettings, prune_below: float | None = None) -> dict[str, Any]:
    """Time the trial by its parts where that is cheaper (:func:`measure_by_parts`), else by whole steps.

    Parts whose windows disagree beyond :data:`NOISY_CV` are timed again by
    whole steps, where a few whole steps fit the measurement's time: the
    parts are a shortcut, and under compile's reduce-overhead the shortcut
    itself can go wrong.  GPT-2 at micro-batch 16, two accumulated, ran
    windows of 0.10 s, then 0.31-0.75 s by parts (73-102 samples/s; its
    cudagraph log shows new paths recorded, the cause is not established)
    against 0.096 s in every window by whole steps (334 samples/s), three
    times over on an H200.  The figure is then the whole steps'; the parts'
    are kept under ``parts_retimed``.
    """
    ranks = world()
    # A data-parallel step's all-reduce happens in its last micro-step only, so its parts are not what a whole
    # step costs: it is timed whole, and every rank runs the same steps (dstune.trial.distributed).
    if (settings.by_parts and composed.plan.accumulation > 1 and composed.micro_step is not None
            and composed.optimizer_step is not None and composed.data_loader is None and ranks == 1):
        parts = measure_by_parts(composed, settings, prune_below)
        # The fewest whole steps a measurement takes: the first, the warm-up's minimum, two windows of one step.
        fewest_s = (1 + settings.min_warmup_steps + 2) * parts["step_time_median_s"]
        affordable = fewest_s <= settings.max_warmup_s + settings.max_timed_s
        if parts["step_time_cv"] <= NOISY_CV or not affordable:
            return parts
        whole = measure_steps(composed, settings)
        whole["parts_retimed"] = {k: parts[k] for k in ("samples_per_s", "step_time_cv", "window_step_times_s",
                                                        "timed_wall_s")}  # what the shortcut cost before
        for key in ("first_step_s", "warmup_steps", "warmup_s"):  # the parts' warm-up paid for the compile
            whole[key] = parts[key]
        return whole
    return measure_steps(composed, settings, prune_below)


def measure_steps(composed: Composed, settings: MeasureSettings, prune_below: float | None = None
                  ) -> dict[str, Any]:
    """Warm up, time ``settings.windows`` windows of whole steps, and return the metrics of the trial.

    With ``prune_below`` (samples/s), a trial whose warm-up steps after the
    first are already slower than that raises :class:`HopelessTrial` instead
    of spending its warm-up and timed windows.  It is judged, once
    :data:`PRUNE_AFTER` steps have followed the first, by the fastest of
    those steps so far: CUDA graphs (compile's reduce-overhead) record over
    the second and third steps, each several times a replay's length, and a
    configuration 4% faster than the best was pruned on their median
    (ResNet-50 on the H200).
    """
    ranks = world()
    clock = _Clock(composed.device)
    step = composed.step
    queued = loader_queue(composed.data_loader)  # batches ready before the first step ends: too fast to judge by
    warm_times: list[float] = []
    warm_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = step()
        _check_finite(out)  # synchronises: warm-up steps are timed one by one
        clock.sync()
        warm_times.append(time.perf_counter() - t0)
        if prune_below and len(warm_times) > PRUNE_AFTER:
            estimate = composed.plan.samples_per_step / min(warm_times[1:])  # this rank's
            if agree_any(estimate * ranks < prune_below):
                raise HopelessTrial(estimate * ranks, {
                    "samples_per_s": estimate, "first_step_s": warm_times[0], "warmup_steps": len(warm_times),
                    **_plan_metrics(composed), **peak_memory(composed.device)})
        # The first step pays for compilation; the next ``queued`` were prepared while it did.
        enough = len(warm_times) >= settings.min_warmup_steps + 1
        done = enough and ((len(warm_times) > queued and _steady(warm_times[1:], settings.steady_tolerance))
                           or time.perf_counter() - warm_start > settings.max_warmup_s)
        if agree_all(done):
            break
    warmup_s = time.perf_counter() - warm_start
    typical = statistics.median(warm_times[-3:])
    windows, steps_per_window = _timed_steps(settings, typical, composed.data_loader)
    windows, steps_per_window, steps_per_epoch = _align_to_epoch(composed, settings, typical, windows,
                                                                 steps_per_window)
    windows, steps_per_window = agree_max(windows), agree_max(steps_per_window)

    monitor = GpuMonitor(composed.device.index or 0) if clock.cuda else None
    per_window: list[float] = []
    per_step: list[float] = []
    bad = torch.zeros((), dtype=torch.bool, device=composed.device)
    per_step_latency = composed.mode == "inference"
    clock.sync()
    if monitor:
        monitor.start()
    timed_start = time.perf_counter()
    for index in range(windows):
        # Windows are planned from warm-up steps; an epoch's start they did not see can outlast the plan.
        if index >= 2 and agree_all(time.perf_counter() - timed_start > settings.max_timed_s):
            break
        marks = [clock.mark()]
        for _ in range(steps_per_window):
            out = step()
            bad |= ~torch.isfinite(out.detach()).all()
            if per_step_latency:
                marks.append(clock.mark())
        if not per_step_latency:
            marks.append(clock.mark())
        clock.sync()
        per_window.append(clock.seconds(marks[0], marks[-1]) / steps_per_window)
        if per_step_latency:
            per_step.extend(clock.seconds(a, b) for a, b in zip(marks, marks[1:]))
    timed_wall_s = time.perf_counter() - timed_start
    windows = len(per_window)
    readings = monitor.stop() if monitor else {}
    if bool(bad):
        raise NumericsError("loss/output went NaN or infinite during the timed window")

    median = statistics.median(per_window)
    mean = statistics.fmean(per_window)
    samples_per_step = composed.plan.samples_per_step
    timed_samples = samples_per_step * steps_per_window * windows
    # A loader's stalls fall in some windows and not others: only the whole span counts them fairly.
    by_mean = composed.data_loader is not None
    metrics: dict[str, Any] = {
        "samples_per_s": samples_per_step / (mean if by_mean else median),
        "throughput_basis": "mean" if by_mean else "median",
        "step_time_median_s": median,
        "step_time_cv": (statistics.pstdev(per_window) / mean) if len(per_window) > 1 else 0.0,
        "window_step_times_s": per_window,
        "steps_per_window": steps_per_window,
        "windows": windows,
        "steps_per_epoch": steps_per_epoch,  # set where each window is one whole epoch from its start
        "first_step_s": warm_times[0],
        "warmup_steps": len(warm_times),
        "warmup_s": warmup_s,
        "timed_wall_s": timed_wall_s,
        **_plan_metrics(composed),
        **peak_memory(composed.device),
        **readings,
        **(composed.guard.result if composed.guard else {}),
    }
    if readings.get("energy_j") is not None:
        metrics["energy_per_sample_j"] = readings["energy_j"] / timed_samples
    if per_step:
        ordered = sorted(per_step)
        metrics["latency_p50_s"] = ordered[len(ordered) // 2]
        metrics["latency_p99_s"] = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return metrics


def _plan_metrics(composed: Composed) -> dict[str, Any]:
    return {"micro_batch": composed.plan.micro_batch, "accumulation": composed.plan.accumulation,
            "samples_per_step": composed.plan.samples_per_step, "input_shapes": len(composed.input_shapes)}


MAX_REHEARSALS = 5  # chains a compiler may need to settle: cudagraph trees run a new path once, then record it


def _rehearse(composed: Composed, clock: _Clock, chain: int, typical_micro: float, settings: MeasureSettings
              ) -> int:
    """Run the timed windows' longest chain (``chain`` micro-steps, then an update) until it runs at the
    warm-up's micro-step time; return how many chains ran.

    The warm-up runs two micro-steps per update, but a window runs up to
    ``accumulation`` between updates, and under compile's reduce-overhead
    each place in that chain is a path of CUDA graphs of its own, run once
    and then recorded the first times it comes.  GPT-2 accumulating four on
    the H200 recorded them in its first window (0.256 s against 0.105 s).
    A chain is at most one window long, so this costs a few windows' time
    (``MAX_REHEARSALS`` at most); with two or fewer in a chain the warm-up
    has run every path already.
    """
    if chain <= 2:
        return 0
    micro, update = composed.micro_step, composed.optimizer_step
    assert micro is not None and update is not None
    ran = 0
    while ran < MAX_REHEARSALS:
        composed.begin_step()
        t0 = time.perf_counter()
        _check_finite(micro())  # synchronises once, as a warm-up cycle does
        for _ in range(chain - 1):
            micro()
        clock.sync()
        per_micro = (time.perf_counter() - t0) / chain
        update()
        clock.sync()
        ran += 1
        settled = per_micro <= typical_micro * (1 + settings.steady_tolerance)
        if ran >= 2 and settled:
            break
    return ran


def measure_by_parts(composed: Composed, settings: MeasureSettings, prune_below: float | None = None
                     ) -> dict[str, Any]:
    """Time a training step as ``accumulation`` micro-steps plus one optimizer step, timed apart.

    Warm-up runs cycles of two micro-steps (the first after an update, and
    one that accumulates: each path is warm before it is timed) and one
    update, each timed, until the micro-step time is steady; each timed
    window then runs ``n`` micro-steps (as many as fill ``window_s``, in
    groups of at most ``accumulation`` each followed by an update), with
    CUDA events between them, and gives a step time of ``accumulation``
    times the window's micro-step time plus its update time.  Only for
    ``accumulation`` > 1: otherwise a whole step is one micro-step and one
    update already.  With more than two accumulated, a compiler's graphs
    for a chain of accumulating micro-steps would still be recorded in the
    first windows: before them, the windows' longest chain is rehearsed
    until it runs at the warm-up's pace (``_rehearse``).
    """
    assert composed.micro_step is not None and composed.optimizer_step is not None
    micro, update = composed.micro_step, composed.optimizer_step
    begin = composed.begin_step
    clock = _Clock(composed.device)
    accumulation, samples_per_step = composed.plan.accumulation, composed.plan.samples_per_step
    micro_times: list[float] = []
    update_times: list[float] = []
    warm_start = time.perf_counter()
    while True:
        begin()
        t0 = time.perf_counter()
        _check_finite(micro())
        # A second micro-step before each update, as accumulation runs: it adds to the gradients the first one
        # made, a path of its own that a compiler (CUDA graphs recorded for reduce-overhead) must have seen
        # before the timed windows run it, or the first window pays for recording it (ResNet-50 on the H200:
        # 0.42 s against 0.07 s).  Once the optimizer state exists, the weights, their state and the first
        # micro-step's gradients are all held while it runs, so the peak memory is training's.
        micro()
        clock.sync()
        t1 = time.perf_counter()
        update()
        clock.sync()
        micro_times.append((t1 - t0) / 2)
        update_times.append(time.perf_counter() - t1)
        if prune_below and len(micro_times) > PRUNE_AFTER:  # the fastest parts so far, as measure() judges
            step_s = accumulation * min(micro_times[1:]) + min(update_times[1:])
            if samples_per_step / step_s < prune_below:
                raise HopelessTrial(samples_per_step / step_s, {
                    "samples_per_s": samples_per_step / step_s, "first_step_s": 2 * micro_times[0] + update_times[0],
                    "warmup_steps": len(micro_times), **_plan_metrics(composed), **peak_memory(composed.device)})
        enough = len(micro_times) >= settings.min_warmup_steps + 1
        if enough and (_steady(micro_times[1:], settings.steady_tolerance)
                       or time.perf_counter() - warm_start > settings.max_warmup_s):
            break
    typical_micro = statistics.median(micro_times[-3:])
    typical_update = statistics.median(update_times[-3:])
    windows, micro_per_window = _timed_steps(settings, typical_micro, None)
    # Fewer windows when micro-steps and updates together would outlast max_timed_s.
    window_s = micro_per_window * typical_micro + typical_update
    if windows * window_s > settings.max_timed_s:
        windows = max(2, min(windows, int(settings.max_timed_s / window_s)))
    rehearsals = _rehearse(composed, clock, min(accumulation, micro_per_window), typical_micro, settings)
    warmup_s = time.perf_counter() - warm_start

    monitor = GpuMonitor(composed.device.index or 0) if clock.cuda else None
    step_times: list[float] = []
    micro_per: list[float] = []
    update_per: list[float] = []
    bad = torch.zeros((), dtype=torch.bool, device=composed.device)
    clock.sync()
    if monitor:
        monitor.start()
    timed_start = time.perf_counter()
    for _ in range(windows):
        # Never more micro-steps between two updates than training has: more would grow the gradient past
        # what the learning rate is meant for (a window longer than a step is whole steps).
        # The device is synchronised at the window's end only, as whole steps are: a sync between chunks
        # would let the GPU idle while the host queues the next one.
        marks = []
        left = micro_per_window
        while left > 0:
            chunk = min(left, accumulation)
            begin()
            start = clock.mark()
            for _ in range(chunk):
                bad |= ~torch.isfinite(micro()).all()
            middle = clock.mark()
            update()
            marks.append((start, middle, clock.mark()))
            left -= chunk
        clock.sync()
        micro_per.append(sum(clock.seconds(a, b) for a, b, _ in marks) / micro_per_window)
        update_per.append(sum(clock.seconds(b, c) for _, b, c in marks) / len(marks))
        step_times.append(accumulation * micro_per[-1] + update_per[-1])
    timed_wall_s = time.perf_counter() - timed_start
    readings = monitor.stop() if monitor else {}
    if bool(bad):
        raise NumericsError("loss went NaN or infinite during the timed window")
    middle_window = sorted(range(windows), key=step_times.__getitem__)[(windows - 1) // 2]  # the lower median
    median = step_times[middle_window]
    mean = statistics.fmean(step_times)
    metrics: dict[str, Any] = {
        "samples_per_s": samples_per_step / median,
        "throughput_basis": "median",
        "timing": "parts",
        "step_time_median_s": median,  # the median window's: its micro-step and update times below add up to it
        "micro_step_s": micro_per[middle_window],
        "optimizer_step_s": update_per[middle_window],
        "step_time_cv": statistics.pstdev(step_times) / mean if len(step_times) > 1 else 0.0,
        "window_step_times_s": step_times,
        "steps_per_window": micro_per_window,
        "windows": windows,
        "first_step_s": 2 * micro_times[0] + update_times[0],
        "warmup_steps": len(micro_times),
        "rehearsals": rehearsals,
        "warmup_s": warmup_s,
        "timed_wall_s": timed_wall_s,
        **_plan_metrics(composed),
        **peak_memory(composed.device),
        **readings,
        **(composed.guard.result if composed.guard else {}),
    }
    if readings.get("energy_j") is not None:
        # Energy over the timed windows, per sample those windows stood for (their micro-batches).
        metrics["energy_per_sample_j"] = readings["energy_j"] / (composed.plan.micro_batch * micro_per_window * windows)
    return metrics
