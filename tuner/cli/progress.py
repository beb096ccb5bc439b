"""The terminal side of ``dstune run`` and ``dstune worker`` while trials run: a live progress line.

Rich renders it; when stdout is not a terminal it prints plain lines instead
of redrawing, so logs and CI output stay readable.  The tables at the end
come from :mod:`dstune.views.summary`, read back from the store.
"""

from __future__ import annotations

import re
import textwrap
import time
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from dstune.context import TuneContext
from dstune.environment_diff import format_change
from dstune.knobs import Config, Knob, describe_config
from dstune.run.plan import Incumbent
from dstune.trial.records import TrialOutcome
from dstune.units import format_bytes, format_duration, format_latency


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
        self.last_started: int | None = None

    def started(self, workload: str, ctx: TuneContext, knobs: Sequence[Knob], trials: int, budget_s: float,
                elapsed_s: float = 0.0) -> None:
        """The trials begin; ``elapsed_s`` of the budget went already (the probes), so "left" counts from there."""
        self.started_at, self.budget_s, self.trials = time.monotonic() - elapsed_s, budget_s, trials
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

    def _remaining(self, done: int | None = None) -> str:
        """Budget left and, once a trial has finished, when the trials should end (ETA).

        The ETA is the mean time per trial so far times the trials still to
        run, capped by the budget: the run stops at whichever comes first.
        """
        elapsed = time.monotonic() - self.started_at
        left = max(0.0, self.budget_s - elapsed)
        text = f"{format_duration(left)} left"
        if done:
            text += f", ETA {format_duration(min(left, elapsed / done * max(0, self.trials - done)))}"
        return text

    def trial_started(self, index: int, config: Config, seed_kind: str, expected_s: float | None = None) -> None:
        """Trial ``index`` starts; ``expected_s`` is how long the run expects it to take (``trial_cost``), from the
        trials before it: the user sees why a compile is or is not started with the time left."""
        self.last_started = index
        label = f"{seed_kind}: " if seed_kind != "search" else ""
        text = f"{label}{describe_config(config, self.defaults)}"
        remaining = self._remaining(index - 1)
        if expected_s is not None:
            remaining += f"; this trial about {format_duration(expected_s)}"
        if self.progress:
            self.progress.update(self.task, last=f"running {text}", remaining=remaining)
        else:
            self.console.print(f"trial {index}/{self.trials} [{remaining}] {text}", highlight=False)

    def trial_finished(self, index: int, outcome: TrialOutcome, best: float | None, number: int | None = None) -> None:
        """Trial ``number`` (the i of "trial i/N") ended; ``index`` trials have ended in all.

        With several GPUs (or workers) trials end out of order, so the line
        names the trial it is about when that is not the one just started.
        """
        m = outcome.metrics
        if outcome.status == "ok":
            last = f"ok {m['samples_per_s']:.1f}/s, {format_bytes(m.get('peak_memory_bytes'))}, cv {m['step_time_cv']:.1%}"
            if m.get("latency_p99_s") is not None:
                last += f", p99 {format_latency(m['latency_p99_s'])}"
        else:
            last = f"{outcome.status}: {escape(_last_line(outcome.error))}"
        best_text = f"{best:.1f} samples/s" if best else "-"
        if self.progress:
            self.progress.update(self.task, completed=index, last=last, best=best_text, remaining=self._remaining(index))
        else:
            which = f"trial {number} " if number is not None and number != self.last_started else ""
            self.console.print(f"  {which}-> {last} (best {best_text})", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(escape(text), highlight=False)

    def planned(self, previous_id: int | None, diff: list[dict[str, Any]], incumbent: Incumbent, copied: int) -> None:
        """``previous_id`` is the previous iteration's number among the workload's (what `dstune history` shows)."""
        if previous_id is None:
            self.console.print("Plan: first iteration of this workload.")
        elif diff:
            self.console.print(f"Plan: environment changed since iteration {previous_id}:")
            for change in diff:
                self.console.print(f"  {format_change(change)}", highlight=False)
        else:
            self.console.print(f"Plan: environment unchanged since iteration {previous_id}; "
                               f"{copied} of its trials warm-start the search.")
        self.console.print(f"Incumbent: {incumbent.source}", highlight=False)
        for note in incumbent.notes:
            self.console.print(f"  [yellow]{escape(note)}[/]", highlight=False)

    def check_started(self, incumbent: Config, challenger: Config | None, repeats: int, why: str, most: int = 0
                      ) -> None:
        self.close()
        if challenger is None and not repeats:
            self.console.print(f"Check: {why}; the incumbent is not re-measured, since the time left does not pay "
                               "for one measurement of it.")
        elif challenger is None:
            self.console.print(f"Check: {why}; re-measuring the incumbent {repeats} times.")
        elif not repeats:
            self.console.print(f"Check: challenger {describe_config(challenger, incumbent)} vs incumbent: the time "
                               "left does not pay for one round, so nothing is measured.", highlight=False)
        else:
            self.console.print(f"Check: challenger {describe_config(challenger, incumbent)} vs incumbent, "
                               f"{repeats} interleaved rounds (fresh process each)"
                               + (f", up to {most} if the answer is still open and the budget's allowance pays for "
                                  "them." if most > repeats else "."), highlight=False)

    def check_measured(self, role: str, round_: int, outcome: TrialOutcome) -> None:
        if outcome.status == "ok":
            text = f"{outcome.metrics['samples_per_s']:.1f} samples/s"
        else:
            text = f"{outcome.status}: {escape(_last_line(outcome.error))}"
        self.console.print(f"  round {round_ + 1} {role:<10} {text}", highlight=False)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


def _last_line(error: str | None, width: int = 200) -> str:
    """What an error says in one line: its last non-blank line that is not a C++ stack frame, in whole sentences
    up to ``width`` characters (a sentence longer than that is cut at a word, marked with an ellipsis)."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("frame #", "<omitting", '"'))]
    line = (said or lines or [""])[-1]
    if len(line) <= width:
        return line
    kept = ""
    for sentence in re.split(r"(?<=[.;])\s+", line):
        if len(kept) + len(sentence) + 1 > width:
            break
        kept = f"{kept} {sentence}".strip()
    short = kept or textwrap.shorten(line, width, placeholder=" ...")
    return short if short != "..." else line[:width - 4] + " ..."  # one endless word
