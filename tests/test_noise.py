"""Warnings that the machine was not quiet: a trial's windows, the check's rounds, the check against the trial."""

from __future__ import annotations

import re

import pytest

from dstune.run.check import CheckResult, check_noise

from .conftest import WORKLOADS, run_cli, run_paced_slower_after_its_trial


def test_the_checks_spread_and_its_disagreement_with_the_trial_are_named() -> None:
    idle = "Run on an idle machine, or with --wait-idle"
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 1200]), {"challenger": 1000}) == (
        "the challenger's check rounds ranged from 200.0 to 1,200.0 samples/s (6.0x)", idle)
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 210]), {"challenger": 2400}) == (
        "the challenger ran 205.0 samples/s in the check against 2,400.0 in its trial (11.7x apart)", idle)
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 210]), {"challenger": 215}) is None
    # A spread of 1.4x is not a quiet machine's (augmented_images' default on an H200: 509.3, 473.5, 357.2).
    assert check_noise(CheckResult(incumbent=[509.3, 473.5, 357.2]), {"incumbent": 626.9}) == (
        "the incumbent's check rounds ranged from 357.2 to 509.3 samples/s (1.4x)", idle)


def test_a_host_bound_configurations_noise_is_put_down_to_the_host_not_the_gpu() -> None:
    """The GPU busy 7-12% in the check: waiting for an idle GPU would not quiet the host that sets the pace."""
    noisy = CheckResult(incumbent=[509.3, 473.5, 357.2], gpu_busy={"incumbent": [11.7, 8.1, 6.9]})
    why, advice = check_noise(noisy, {"incumbent": 626.9})
    assert why.endswith("the GPU was busy only 7-12% of the time, so the host's CPUs set its pace, and its figures "
                        "move with whatever else runs on the host")
    assert advice == "Run where no other job shares the host's CPUs (--wait-idle waits for the GPU alone)"
    idle_gpu = CheckResult(incumbent=[434.1, 433.3], gpu_busy={"incumbent": [0.2, 0.4]})  # the paced test, H200
    assert "the GPU was busy only 0% of the time" in check_noise(idle_gpu, {"incumbent": 662.4})[0]
    busy = CheckResult(incumbent=[509.3, 473.5, 357.2], gpu_busy={"incumbent": [97.0, 96.5, 97.2]})
    assert check_noise(busy, {"incumbent": 626.9})[1] == "Run on an idle machine, or with --wait-idle"


@pytest.mark.slow
def test_an_incumbent_that_ran_slower_in_the_check_than_in_its_trial_is_warned_of(tmp_path) -> None:
    """No challenger: the check re-measures the incumbent alone, and it ran 1.6x slower than in its trial (another
    job started on the host between them); a quiet machine runs both at one pace."""
    result = run_paced_slower_after_its_trial(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "Decision: kept (the best trial by max-throughput is the incumbent itself)" in out
    assert re.search(r"\[warning\] the incumbent ran [\d,.]+ samples/s in the check against [\d,.]+ in its trial "
                     r"\([\d.]+x apart\): the machine was not quiet", out), out


@pytest.mark.slow
def test_a_trial_whose_windows_disagree_warns_once_and_names_wait_idle(tmp_path) -> None:
    result = run_cli("run", str(WORKLOADS / "jittery.py"), "--db", str(tmp_path / "j.db"), "--trials", "1",
                     "--only", "batch_size", "--check-repeats", "2", "--windows", "6", "--window-time", "0.25",
                     "--budget", "2m", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert out.count("timed windows varied by") == 1
    assert "something else was using this machine, and its figures are unreliable. Run on an idle machine, or " \
           "with --wait-idle." in out


def test_a_first_window_that_alone_ran_long_is_the_configurations_late_work_not_a_busy_machine() -> None:
    """ResNet-50's reduce-overhead trial on the H200: windows of 0.42, 0.071, 0.072, 0.071, 0.072 s (cv 99%) on a
    machine nobody else used.  The first window alone disagrees: a compile or CUDA-graph recording ran late."""
    from dstune.run.windows import late_first_window

    assert late_first_window([0.42, 0.0712, 0.0725, 0.0714, 0.0722]) == pytest.approx(0.42 / 0.0718, rel=0.01)
    assert late_first_window([0.071, 0.42, 0.072, 0.071, 0.072]) is None  # a later window: the machine
    assert late_first_window([0.42, 0.10, 0.30, 0.071, 0.20]) is None  # the others disagree too
    assert late_first_window([0.075, 0.071, 0.072, 0.071]) is None  # within noise
    assert late_first_window([0.42, 0.07]) is None  # too few to tell


def test_windows_that_all_slowed_after_the_first_are_the_configuration_not_a_busy_machine() -> None:
    """GPT-2 at micro-batch 16, two accumulated, under reduce-overhead on an H200 nobody else used, timed by parts:
    windows of 0.105 s, then 0.49, 0.71, 0.49 and 0.47 s (cv 43%).  Every later window slowed, a shape a busy machine
    rarely gives.  (Those parts are now timed again by whole steps, which ran 0.096 s throughout; whole steps of that
    shape are the configuration's own.)  The advice names the configuration, not a busy machine, and a trial timed
    again says so and gives the whole steps' figure."""
    from dstune.run.windows import slowed_after_first_window, windows_message

    gpt2 = [0.1049, 0.4933, 0.7102, 0.4918, 0.4666]
    assert slowed_after_first_window(gpt2) == pytest.approx(0.4666 / 0.1049, rel=0.01)  # the quickest after
    assert slowed_after_first_window([0.10, 0.49, 0.11, 0.48, 0.47]) is None  # one later window kept the pace
    assert slowed_after_first_window([0.10, 0.12, 0.11]) is None  # within noise
    said, busy = windows_message({"step_time_cv": 0.431, "window_step_times_s": gpt2})
    assert not busy and "4.4x or more as long as the first (0.105 s, then 0.493, 0.710, 0.492, 0.467 s)" in said
    assert "reduce-overhead" in said and "median window's, the slower pace" in said

    late, busy = windows_message({"step_time_cv": 0.99, "window_step_times_s": [0.42, 0.0712, 0.0725, 0.0714]})
    assert not busy and late.startswith("a trial's first timed window took 5.9x as long as the others")
    noisy, busy = windows_message({"step_time_cv": 0.5, "window_step_times_s": [0.10, 0.49, 0.11, 0.48, 0.47]})
    assert busy and "something else was using this machine" in noisy
    assert windows_message({"step_time_cv": 0.02, "window_step_times_s": [0.10, 0.10, 0.10]}) is None
    retimed = {"samples_per_s": 334.4, "step_time_cv": 0.02, "window_step_times_s": [0.097, 0.096, 0.096],
               "parts_retimed": {"samples_per_s": 91.3, "step_time_cv": 0.43, "window_step_times_s": gpt2}}
    said, busy = windows_message(retimed)
    assert not busy and said == ("a trial's windows timed by its parts varied by 43%, so it was timed again by whole "
                                 "steps, which agree: 334.4 samples/s against 91.3 by parts; its figure is the whole "
                                 "steps'")
