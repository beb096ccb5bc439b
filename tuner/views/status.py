"""``dstune status`` and ``dstune schedule list``: what the daemons are doing, read from the store.

Both are built as plain data first (``--json`` prints that), then drawn.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from dstune.utc import as_utc

if TYPE_CHECKING:
    from dstune.store import Store


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _when(iso: str | None, now: datetime) -> str:
    if iso is None:
        return "-"
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    delta = (moment - now).total_seconds()
    rel = f"in {_span(delta)}" if delta >= 0 else f"{_span(-delta)} ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({rel})"


def _span(seconds: float) -> str:
    """5d 10h, 3h 20m, 4m, 12s: the two largest units."""
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def _short_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def schedule_rows(store: Store) -> list[dict[str, Any]]:
    return [{
        "id": s.id, "workload_file": s.workload_file, "cron": s.cron, "timezone": s.timezone, "host": s.host,
        "gpu": s.gpu, "enabled": s.enabled, "next_due": _iso(s.next_due_at), "running": s.claimed_by is not None,
        "runs": s.runs, "last_run": _iso(s.last_run_at), "last_result": s.last_result,
        "last_iteration": s.last_iteration_id, "last_error": s.last_error, "run_args": list(s.run_args or []),
    } for s in store.schedules()]


def render_schedules(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no schedules. Add one with: dstune schedule add WORKLOAD.py --cron \"0 3 * * 0\"")
        return
    now = datetime.now(timezone.utc)
    table = Table(title="schedules", title_justify="left")
    for column in ("id", "workload", "cron", "state", "next due", "runs", "last result", "options"):
        table.add_column(column)
    for row in rows:
        state = "running" if row["running"] else "enabled" if row["enabled"] else "paused"
        last = row["last_result"] or "-"
        if row["last_iteration"]:
            last += f" (iteration {row['last_iteration']})"
        table.add_row(str(row["id"]), _short_path(row["workload_file"]), f"{row['cron']} {row['timezone']}"
                      + (f" gpu {row['gpu']}" if row["gpu"] else ""), state,
                      _when(row["next_due"], now) if row["enabled"] else "-", str(row["runs"]), last,
                      " ".join(row["run_args"]))
    console.print(table)


def status_data(store: Store, stale_after_s: float) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    daemons = []
    for d in store.daemons():
        age = (now - as_utc(d.heartbeat_at)).total_seconds()
        state = d.status if d.status != "running" else ("alive" if age <= stale_after_s else "not beating")
        daemons.append({"id": d.id, "host": d.host, "pid": d.pid, "gpu": d.gpu, "state": state,
                        "heartbeat_age_s": round(age, 1), "started": _iso(d.started_at), "stopped": _iso(d.stopped_at),
                        "schedule": d.schedule_id, "note": d.note})
    running = [{"iteration": it.id, "workload": it.workload.name, "phase": it.phase, "host": it.host, "pid": it.pid,
                "schedule": it.schedule_id, "started": _iso(it.started_at), "trials_done": done,
                "heartbeat_age_s": round((now - as_utc(it.heartbeat_at)).total_seconds(), 1) if it.heartbeat_at else None}
               for it, done in store.running_iterations()]
    schedules = schedule_rows(store)
    queue = sorted((s for s in schedules if s["enabled"] and not s["running"]), key=lambda s: s["next_due"])
    errors = [{"iteration": it.id, "workload": it.workload.name, "status": it.status, "ended": _iso(it.ended_at),
               "error": it.error} for it in store.recent_problems()]
    errors += [{"schedule": s["id"], "status": s["last_result"], "ended": s["last_run"], "error": s["last_error"]}
               for s in schedules if s["last_error"]]
    return {"store": store.shown_url, "now": _iso(now), "daemons": daemons, "running": running,
            "queue": [{k: s[k] for k in ("id", "workload_file", "cron", "next_due")} for s in queue],
            "errors": errors}


def render_status(console: Console, data: dict[str, Any]) -> None:
    now = datetime.now(timezone.utc)
    live = [d for d in data["daemons"] if d["state"] == "alive"]
    console.print(f"store {data['store']}: {len(live)} daemon(s) alive")
    if data["daemons"]:
        table = Table(title="daemons", title_justify="left")
        for column in ("id", "host", "pid", "gpu", "state", "heartbeat", "doing"):
            table.add_column(column)
        for d in data["daemons"][-10:]:
            beat = f"{d['heartbeat_age_s']:.0f} s ago" if d["state"] in ("alive", "not beating") else "-"
            table.add_row(str(d["id"]), d["host"], str(d["pid"]), d["gpu"] or "-", d["state"], beat, d["note"] or "-")
        console.print(table)
    if data["running"]:
        table = Table(title="running iterations", title_justify="left")
        for column in ("iteration", "workload", "phase", "trials done", "host / pid", "schedule", "since"):
            table.add_column(column)
        for r in data["running"]:
            table.add_row(str(r["iteration"]), r["workload"], r["phase"], str(r["trials_done"]),
                          f"{r['host']} / {r['pid']}", str(r["schedule"] or "-"), _when(r["started"], now))
        console.print(table)
    else:
        console.print("no iteration running")
    if data["queue"]:
        table = Table(title="queue", title_justify="left")
        for column in ("schedule", "workload", "cron", "next due"):
            table.add_column(column)
        for q in data["queue"]:
            table.add_row(str(q["id"]), _short_path(q["workload_file"]), q["cron"], _when(q["next_due"], now))
        console.print(table)
    if data["errors"]:
        console.print("[bold]last errors[/]")
        for e in data["errors"]:
            what = f"iteration {e['iteration']} ({e['workload']})" if "iteration" in e else f"schedule {e['schedule']}"
            first = (e["error"] or "").strip().splitlines()
            console.print(f"  {what} {e['status']} {_when(e['ended'], now)}: {first[-1] if first else ''}",
                          highlight=False)
