"""What an iteration found and decided, read back from the store, and the tables ``dstune run`` ends with.

Everything here comes from the database, not from memory, so what the user
sees at the end of a run, in ``dstune show`` and in ``dstune history`` is
what was recorded.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dstune.knobs import describe_config
from dstune.pareto import pareto_front
from dstune.units import format_bytes, format_latency

if TYPE_CHECKING:
    from dstune.store import Store


@dataclass
class IterationSummary:
    iteration: Any
    status_counts: dict[str, int]
    front: list[Any]
    challenger: Any | None
    measurements: list[Any]

    @property
    def iteration_id(self) -> int:
        return int(self.iteration.id)

    number: int = 0  # the iteration's place among its workload's, from 1 (ids count every workload's)

    @property
    def workload(self) -> str:
        return str(self.iteration.workload.name)

    @property
    def memory_budget(self) -> int:
        return int(self.iteration.memory_budget_bytes or 0)

    @property
    def default_config(self) -> dict[str, Any]:
        return dict(self.iteration.default_config or {})

    def median(self, role: str) -> float | None:
        values = [m.samples_per_s for m in self.measurements if m.role == role and m.samples_per_s]
        return statistics.median(values) if values else None


def summarize(store: Store, iteration_id: int) -> IterationSummary:
    iteration = store.iteration(iteration_id)
    ok = [t for t in store.trials(iteration_id, status="ok") if t.samples_per_s]
    challenger = next((t for t in ok if t.id == iteration.chosen_trial_id), None)
    return IterationSummary(
        iteration=iteration, status_counts=store.status_counts(iteration_id),
        front=pareto_front([t for t in ok if t.peak_memory_bytes is not None]),
        challenger=challenger, measurements=list(store.measurements(iteration_id)),
        number=store.iteration_number(iteration_id),
    )


def format_speedup(row: Any) -> str:
    """``1.234x [1.201, 1.268]`` from an iteration row, or ``-``."""
    if row.speedup is None:
        return "-"
    return f"{row.speedup:.3f}x [{row.speedup_low:.3f}, {row.speedup_high:.3f}]"


def render_summary(console: Console, summary: IterationSummary, stop_reason: str) -> None:
    """The final tables: trials by status, Pareto front, challenger, the check and the decision."""
    iteration = summary.iteration
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.status_counts.items())) or "no trials"
    console.print(f"\n[bold]Iteration {summary.number}[/] of {summary.workload}: {counts} "
                  f"(stopped: {stop_reason})")
    table = Table(title="Pareto front: throughput vs peak memory", title_justify="left")
    rows = list(summary.front)
    if summary.challenger is not None and all(r.id != summary.challenger.id for r in rows):
        rows.append(summary.challenger)  # off the front: faster or leaner trials broke the latency limit
    inference = any(r.latency_p99_s is not None for r in rows)
    for col, justify in (("trial", "right"), ("samples/s", "right"), ("peak memory", "right"),
                         *((("p99", "right"),) if inference else ()),
                         ("cv", "right"), ("first step", "right"), ("config (vs default)", "left")):
        table.add_column(col, justify=justify)
    for row in rows:
        marker = " *" if summary.challenger is not None and row.id == summary.challenger.id else ""
        p99 = [format_latency(row.latency_p99_s) if row.latency_p99_s is not None else "-"] if inference else []
        table.add_row(f"{row.number}{marker}", f"{row.samples_per_s:.1f}", format_bytes(row.peak_memory_bytes),
                      *p99, f"{(row.step_time_cv or 0):.1%}", f"{(row.first_step_s or 0):.1f} s",
                      describe_config(row.config, summary.default_config))
    if rows:
        console.print(table)
    max_latency = (iteration.options or {}).get("max_latency_s")
    latency = f" and p99 {format_latency(max_latency)}" if max_latency else ""
    ran = summary.status_counts.get("ok", 0)
    if not summary.status_counts:
        console.print("[red]No trial started:[/] building the workload and planning took the whole budget. Give a "
                      "longer --budget.")
    elif summary.challenger is None and not ran and set(summary.status_counts) == {"interrupted"}:
        console.print("[red]No trial ran to the end:[/] the budget ran out during the first, so one trial of this "
                      "workload takes longer than the whole budget. Give a --budget several times one trial's "
                      "length (`dstune report` shows how long it ran).")
    elif summary.challenger is None and not ran:
        console.print("[red]No trial ran to the end[/] (their errors are above, and in `dstune report`).")
    elif summary.challenger is None:
        console.print(f"[red]No trial that ran fitted the memory budget ({format_bytes(summary.memory_budget)})"
                      f"{latency}.[/] Widen --memory-budget{' or --max-latency' if latency else ''}, or see the "
                      "trials' peaks in `dstune history --json`.")
    else:
        console.print(f"Challenger ({iteration.select_policy} within {format_bytes(summary.memory_budget)}{latency}): "
                      f"trial {summary.challenger.number}: "
                      f"{describe_config(summary.challenger.config, summary.default_config)}", highlight=False)
    incumbent, challenger = summary.median("incumbent"), summary.median("challenger")
    if incumbent is not None or challenger is not None:
        parts = [f"{role} median {value:.1f} samples/s" for role, value in
                 (("incumbent", incumbent), ("challenger", challenger)) if value is not None]
        console.print("Check: " + ", ".join(parts) + (f"; speed-up {format_speedup(iteration)} (95% CI)"
                                                       if iteration.speedup is not None else ""))
    colour = "green" if iteration.decision == "promoted" else "yellow"
    console.print(f"[bold {colour}]Decision: {iteration.decision}[/] ({escape(iteration.reason or '')})", highlight=False)
    if iteration.regression:
        estimate = (iteration.check or {}).get("regression_estimate")
        detail = f" (now/then {estimate['ratio']:.3f}x [{estimate['low']:.3f}, {estimate['high']:.3f}])" if estimate else ""
        if "incumbent" in ((iteration.check or {}).get("failures") or {}):
            console.print("[bold red]Regression:[/] the incumbent ran in its last iteration and fails now.")
        else:
            console.print(f"[bold red]Regression:[/] the incumbent is slower than in its last iteration{detail}.")
