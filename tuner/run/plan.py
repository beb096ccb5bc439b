"""Plan: what changed since the last iteration, what is in production, where the search starts.

A later iteration starts from what the earlier ones learned: the incumbent
(the applied configuration) and the previous iteration's challenger are
enqueued as seeds, and when the environment is unchanged the previous
iteration's trials are copied into the new study so the sampler does not
start from scratch.  Stored configurations are mapped onto today's knobs
(a plugin may have been added, removed or given other choices), with a note
for everything that had to change.  The probe, a first process that builds
the workload and describes it, opens every run and every worker's join.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import optuna

from dstune.errors import UsageError
from dstune.knobs import Config, Knob
from dstune.trial.launch import run_in_subprocess
from dstune.trial.records import PROBE, TrialSpec

from .options import RunOptions

if TYPE_CHECKING:
    from dstune.store import Store


@dataclass
class Incumbent:
    """The configuration a challenger must beat: the applied one, or the default before any."""

    config: Config
    source: str
    applied_id: int | None = None
    notes: list[str] = field(default_factory=list)


def adapt_config(config: Config, knobs: Sequence[Knob]) -> tuple[Config, list[str]]:
    """Map a stored config onto today's knobs; knobs it lacks (or values no longer offered) take their default."""
    adapted: Config = {}
    notes: list[str] = []
    for knob in knobs:
        if knob.name not in config:
            notes.append(f"{knob.name} is new: {knob.default!r} (its default)")
            adapted[knob.name] = knob.default
        elif config[knob.name] not in knob.choices:
            notes.append(f"{knob.name}={config[knob.name]!r} is not offered here: {knob.default!r} (its default)")
            adapted[knob.name] = knob.default
        else:
            adapted[knob.name] = config[knob.name]
    names = {k.name for k in knobs}
    notes += [f"{name} no longer exists (or does not apply here): dropped" for name in sorted(set(config) - names)]
    return adapted, notes


def copy_trials(source: optuna.Study, target: optuna.Study, params_of: dict[str, optuna.distributions.BaseDistribution]
                ) -> int:
    """Copy finished trials whose parameters fit today's space into ``target``; return how many.

    A trial may lack parameters that were inactive in it (conditional knobs);
    one with a parameter today's space lacks, or with other choices, is left out.
    """
    copied = []
    for trial in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if not set(trial.distributions) <= set(params_of) or any(
                trial.distributions[name] != params_of[name] for name in trial.distributions):
            continue
        copied.append(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, values=trial.values,
            user_attrs={"dstune_copied_from": f"{source.study_name}#{trial.number}"},
            system_attrs={k: v for k, v in trial.system_attrs.items() if k != "fixed_params"},  # keeps constraints
        ))
    target.add_trials(copied)
    return len(copied)


PROBE_TIMEOUT_S = 600.0


def probe(options: RunOptions, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Import and build the workload once in a fresh process (on the GPU ``env`` gives); its context and environment."""
    spec = TrialSpec(kind=PROBE, workload_file=str(options.workload_file), workload_name=options.workload_name,
                     disabled_plugins=options.disabled_plugins, strict_plugins=options.strict_plugins,
                     world_size=options.world_size)
    outcome = run_in_subprocess(spec, timeout_s=PROBE_TIMEOUT_S, env=env)
    if outcome.status == "usage_error":
        raise UsageError(outcome.error or "the workload file could not be used")
    if outcome.status != "ok":
        detail = (outcome.error or "").strip() or outcome.stderr_tail.strip()
        raise UsageError(
            f"building workload from {options.workload_file} failed ({outcome.status}): {detail[-1500:]}\n"
            "Fix the workload so that its function builds on this machine, then run again."
        )
    return outcome.payload


EARLIER_ITERATIONS = 3  # how many earlier iterations the search learns knob effects from


Earlier = tuple[tuple[tuple[Config, float], ...], ...]  # per earlier iteration, newest first: (config, a figure)


def earlier_trials(store: "Store", workload: str, gpu_model: str | None, before: int) -> tuple[Earlier, Earlier]:
    """The successful trials of the workload's newest earlier iterations on this GPU model, one tuple each: with
    their samples/s, and with their seconds in the order they started.

    From the first the local search learns what each knob's changes did
    before (:class:`dstune.run.neighbourhood.KnobEffects`); from the second
    what a compile cost there against its eager twin
    (:func:`dstune.run.neighbourhood.costly_factors`).
    """
    found = []  # the ok trial rows of the newest iterations before this one, on this GPU model or an unknown one
    for iteration in reversed(store.iterations_of(workload)):
        if iteration.id >= before or iteration.gpu_model not in (None, gpu_model):
            continue
        found.append(store.trials(iteration.id, status="ok"))
        if len(found) == EARLIER_ITERATIONS:
            break
    return (tuple(tuple((dict(r.config), float(r.samples_per_s)) for r in rows if r.samples_per_s) for rows in found),
            tuple(tuple((dict(r.config), float(r.duration_s)) for r in rows if r.duration_s) for rows in found))
