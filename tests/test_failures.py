"""Learning from crashes within an iteration (run/failures.py): one crash signature, one knob value, banned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dstune.run.failures import FailureMemory, signature

from .conftest import WORKLOADS, db_rows, installed_plugin

EAGER = """Traceback (most recent call last):
  File "/home/u/model.py", line 88, in forward
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
RuntimeError: No available kernel. Aborting execution."""
COMPILED = ("torch._dynamo.exc.TorchRuntimeError: Dynamo failed to run FX node with fake tensors: call_function "
            "<built-in function scaled_dot_product_attention>(*(FakeTensor(..., device='cuda:0', size=(4, 12, 128, "
            "64), dtype=torch.bfloat16),), **{}): got RuntimeError('No available kernel. Aborting execution.')\n\n"
            "from user code:\n   File \"/home/u/model.py\", line 88, in forward")
INDUCTOR = "torch._inductor.exc.InductorError: RuntimeError: CUDA error at 0x7f3a12 in /usr/lib/libx.so:42"


def test_a_crash_and_the_same_crash_under_compile_share_one_signature():
    assert signature(EAGER) == signature(COMPILED) == "RuntimeError: No available kernel. Aborting execution."
    assert signature(INDUCTOR) == "RuntimeError: CUDA error at <address> in <path>:N"
    assert signature(INDUCTOR.replace("0x7f3a12", "0x55aa").replace(":42", ":7")) == signature(INDUCTOR)
    assert signature("") is None


def test_a_value_is_banned_once_the_crashes_point_at_it_alone():
    memory = FailureMemory(frozenset({"sdpa", "batch"}))
    assert memory.fold("ok", {"sdpa": "auto", "batch": 8}, 1, None) == []
    # A crash with two values no successful trial used: either could be the cause.
    assert memory.fold("crash", {"sdpa": "flash", "batch": 16}, 2, EAGER) == []
    assert memory.banned({"sdpa": "flash", "batch": 8}) is None
    # The same crash again with another batch: only flash is common to both.
    (ban,) = memory.fold("crash", {"sdpa": "flash", "batch": 32}, 3, COMPILED)
    assert (ban.knob, ban.value, ban.trials) == ("sdpa", "flash", (2, 3))
    assert memory.banned({"sdpa": "flash", "batch": 8}) == ban
    assert "sdpa=flash is not proposed again in this iteration: trials 2, 3 crashed with it" in ban.reason
    # Other failures and other values are no evidence.
    assert memory.fold("oom", {"sdpa": "math", "batch": 64}, 4, "OutOfMemoryError: x") == []
    assert memory.banned({"sdpa": "math", "batch": 64}) is None


def test_a_knob_the_search_does_not_vary_is_never_blamed():
    memory = FailureMemory(frozenset({"batch"}))
    (ban,) = memory.fold("crash", {"pinned": "x", "batch": 8}, 1, EAGER)  # batch=8 is the one suspect
    assert (ban.knob, ban.value) == ("batch", 8)
    memory = FailureMemory(frozenset({"batch"}))
    memory.fold("ok", {"pinned": "y", "batch": 8}, 1, None)
    assert memory.fold("crash", {"pinned": "x", "batch": 8}, 2, EAGER) == []  # pinned: not the search's doing


CRASHING_KNOB = '''
from dstune import Knob, hookimpl


@hookimpl
def dstune_knobs(ctx):
    # The "fused" kernel is what an expert would pick, and it does not run on this model.
    return [Knob("kernel", choices=("plain", "fused", "tiled"), default="plain", checklist="fused")]


@hookimpl
def dstune_prepare_model(model, config, ctx):
    if config.get("kernel") == "fused":
        raise RuntimeError("No available kernel. Aborting execution.")
'''


@pytest.fixture
def kernel_plugin(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    return installed_plugin(tmp_path / "site", "kernelplug", "kernel", "kernelplug", CRASHING_KNOB)


def test_a_crashing_value_is_tried_once_then_refused_with_its_reason(tmp_path, kernel_plugin):
    db = tmp_path / "k.db"
    env = {**os.environ, "PYTHONPATH": f"{kernel_plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "observe.py"), "--workload", "observe",
         "--db", str(db), "--trials", "10", "--only", "kernel,batch_size", "--search", "sampler",
         "--check-repeats", "2", "--window-time", "0.05", "--windows", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = db_rows(db, "select json_extract(config, '$.kernel'), status, error from dstune_trials order by id")
    fused = [(status, error) for kernel, status, error in rows if kernel == "fused"]
    assert [s for s, _ in fused].count("crash") == 1, rows  # the checklist seed
    assert all(s == "invalid" and "kernel=fused is not proposed again" in e for s, e in fused if s != "crash")
    (learned,), = db_rows(db, "select learned from dstune_iterations")
    (ban,) = json.loads(learned)
    assert (ban["knob"], ban["value"], ban["signature"]) == \
        ("kernel", "fused", "RuntimeError: No available kernel. Aborting execution.")
    assert "[learned] kernel=fused is not proposed again in this iteration" in " ".join(done.stdout.split())


def test_what_an_iteration_learned_is_in_its_history_and_report(tmp_path):
    """The bans are read back from the store by the views, as a user would see them."""
    from dstune.store import Store
    from dstune.views.records import history_records
    from dstune.views.report import render_report

    store = Store(str(tmp_path / "v.db"))
    workload_id = store.workload_id("w", "/w.py")
    iteration_id = store.start_iteration(workload_id=workload_id, study_name="w-it1", phase="do", context={},
                                         knobs=[], default_config={}, checklist_config={}, options={})
    memory = FailureMemory(frozenset({"sdpa"}))
    memory.fold("ok", {"sdpa": "auto"}, 1, None)
    (ban,) = memory.fold("crash", {"sdpa": "flash"}, 2, EAGER)
    store.update_iteration(iteration_id, learned=[ban.to_dict()])
    store.record_trial(iteration_id, number=1, seed_kind="default", config={"sdpa": "auto"}, status="ok",
                       metrics={"samples_per_s": 10.0, "peak_memory_bytes": 1 << 20, "step_time_cv": 0.01})
    store.conclude_iteration(iteration_id, None, decision="kept", reason="no challenger")
    (record,) = history_records(store, "w")
    assert record["learned"][0]["reason"] == ban.reason
    page, _ = render_report(store, "w")
    assert "sdpa=flash" in page and "RuntimeError: No available kernel. Aborting execution." in page
