"""The idle gate: before each trial, wait until the device has been free of foreign work for a while.

A daemon shares its GPU host with production jobs.  Tuning must not slow
them down, and their load would make the trials' numbers meaningless, so
each trial starts only after the device looked idle for a whole window:

- a GPU (NVML): no compute process on it (a tuning run holds the device
  lock and has no CUDA context between trials, so every process is
  foreign) and utilisation at or below the threshold;
- a CPU-only host: the busy share of all CPUs (from ``/proc/stat``) at or
  below the threshold.

Any busy reading restarts the window.  After ``max_delay_s`` of waiting the
gate gives up with :class:`~dstune.devices.lock.DeviceBusy`, and the run is
deferred (a daemon tries again later).

Only the first trial of a run waits the whole window.  Later ones start
after a short check (``QUICK_S``) that no foreign work appeared, during which
a GPU's utilisation is not counted (the run's own trial has just ended, and
NVML averages over the last second); a foreign process or load seen then
brings back the whole window.  On an H100 a 10 s window before every trial
had added 10 s to each ResNet-50 trial.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from .lock import Device, DeviceBusy

QUICK_S = 2.0


@dataclass(frozen=True)
class GateSettings:
    window_s: float = 300.0
    max_util: float = 10.0  # percent
    max_delay_s: float = 2 * 3600.0
    poll_s: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"window_s": self.window_s, "max_util": self.max_util, "max_delay_s": self.max_delay_s,
                "poll_s": self.poll_s}


@dataclass(frozen=True)
class Reading:
    util: float  # percent busy
    foreign: tuple[str, ...] = ()  # processes that are not ours

    def busy(self, max_util: float, count_util: bool = True) -> str | None:
        """Why this reading is not idle, or None."""
        if self.foreign:
            return f"foreign process(es) {', '.join(self.foreign)}"
        if count_util and self.util > max_util:
            return f"utilisation {self.util:.0f}% > {max_util:.0f}%"
        return None


class CpuSampler:
    """The busy share of all CPUs since the previous call, from ``/proc/stat`` (load average elsewhere)."""

    sees_processes = False

    def __init__(self) -> None:
        self.last = self._times()

    @staticmethod
    def _times() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    def __call__(self) -> Reading:
        now = self._times()
        if now is None or self.last is None:
            load = os.getloadavg()[0] / (os.cpu_count() or 1)
            return Reading(min(100.0, 100.0 * load))
        total, idle = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        return Reading(100.0 * (total - idle) / total if total > 0 else 0.0)


class NvmlSampler:
    """Utilisation and compute processes of one GPU, from NVML."""

    sees_processes = True

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def __call__(self) -> Reading:
        nvml = self.nvml
        util = float(nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        foreign = tuple(f"pid {p.pid} ({(p.usedGpuMemory or 0) / 2**20:.0f} MiB)" for p in processes
                        if p.pid != os.getpid())
        return Reading(util, foreign)


def sampler_for(device: Device) -> Callable[[], Reading]:
    return NvmlSampler(device.nvml_index) if device.nvml_index is not None else CpuSampler()


class IdleGate:
    """Waits for ``settings.window_s`` of idle readings; raises :class:`DeviceBusy` after ``max_delay_s``."""

    def __init__(self, device: Device, settings: GateSettings, sample: Callable[[], Reading] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.device, self.settings = device, settings
        self.sample = sample or sampler_for(device)
        self.clock, self.sleep = clock, sleep
        self.waited_s = 0.0  # over the whole run, for the record
        self.full = True  # the next wait needs the whole window (first trial, or foreign work was seen)

    def wait(self, on_busy: Callable[[str], None] = lambda text: None) -> float:
        """Return once the device has been idle for the window; the seconds spent waiting beyond it."""
        settings = self.settings
        if settings.window_s <= 0:
            return 0.0
        window = settings.window_s if self.full else min(settings.window_s, QUICK_S)
        count_util = self.full or not getattr(self.sample, "sees_processes", False)
        started = self.clock()
        idle_since: float | None = None
        told = False
        self.sample()  # a CPU sampler measures from here on
        while True:
            step = min(settings.poll_s, window)
            self.sleep(step)
            now = self.clock()
            why = self.sample().busy(settings.max_util, count_util)
            if why is None:
                idle_since = idle_since if idle_since is not None else now - step
                if now - idle_since >= window:
                    extra = max(0.0, now - started - window)
                    self.waited_s += extra
                    self.full = False
                    return extra
            else:
                idle_since = None
                if not self.full:  # foreign work appeared between trials: the whole window again
                    self.full, window, count_util = True, settings.window_s, True
                if not told:
                    on_busy(f"{self.device.label} is busy: {why}; waiting for {settings.window_s:.0f} s of idle "
                            f"(at most {settings.max_delay_s:.0f} s)")
                    told = True
            if now - started >= settings.max_delay_s:
                self.waited_s += now - started
                raise DeviceBusy(f"{self.device.label} was not idle for {settings.window_s:.0f} s within "
                                 f"{settings.max_delay_s:.0f} s (last: {why or 'idle, window not complete'})")
