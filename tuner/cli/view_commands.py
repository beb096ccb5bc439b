"""The read-only commands: ``show``, ``history``, ``report``, ``export``, ``plugins``, ``status`` (and ``rollback``).

They read the store and print; none of them imports torch or the run machinery.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .app import DB_OPTION, JSON_OPTION, app, err_console, open_store, print_json


@app.command()
def show(
    workload: str = typer.Argument(..., help="Workload name (as in `dstune history`)."),
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The incumbent: its configuration, numbers, since when and why; and the latest Pareto front."""
    _record_or_table("show", workload, db, as_json)


@app.command()
def history(
    workload: str = typer.Argument(..., help="Workload name."),
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """One row per iteration: environment changes, trials, challenger, decision, speed-up with its 95% CI."""
    _record_or_table("history", workload, db, as_json)


def _record_or_table(view: str, workload: str, db: str | None, as_json: bool) -> None:
    """``show`` and ``history``: the records as JSON, or rendered as tables."""
    from dstune.views import history, records

    store = open_store(db)
    if as_json:
        print_json({"show": records.show_record, "history": records.history_records}[view](store, workload))
    else:
        {"show": history.render_show, "history": history.render_history}[view](Console(), store, workload)


@app.command()
def report(
    workload: str = typer.Argument(..., help="Workload name."),
    output: Path = typer.Option(Path("dstune-report.html"), "--output", "-o", help="The HTML file to write."),
    iteration: Optional[int] = typer.Option(None, "--iteration", help="Iteration whose trials to show (default: the latest completed)."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="Knob that colours the Pareto plot (default: the most important knob with a few values)."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Write one self-contained HTML file: Pareto front, knob importance, history, environment changes, trials."""
    from dstune.views.report import write_report

    info = write_report(open_store(db), workload, output, iteration, color_by)
    Console().print(f"wrote {info.path} ({info.size_bytes / 2**20:.1f} MiB): {info.workload}, iteration "
                    f"{info.iteration_id} ({info.trials} trials), {info.iterations} iteration(s) of history; "
                    "opens offline in any browser", highlight=False, markup=False, soft_wrap=True)  # a path whole


@app.command()
def export(
    workload: str = typer.Argument(..., help="Workload name."),
    format: str = typer.Option("json", "--format", "-f", help="json (for DSTUNE_CONFIG), env (KEY=VALUE lines), or the keyword arguments of transformers (TrainingArguments), lightning (Trainer) or accelerate (Accelerator), as JSON."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout (lightning: the callback's settings go beside it, in FILE.callback.json)."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Print the applied configuration: as JSON, as shell lines, or as a trainer's keyword arguments."""
    import json

    from dstune.views.history import export_for, export_text

    store = open_store(db)
    callback: dict | None = None
    if format in ("transformers", "lightning", "accelerate"):
        exported = export_for(store, workload, format)
        text = json.dumps(dict(exported), indent=2, sort_keys=True) + "\n"
        for note in exported.warnings:
            err_console.print(f"warning: {note}", highlight=False, markup=False)
        if exported.launch:
            err_console.print(f"launch: {exported.launch} (tuned as a data-parallel job of that many ranks)",
                              highlight=False, markup=False)
        callback = exported.callback if format == "lightning" else None
    else:
        text = export_text(store, workload, format)
    if output is None:
        sys.stdout.write(text)
        if callback:
            err_console.print(f"DstuneCallback settings (dstune.integrations.lightning): {json.dumps(callback)}",
                              highlight=False, markup=False)
        return
    output.write_text(text)
    err_console.print(f"wrote {output}", highlight=False, markup=False, soft_wrap=True)
    if callback is not None:
        beside = output.with_name(output.name.removesuffix(".json") + ".callback.json")
        beside.write_text(json.dumps(callback, indent=2, sort_keys=True) + "\n")
        err_console.print(f"wrote {beside}: DstuneCallback(**json.load(open({str(beside)!r}))) applies it",
                          highlight=False, markup=False, soft_wrap=True)


@app.command()
def dashboard(
    workload: Optional[str] = typer.Argument(None, help="Workload whose studies to name (default: every study)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to serve on."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Serve optuna-dashboard on the store in use: live studies, trials and Pareto fronts (needs dstune[dashboard])."""
    from dstune.views.dashboard import serve

    serve(open_store(db), workload, host, port, lambda line: Console().print(line, highlight=False, markup=False))


@app.command()
def rollback(
    workload: str = typer.Argument(..., help="Workload name."),
    to: int = typer.Option(..., "--to", help="Iteration whose applied configuration to re-apply."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Re-apply the configuration that was in production after iteration N."""
    from dstune.views.history import rollback_to

    Console().print(rollback_to(open_store(db), workload, to), highlight=False)


@app.command()
def plugins(as_json: bool = JSON_OPTION) -> None:
    """List the strategy plugins, their versions and knobs, as they apply on this machine."""
    from dstune.plugin_catalogue import knob_catalogue

    device_name, rows, problems = knob_catalogue()
    if as_json:
        return print_json({"device": device_name, "knobs": rows, "problems": problems})
    from dstune.views.narrow import print_rows

    print_rows(Console(), f"dstune plugins ({device_name})",
               ("knob", "plugin", "version", "choices", "default", "checklist", "applies here"),
               [(escape(row["knob"]), escape(row["plugin"]), escape(row["version"]),
                 escape(", ".join(map(str, row["choices"]))), escape(str(row["default"])),
                 escape(str(row["checklist"])), "yes" if row["applies"] else "no") for row in rows])
    for problem in problems:
        err_console.print(f"[yellow]warning:[/] {problem}")


@app.command()
def status(
    db: Optional[str] = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Daemons (alive by heartbeat), running iterations, the queue of schedules, the last errors."""
    from dstune.daemon.settings import DaemonSettings
    from dstune.views.status import render_status, status_data

    data = status_data(open_store(db), DaemonSettings().stale_after_s)
    if as_json:
        print_json(data)
    else:
        render_status(Console(), data)
