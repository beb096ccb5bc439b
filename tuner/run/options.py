"""What one ``dstune run`` was asked to do, checked once and shared by every way of asking.

``dstune run``, ``dstune schedule add`` (which must refuse now what a run
would refuse at 03:00 on Sunday) and ``dstune config`` all turn the same
parsed parameters into :class:`RunOptions` here.  A value that came from the
environment or a config file is named by where it came from, not by a flag
the user never typed.  Nothing here imports torch: the orchestrating process
never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from dstune.config_file import ENV_VARS, find_settings, merge, resolve_db
from dstune.devices.idle_gate import GateSettings
from dstune.devices.slots import parse_gpus
from dstune.errors import UsageError
from dstune.knobs import Config, Knob
from dstune.trial.measure_settings import MeasureSettings
from dstune.trial.numerics import GuardSettings, parse_tolerances, trial_tolerance
from dstune.trial.records import TrialSpec
from dstune.units import parse_duration, parse_latency, parse_memory_budget

from .selection import SelectionPolicy, parse_policy

LOCAL, SAMPLER = "local", "sampler"
SEARCHES = (LOCAL, SAMPLER)
# --memory-model: auto measures it on a GPU, and on the CPU only when --memory-budget says memory is scarce.
MEMORY_MODELS = ("auto", "on", "off")


@dataclass
class RunOptions:
    workload_file: Path
    workload_name: str | None = None
    db: str | None = None
    trials: int = 30
    budget_s: float = 15 * 60
    trial_timeout_s: float = 600.0
    memory_budget: str | None = None
    max_latency_s: float | None = None  # inference: the challenger's p99 step latency must stay within it
    seed: int = 0
    disabled_plugins: tuple[str, ...] = ()
    strict_plugins: bool = False
    study_name: str | None = None
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    select: SelectionPolicy = field(default_factory=lambda: SelectionPolicy("max-throughput"))
    check_repeats: int = 5
    min_gain: float = 0.02
    numerics_guard: bool = True
    tolerances: dict[str, float] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # tune only these knobs
    exclude: tuple[str, ...] = ()  # never tune these knobs
    gate: GateSettings | None = None  # wait for an idle device before each trial (the daemon's runs)
    lock_timeout_s: float | None = None  # give up waiting for the device lock after this long (None: never)
    schedule_id: int | None = None  # the schedule a daemon ran this iteration for
    gpus: tuple[str, ...] = ()  # one trial slot per GPU (empty: the one GPU the process was given)
    search: str = LOCAL  # after the seeds: neighbours of the best (local), or Optuna's sampler throughout
    memory_model: str = "auto"  # predict each configuration's peak before running it (dstune.run.memory_model)
    world_size: int = 1  # data-parallel workloads: each trial is one job of this many ranks (dstune.trial.distributed)

    def wants_memory_model(self, is_cuda: bool) -> bool:
        """Whether to measure the memory model: ``on``, or ``auto`` on a GPU or with a memory budget given."""
        return self.memory_model == "on" or (self.memory_model == "auto" and (is_cuda or self.memory_budget is not None))

    def to_record(self, workload_name: str, slots: Sequence[str]) -> dict[str, Any]:
        """The options as the iteration row keeps them (JSON): what a joining worker and the views read back.

        ``workload_name`` is the probed workload's and ``slots`` the labels of
        the GPUs the run took; the file, store and study are recorded apart.
        """
        record: dict[str, Any] = {name: getattr(self, name) for name in RECORDED}
        for name, value in record.items():
            if isinstance(value, tuple):
                record[name] = list(value)
        return {**record, "measure": self.measure.to_dict(), "workload_name": workload_name, "gpus": list(slots)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], workload_file: Path, db: str | None, study_name: str | None,
                    workload_name: str) -> "RunOptions":
        """The options a coordinating run recorded, for a worker that joins its study.

        Keys an older dstune did not record take their defaults.
        """
        values = {name: record[name] for name in RECORDED if name in record}
        for name in ("disabled_plugins", "only", "exclude"):
            if name in values:
                values[name] = tuple(values[name])
        values["tolerances"] = dict(values.get("tolerances") or {})
        return cls(workload_file=workload_file, workload_name=record.get("workload_name") or workload_name, db=db,
                   study_name=study_name, measure=MeasureSettings(**(record.get("measure") or {})), **values)


# What an iteration records of its options (besides its measure settings, workload name and GPUs).
RECORDED = ("trials", "budget_s", "seed", "trial_timeout_s", "disabled_plugins", "check_repeats", "min_gain", "only",
            "exclude", "numerics_guard", "tolerances", "memory_budget", "max_latency_s", "search",
            "memory_model", "world_size")


def knob_names(values: Any) -> tuple[str, ...]:
    """Knob names from repeated options and comma-separated lists alike."""
    return tuple(dict.fromkeys(name.strip() for value in values or () for name in str(value).split(",") if name.strip()))


T = TypeVar("T")


def _named(where: Callable[[str], str], name: str, flag: str, check: Callable[[], T]) -> T:
    """Run a check whose message names ``flag``; say where the value came from when that was not the flag."""
    try:
        return check()
    except UsageError as exc:
        if where(name) == flag:
            raise
        raise UsageError(f"{where(name)}: {exc}") from None


def options_from_params(params: Mapping[str, Any], label: Callable[[str], str] | None = None) -> RunOptions:
    """Check and convert the ``run`` command's parameters; ``label(name)`` says where a value came from."""
    where = label or (lambda name: "--" + name.replace("_", "-"))
    gate = None
    if params["wait_idle"]:
        window = parse_duration(params["idle_window"], where("idle_window"), allow_zero=True)
        gate = GateSettings(window_s=window, max_util=params["idle_util"],
                            max_delay_s=parse_duration(params["max_delay"], where("max_delay")),
                            poll_s=min(1.0, max(0.05, window / 10)))
    lock_timeout = params.get("lock_timeout")
    if params["memory_budget"] is not None:  # its form now; its bytes once the probe has read the device's memory
        _named(where, "memory_budget", "--memory-budget", lambda: parse_memory_budget(params["memory_budget"], 0))
    return RunOptions(
        workload_file=Path(params["workload_file"]), workload_name=params["workload"],
        db=resolve_db(params["db"], Path(params["workload_file"]).parent),
        trials=params["trials"], budget_s=parse_duration(params["budget"], where("budget")),
        trial_timeout_s=parse_duration(params["trial_timeout"], where("trial_timeout")),
        memory_budget=params["memory_budget"], seed=params["seed"],
        max_latency_s=(parse_latency(params["max_latency"], where("max_latency"))
                       if params.get("max_latency") else None),
        disabled_plugins=knob_names(params["disable_plugin"]), strict_plugins=params["strict_plugins"],
        study_name=params["study"],
        measure=MeasureSettings(windows=params["windows"], window_s=params["window_time"],
                                max_warmup_s=params["max_warmup"]),
        select=_named(where, "select", "--select", lambda: parse_policy(params["select"])), check_repeats=params["check_repeats"], min_gain=params["min_gain"],
        numerics_guard=params["numerics_guard"], tolerances=_named(where, "tolerance", "--tolerance", lambda: parse_tolerances(params["tolerance"])),
        only=knob_names(params["only"]), exclude=knob_names(params["exclude"]), gate=gate,
        schedule_id=params.get("schedule_id"),
        gpus=_named(where, "gpus", "--gpus", lambda: parse_gpus(params.get("gpus") or None)),
        lock_timeout_s=parse_duration(lock_timeout, where("lock_timeout"), allow_zero=True) if lock_timeout else None,
        search=_search(params.get("search") or LOCAL, where("search")),
        memory_model=_memory_model(params.get("memory_model") or "auto", where("memory_model")),
        world_size=int(params.get("world_size") or 1),
    )


def _memory_model(value: str, where: str) -> str:
    if value not in MEMORY_MODELS:
        raise UsageError(f"{where} {value!r} is not a memory-model setting: use auto (measure it on a GPU, or "
                         "when --memory-budget is given), on or off.")
    return value


def _search(value: str, where: str) -> str:
    if value not in SEARCHES:
        raise UsageError(f"{where} {value!r} is not a search: use local (the neighbours of the best configuration, "
                         "then the sampler; ends when nothing better is left) or sampler (Optuna's TPE throughout).")
    return value


@dataclass
class ResolvedRun:
    """A run's options, and where each setting a file could give came from (``dstune config`` prints it)."""

    options: RunOptions
    params: dict[str, Any]
    sources: dict[str, str]
    file: Path | None


def resolve(ctx: Any) -> ResolvedRun:
    """Merge a parsed ``run`` command (click context) with its config file and environment, then check it."""

    settings = find_settings(Path(ctx.params["workload_file"]).parent)
    params, sources = merge(ctx, settings)

    def where(name: str) -> str:
        source = sources.get(name, "")
        if source.startswith("env "):
            return ENV_VARS[name]
        if source not in ("command line", "") and name in settings.values:
            return settings.where(name)
        return "--" + name.replace("_", "-")

    return ResolvedRun(options=options_from_params(params, where), params=params, sources=sources,
                       file=settings.path)


def resolve_args(run_command: Any, workload_file: Path, args: Sequence[str], problem: str = "") -> ResolvedRun:
    """Parse ``args`` as ``dstune run WORKLOAD_FILE ARGS`` would, then :func:`resolve` them.

    ``schedule add`` and ``config`` take run options they do not declare;
    click's refusal of one (an unknown option, a value of the wrong type)
    becomes a usage error prefixed with ``problem``.
    """
    try:
        with run_command.make_context("dstune run", [str(workload_file), *args]) as ctx:
            return resolve(ctx)
    except Exception as exc:  # click's parse errors (typer vendors click, so no import names them)
        if not hasattr(exc, "format_message"):
            raise
        raise UsageError(f"{problem}{exc.format_message().rstrip('.')}. Give options that `dstune run --help` "
                         "lists.") from None


def trial_spec(options: RunOptions, ctx: dict[str, Any], config: Config, numerics: GuardSettings | None = None,
               prune_below: float | None = None) -> TrialSpec:
    """What a trial process needs: the workload, the config, the context, how to measure and guard."""
    return TrialSpec(workload_file=str(options.workload_file), workload_name=options.workload_name or ctx["workload"],
                     config=dict(config), ctx=ctx, disabled_plugins=options.disabled_plugins,
                     measure=options.measure.to_dict(), seed=options.seed,
                     numerics=numerics.to_dict() if numerics else None, prune_below=prune_below)


def guard_for(options: RunOptions, knobs: Sequence[Knob], reference_dir: str
              ) -> Callable[[Config], GuardSettings | None]:
    """The numerics guard of each trial: its tolerance by configuration, and the folder its references share."""

    def guard(config: Config) -> GuardSettings | None:
        if not options.numerics_guard:
            return None
        return GuardSettings(trial_tolerance(knobs, config, options.tolerances), reference_dir)

    return guard
