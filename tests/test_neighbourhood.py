"""Local search (run/neighbourhood.py): neighbours of the best, most promising per second first, then pairs."""

from __future__ import annotations

import math
import re
import time

from dstune.knobs import Knob, config_key
from dstune.run.neighbourhood import PRIOR_GAIN, KnobEffects, Neighbourhood
from dstune.run.search import SearchSpace

from .conftest import WORKLOADS, db_rows, run_cli

KNOBS = (
    Knob("batch_size", choices=(8, 16, 32), default=8, checklist=32),
    Knob("checkpointing", choices=(False, True), default=False, checklist=False),
    Knob("compile", choices=("off", "default"), default="off", checklist="off", costly=("default",)),
    Knob("threads", choices=(1, 2), default=1, checklist=1),
)
SPACE = SearchSpace(KNOBS)
BEST = {"batch_size": 16, "checkpointing": False, "compile": "off", "threads": 1}


def _neighbourhood(effects: KnobEffects | None = None) -> Neighbourhood:
    return Neighbourhood(KNOBS, SPACE.normalised, lambda c: c["compile"] == "default", effects or KnobEffects())


def _changes(candidates):
    return [c.describe() for c in candidates]


def test_neighbours_change_one_knob_cheapest_and_most_promising_first():
    effects = KnobEffects()
    # Earlier: two threads were 20% faster than one, at another batch size.
    effects.learn([({**BEST, "batch_size": 8}, 100.0), ({**BEST, "batch_size": 8, "threads": 2}, 120.0)])
    found = _neighbourhood(effects).candidates(BEST, 200.0, {config_key(BEST): ("ok", 200.0)}, eager_s=[2.0],
                                               costly_s=[], refused=lambda c: False)
    order = _changes(found)
    assert order[0] == "threads=2"  # measured to help
    assert order[-1] == "compile=default"  # as promising as the others, but four eager trials' cost
    assert set(order) == {"batch_size=8", "batch_size=32", "checkpointing=True", "compile=default", "threads=2"}
    assert found[0].gain == math.log(1.2) and found[1].gain == PRIOR_GAIN


def test_measured_refused_and_clearly_worse_changes_are_not_proposed():
    effects = KnobEffects()
    effects.learn([(BEST, 100.0), ({**BEST, "checkpointing": True}, 70.0)])  # 30% slower elsewhere
    outcomes = {config_key(BEST): ("ok", 100.0), config_key({**BEST, "batch_size": 32}): ("running", 0.0)}
    found = _neighbourhood(effects).candidates(
        BEST, 100.0, outcomes, eager_s=[1.0], costly_s=[],
        refused=lambda c: c["threads"] == 2)  # a plugin refuses it, or it crashed before
    assert _changes(found) == ["batch_size=8", "compile=default"]


def test_once_no_single_change_is_left_pairs_of_the_knobs_that_matter_follow():
    """A larger batch ran out of memory and checkpointing alone was slower: together they may pay."""
    outcomes = {config_key(BEST): ("ok", 100.0)}
    for change, outcome in ((("batch_size", 8), ("ok", 60.0)), (("batch_size", 32), ("oom", 0.0)),
                            (("checkpointing", True), ("ok", 92.0)), (("compile", "default"), ("ok", 100.5)),
                            (("threads", 2), ("ok", 99.0))):
        outcomes[config_key({**BEST, change[0]: change[1]})] = outcome
    found = _neighbourhood().candidates(BEST, 100.0, outcomes, [1.0], [4.0], refused=lambda c: False)
    assert _changes(found) == ["batch_size=32, checkpointing=True"]  # neutral knobs and far worse changes left out
    outcomes[config_key(found[0].config)] = ("ok", 130.0)
    assert _neighbourhood().candidates(BEST, 100.0, outcomes, [1.0], [4.0], refused=lambda c: False) == []


def test_a_local_search_climbs_converges_and_ends_the_run_early(tmp_path):
    db = tmp_path / "local.db"
    started = time.monotonic()
    result = run_cli("run", str(WORKLOADS / "paced.py"), "--db", str(db), "--trials", "40", "--budget", "5m",
                     "--only", "batch_size,interop_threads", "--window-time", "0.1", "--windows", "3",
                     "--check-repeats", "2", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    said = re.search(r"converged after (\d+) trials, (\d+):(\d\d) of 5:00 used", text)
    assert said and "(stopped: converged)" in text, text[-3000:]
    rows = db_rows(db, "select seed_kind, status, json_extract(config, '$.batch_size') from dstune_trials "
                       "where status != 'invalid' order by id")
    kinds = [kind for kind, *_ in rows]
    assert kinds[0] == "default" and "neighbour" in kinds  # (on the CPU the checklist is the default here)
    assert kinds[-3:] == ["search"] * 3  # the sampler's three tries came last, and found nothing better
    assert len(rows) == int(said.group(1)) < 40
    (chosen,), = db_rows(db, "select json_extract(chosen_config, '$.batch_size') from dstune_iterations")
    assert chosen == max(batch for *_, batch in rows)  # paced: the largest batch is the fastest
    assert elapsed < 150, elapsed  # well inside the 5-minute budget
