"""``dstune run``, ``dstune worker`` and ``dstune config``: the commands that run trials or resolve their settings.

An interrupted run (SIGINT or SIGTERM) exits 130 after recording what it
had; a run deferred because its device stayed locked or busy exits 75.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dstune.errors import EXIT_DEFERRED, EXIT_INTERRUPTED, EXIT_REGRESSION, EXIT_WORKLOAD, UsageError

from .app import IDLE_UTIL_OPTION, IDLE_WINDOW_OPTION, JSON_OPTION, MAX_DELAY_OPTION, app, err_console, print_json


@app.command()
def run(
    ctx: typer.Context,
    workload_file: Path = typer.Argument(..., help="Python file defining a @dstune.workload."),
    workload: Optional[str] = typer.Option(None, "--workload", "-w", help="Which workload, if the file has several."),
    db: Optional[str] = typer.Option(None, "--db", envvar="DSTUNE_DB", help="SQLAlchemy URL or SQLite path (default ./dstune.db)."),
    trials: int = typer.Option(30, "--trials", "-n", min=1, envvar="DSTUNE_TRIALS", help="Most trials to run."),
    budget: str = typer.Option("15m", "--budget", envvar="DSTUNE_BUDGET", help="Wall-time budget, e.g. 90s, 15m, 1h."),
    trial_timeout: str = typer.Option("10m", "--trial-timeout", envvar="DSTUNE_TRIAL_TIMEOUT", help="Kill a trial after this long."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", envvar="DSTUNE_MEMORY_BUDGET", help="Peak memory allowed: a size (20GiB) or a fraction of device memory (0.8). Default 0.9."),
    max_latency: Optional[str] = typer.Option(None, "--max-latency", envvar="DSTUNE_MAX_LATENCY", help="Inference workloads: the p99 latency of one batch allowed (e.g. 50ms); trials over it are not chosen."),
    seed: int = typer.Option(0, "--seed", envvar="DSTUNE_SEED", help="Seed of the sampler and of the workload's RNG."),
    disable_plugin: List[str] = typer.Option([], "--disable-plugin", envvar="DSTUNE_DISABLE_PLUGINS", help="Leave a plugin out (repeatable)."),
    strict_plugins: bool = typer.Option(False, "--strict-plugins", help="Fail when a plugin fails to load or raises while declaring its knobs or model facts (default: leave it out with a warning)."),
    only: List[str] = typer.Option([], "--only", envvar="DSTUNE_ONLY", help="Tune only these knobs (repeatable or comma-separated); the others keep the incumbent's values."),
    exclude: List[str] = typer.Option([], "--exclude", envvar="DSTUNE_EXCLUDE", help="Never tune these knobs (repeatable or comma-separated); they keep the incumbent's values."),
    numerics_guard: bool = typer.Option(True, "--numerics-guard/--no-numerics-guard", help="Compare each trial's first loss or output with an fp32 eager reference."),
    tolerance: List[str] = typer.Option([], "--tolerance", help="Numerics tolerance: KNOB:VALUE=REL (e.g. precision:bf16=0.1) or base=REL (repeatable)."),
    study: Optional[str] = typer.Option(None, "--study", help="Optuna study name (default WORKLOAD-itN); `dstune worker --study NAME` joins it."),
    gpus: List[str] = typer.Option([], "--gpus", envvar="DSTUNE_GPUS", help="Run trials in parallel, one per GPU (indices or UUIDs, comma-separated, or all); the check runs on the first."),
    world_size: int = typer.Option(1, "--world-size", min=1, envvar="DSTUNE_WORLD_SIZE", help="Data-parallel workloads: ranks per trial, one GPU each (CPU processes with gloo without GPUs); each trial is one torch.distributed job."),
    windows: int = typer.Option(5, "--windows", min=2, envvar="DSTUNE_WINDOWS", help="Timed windows per trial."),
    window_time: float = typer.Option(0.5, "--window-time", min=0.01, envvar="DSTUNE_WINDOW_TIME", help="Seconds per timed window (at least)."),
    max_warmup: float = typer.Option(60.0, "--max-warmup", min=0.1, help="Most seconds of warm-up per trial."),
    search: str = typer.Option("local", "--search", envvar="DSTUNE_SEARCH", help="After the seeds: local (neighbours of the best, most promising per second first; ends once none is left) or sampler (Optuna's TPE throughout)."),
    memory_model: str = typer.Option("auto", "--memory-model", envvar="DSTUNE_MEMORY_MODEL", help="Predict each configuration's peak memory from a few small micro-batches before the trials, and skip those that would not fit: auto (on a GPU, or with --memory-budget), on, off."),
    select: str = typer.Option("max-throughput", "--select", envvar="DSTUNE_SELECT", help="Challenger policy: max-throughput, knee, or weighted:throughput=1,memory=0.5,energy=0."),
    check_repeats: int = typer.Option(5, "--check-repeats", min=2, envvar="DSTUNE_CHECK_REPEATS", help="Interleaved rounds of incumbent and challenger in the check."),
    min_gain: float = typer.Option(0.02, "--min-gain", min=0.0, max=1.0, envvar="DSTUNE_MIN_GAIN", help="Promote only when the 95% CI's lower bound exceeds 1 + this."),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression", help="Exit 3 when the incumbent regressed (for CI and cron)."),
    lock_timeout: Optional[str] = typer.Option(None, "--lock-timeout", help="Give up (exit 75) when another run holds this device longer than this (default: wait)."),
    wait_idle: bool = typer.Option(False, "--wait-idle/--no-wait-idle", help="Before each trial, wait until the device has been free of foreign work for --idle-window."),
    idle_window: str = IDLE_WINDOW_OPTION,
    idle_util: float = IDLE_UTIL_OPTION,
    max_delay: str = MAX_DELAY_OPTION,
    schedule_id: Optional[int] = typer.Option(None, "--schedule-id", hidden=True, help="Set by the daemon."),
) -> None:
    """One Plan-Do-Check-Act iteration of WORKLOAD_FILE: trials, check against the incumbent, promote or keep."""
    if not workload_file.is_file():
        raise UsageError(f"workload file {workload_file} does not exist. Give the path of a Python file that defines a @dstune.workload function.")
    from dstune.run.options import resolve
    from dstune.trial.workload_file import check_syntax

    check_syntax(workload_file)
    options = resolve(ctx).options  # values (and the config file) are checked before anything starts
    from dstune.trial.launch import start_early

    start_early(workload_file)  # the fork server imports torch and the workload's packages while this process
    # imports the rest
    from dstune.run.iteration import run_iteration
    from dstune.views.summary import render_summary, summarize

    from .progress import ConsoleReporter

    reporter = ConsoleReporter()
    result = _trials_until_done(reporter, lambda: run_iteration(options, reporter),
                                "the trials that finished are recorded; the iteration is marked interrupted")
    from dstune.store import Store

    render_summary(reporter.console, summarize(Store(options.db), result.iteration_id), result.stop_reason)
    if result.workload_error is not None:
        err_console.print(
            f"error: every trial failed with the same error, so the workload fails as written, whatever the knobs: "
            f"{escape(result.workload_error)}. Fix it (`python -c` on its function, or one step of it by hand), "
            f"then run again: exit {EXIT_WORKLOAD}", highlight=False)
        raise typer.Exit(EXIT_WORKLOAD)
    if fail_on_regression and result.decision is not None and result.decision.regression:
        err_console.print("regression detected and --fail-on-regression given: exit 3")
        raise typer.Exit(EXIT_REGRESSION)


@app.command()
def worker(
    study: str = typer.Option(..., "--study", help="The study to join: the --study of the coordinating `dstune run`."),
    db: Optional[str] = typer.Option(None, "--db", envvar="DSTUNE_DB", help="The coordinator's database (PostgreSQL URL for several hosts)."),
    gpus: List[str] = typer.Option([], "--gpus", envvar="DSTUNE_GPUS", help="Run a trial on each of these GPUs at once (indices or UUIDs, comma-separated, or all)."),
    workload_file: Optional[Path] = typer.Option(None, "--workload-file", help="Where the workload file is on this host (default: the coordinator's path)."),
    wait: str = typer.Option("10m", "--wait", help="How long to wait for the study to reach its Do phase."),
    lock_timeout: Optional[str] = typer.Option(None, "--lock-timeout", help="Give up (exit 75) when another run holds a GPU longer than this (default: wait)."),
) -> None:
    """Join the Do phase of a running study from this host: take its trials until none are left."""
    from dstune.devices.slots import parse_gpus
    from dstune.units import parse_duration

    wait_s = parse_duration(wait, "--wait", allow_zero=True)
    lock_timeout_s = parse_duration(lock_timeout, "--lock-timeout", allow_zero=True) if lock_timeout else None
    slots = parse_gpus(gpus or None)
    from dstune.trial.launch import start_early

    start_early(workload_file)  # given here, its installed imports are preloaded; else the trials import them
    from dstune.run.join import run_worker

    from .progress import ConsoleReporter

    reporter = ConsoleReporter()
    result = _trials_until_done(reporter, lambda: run_worker(db, study, slots, workload_file, wait_s, lock_timeout_s,
                                                             reporter),
                                "this worker's finished trials are recorded; its running ones are marked interrupted")
    if result.iteration_id is not None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "no trials"
        reporter.console.print(f"worker done: iteration {result.iteration_id} (study {study}): {counts} here "
                               f"(stopped: {result.stop_reason})", highlight=False)


T = TypeVar("T")


def _trials_until_done(reporter: Any, work: Callable[[], T], kept: str) -> T:
    """Run ``work`` (trials, with a live display): SIGINT/SIGTERM exit 130 and a busy device 75, saying what was kept."""
    from dstune.devices.lock import DeviceBusy

    _interrupt_on_sigterm()
    try:
        return work()
    except KeyboardInterrupt:
        reporter.close()
        err_console.print(f"interrupted: {kept}.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except DeviceBusy as exc:
        reporter.close()
        err_console.print(f"deferred: {exc}. The trials that finished are recorded; try again later.", highlight=False)
        raise typer.Exit(EXIT_DEFERRED) from None
    finally:
        reporter.close()


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM (systemd, a daemon, kill) stop a run as Ctrl-C does; a second one is ignored.

    The first signal raises KeyboardInterrupt, which records the trial in
    flight and the iteration as interrupted; a second one arriving while
    that is written must not cut the recording short.
    """

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# What an unset setting means, as `dstune config` shows it (the value None says nothing to a reader).
EFFECTIVE: dict[str, dict[Any, str]] = {
    "memory-budget": {None: "0.9 (of the device's memory)"},
    "max-latency": {None: "none"},
}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config(
    ctx: typer.Context,
    workload_file: Optional[Path] = typer.Argument(None, help="The workload whose config file to read (default: look from the current folder)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the settings `dstune run` would use and where each comes from: command line > env > file > default.

    Any further options are `dstune run` options, as you would give them to the run.
    """
    from dstune.config_file import ENV_VARS, FILE_KEYS
    from dstune.run.options import resolve_args

    run_command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    target = workload_file if workload_file is not None else Path.cwd() / "WORKLOAD.py"
    resolved = resolve_args(run_command, target, ctx.args)
    rows = [{"setting": key, "value": resolved.params[param], "source": resolved.sources[param],
             "env": ENV_VARS[param]} for key, param in FILE_KEYS.items()]
    if as_json:
        return print_json({"file": str(resolved.file) if resolved.file else None, "settings": rows})
    console = Console()
    console.print(escape(f"config file: {resolved.file or 'none found (dstune.toml, or [tool.dstune] in pyproject.toml)'}"),
                  highlight=False)
    table = Table(title="dstune run settings (command line > env DSTUNE_<SETTING> > file > default)",
                  title_justify="left")
    for col in ("setting", "value", "from"):
        table.add_column(col, overflow="fold")  # a long path wraps whole rather than ending in an ellipsis
    for row in rows:
        value = row["value"]
        if value is None:
            value = EFFECTIVE.get(row["setting"], {}).get(None, value)
        shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        if row["setting"] == "db" and row["value"] is None:
            shown = str(Path.cwd() / "dstune.db")
        table.add_row(escape(row["setting"]), escape(shown or "-"), escape(row["source"]))
    console.print(table)
