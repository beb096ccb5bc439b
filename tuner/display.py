"""The terminal side of ``dstune run``: a live progress line, then the result tables.

Rich renders both; when stdout is not a terminal it prints plain lines
instead of redrawing, so logs and CI output stay readable.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .context import TuneContext
from .knobs import Config, Knob, describe_config
from .summary import IterationSummary
from .trial_runner import TrialOutcome
from .units import format_bytes, format_duration


class ConsoleReporter:
    """Shows trial i of N, elapsed and remaining budget, best samples/s, last status."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task: Any = None
        self.started_at = time.monotonic()
        self.budget_s = 0.0
        self.trials = 0
        self.defaults: Config = {}

    def started(self, workload: str, ctx: TuneContext, knobs: Sequence[Knob], trials: int, budget_s: float) -> None:
        self.started_at, self.budget_s, self.trials = time.monotonic(), budget_s, trials
        self.defaults = {k.name: k.default for k in knobs}
        tunable = [k for k in knobs if k.tunable]
        self.console.print(
            f"[bold]dstune[/] tuning [cyan]{workload}[/] ({ctx.mode}) on {ctx.device_name}: "
            f"{len(tunable)} knobs ({', '.join(k.name for k in tunable)}), "
            f"up to {trials} trials within {format_duration(budget_s)}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("trial"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[remaining]}"), TextColumn("best {task.fields[best]}"),
                TextColumn("{task.fields[last]}"), console=self.console, transient=False,
            )
            self.task = self.progress.add_task("trials", total=trials, remaining="", best="-", last="")
            self.progress.start()

    def _remaining(self) -> str:
        left = self.budget_s - (time.monotonic() - self.started_at)
        return f"{format_duration(max(0.0, left))} left"

    def trial_started(self, index: int, config: Config, seed_kind: str) -> None:
        label = f"{seed_kind}: " if seed_kind != "search" else ""
        text = f"{label}{describe_config(config, self.defaults)}"
        if self.progress:
            self.progress.update(self.task, last=f"running {text}", remaining=self._remaining())
        else:
            self.console.print(f"trial {index}/{self.trials} [{self._remaining()}] {text}", highlight=False)

    def trial_finished(self, index: int, outcome: TrialOutcome, best: float | None) -> None:
        m = outcome.metrics
        if outcome.status == "ok":
            last = f"ok {m['samples_per_s']:.1f}/s, {format_bytes(m.get('peak_memory_bytes'))}, cv {m['step_time_cv']:.1%}"
        else:
            last = f"{outcome.status}: {(outcome.error or '').strip().splitlines()[-1][:80] if outcome.error else ''}"
        best_text = f"{best:.1f} samples/s" if best else "-"
        if self.progress:
            self.progress.update(self.task, completed=index, last=last, best=best_text, remaining=self._remaining())
        else:
            self.console.print(f"  -> {last} (best {best_text})", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


def render_summary(console: Console, summary: IterationSummary, stop_reason: str) -> None:
    """The final tables: trials by status, Pareto front, the chosen config and its speed-up."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.status_counts.items()))
    console.print(f"\n[bold]Iteration {summary.iteration_id}[/] of {summary.workload}: {counts} "
                  f"(stopped: {stop_reason})")
    table = Table(title="Pareto front: throughput vs peak memory", title_justify="left")
    for col, justify in (("trial", "right"), ("samples/s", "right"), ("peak memory", "right"),
                         ("cv", "right"), ("first step", "right"), ("config (vs default)", "left")):
        table.add_column(col, justify=justify)
    for row in summary.front:
        marker = " *" if summary.chosen is not None and row.id == summary.chosen.id else ""
        table.add_row(f"{row.number}{marker}", f"{row.samples_per_s:.1f}", format_bytes(row.peak_memory_bytes),
                      f"{(row.step_time_cv or 0):.1%}", f"{(row.first_step_s or 0):.1f} s",
                      describe_config(row.config, summary.default_config))
    console.print(table)
    if summary.chosen is None:
        console.print(f"[red]No trial succeeded within the memory budget ({format_bytes(summary.memory_budget)}).[/] "
                      "See the trial errors with the store, or widen --memory-budget.")
        return
    console.print(f"[bold]Chosen[/] (max throughput within {format_bytes(summary.memory_budget)}): "
                  f"trial {summary.chosen.number}: {describe_config(summary.chosen.config, summary.default_config)}")
    if summary.speedup is not None:
        console.print(f"[bold]{summary.chosen.samples_per_s:.1f} samples/s[/] vs default "
                      f"{summary.default.samples_per_s:.1f}: [bold green]{summary.speedup:.2f}x[/]")
    elif summary.default is not None:
        console.print(f"The default configuration did not run ({summary.default.status}); no speed-up to state.")
