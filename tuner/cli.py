"""The ``dstune`` command line.

User errors (:class:`UsageError`) print as one paragraph without a traceback
and exit 2; an interrupted run (SIGINT or SIGTERM) exits 130 after recording
what it had; a run deferred because its device stayed locked or busy exits 75.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EXIT_DEFERRED, EXIT_INTERRUPTED, EXIT_REGRESSION, EXIT_USAGE, UsageError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Automated tuning for PyTorch workloads.")
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dstune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dstune finds the fastest safe way to run a PyTorch workload on the GPU it runs on."""


# The idle gate's options, the same for `run --wait-idle` and for `daemon` (which passes them to its runs).
IDLE_WINDOW_OPTION = typer.Option("5m", "--idle-window", help="How long the device must look idle before a trial starts (0: no gate).")
IDLE_UTIL_OPTION = typer.Option(10.0, "--idle-util", min=0.0, max=100.0, help="Utilisation (percent; of all CPUs on a CPU-only host) that still counts as idle.")
MAX_DELAY_OPTION = typer.Option("2h", "--max-delay", help="Give up waiting for an idle device after this long: the run is deferred (exit 75; a daemon retries later).")


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
    windows: int = typer.Option(5, "--windows", min=2, envvar="DSTUNE_WINDOWS", help="Timed windows per trial."),
    window_time: float = typer.Option(0.5, "--window-time", min=0.01, envvar="DSTUNE_WINDOW_TIME", help="Seconds per timed window (at least)."),
    max_warmup: float = typer.Option(60.0, "--max-warmup", min=0.1, help="Most seconds of warm-up per trial."),
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
    from .run_options import resolve
    from .workload_loader import check_syntax

    check_syntax(workload_file)
    options = resolve(ctx).options  # values (and the config file) are checked before anything starts
    from .trial_runner import start_early

    start_early()  # the fork server imports torch while this process imports the rest
    from .display import ConsoleReporter, render_summary
    from .summary import summarize
    from .tuning_run import run_iteration

    reporter = ConsoleReporter()
    result = _trials_until_done(reporter, lambda: run_iteration(options, reporter),
                                "the trials that finished are recorded; the iteration is marked interrupted")
    from dstune.store import Store

    render_summary(reporter.console, summarize(Store(options.db), result.iteration_id), result.stop_reason)
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
    from .gpu_slots import parse_gpus
    from .units import parse_duration

    wait_s = parse_duration(wait, "--wait", allow_zero=True)
    lock_timeout_s = parse_duration(lock_timeout, "--lock-timeout", allow_zero=True) if lock_timeout else None
    slots = parse_gpus(gpus or None)
    from .trial_runner import start_early

    start_early()
    from .display import ConsoleReporter
    from .worker import run_worker

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
    from .device_lock import DeviceBusy

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


DB_OPTION = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default $DSTUNE_DB or ./dstune.db).")


JSON_OPTION = typer.Option(False, "--json", help="Print JSON (for scripts and dashboards).")


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def show(
    workload: str = typer.Argument(..., help="Workload name (as in `dstune history`)."),
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The incumbent: its configuration, numbers, since when and why; and the latest Pareto front."""
    if as_json:
        from .records import show_record

        return _print_json(show_record(_store(db), workload))
    from .history_view import render_show

    render_show(Console(), _store(db), workload)


@app.command()
def history(
    workload: str = typer.Argument(..., help="Workload name."),
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """One row per iteration: environment changes, trials, challenger, decision, speed-up with its 95% CI."""
    if as_json:
        from .records import history_records

        return _print_json(history_records(_store(db), workload))
    from .history_view import render_history

    render_history(Console(), _store(db), workload)


@app.command()
def report(
    workload: str = typer.Argument(..., help="Workload name."),
    output: Path = typer.Option(Path("dstune-report.html"), "--output", "-o", help="The HTML file to write."),
    iteration: Optional[int] = typer.Option(None, "--iteration", help="Iteration whose trials to show (default: the latest completed)."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="Knob that colours the Pareto plot (default: the most important knob with a few values)."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Write one self-contained HTML file: Pareto front, knob importance, history, environment changes, trials."""
    from .report import write_report

    info = write_report(_store(db), workload, output, iteration, color_by)
    Console().print(f"wrote {info.path} ({info.size_bytes / 2**20:.1f} MiB): {info.workload}, iteration "
                    f"{info.iteration_id} ({info.trials} trials), {info.iterations} iteration(s) of history; "
                    "opens offline in any browser", highlight=False)


@app.command()
def export(
    workload: str = typer.Argument(..., help="Workload name."),
    format: str = typer.Option("json", "--format", "-f", help="json (for DSTUNE_CONFIG) or env (KEY=VALUE lines)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Print the applied configuration as JSON or as shell KEY=VALUE lines."""
    from .history_view import export_text

    text = export_text(_store(db), workload, format)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err_console.print(f"wrote {output}")


@app.command()
def rollback(
    workload: str = typer.Argument(..., help="Workload name."),
    to: int = typer.Option(..., "--to", help="Iteration whose applied configuration to re-apply."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Re-apply the configuration that was in production after iteration N."""
    from .history_view import rollback_to

    Console().print(rollback_to(_store(db), workload, to), highlight=False)


def _store(db: str | None):  # type: ignore[no-untyped-def]
    from dstune.store import Store

    from .config_file import default_db

    return Store(default_db(db))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config(
    ctx: typer.Context,
    workload_file: Optional[Path] = typer.Argument(None, help="The workload whose config file to read (default: look from the current folder)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the settings `dstune run` would use and where each comes from: command line > env > file > default.

    Any further options are `dstune run` options, as you would give them to the run.
    """
    from .config_file import ENV_VARS, FILE_KEYS
    from .run_options import resolve_args

    run_command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    target = workload_file if workload_file is not None else Path.cwd() / "WORKLOAD.py"
    resolved = resolve_args(run_command, target, ctx.args)
    rows = [{"setting": key, "value": resolved.params[param], "source": resolved.sources[param],
             "env": ENV_VARS[param]} for key, param in FILE_KEYS.items()]
    if as_json:
        return _print_json({"file": str(resolved.file) if resolved.file else None, "settings": rows})
    console = Console()
    console.print(f"config file: {resolved.file or 'none found (dstune.toml, or [tool.dstune] in pyproject.toml)'}",
                  highlight=False)
    table = Table(title="dstune run settings (command line > env > file > default)", title_justify="left")
    for col in ("setting", "value", "from", "env variable"):
        table.add_column(col)
    for row in rows:
        value = row["value"]
        shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        table.add_row(row["setting"], shown or "-", row["source"], row["env"])
    console.print(table)


@app.command()
def plugins(as_json: bool = JSON_OPTION) -> None:
    """List the strategy plugins, their versions and knobs, as they apply on this machine."""
    from .plugin_catalogue import knob_catalogue

    device_name, rows, problems = knob_catalogue()
    if as_json:
        return _print_json({"device": device_name, "knobs": rows, "problems": problems})
    table = Table(title=f"dstune plugins ({device_name})", title_justify="left")
    for col in ("plugin", "version", "knob", "choices", "default", "checklist", "applies here"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["plugin"], row["version"], row["knob"], ", ".join(map(str, row["choices"])),
                      str(row["default"]), str(row["checklist"]), "yes" if row["applies"] else "no")
    Console().print(table)
    for problem in problems:
        err_console.print(f"[yellow]warning:[/] {problem}")


schedule_app = typer.Typer(no_args_is_help=True, help="Recurring tuning jobs, run by `dstune daemon`.")
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def schedule_add(
    ctx: typer.Context,
    workload_file: Path = typer.Argument(..., help="Python file defining a @dstune.workload."),
    cron: str = typer.Option(..., "--cron", help='When to run, as five cron fields, e.g. "0 3 * * 0" (Sundays 03:00).'),
    timezone: Optional[str] = typer.Option(None, "--timezone", help="IANA zone the cron is read in (default: the host's)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Run on this GPU (index or UUID); default: the daemon's."),
    now: bool = typer.Option(False, "--now", help="First run at once, then by the cron."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Tune WORKLOAD_FILE by a cron schedule; any further options are `dstune run` options (e.g. --budget 30m)."""
    from .schedules import add_schedule

    run_command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    row = add_schedule(_store(db), run_command, workload_file, cron, timezone, gpu, now, list(ctx.args))
    Console().print(f"schedule {row.id}: {row.workload_file} at \"{row.cron}\" ({row.timezone}); next due "
                    f"{row.next_due_at:%Y-%m-%d %H:%M} UTC; `dstune daemon` runs it", highlight=False)


@schedule_app.command("list")
def schedule_list(
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The schedules: next due time, last result, enabled or paused."""
    from .status_view import render_schedules, schedule_rows

    rows = schedule_rows(_store(db))
    if as_json:
        _print_json(rows)
    else:
        render_schedules(Console(), rows)


def _schedule_change(schedule_id: int, db: str | None, action: str) -> None:
    from .schedules import find_schedule

    store = _store(db)
    row = find_schedule(store, schedule_id)
    if action == "remove":
        store.remove_schedule(schedule_id)
        note = " (its iterations stay in the store)" + ("; the run in progress finishes" if row.claimed_by else "")
    else:
        store.update_schedule(schedule_id, enabled=action == "resume")
        note = "; a run in progress finishes" if row.claimed_by and action == "pause" else ""
    Console().print(f"schedule {schedule_id} {action}{'d' if action.endswith('e') else 'ed'}{note}", highlight=False)


@schedule_app.command("remove")
def schedule_remove(schedule_id: int = typer.Argument(...), db: Optional[str] = DB_OPTION) -> None:
    """Delete a schedule."""
    _schedule_change(schedule_id, db, "remove")


@schedule_app.command("pause")
def schedule_pause(schedule_id: int = typer.Argument(...), db: Optional[str] = DB_OPTION) -> None:
    """Stop running a schedule until it is resumed."""
    _schedule_change(schedule_id, db, "pause")


@schedule_app.command("resume")
def schedule_resume(schedule_id: int = typer.Argument(...), db: Optional[str] = DB_OPTION) -> None:
    """Run a paused schedule again (a run missed meanwhile happens once, at once)."""
    _schedule_change(schedule_id, db, "resume")


@app.command()
def daemon(
    db: Optional[str] = DB_OPTION,
    gpu: Optional[str] = typer.Option(None, "--gpu", help="The GPU this daemon tunes on (index or UUID); runs get CUDA_VISIBLE_DEVICES."),
    poll: str = typer.Option("30s", "--poll", help="How often to look for new or changed schedules."),
    heartbeat: str = typer.Option("10s", "--heartbeat", help="How often to write the heartbeat."),
    idle_window: str = IDLE_WINDOW_OPTION,
    idle_util: float = IDLE_UTIL_OPTION,
    max_delay: str = MAX_DELAY_OPTION,
    retry_after: str = typer.Option("1h", "--retry-after", help="When a deferred run is tried again (at the latest at its next cron time)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on this port (0: any free one)."),
    metrics_addr: str = typer.Option("127.0.0.1", "--metrics-addr", help="Address the metrics endpoint binds to."),
    once: bool = typer.Option(False, "--once", help="Run what is due now, then exit (for cron or systemd timers)."),
) -> None:
    """Run due schedules, one iteration per GPU at a time; stop cleanly on SIGTERM or SIGINT."""
    import logging

    from .daemon import Daemon, DaemonSettings
    from .idle_gate import GateSettings
    from .units import parse_duration

    window = parse_duration(idle_window, "--idle-window", allow_zero=True)
    settings = DaemonSettings(
        db=db, gpu=gpu, poll_s=parse_duration(poll, "--poll"), heartbeat_s=parse_duration(heartbeat, "--heartbeat"),
        gate=GateSettings(window_s=window, max_util=idle_util, max_delay_s=parse_duration(max_delay, "--max-delay")),
        retry_after_s=parse_duration(retry_after, "--retry-after"), metrics_port=metrics_port,
        metrics_addr=metrics_addr, once=once)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(Daemon(settings).run())


@app.command()
def status(
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Daemons (alive by heartbeat), running iterations, the queue of schedules, the last errors."""
    from .daemon import DaemonSettings
    from .status_view import render_status, status_data

    data = status_data(_store(db), DaemonSettings().stale_after_s)
    if as_json:
        _print_json(data)
    else:
        render_status(Console(), data)


def main() -> None:
    """Entry point: run the app, turning user errors into exit code 2."""
    try:
        app()
    except UsageError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)  # paths stay whole
        sys.exit(EXIT_USAGE)
