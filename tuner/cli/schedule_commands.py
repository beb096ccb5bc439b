"""``dstune schedule ...`` and ``dstune daemon``: recurring tuning jobs and the process that runs them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .app import (
    DB_OPTION,
    IDLE_UTIL_OPTION,
    IDLE_WINDOW_OPTION,
    JSON_OPTION,
    MAX_DELAY_OPTION,
    app,
    open_store,
    print_json,
)

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
    from dstune.daemon.schedules import add_schedule

    run_command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    row = add_schedule(open_store(db, create=True), run_command, workload_file, cron, timezone, gpu, now, list(ctx.args))
    Console().print(f"schedule {row.id}: {row.workload_file} at \"{row.cron}\" ({row.timezone}); next due "
                    f"{row.next_due_at:%Y-%m-%d %H:%M} UTC; `dstune daemon` runs it", highlight=False)


@schedule_app.command("list")
def schedule_list(
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The schedules: next due time, last result, enabled or paused."""
    from dstune.views.status import render_schedules, schedule_rows

    rows = schedule_rows(open_store(db))
    if as_json:
        print_json(rows)
    else:
        render_schedules(Console(), rows)


def _schedule_change(schedule_id: int, db: str | None, action: str) -> None:
    from dstune.daemon.schedules import find_schedule

    store = open_store(db)
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

    from dstune.daemon.service import Daemon, DaemonSettings
    from dstune.devices.idle_gate import GateSettings
    from dstune.units import parse_duration

    window = parse_duration(idle_window, "--idle-window", allow_zero=True)
    settings = DaemonSettings(
        db=db, gpu=gpu, poll_s=parse_duration(poll, "--poll"), heartbeat_s=parse_duration(heartbeat, "--heartbeat"),
        gate=GateSettings(window_s=window, max_util=idle_util, max_delay_s=parse_duration(max_delay, "--max-delay")),
        retry_after_s=parse_duration(retry_after, "--retry-after"), metrics_port=metrics_port,
        metrics_addr=metrics_addr, once=once)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(Daemon(settings).run())
