"""Schedules: when a workload is tuned again, checked once at ``dstune schedule add``.

A schedule is a workload file, the ``dstune run`` options to run it with,
and a cron expression (croniter) read in an IANA time zone (the host's by
default, as cron does).  Everything that would make a run fail later, at
03:00 on a Sunday with nobody watching, is refused now: a bad cron string,
an unknown zone, a missing workload file, an option ``dstune run`` does not
know or a value it would refuse.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from dstune.errors import UsageError

if TYPE_CHECKING:
    from dstune.store import Store

RESERVED_OPTIONS = {"--db": "the schedule's runs record in the database that holds the schedule (give --db to "
                            "`schedule add` itself)",
                    "--schedule-id": "the daemon sets it"}


def local_timezone() -> str:
    """The host's IANA zone name: $TZ, else the target of /etc/localtime, else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {name!r} is not an IANA time zone. Give one like Europe/Berlin, "
                         "America/New_York or UTC.") from None


def check_cron(expression: str) -> str:
    text = " ".join(expression.split())
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise UsageError(
            f"--cron {expression!r} is not a cron expression of five fields (minute hour day-of-month month "
            "day-of-week). Weekly on Sunday at 03:00 is \"0 3 * * 0\"; every day at 02:30 is \"30 2 * * *\"."
        )
    return text


def next_due(cron: str, zone_name: str, after: datetime) -> datetime:
    """The first time after ``after`` that ``cron`` names, read in ``zone_name``; returned in UTC."""
    local = after.astimezone(zone(zone_name))
    return croniter(cron, local).get_next(datetime).astimezone(timezone.utc)


def check_run_args(run_command: Any, workload_file: Path, args: Sequence[str]) -> list[str]:
    """Parse ``args`` as ``dstune run`` would and check the values it would check; return them as given."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in RESERVED_OPTIONS:
            raise UsageError(f"{name} cannot be part of a schedule: {RESERVED_OPTIONS[name]}.")
    from dstune.run.options import resolve_args

    # The checks `dstune run` makes, with the workload's config file and environment.
    resolve_args(run_command, workload_file, args, "the options of this schedule would make `dstune run` fail: ")
    return list(args)


def add_schedule(store: Store, run_command: Any, workload_file: Path, cron: str, zone_name: str | None,
                 gpu: str | None, now: bool, args: Sequence[str]) -> Any:
    """Check everything, store the schedule, return its row."""
    if not workload_file.is_file():
        raise UsageError(f"workload file {workload_file} does not exist. Give the path of a Python file that "
                         "defines a @dstune.workload function.")
    cron = check_cron(cron)
    zone_name = zone_name or local_timezone()
    zone(zone_name)
    run_args = check_run_args(run_command, workload_file, args)
    moment = datetime.now(timezone.utc)
    schedule_id = store.add_schedule(
        workload_file=str(workload_file.resolve()), run_args=run_args, cron=cron, timezone=zone_name,
        host=socket.gethostname(), gpu=gpu, enabled=True,
        next_due_at=moment if now else next_due(cron, zone_name, moment))
    return store.schedule(schedule_id)


def find_schedule(store: Store, schedule_id: int) -> Any:
    row = store.schedule(schedule_id)
    if row is None:
        known = ", ".join(str(s.id) for s in store.schedules()) or "none"
        raise UsageError(f"no schedule {schedule_id} in {store.shown_url} (schedules there: {known}). "
                         "`dstune schedule list` shows them.")
    return row
