"""The HTML report in a real headless Chromium, ``--json`` views, and Optuna's own view of the store.

The report is written from three real iterations (the ``weekly_store``
fixture), opened from disk in Chromium with every network request refused,
and read back: the plots must have drawn what the store holds, with no
script error.  Chromium comes from Debian's package (``.ci/run`` installs it);
where it is missing the browser test is skipped unless
``DSTUNE_REQUIRE_BROWSER=1`` (as CI sets) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

from .conftest import cli_in_process, copy_store, db_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def store(tmp_path: Path, weekly_store: tuple[Path, Path, list[str]]) -> Path:
    return copy_store(weekly_store[0], tmp_path / "weekly.db")


def _browser_or_skip() -> str:
    if CHROMIUM is None:
        if os.environ.get("DSTUNE_REQUIRE_BROWSER") == "1":
            pytest.fail("DSTUNE_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


def test_report_renders_in_headless_chromium_offline_with_every_section(tmp_path, store, capsys):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    out = tmp_path / ("observe-iteration-2-" * 4 + "report.html")  # longer than 80 columns with its folder
    # Iteration 2: its study holds its own trials and those copied from iteration 1, enough to rank the knobs.
    code, stdout, stderr = cli_in_process(capsys, "report", "observe", "--db", str(store), "-o", str(out),
                                          "--iteration", "2", "--color-by", "precision")
    assert code == 0, stderr
    assert any(line.startswith(f"wrote {out} (") for line in stdout.splitlines()), stdout  # the path whole
    assert "iteration 2" in stdout

    ok = db_rows(store, "select count(*) from dstune_trials where iteration_id = 2 and status = 'ok'")[0][0]
    all_trials = db_rows(store, "select count(*) from dstune_trials where iteration_id = 2")[0][0]
    precisions = {json.loads(c)["precision"] for (c,) in
                  db_rows(store, "select config from dstune_trials where iteration_id = 2 and status = 'ok'")}
    study = optuna.load_study(study_name="observe-it2", storage=f"sqlite:///{store}")
    varied = {name for name in study.trials[0].distributions
              if len({t.params.get(name) for t in study.trials if name in t.params}) > 1}
    requests, errors, console_errors = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

        def refuse_network(route):  # the report must need nothing but its own file
            if not route.request.url.startswith("file://"):
                requests.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", refuse_network)
        page.goto(out.as_uri())
        page.wait_for_selector("#history .main-svg")
        # The Pareto plot: one legend entry per precision seen, every ok trial drawn once in the coloured traces.
        legend = page.eval_on_selector_all("#pareto .legendtext", "els => els.map(e => e.textContent)")
        assert {f"precision={p}" for p in precisions} <= set(legend), legend
        assert {"Pareto front", "default", "challenger"} <= set(legend), legend
        coloured = page.evaluate("""() => document.getElementById('pareto').data
            .filter(t => t.name.startsWith('precision='))
            .reduce((n, t) => n + t.x.length, 0)""")
        assert coloured == ok
        # History: one point per completed iteration.
        history_points = page.evaluate("() => document.getElementById('history').data[0].y.length")
        assert history_points == 3
        # Importance: a bar per knob of the study (the knobs it varied among them).
        ranked = page.evaluate("() => document.getElementById('importance').data[0].y")
        assert varied and varied <= set(ranked), (varied, ranked)
        assert page.locator("#importance .bars .point").count() >= len(varied)
        # The tables: every trial of iteration 2, every iteration's environment row (the source change in the 3rd).
        assert page.locator("#trials tbody tr").count() == all_trials
        environment = page.locator("#environment tbody tr").all_inner_texts()
        assert len(environment) == 3 and "workload_source" in environment[2] and "none" in environment[1]
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors and not console_errors, (errors, console_errors)
    assert not requests, f"the report reached for the network: {requests}"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a drawn page, not a blank one


def test_report_refuses_bad_arguments_with_the_fix(tmp_path, store, capsys):
    cases = [
        (("report", "nope", "--db", str(store)), "no workload named 'nope'", "workloads there: observe"),
        (("report", "observe", "--db", str(store), "--iteration", "99"), "no iteration 99", "its iterations: 1, 2, 3"),
        (("report", "observe", "--db", str(store), "--color-by", "warp"), "--color-by 'warp'", "batch_size"),
        (("report", "observe", "--db", str(store), "-o", str(tmp_path / "missing" / "r.html")),
         "does not exist", "Create it"),
    ]
    for args, problem, fix in cases:
        code, _, stderr = cli_in_process(capsys, *args)
        assert code == 2 and problem in stderr and fix in stderr, (args, stderr)
    assert not (tmp_path / "missing").exists()


def test_json_views_match_the_store(store, capsys):
    code, out, err = cli_in_process(capsys, "history", "observe", "--db", str(store), "--json")
    assert code == 0, err
    history = json.loads(out)
    rows = db_rows(store, "select id, decision, speedup, previous_iteration_id from dstune_iterations order by id")
    assert [(h["id"], h["decision"], h["speedup"], h["previous_iteration_id"]) for h in history] == rows
    counts = db_rows(store, "select iteration_id, count(*) from dstune_trials group by iteration_id order by 1")
    assert [(h["id"], h["trials"]["total"]) for h in history] == counts
    assert [c["fact"] for c in history[2]["environment_changes"]] == ["workload_source"]

    code, out, err = cli_in_process(capsys, "show", "observe", "--db", str(store), "--json")
    assert code == 0, err
    shown = json.loads(out)
    applied = db_rows(store, "select id, config from dstune_applied order by id desc limit 1")[0]
    assert shown["applied"]["applied_id"] == applied[0] and shown["applied"]["config"] == json.loads(applied[1])
    assert shown["latest_iteration_id"] == 3 and shown["pareto_front"]
    fastest = max(r[0] for r in db_rows(store, "select samples_per_s from dstune_trials where iteration_id = 3 "
                                               "and status = 'ok'"))
    assert shown["pareto_front"][0]["samples_per_s"] == fastest  # the front is listed fastest first

    code, out, err = cli_in_process(capsys, "plugins", "--json")
    assert code == 0, err
    plugins = json.loads(out)
    knobs = {row["knob"]: row for row in plugins["knobs"]}
    assert plugins["device"] == "cpu" and knobs["precision"]["plugin"] == "precision"
    assert "bf16" in knobs["precision"]["choices"] and knobs["batch_size"]["applies"] is True

    code, out, err = cli_in_process(capsys, "status", "--db", str(store), "--json")
    assert code == 0 and json.loads(out)["running"] == [], err


def test_optuna_load_study_reads_dstunes_studies_from_the_same_url(store, weekly_store):
    """What optuna-dashboard does with the URL: dstune's studies load as ordinary Optuna studies."""
    url = f"sqlite:///{store}"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=url)}
    iterations = db_rows(store, "select id, study_name from dstune_iterations order by id")
    assert names == {name for _, name in iterations}
    for iteration_id, name in iterations:
        study = optuna.load_study(study_name=name, storage=url)
        own = [t for t in study.trials if "dstune_copied_from" not in t.user_attrs]  # warm-start copies aside
        recorded = db_rows(store, "select number, status, samples_per_s from dstune_trials where iteration_id = ? "
                                  "and number is not null order by number", iteration_id)
        assert [t.number for t in own] == [r[0] for r in recorded]
        for trial, (number, status, samples_per_s) in zip(own, recorded):
            if status == "ok":
                assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values[0] == samples_per_s
        copied = len(study.trials) - len(own)
        if iteration_id == 1:
            assert copied == 0
        elif iteration_id == 2:  # "Plan: environment unchanged since iteration 1; N of its trials warm-start"
            said = re.search(r"(\d+) of its trials warm-start", weekly_store[2][1])
            assert said is not None and copied == int(said.group(1)) > 0


def test_the_default_colour_is_a_knob_that_splits_the_trials_in_a_few_groups(store):
    from dstune.store import Store
    from dstune.views.report import render_report

    page, info = render_report(Store(str(store)), "observe", 2)
    data = json.loads(re.search(r'id="dstune-report-data">(.*?)</script>', page).group(1))
    knob = data["color_by"]
    values = {str(json.loads(c).get(knob)) for (c,) in
              db_rows(store, "select config from dstune_trials where iteration_id = 2 and status = 'ok'")}
    assert knob is not None and 2 <= len(values) <= 8, (knob, values)
    assert f"{knob}={sorted(values)[0]}" in page  # the legend names its groups
