"""``dstune report``: one self-contained HTML file with the trade-off, the knobs that mattered and the trend.

People would rather look than read.  The report draws what the store holds
(:mod:`dstune.views.records`) with plotly, whose JavaScript is inlined once, so the
file opens anywhere with no network: attach it to a ticket, mail it, keep it
with the benchmark.  Sections: the incumbent, the Pareto front of one
iteration (throughput against peak memory, coloured by a knob, default,
incumbent and challenger marked), per-knob importance (Optuna's PED-ANOVA on
the iteration's study), the incumbent's throughput iteration by iteration with
promotions and regressions marked, the environment changes, and every trial.
"""

from __future__ import annotations

import html
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dstune.errors import UsageError
from dstune.knobs import describe_config
from dstune.pareto import pareto_front
from dstune.units import format_bytes
from dstune.version import __version__

from .records import history_records, iterations_of, latest_with_trials, trial_record

if TYPE_CHECKING:
    from dstune.store import Store

GIB = 1024**3
MAX_COLOURS = 8  # a knob with more distinct values among the trials makes an unreadable legend
IMPORTANCE_QUANTILE = 0.25  # PED-ANOVA compares the top quarter of trials with all of them
MIN_IMPORTANCE_TRIALS = 4
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class ReportInfo:
    """What was written, for the command's one-line answer."""

    path: Path
    workload: str
    iteration_id: int
    trials: int
    iterations: int
    size_bytes: int


def _choose_iteration(store: Store, iterations: Sequence[Any], iteration_id: int | None) -> Any:
    if iteration_id is None:
        chosen = latest_with_trials(store, iterations)
        if chosen is None:
            raise UsageError(f"{iterations[0].workload.name!r} has no trials recorded yet, so there is nothing to "
                             "report. Run `dstune run` first.")
        return chosen
    chosen = next((i for n, i in enumerate(iterations, 1) if n == iteration_id), None)  # the workload's own number
    if chosen is None:
        ids = ", ".join(str(n) for n in range(1, len(iterations) + 1))
        raise UsageError(f"--iteration {iteration_id}: {iterations[0].workload.name!r} has no iteration "
                         f"{iteration_id} (its iterations: {ids}). Pick one from `dstune history`.")
    return chosen


def _color_knob(iteration: Any, color_by: str | None, trials: list[dict[str, Any]],
                importance: dict[str, float]) -> str | None:
    """``--color-by``, checked; by default the most important knob whose values split the ok trials in a few
    groups (no knob is named here: whatever the plugins offer, the study says which mattered)."""
    names = [k["name"] for k in iteration.knobs or []] or list(iteration.default_config or {})
    if color_by is not None:
        if color_by not in names:
            raise UsageError(f"--color-by {color_by!r}: iteration {iteration.id} has no such knob (its knobs: "
                             f"{', '.join(names) or 'none'}). Pick one of those.")
        return color_by
    ok = [t for t in trials if t["status"] == "ok"]
    spread = {name: len({str(t["config"].get(name)) for t in ok}) for name in names}
    readable = [name for name in names if 2 <= spread[name] <= MAX_COLOURS]
    if not readable:
        return None
    return max(readable, key=lambda name: (importance.get(name, 0.0), spread[name], -names.index(name)))


def importances(store: Store, study_name: str) -> tuple[dict[str, float], str]:
    """Per-knob importance for throughput in ``study_name``, and a note on how (or why not) it was computed."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        study = optuna.load_study(study_name=study_name, storage=store.optuna_storage())
    except KeyError:
        return {}, f"study {study_name!r} is not in the store"
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return {}, f"{len(complete)} finished trial(s) in study {study_name!r}; importance needs at least " \
                   f"{MIN_IMPORTANCE_TRIALS}"
    evaluator = PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_QUANTILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns that it ranks low targets first: the sign is ours
            values = get_param_importances(study, evaluator=evaluator, target=lambda t: -t.values[0])
    except (ValueError, RuntimeError) as exc:  # e.g. every knob was fixed, so there is nothing to rank
        return {}, f"Optuna could not rank the knobs of study {study_name!r}: {exc}"
    note = (f"PED-ANOVA (Optuna) on samples/s over {len(complete)} finished trials of study {study_name!r}: how "
            f"differently each knob is distributed in the fastest {IMPORTANCE_QUANTILE:.0%} than in all trials")
    return dict(values), note


def _hover(trial: dict[str, Any]) -> str:
    return (f"trial {trial['number']} ({trial['seed_kind']})<br>{trial['samples_per_s']:.1f} samples/s, "
            f"{format_bytes(trial['peak_memory_bytes'])}<br>{html.escape(trial['changes'])}")


def pareto_figure(trials: list[dict[str, Any]], front_ids: set[int], iteration: Any, color_knob: str | None,
                  incumbent_config: dict[str, Any] | None, number: int | None = None) -> Any:
    import plotly.graph_objects as go

    ok = [t for t in trials if t["status"] == "ok" and t["samples_per_s"] and t["peak_memory_bytes"] is not None]
    fig = go.Figure()
    largest = max((t["peak_memory_bytes"] for t in ok), default=0)
    unit, scale = ("MiB", 2**20) if largest < 2 * GIB else ("GiB", GIB)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for trial in ok:
        groups[f"{color_knob}={trial['config'].get(color_knob)}" if color_knob else "trials"].append(trial)
    for label, members in sorted(groups.items()):
        fig.add_trace(go.Scatter(
            x=[t["peak_memory_bytes"] / scale for t in members], y=[t["samples_per_s"] for t in members],
            mode="markers", name=label, marker={"size": 10, "opacity": 0.85},
            text=[_hover(t) for t in members], hovertemplate="%{text}<extra></extra>"))

    front = sorted((t for t in ok if t["id"] in front_ids), key=lambda t: t["peak_memory_bytes"])
    if front:
        fig.add_trace(go.Scatter(x=[t["peak_memory_bytes"] / scale for t in front], y=[t["samples_per_s"] for t in front],
                                 mode="lines", line={"shape": "hv", "dash": "dot", "color": "#555"},
                                 name="Pareto front", hoverinfo="skip"))
    marks = [
        ("default", [t for t in ok if t["config"] == dict(iteration.default_config or {})][:1], "diamond-open", "#222"),
        ("incumbent", [t for t in ok if incumbent_config is not None and t["config"] == incumbent_config][:1],
         "star-open", "#c77c00"),
        ("challenger", [t for t in ok if t["id"] == iteration.chosen_trial_id], "circle-open", "#d62728"),
    ]
    for name, members, symbol, colour in marks:
        if members:
            fig.add_trace(go.Scatter(
                x=[t["peak_memory_bytes"] / scale for t in members], y=[t["samples_per_s"] for t in members],
                mode="markers", name=name, marker={"symbol": symbol, "size": 20, "line": {"width": 2, "color": colour}},
                text=[_hover(t) for t in members], hovertemplate=f"<b>{name}</b><br>%{{text}}<extra></extra>"))
    budget = iteration.memory_budget_bytes
    if budget and budget < 1.5 * largest:  # drawn only where it does not squash the trials into a corner
        fig.add_vline(x=budget / scale, line_dash="dash", line_color="#999",
                      annotation_text="memory budget", annotation_position="top left")
    fig.update_layout(title=f"Iteration {number or iteration.id}: throughput vs peak memory ({len(ok)} ok trials; memory "
                            f"budget {format_bytes(budget)})",
                      xaxis_title=f"peak memory ({unit})", yaxis_title="samples/s", template="plotly_white",
                      height=520, legend={"title": {"text": color_knob or ""}})
    return fig


def importance_figure(values: dict[str, float]) -> Any:
    import plotly.graph_objects as go

    ordered = sorted(values.items(), key=lambda item: item[1])
    fig = go.Figure(go.Bar(x=[v for _, v in ordered], y=[k for k, _ in ordered], orientation="h",
                           marker_color="#1f77b4", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title="Which knobs mattered for throughput", xaxis_title="importance (PED-ANOVA)",
                      template="plotly_white", height=max(260, 40 * len(values) + 120), margin={"l": 180})
    return fig


def history_figure(records: list[dict[str, Any]]) -> Any:
    """The incumbent's check median per iteration (the trend that shows regressions), with each promotion drawn
    as a step up from the incumbent to the challenger that replaced it."""
    import plotly.graph_objects as go

    done = [r for r in records if r["status"] == "completed" and r["incumbent_median_samples_per_s"]]
    when = {r["id"]: datetime.fromisoformat(r["started_at"]) for r in records}
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[when[r["id"]] for r in done], y=[r["incumbent_median_samples_per_s"] for r in done], mode="lines+markers",
        name="incumbent (check median)", line={"color": "#1f77b4"}, marker={"size": 9},
        text=[f"iteration {r['number']}: {r['decision']}<br>{html.escape(r['reason'] or '')}" for r in done],
        hovertemplate="%{x|%G-W%V, %Y-%m-%d %H:%M} UTC<br>%{y:.1f} samples/s<br>%{text}<extra></extra>"))
    promoted = [r for r in records if r["decision"] == "promoted" and r["challenger_median_samples_per_s"]]
    if promoted:
        xs: list[Any] = []
        ys: list[Any] = []
        for r in promoted:  # a dotted step from what ran to what replaced it; None breaks the line between them
            xs += [when[r["id"]], when[r["id"]], None]
            ys += [r["incumbent_median_samples_per_s"], r["challenger_median_samples_per_s"], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"dash": "dot", "color": "#2ca02c"},
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(
            x=[when[r["id"]] for r in promoted], y=[r["challenger_median_samples_per_s"] for r in promoted],
            mode="markers", name="promotion", marker={"symbol": "triangle-up", "size": 16, "color": "#2ca02c"},
            text=[f"iteration {r['number']}: {r['speedup']:.3f}x [{r['speedup_low']:.3f}, {r['speedup_high']:.3f}]"
                  for r in promoted], hovertemplate="%{text}<extra>promotion</extra>"))
    regressed = [r for r in done if r["regression"]]
    if regressed:
        fig.add_trace(go.Scatter(
            x=[when[r["id"]] for r in regressed], y=[r["incumbent_median_samples_per_s"] for r in regressed],
            mode="markers", name="regression", marker={"symbol": "x", "size": 16, "color": "#d62728"},
            text=[f"iteration {r['number']}: " + ("; ".join(c["text"] for c in r["environment_changes"]) or "no environment change")
                  for r in regressed], hovertemplate="%{text}<extra>regression</extra>"))
    fig.update_layout(title="Incumbent throughput, iteration by iteration", yaxis={"title": "samples/s", "rangemode": "tozero"},
                      xaxis_title="iteration start (UTC)", template="plotly_white", height=420)
    return fig


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; }
.meta { color: #666; } .note { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.status-ok td:first-child { border-left: 3px solid #2ca02c; }
tr.status-failed td:first-child, tr.status-crash td:first-child, tr.status-oom td:first-child { border-left: 3px solid #d62728; }
.decision-promoted { color: #2ca02c; font-weight: 600; } .regression { color: #d62728; font-weight: 600; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None, table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        cls = f' class="{row_classes[index]}"' if row_classes else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _incumbent_section(store: Store, workload: str, records: list[dict[str, Any]]) -> str:
    from dstune.best_config import applied_best

    current = applied_best(store, workload)
    if current is None:
        return "<p>Nothing applied yet: no iteration has completed.</p>"
    metrics = current.metrics
    last = records[-1]
    speedup = (f", speed-up {last['speedup']:.3f}x [{last['speedup_low']:.3f}, {last['speedup_high']:.3f}] (95% CI)"
               if last["speedup"] is not None else "")
    return (f"<p><b>Applied #{current.applied_id}</b> ({html.escape(current.reason or '')}, iteration "
            f"{current.iteration_id}, since {html.escape((current.applied_at or '')[:16].replace('T', ' '))} UTC): "
            f"<code>{html.escape(describe_config(current.config, {}))}</code></p>"
            f"<p>{_number(metrics.get('samples_per_s'))} samples/s (check median), peak memory "
            f"{format_bytes(metrics.get('peak_memory_bytes'))}. Latest iteration {last['number']}: "
            f"<span class=\"decision-{html.escape(last['decision'] or '')}\">{html.escape(last['decision'] or last['status'])}</span>"
            f"{speedup}.</p>")


def _environment_section(records: list[dict[str, Any]]) -> str:
    rows = []
    for record in records:
        if record["previous_iteration_id"] is None:
            changes = "first iteration"
        else:
            changes = "<br>".join(html.escape(c["text"]) for c in record["environment_changes"]) or "none"
        rows.append([str(record["number"]), html.escape((record["started_at"] or "")[:16].replace("T", " ")),
                     html.escape(record["device"] or "-"), changes])
    return _table(("iteration", "started (UTC)", "device", "changes since the previous iteration"), rows,
                  table_id="environment")


def _learned_section(iteration: Any) -> str:
    """What the iteration stopped proposing after crashes, and why (run/failures.py); nothing when it learned none."""
    bans = list(iteration.learned or [])
    if not bans:
        return ""
    rows = [[html.escape(f"{b['knob']}={b['value']}"), html.escape(", ".join(map(str, b["trials"]))),
             html.escape(b["signature"])] for b in bans]
    return ("<p>Knob values not proposed again in this iteration, after the trials named crashed with them:</p>"
            + _table(("value", "crashed trials", "error"), rows, table_id="learned"))


def _memory_section(iteration: Any) -> str:
    """The memory model the trials were sized by (run/memory_model.py); nothing when none was measured."""
    model = iteration.memory_model
    if not model:
        return ""
    rows = []
    for variant in model["variants"].values():
        lines = variant.get("lines") or {}
        fixed = max((pair[0] for pair in lines.values()), default=None)
        per_sample = max((pair[1] for pair in lines.values()), default=None)
        rows.append([html.escape(variant["label"]), format_bytes(fixed) if fixed is not None else "-",
                     format_bytes(per_sample) if per_sample is not None else "-",
                     str(variant["ceiling"]) if variant.get("ceiling") else "-", f"{variant.get('correction', 1.0):.2f}"])
    effects = ", ".join(f"{html.escape(k)} {v:.2f}x" for k, v in sorted((model.get("effects") or {}).items()))
    return (f"<p>Memory model (budget {format_bytes(model['budget'])}): peak = fixed + per sample x micro-batch, "
            "measured at small micro-batches before the trials; configurations predicted over the budget were "
            "not run (status predicted_oom).</p>"
            + _table(("variant", "fixed", "per sample", "out of memory at", "correction"), rows, numeric=(1, 2, 3, 4),
                     table_id="memory-model")
            + (f"<p>Learned effects of other knobs on the peak: {effects}</p>" if effects else ""))


def _trials_section(trials: list[dict[str, Any]], challenger_id: int | None) -> str:
    rows, classes = [], []
    for t in trials:
        marker = " (challenger)" if t["id"] == challenger_id else ""
        rows.append([f"{t['number']}{marker}", html.escape(t["seed_kind"]), html.escape(t["status"]),
                     _number(t["samples_per_s"]), format_bytes(t["peak_memory_bytes"]) if t["peak_memory_bytes"] else "-",
                     format_bytes(t["predicted_peak_bytes"]) if t["predicted_peak_bytes"] else "-",
                     _number(t["step_time_cv"], "{:.1%}"), _number(t["first_step_s"], "{:.1f} s"),
                     html.escape(t["changes"]), html.escape(t["error"] or "")])
        classes.append(f"status-{t['status']}")
    return _table(("trial", "seed", "status", "samples/s", "peak memory", "predicted peak", "cv", "first step",
                   "config (vs default)", "error"), rows, numeric=(3, 4, 5, 6, 7), row_classes=classes, table_id="trials")


def _history_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        speedup = (f"{r['speedup']:.3f}x [{r['speedup_low']:.3f}, {r['speedup_high']:.3f}]"
                   if r["speedup"] is not None else "-")
        regression = '<span class="regression">yes</span>' if r["regression"] else ("no" if r["regression"] is False else "-")
        rows.append([str(r["number"]), html.escape((r["started_at"] or "")[:16].replace("T", " ")), html.escape(r["status"]),
                     str(r["trials"]["total"]), _number(r["incumbent_median_samples_per_s"]),
                     _number(r["challenger_median_samples_per_s"]), html.escape(r["decision"] or "-"), speedup, regression])
    return _table(("iteration", "started (UTC)", "status", "trials", "incumbent samples/s", "challenger samples/s",
                   "decision", "speed-up [95% CI]", "regression"), rows, numeric=(3, 4, 5), table_id="iterations")


def render_report(store: Store, workload: str, iteration_id: int | None = None, color_by: str | None = None) -> tuple[str, ReportInfo]:
    """The report's HTML, and what it covers."""
    from plotly.offline import get_plotlyjs

    iterations = iterations_of(store, workload)
    iteration = _choose_iteration(store, iterations, iteration_id)
    records = history_records(store, workload)
    defaults = dict(iteration.default_config or {})
    rows = list(store.trials(iteration.id))
    trials = [trial_record(row, defaults) for row in rows]
    front_ids = {row.id for row in pareto_front([r for r in rows if r.status == "ok" and r.samples_per_s
                                                 and r.peak_memory_bytes is not None])}
    values, importance_note = importances(store, iteration.study_name) if iteration.study_name else ({}, "no study")
    color_knob = _color_knob(iteration, color_by, trials, values)

    def figure_html(fig: Any, div_id: str) -> str:
        return str(fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=PLOT_CONFIG))

    shown = next(r for r in records if r["id"] == iteration.id)
    pareto = figure_html(pareto_figure(trials, front_ids, iteration, color_knob, iteration.incumbent_config,
                                       shown["number"]), "pareto")
    importance = (figure_html(importance_figure(values), "importance") if values
                  else '<p class="note" id="importance-missing">No importance computed:</p>')
    history = figure_html(history_figure(records), "history")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{n} {s}" for s, n in shown["trials"].items() if s != "total")
    device = shown["device"]
    data = {"workload": workload, "iteration": shown["number"], "iteration_id": iteration.id, "iterations": len(records), "trials": len(trials),
            "color_by": color_knob, "dstune": __version__}
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="dstune {html.escape(__version__)}">
<title>dstune report: {html.escape(workload)}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
<script type="application/json" id="dstune-report-data">{html.escape(json.dumps(data), quote=False)}</script>
</head><body>
<h1>dstune report: {html.escape(workload)}</h1>
<p class="meta">{len(records)} iteration(s); this page shows iteration {shown["number"]} on {html.escape(device or '-')}
({counts}). Store {html.escape(store.shown_url)}, generated {generated} by dstune {html.escape(__version__)}.</p>
<h2>Incumbent</h2>
{_incumbent_section(store, workload, records)}
<h2>Trade-off: throughput vs peak memory</h2>
{pareto}
<p class="note">Each point is a trial that finished; colour is {html.escape(color_knob or 'not by a knob')}.
The dotted line is the Pareto front; the open diamond is the default configuration, the star the incumbent the
iteration started from, the ring the challenger it picked.</p>
<h2>Knob importance</h2>
{importance}
<p class="note">{html.escape(importance_note)}.</p>
<h2>History</h2>
{history}
{_history_table(records)}
<h2>Environment changes</h2>
{_environment_section(records)}
<h2>Trials of iteration {shown["number"]}</h2>
{_learned_section(iteration)}
{_memory_section(iteration)}
{_trials_section(trials, iteration.chosen_trial_id)}
</body></html>
"""
    info = ReportInfo(path=Path(), workload=workload, iteration_id=shown["number"], trials=len(trials),
                      iterations=len(records), size_bytes=len(page.encode()))
    return page, info


def write_report(store: Store, workload: str, output: Path, iteration_id: int | None = None,
                 color_by: str | None = None) -> ReportInfo:
    page, info = render_report(store, workload, iteration_id, color_by)
    if not output.parent.exists():
        raise UsageError(f"-o {output}: folder {output.parent} does not exist. Create it or write elsewhere.")
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot write the report ({exc.strerror}). Choose a writable path.") from None
    info.path = output
    return info
