"""Warnings that the machine was not quiet: a trial's windows, the check's rounds, the check against the trial."""

from __future__ import annotations

import pytest

from dstune.run.check import CheckResult, check_noise

from .conftest import WORKLOADS, run_cli


def test_the_checks_spread_and_its_disagreement_with_the_trial_are_named() -> None:
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 1200]), 1000) == (
        "the challenger's check rounds ranged from 200.0 to 1,200.0 samples/s (6.0x)")
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 210]), 2400) == (
        "the challenger ran 205.0 samples/s in the check against 2,400.0 in its trial (11.7x apart)")
    assert check_noise(CheckResult(incumbent=[100, 104, 98], challenger=[200, 210]), 215) is None


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
