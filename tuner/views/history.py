"""``dstune show``, ``history``, ``export`` and ``rollback``: the store, read for people and launchers."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dstune.best_config import BestConfig, applied_best
from dstune.environment_diff import format_change
from dstune.errors import UsageError
from dstune.knobs import describe_config
from dstune.units import format_bytes

from .records import fronts_by_model, iterations_of
from .summary import format_speedup

if TYPE_CHECKING:
    from dstune.export import Exported
    from dstune.store import Store

EXPORT_FORMATS = ("json", "env", "transformers", "lightning", "accelerate")


def _energy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} J/sample"


def render_show(console: Console, store: Store, workload: str) -> None:
    iterations = iterations_of(store, workload)
    current = applied_best(store, workload)
    number = {iteration.id: n for n, iteration in enumerate(iterations, 1)}
    if current is None:
        completed = sum(i.status == "completed" for i in iterations)
        console.print(f"[yellow]{workload}: nothing applied yet[/] ({len(iterations)} iteration(s), {completed} "
                      "completed, none with a configuration that ran). Run `dstune run` on a workload whose "
                      "trials succeed.")
        return
    metrics = current.metrics
    since = (current.applied_at or "")[:16].replace("T", " ")
    on = f", measured on {current.gpu_model}" if current.gpu_model else ""
    console.print(f"[bold]{workload}[/]: incumbent applied #{current.applied_id} since {since} UTC "
                  f"({current.reason}, iteration {number.get(current.iteration_id, current.iteration_id)}{on})")
    console.print(f"  {metrics.get('samples_per_s') or 0:.1f} samples/s (check median), peak memory "
                  f"{format_bytes(metrics.get('peak_memory_bytes'))}, energy {_energy(metrics.get('energy_per_sample_j'))}")
    console.print(f"  why: {current.note}", highlight=False)
    for model in store.applied_models(workload):
        other = applied_best(store, workload, model) if model and model != current.gpu_model else None
        if other is not None and other.applied_id != current.applied_id:
            console.print(f"  on {model}: its own incumbent, applied #{other.applied_id} "
                          f"({other.metrics.get('samples_per_s') or 0:.1f} samples/s); `dstune.best` picks by the GPU it runs on",
                          highlight=False)
    latest = next((i for i in reversed(iterations) if i.status == "completed"), None)
    defaults = latest.default_config if latest is not None else {}
    table = Table(title="Configuration", title_justify="left")
    for col in ("knob", "value", "default"):
        table.add_column(col)
    for name, value in sorted(current.config.items()):
        default = defaults.get(name, "-")
        table.add_row(name, f"[bold]{value}[/]" if value != default else str(value), str(default))
    console.print(table)
    if latest is None:
        return
    fronts = fronts_by_model(store, latest)
    for model, rows in fronts.items():
        on = f" on {model}" if len(fronts) > 1 else ""
        front = Table(title=f"Pareto front of iteration {number[latest.id]}{on}", title_justify="left")
        for col, justify in (("trial", "right"), ("samples/s", "right"), ("peak memory", "right"), ("energy", "right"),
                             ("config (vs default)", "left")):
            front.add_column(col, justify=justify)
        for row in rows:
            front.add_row(str(row.number), f"{row.samples_per_s:.1f}", format_bytes(row.peak_memory_bytes),
                          _energy(row.energy_per_sample_j), describe_config(row.config, defaults))
        console.print(front)


def render_history(console: Console, store: Store, workload: str) -> None:
    from .narrow import print_rows

    rows = []
    for number, iteration in enumerate(iterations_of(store, workload), 1):
        counts = store.status_counts(iteration.id)
        trials = f"{sum(counts.values())} ({counts.get('ok', 0)} ok)"
        if iteration.previous_iteration_id is None:
            changes = "first" if iteration.decision or iteration.status != "completed" else "-"
        else:
            changes = "\n".join(format_change(c) for c in iteration.fingerprint_diff or []) or "none"
        challenger = "-"
        if iteration.chosen_config is not None:
            same = iteration.chosen_config == iteration.incumbent_config
            challenger = "= incumbent" if same else describe_config(iteration.chosen_config, iteration.incumbent_config)
        status = iteration.status if iteration.status == "completed" else f"{iteration.status} ({iteration.phase})"
        regression = {True: "[red]yes[/]", False: "no", None: "-"}[iteration.regression]
        rows.append((str(number), f"{iteration.started_at:%Y-%m-%d %H:%M}", status, escape(changes), trials,
                     escape(challenger), iteration.decision or "-", format_speedup(iteration), regression))
    print_rows(console, f"{workload}: iterations", ("iteration", "started", "status", "environment changes",
                                                    "trials", "challenger (vs incumbent)", "decision",
                                                    "speed-up [95% CI]", "regression"), rows, show_lines=True)


def export_text(store: Store, workload: str, fmt: str) -> str:
    """The applied configuration as text: ``json`` (for DSTUNE_CONFIG), ``env`` lines, or a trainer's keyword
    arguments as JSON (see :func:`export_for`)."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}. Use json for "
                         "DSTUNE_CONFIG, env for KEY=VALUE lines, or the name of the tool you train with.")
    if fmt not in ("json", "env"):
        exported = export_for(store, workload, fmt)
        return json.dumps(dict(exported), indent=2, sort_keys=True) + "\n"
    current = _applied(store, workload)
    if fmt == "json":
        return json.dumps(current.to_dict(), indent=2, sort_keys=True) + "\n"
    lines = [f"DSTUNE_WORKLOAD={shlex.quote(workload)}", f"DSTUNE_APPLIED_ID={current.applied_id}"]
    for name, value in sorted(current.config.items()):
        text = "" if value is None else (json.dumps(value) if not isinstance(value, str) else value)
        lines.append(f"DSTUNE_{name.upper()}={shlex.quote(text)}")
    return "\n".join(lines) + "\n"


def _applied(store: Store, workload: str) -> BestConfig:
    iterations_of(store, workload)
    current = applied_best(store, workload)
    if current is None:
        raise UsageError(f"nothing has been applied to {workload!r} yet: no iteration has completed. "
                         "Run `dstune run` to completion first.")
    return current


def export_for(store: Store, workload: str, target: str) -> Exported:
    """The applied configuration as ``target``'s keyword arguments (``.callback``: Lightning's callback settings,
    ``.warnings``: what the target cannot express, not issued here: the caller prints them)."""
    from dstune.export import export

    return export(_applied(store, workload), target, warn=False)


def rollback_to(store: Store, workload: str, to: int) -> str:
    """Apply again what iteration ``to`` (the workload's own number, as `dstune history` shows it) applied."""
    iterations = iterations_of(store, workload)
    number = {iteration.id: n for n, iteration in enumerate(iterations, 1)}
    completed = [i for i in iterations if i.status == "completed"]
    target = next((i for i in completed if number[i.id] == to), None)
    if target is None:
        ids = ", ".join(str(number[i.id]) for i in completed) or "none"
        raise UsageError(f"--to {to}: {workload!r} has no completed iteration {to} "
                         f"(completed iterations: {ids}). Pick one from `dstune history {workload}`.")
    rows = [row for row in store.applied_history(workload) if row.iteration_id == target.id]
    if rows:
        row = rows[-1]
        config, metrics = row.config, {"samples_per_s": row.samples_per_s, "peak_memory_bytes": row.peak_memory_bytes,
                                       "energy_per_sample_j": row.energy_per_sample_j}
    else:
        config, metrics = target.incumbent_config, {}
    applied_id = store.apply_config(workload, iteration_id=None, source_iteration_id=target.id, config=config,
                                    reason="rollback", note=f"rolled back to the configuration applied after "
                                    f"iteration {number[target.id]}", gpu_model=target.gpu_model, **metrics)
    return (f"{workload}: applied #{applied_id} = configuration of iteration {number[target.id]}: "
            f"{describe_config(config, {})}")
