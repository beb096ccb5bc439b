"""The Optuna side of a run: search space, seeds, and telling results back.

A multi-objective study maximises samples/s and minimises peak memory.
Failures that teach something about the space (out of memory, bad numerics,
timeouts, invalid combinations) are told as *infeasible* completed trials
through Optuna 5's ``Trial.set_constraint``, so the sampler learns where the
memory boundary lies instead of retrying it.  Crashes are told as failed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import optuna

from dstune.knobs import Config, Knob, config_key

DIRECTIONS = ("maximize", "minimize")
SEED_ATTR = "dstune_seed"
INFEASIBLE_STATUSES = frozenset({"oom", "numerics", "timeout", "invalid", "predicted_oom"})
INFEASIBLE_REASON_ATTR = "dstune_infeasible"  # why a configuration that never ran was infeasible: "predicted"
CONSTRAINT_MEMORY = "memory_over_budget"
CONSTRAINT_FAILED = "failed"
CONSTRAINT_LATENCY = "latency_over_limit"


@dataclass(frozen=True)
class SearchSpace:
    """Knobs that apply in this run; those with one choice are fixed, not searched."""

    knobs: tuple[Knob, ...]

    def config_from_trial(self, trial: optuna.Trial) -> Config:
        """Suggest every knob; conditional knobs last, and only where the others make them active."""
        config: Config = {}
        ordered = [k for k in self.knobs if k.active is None] + [k for k in self.knobs if k.active is not None]
        for knob in ordered:
            if knob.tunable and knob.active_in(config):
                config[knob.name] = trial.suggest_categorical(knob.name, list(knob.choices))
            else:
                config[knob.name] = knob.default if knob.tunable else knob.choices[0]
        return {k.name: config[k.name] for k in self.knobs}

    def normalised(self, config: Config) -> Config:
        """``config`` as a trial of this space would have it: inactive and fixed knobs at their defaults."""
        params = self.params({**{k.name: k.default for k in self.knobs}, **config})
        return {k.name: params.get(k.name, k.default if k.tunable else k.choices[0]) for k in self.knobs}

    def params(self, config: Config) -> dict[str, Any]:
        """The Optuna parameters of ``config`` (tunable, active knobs only)."""
        return {k.name: config[k.name] for k in self.knobs
                if k.tunable and k.name in config and k.active_in(config)}


def sampler(trials: int, seed: int | None) -> optuna.samplers.TPESampler:
    """TPE, random for the first third of the trials (3 to 10); its constant liar spreads parallel trials apart."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))


def create_study(storage: optuna.storages.BaseStorage, study_name: str, seed: int, trials: int) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS),
                               sampler=sampler(trials, seed), load_if_exists=True)


def enqueue_seeds(study: optuna.Study, space: SearchSpace, seeds: Sequence[tuple[str, Config]]) -> None:
    """Enqueue seed configurations (default, checklist, incumbent) to run first."""
    for kind, config in seeds:
        study.enqueue_trial(space.params(config), user_attrs={SEED_ATTR: kind}, skip_if_exists=True)


def tell(study: optuna.Study, trial: optuna.Trial, status: str, metrics: dict[str, Any],
         memory_budget: int, max_latency_s: float | None = None) -> None:
    """Report a trial's end to the sampler; with a latency limit, a slower p99 is a violated constraint too."""
    if max_latency_s is not None:
        p99 = metrics.get("latency_p99_s") if status == "ok" else None  # pruned: no timed steps to go on
        trial.set_constraint(CONSTRAINT_LATENCY, float(p99) - max_latency_s if p99 is not None else 0.0)
    if status in ("ok", "pruned"):  # pruned: a warm-up estimate, enough to steer away
        peak = float(metrics.get("peak_memory_bytes") or 0)
        trial.set_constraint(CONSTRAINT_MEMORY, peak - memory_budget)
        trial.set_constraint(CONSTRAINT_FAILED, 0.0)
        study.tell(trial, [float(metrics["samples_per_s"]), peak])
    elif status in INFEASIBLE_STATUSES:
        if status == "predicted_oom":  # the memory model's word, not a measurement (dstune.run.memory_model)
            trial.set_user_attr(INFEASIBLE_REASON_ATTR, "predicted")
        peak = float(max(metrics.get("peak_memory_bytes") or metrics.get("predicted_peak_bytes") or 0, memory_budget))
        trial.set_constraint(CONSTRAINT_MEMORY, peak - memory_budget)
        trial.set_constraint(CONSTRAINT_FAILED, 1.0)
        study.tell(trial, [0.0, peak])
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


@dataclass
class CostAwareSchedule:
    """Spend the budget knowingly when some choices (compilation) cost far more than others.

    While exploring (the first ``explore_fraction`` of trials and of budget)
    every costly knob is pinned to its default, so the sampler learns the
    cheap dimensions first.  Then the ``promote_top`` fastest configurations
    found so far are enqueued with each costly knob at its checklist value,
    and the search goes on over the full space.  Whenever the remaining
    budget is smaller than a costly trial has taken so far, costly knobs are
    pinned again rather than started and cut off.
    """

    space: SearchSpace
    trials: int
    budget_s: float
    explore_fraction: float = 0.5
    promote_top: int = 2
    durations: list[float] = field(default_factory=list)
    promotions: int = 0
    promoted_configs: list[Config] = field(default_factory=list)

    @property
    def costly_knobs(self) -> list[Knob]:
        return [k for k in self.space.knobs if k.costly and k.tunable]

    def is_costly(self, config: Config) -> bool:
        return any(config.get(k.name) in k.costly for k in self.costly_knobs)

    def record(self, config: Config, duration_s: float) -> None:
        if self.is_costly(config):
            self.durations.append(duration_s)

    def affordable(self, remaining_s: float) -> bool:
        if not self.durations:
            return True
        return remaining_s > statistics.median(self.durations) * 1.1

    def before_ask(self, study: optuna.Study, done: int, elapsed_s: float,
                   successes: Sequence[tuple[Config, float]]) -> None:
        """Enqueue what the next trial should be constrained to, if anything.

        Promotions go one at a time, each only while the budget left can pay
        for a costly trial, so none is started only to be cut off.
        """
        costly = self.costly_knobs
        if not costly or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return
        exploring = done < self.trials * self.explore_fraction and elapsed_s < self.budget_s * self.explore_fraction
        affordable = self.affordable(self.budget_s - elapsed_s)
        if not exploring and affordable and self.promotions < self.promote_top:
            # Nor one measured already: the compiled checklist is the checklist-eager seed's promotion.
            tried = {config_key(c) for c in self.promoted_configs} | {config_key(c) for c, _ in successes}
            cheap = sorted((c for c in successes if not self.is_costly(c[0])), key=lambda c: -c[1])
            for config, _ in cheap:
                promoted = dict(config, **{k.name: k.checklist for k in costly})
                if config_key(promoted) not in tried:
                    self.promotions += 1
                    self.promoted_configs.append(promoted)
                    study.enqueue_trial(self.space.params(promoted), user_attrs={SEED_ATTR: "promoted"},
                                        skip_if_exists=True)
                    return
        if exploring or not affordable:
            study.enqueue_trial({k.name: k.default for k in costly}, skip_if_exists=False)
