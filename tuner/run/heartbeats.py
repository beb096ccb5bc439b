"""Liveness of a study's trials: Optuna's heartbeats, and what a trial silent too long becomes.

Trials are asked and told, not run through ``Study.optimize``; each running
trial beats through Optuna's storage heartbeat, and any process calling
Optuna's ``fail_stale_trials`` fails the trial of a worker that died.  The
callback here marks such a trial ``stale`` in dstune's table as well.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Callable

import optuna

from dstune.errors import UsageError
from dstune.heartbeat import Heartbeat

if TYPE_CHECKING:
    from dstune.store import Store

DEFAULT_HEARTBEAT_S = 10  # Optuna heartbeat of a running trial; DSTUNE_TRIAL_HEARTBEAT overrides
GRACE_BEATS = 3  # a trial silent for this many heartbeats belongs to a worker that died

# Trials here are asked and told, not run through Study.optimize, and fail_stale_trials is the documented way
# to use heartbeats that way; Optuna warns about both on every call.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
for _experimental in ("fail_stale_trials", "heartbeat_interval", "grace_period", "heartbeat_stale_trial_callback"):
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, message=f".*{_experimental}")


def heartbeat_settings() -> tuple[int, int]:
    """Optuna heartbeat interval and grace period, in seconds (``DSTUNE_TRIAL_HEARTBEAT`` sets the interval)."""
    raw = os.environ.get("DSTUNE_TRIAL_HEARTBEAT", str(DEFAULT_HEARTBEAT_S))
    try:
        interval = int(raw)
        if interval < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"DSTUNE_TRIAL_HEARTBEAT={raw!r} is not a whole number of seconds of at least 1. "
                         f"Unset it for the default ({DEFAULT_HEARTBEAT_S}).") from None
    return interval, GRACE_BEATS * interval


def optuna_trial_id(storage: optuna.storages.RDBStorage, study_name: str, number: int) -> int:
    """Optuna's storage id of trial ``number`` of a study (its heartbeat and state are kept by that id)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def stale_marker(store: "Store") -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's stale-trial callback: the trial it failed becomes ``stale`` in dstune's table too."""
    _, grace = heartbeat_settings()

    def mark(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        store.mark_stale(study.study_name, trial.number,
                         f"its worker sent no heartbeat for {grace} s, so Optuna marked the trial failed")

    return mark


def trial_heartbeat(storage: optuna.storages.RDBStorage, study: optuna.Study, number: int) -> Heartbeat:
    """The heartbeat of one running Optuna trial, to hold while its process runs.

    It beats once at once, before the trial's row exists, so no recorded
    trial is ever without one (Optuna never calls a trial that has not
    beaten stale); then every interval from a thread.
    """
    trial_id = optuna_trial_id(storage, study.study_name, number)
    interval = storage.get_heartbeat_interval() or 0
    if interval:
        storage.record_heartbeat(trial_id)
    return Heartbeat(lambda: storage.record_heartbeat(trial_id), interval, f"Optuna trial {trial_id}")


def study_storage(store: "Store") -> optuna.storages.RDBStorage:
    """The Optuna storage of a run's study, with trial heartbeats and the stale-trial callback set."""
    interval, grace = heartbeat_settings()
    return store.optuna_storage(interval, grace, stale_marker(store))
