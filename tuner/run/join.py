"""``dstune worker``: another host joins the Do phase of an iteration a ``dstune run --study NAME`` coordinates.

The coordinating run plans (probe, fingerprint, incumbent, seeds), then
runs trials; workers find its iteration by the study's name in the shared
database (PostgreSQL for several hosts), take trials from the same Optuna
study (ask and tell), and record them in dstune's tables with their host,
GPU, GPU model and environment.  The coordinator alone checks and acts,
once the trials are all taken or its budget ends.

A worker builds the workload itself, so it must have the same workload file
(its hash is compared with the coordinator's) and the same knobs (the
study's parameters must mean the same everywhere); anything else is refused
before it takes a trial.  Its trials use the memory budget the coordinator
was given, measured against this host's GPU memory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import optuna

from dstune.compile_cache import compile_cache_env
from dstune.config_file import resolve_db
from dstune.context import TuneContext
from dstune.devices.slots import Slot, hold_slots, resolve_slots
from dstune.errors import UsageError
from dstune.knobs import Knob, config_key
from dstune.plugin_calls import applicable_knobs, batch_plan, invalid_reason, pin_except
from dstune.plugin_manager import plugin_manager
from dstune.trial.fingerprint import fingerprint_hash
from dstune.units import parse_memory_budget

from .budget import Budget
from .do import DoSetup, TrialPool
from .heartbeats import study_storage
from .memory_model import MemoryModel
from .options import RunOptions, guard_for
from .plan import earlier_trials, probe
from .search import SearchSpace, sampler

if TYPE_CHECKING:
    from dstune.store import Store

POLL_S = 1.0


@dataclass
class WorkerResult:
    """What one worker did: the iteration it joined (None: there was none to join) and its own trials."""

    iteration_id: int | None
    stop_reason: str
    counts: dict[str, int] = field(default_factory=dict)


def find_iteration(store: Store, study: str, wait_s: float, say: Callable[[str], None]) -> Any:
    """The running iteration of ``study`` once it is in its Do phase; None if it has already left it."""
    deadline = time.monotonic() + wait_s
    said = ""
    while True:
        row = store.iteration_of_study(study)
        if row is not None and (row.status != "running" or row.phase not in ("plan", "do")):
            say(f"iteration {row.id} (study {study}) has left its Do phase ({row.status}, phase {row.phase}): "
                "there is nothing to join")
            return None
        if row is not None and row.phase == "do":
            return row
        if time.monotonic() > deadline:
            raise UsageError(
                f"no iteration of study {study!r} reached its Do phase in {store.shown_url} within {wait_s:.0f} s. "
                f"Start the coordinating run first (dstune run WORKLOAD.py --db URL --study {study}), check the "
                "study name and --db, or wait longer with --wait.")
        state = "is planning" if row is not None else "has not started"
        if state != said:
            say(f"study {study} {state}; waiting for its Do phase (at most {wait_s:.0f} s)")
            said = state
        time.sleep(POLL_S)


def knob_differences(knobs: Sequence[Knob], recorded: Sequence[dict[str, Any]]) -> list[str]:
    """How this host's knobs differ from those the coordinator searches (name: choices here vs there)."""
    here = {k.name: json.dumps(list(k.choices), default=str) for k in knobs}
    there = {k["name"]: json.dumps(list(k["choices"]), default=str) for k in recorded}
    return [f"{name}: {here.get(name, 'absent')} here, {there.get(name, 'absent')} on the coordinator"
            for name in sorted(set(here) | set(there)) if here.get(name) != there.get(name)]


class Worker:
    """One worker process on this host's slots, joined to one iteration."""

    def __init__(self, store: Store, iteration: Any, options: RunOptions, slots: list[Slot], reporter: Any) -> None:
        self.store, self.iteration, self.options, self.slots, self.reporter = store, iteration, options, slots, reporter
        self.host = socket.gethostname()
        self.plugins = plugin_manager(options.disabled_plugins)
        self.reference_dir = tempfile.mkdtemp(prefix="dstune-references-")

    def _prepare(self) -> DoSetup:
        options, iteration, store = self.options, self.iteration, self.store
        probed = probe(options, env=self.slots[0].env)
        ctx_dict = probed["ctx"]
        ctx = TuneContext.from_dict(ctx_dict)
        environment = probed["environment"]
        theirs = (iteration.environment.facts if iteration.environment else {}).get("workload_source")
        if theirs and environment.get("workload_source") != theirs:
            raise UsageError(
                f"workload file {options.workload_file} on this host differs from the one the coordinator of study "
                f"{iteration.study_name} runs (hash {environment.get('workload_source')} here, {theirs} there). "
                "Give this host the same file (--workload-file names where it is here).")
        for name in probed.get("failed_plugins", []):
            self.plugins.pm.unregister(name=name)
        problems: list[str] = list(probed.get("plugin_problems", []))
        knobs = applicable_knobs(self.plugins.pm, ctx, problems)
        for problem in problems:
            self.reporter.message(f"[warning] {problem}")
        if options.only or options.exclude:
            knobs = pin_except(knobs, options.only, options.exclude, iteration.incumbent_config or {})
        differences = knob_differences(knobs, iteration.knobs or [])
        if differences:
            raise UsageError(
                f"this host's knobs differ from those study {iteration.study_name} searches ({'; '.join(differences)}). "
                "A worker must offer the same choices as the coordinator: install the same plugins and versions, "
                "or run workers only on GPUs that support the same features.")
        self.knobs = knobs
        storage = study_storage(store)
        # No seed: workers with the coordinator's seed would propose the same configurations as it does.
        study = optuna.load_study(study_name=iteration.study_name, storage=storage,
                                  sampler=sampler(options.trials, seed=None))
        earlier, durations = earlier_trials(store, ctx.workload, self.slots[0].device.model, iteration.id)
        return DoSetup(
            options=options, store=store, storage=storage, study=study, space=SearchSpace(tuple(knobs)),
            iteration_id=iteration.id, ctx=ctx, ctx_dict=ctx_dict, pm=self.plugins.pm,
            memory_budget=parse_memory_budget(options.memory_budget, ctx.device_memory),
            env={**compile_cache_env(ctx.workload), "DSTUNE_ITERATION": str(iteration.id)}, host=self.host,
            environment_id=store.environment_id(fingerprint_hash(environment), environment),
            reporter=self.reporter, guard=guard_for(options, knobs, self.reference_dir),
            invalid_reason=lambda config: invalid_reason(self.plugins.pm, config, ctx),
            wait_idle=lambda slot: None, coordinator=False,
            earlier=earlier, earlier_durations=durations,
            budget=Budget(options.budget_s, options.check_repeats, config_key(iteration.incumbent_config or {})),
            memory=(MemoryModel.from_dict(iteration.memory_model, lambda config: batch_plan(self.plugins.pm, config, ctx))
                    if iteration.memory_model else None),  # the coordinator's, measured on its GPU
        )

    def run(self) -> WorkerResult:
        try:
            setup = self._prepare()
            self.reporter.started(setup.ctx.workload, setup.ctx, self.knobs, self.options.trials, self.options.budget_s)
            pool = TrialPool(setup, self.slots)
            try:
                reason = pool.run()
            except BaseException:
                pool.interrupt()
                raise
        finally:
            shutil.rmtree(self.reference_dir, ignore_errors=True)
        mine = [t for t in self.store.trials(self.iteration.id) if t.host == self.host and t.pid == os.getpid()]
        return WorkerResult(self.iteration.id, reason, dict(Counter(t.status for t in mine)))


def run_worker(db: str | None, study: str, gpus: tuple[str, ...], workload_file: Path | None, wait_s: float,
               lock_timeout_s: float | None, reporter: Any) -> WorkerResult:
    """Join study ``study`` in ``db`` with this host's ``gpus``; return once its Do phase has nothing left to take."""
    from dstune.store import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = resolve_db(db)
    store = Store(db)
    iteration = find_iteration(store, study, wait_s, reporter.message)
    if iteration is None:
        return WorkerResult(None, "ended")
    path = workload_file or Path(iteration.workload.source_path)
    if not path.is_file():
        raise UsageError(
            f"workload file {path} (where the coordinator of study {study} has it) does not exist on this host. "
            "Copy the workload here and name it with --workload-file PATH.")
    options = RunOptions.from_record(iteration.options or {}, path, db, iteration.study_name, iteration.workload.name)
    slots = resolve_slots(gpus, reporter.message, options.world_size)
    with hold_slots(slots, f"dstune worker --study {study}", lock_timeout_s, reporter.message):
        return Worker(store, iteration, options, slots, reporter).run()
