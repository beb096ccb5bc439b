"""The device lock and the idle gate, with real processes: a foreign CPU hog, a second holder of the lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from dstune.devices.idle_gate import CpuSampler, GateSettings, IdleGate, Reading
from dstune.devices.lock import Device, DeviceBusy, hold_device, resolve_device

from .conftest import WORKLOADS, db_rows, run_cli

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

PACED = str(WORKLOADS / "paced.py")
FAST_RUN = ("--trials", "1", "--check-repeats", "2", "--windows", "2", "--window-time", "0.05",
            "--disable-plugin", "compile")


def _hog() -> subprocess.Popen[bytes]:
    """A foreign process keeping one CPU busy (half of this two-core machine's capacity)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


CPUS = Device("cpu-test", "the CPUs", None)  # what a host without NVIDIA GPUs gates on
ON_GPU_HOST = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host the gate watches the GPU "
                                 "(test_gpu.py::test_idle_gate_waits_for_a_foreign_cuda_process)")


def test_a_host_without_nvidia_gpus_locks_and_gates_its_cpus():
    if torch.cuda.is_available():
        assert resolve_device().nvml_index is not None
    else:
        device = resolve_device("3")  # a GPU id means nothing here: the CPUs are the device
        assert device.nvml_index is None and device.key.startswith("cpu-")


@pytest.mark.exclusive  # it waits for the machine to be idle: another test's trials would keep it busy
def test_idle_gate_waits_while_a_foreign_process_loads_the_cpus_and_proceeds_when_it_ends():
    """The foreign load takes every core; the threshold lies above one busy core, so a machine that was already
    busy on one core (a CI neighbour, `.ci/busy-suite`) still counts as idle before and after it."""
    device = CPUS
    cores = os.cpu_count() or 1
    busy_threshold = 100.0 * (1 - 0.5 / cores) if cores > 1 else 60.0  # 75% on two cores: one busy core is below
    gate = IdleGate(device, GateSettings(window_s=1.0, max_util=busy_threshold, max_delay_s=60.0, poll_s=0.2))
    told: list[str] = []
    done: dict[str, float] = {}
    hogs = [_hog() for _ in range(cores)]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        waiter = threading.Thread(target=lambda: done.setdefault("waited", gate.wait(told.append)))
        waiter.start()
        time.sleep(3.0)
        assert waiter.is_alive() and not done, "the gate let a trial start on a busy machine"
        assert told and "is busy: utilisation" in told[0]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    ended = time.monotonic()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    proceeded_after = time.monotonic() - ended
    # One idle window after the load ends (less the poll interval in which it ended), then it goes.
    assert 0.7 <= proceeded_after < 10, proceeded_after
    assert done["waited"] >= 3.0 - 1.0 and time.monotonic() - started >= 3.0


def test_idle_gate_gives_up_after_max_delay():
    gate = IdleGate(CPUS, GateSettings(window_s=1.0, max_util=100.0 / (os.cpu_count() or 1) * 0.6,
                                                   max_delay_s=1.5, poll_s=0.2))
    hog = _hog()
    try:
        time.sleep(0.5)
        with pytest.raises(DeviceBusy, match="was not idle for 1 s within 2 s"):
            gate.wait()
    finally:
        hog.kill()
        hog.wait()
    assert isinstance(CpuSampler()().util, float)


@ON_GPU_HOST
def test_run_is_deferred_when_the_device_stays_busy(tmp_path):
    db = tmp_path / "deferred.db"
    hog = _hog()
    try:
        threshold = f"{100.0 / (os.cpu_count() or 1) * 0.6:.0f}"
        result = run_cli("run", PACED, "--db", str(db), *FAST_RUN, "--wait-idle", "--idle-window", "1s",
                         "--idle-util", threshold, "--max-delay", "3s", cwd=tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 75, result.stdout + result.stderr
    assert "deferred:" in result.stderr and "was not idle for 1 s within 3 s" in result.stderr
    assert "is busy: utilisation" in result.stdout
    (status, error), = db_rows(db, "select status, error from dstune_iterations")
    assert status == "deferred" and "deferred during the do phase" in error
    assert db_rows(db, "select count(*) from dstune_trials") == [(0,)]
    assert db_rows(db, "select count(*) from dstune_applied") == [(0,)], "nothing was decided"


def test_run_waits_for_the_device_lock_and_names_its_holder(tmp_path):
    db = tmp_path / "locked.db"
    device = resolve_device()
    with hold_device(device, "a test holding the device", timeout_s=0):
        result = run_cli("run", PACED, "--db", str(db), *FAST_RUN, "--lock-timeout", "1s", cwd=tmp_path)
    assert result.returncode == 75, result.stdout + result.stderr
    assert f"is held by pid {os.getpid()}" in result.stdout and "a test holding the device" in result.stdout
    assert f"still held by pid {os.getpid()}" in result.stderr
    assert not db.exists() or db_rows(db, "select count(*) from dstune_iterations") == [(0,)]


def test_a_store_that_cannot_be_opened_is_refused_before_waiting_for_the_device(tmp_path):
    device = resolve_device()
    with hold_device(device, "a test holding the device", timeout_s=0):
        result = run_cli("run", PACED, "--db", "/proc/nope/x.db", *FAST_RUN, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "database /proc/nope/x.db: folder /proc/nope does not exist" in " ".join(result.stderr.split())
    assert "held by" not in result.stdout  # it never waited for the lock


class _Gpu:
    """NVML readings in a script (a real GPU shows these on test_gpu.py), on a clock that only sleeping moves."""

    sees_processes = True

    def __init__(self) -> None:
        self.now, self.util, self.foreign = 0.0, 0.0, ()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> Reading:
        return Reading(self.util, self.foreign)


def test_only_the_first_trial_waits_the_whole_window_unless_foreign_work_appears():
    gpu = _Gpu()
    gate = IdleGate(Device("GPU-x", "GPU 0", 0), GateSettings(window_s=300, max_util=10, max_delay_s=3600, poll_s=1),
                    sample=gpu, clock=gpu.clock, sleep=gpu.sleep)
    gate.wait()
    assert gpu.now == 300, "the first trial waits a whole window"
    gpu.util = 95.0  # the run's own trial has just ended; NVML's utilisation still shows it
    before = gpu.now
    gate.wait()
    assert gpu.now - before == 2, "later trials: a short check for foreign processes"
    gpu.util, gpu.foreign = 0.0, ("pid 4242 (900 MiB)",)
    told: list[str] = []
    before = gpu.now

    def foreign_job_ends_after(seconds: float) -> None:
        gpu.now += seconds
        if gpu.now - before >= 60:
            gpu.foreign = ()

    gpu.sleep = foreign_job_ends_after  # type: ignore[method-assign]
    gate.sleep = foreign_job_ends_after
    gate.wait(told.append)
    # A whole window after it ended (it ended between two polls, a second apart).
    assert 60 + 300 - 1 <= gpu.now - before <= 60 + 300, "a foreign process seen: the whole window after it ends"
    assert "is busy: foreign process(es) pid 4242" in told[0]
