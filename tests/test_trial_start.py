"""How trial processes start (forked from a server that has imported torch and the workload's installed packages),
and how an end without a result is read."""

from __future__ import annotations

import json
from pathlib import Path

from dstune.trial.launch import classify_exit, oom_kills
from dstune.trial.workload_imports import preload_env, preloadable, top_level_imports

from .conftest import run_cli

WORKLOAD = '''
import json
import os

import torch

try:
    import installed_mod
except ImportError:
    raise
from refuses_cuda import IMPORT_PID as REFUSES_PID
import local_helper

import dstune


@dstune.workload(batch_size=4)
def marks(ctx):
    with open(os.environ["DSTUNE_OBSERVE"], "a") as out:
        out.write(json.dumps({"trial": os.getpid(), "installed": installed_mod.IMPORT_PID,
                              "refuses": REFUSES_PID, "local": local_helper.IMPORT_PID}) + "\\n")
    model = torch.nn.Linear(8, 2)
    return dstune.Workload(model=model, optimizer=lambda p, **kw: torch.optim.SGD(p, lr=0.1, **kw),
                           batch=lambda n, device: torch.randn(n, 8, device=device),
                           loss=lambda m, x: m(x).square().mean())


if __name__ == "__main__":
    import pstats  # a script's own business: not preloaded
'''

REFUSES_CUDA = '''
import os
import torch

try:
    torch.cuda._lazy_init()
except RuntimeError as exc:
    if "fork server" in str(exc):
        raise  # dstune's fork server refused CUDA: this module is left to the trial
except AssertionError:
    pass  # torch without CUDA: nothing to initialise
IMPORT_PID = os.getpid()
'''


def _project(tmp_path: Path) -> tuple[Path, Path]:
    lib, work = tmp_path / "lib", tmp_path / "work"
    lib.mkdir()
    work.mkdir()
    (lib / "installed_mod.py").write_text("import os\nIMPORT_PID = os.getpid()\n")
    (lib / "refuses_cuda.py").write_text(REFUSES_CUDA)
    (work / "local_helper.py").write_text("import os\nIMPORT_PID = os.getpid()\n")
    (work / "marks.py").write_text(WORKLOAD)
    return lib, work


def test_the_fork_server_imports_installed_packages_and_leaves_the_users_own_modules_to_each_trial(tmp_path):
    lib, work = _project(tmp_path)
    observe = tmp_path / "observe.jsonl"
    result = run_cli("run", str(work / "marks.py"), "--db", str(tmp_path / "run.db"), "--trials", "2",
                     "--check-repeats", "2", "--windows", "2", "--window-time", "0.05", "--disable-plugin", "compile",
                     cwd=tmp_path, env={"PYTHONPATH": str(lib), "DSTUNE_OBSERVE": str(observe)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = [json.loads(line) for line in observe.read_text().splitlines()]
    assert len(seen) >= 3  # the probe, the trials, the check
    servers = {mark["installed"] for mark in seen}
    assert len(servers) == 1 and not servers & {mark["trial"] for mark in seen}  # imported once, by the server
    assert all(mark["local"] == mark["trial"] for mark in seen)  # beside the workload: each trial's own
    assert all(mark["refuses"] == mark["trial"] for mark in seen)  # wanted CUDA at import: refused, left to the trial


def test_a_preloaded_module_that_starts_a_thread_is_named_with_the_way_out(tmp_path):
    """A fork copies one thread; a lock another thread held stays held in the child.  Nothing dstune can see
    says whether a package's threads take locks, so the run says which one started threads, and the switch."""
    lib, work = _project(tmp_path)
    (lib / "threaded_mod.py").write_text("import threading, time\n"
                                         "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n")
    threaded = WORKLOAD.replace("import local_helper\n", "import local_helper\nimport threaded_mod\n")
    (work / "marks.py").write_text(threaded)
    result = run_cli("run", str(work / "marks.py"), "--db", str(tmp_path / "run.db"), "--trials", "1",
                     "--check-repeats", "2", "--windows", "2", "--window-time", "0.05", "--disable-plugin", "compile",
                     cwd=tmp_path, env={"PYTHONPATH": str(lib), "DSTUNE_OBSERVE": str(tmp_path / "observe.jsonl")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    error = " ".join(result.stderr.split())
    assert ("[warning] importing threaded_mod (imported by the workload file) started 1 thread(s) in dstune's fork "
            "server") in error
    assert "run with DSTUNE_PRELOAD=off" in error and "importing installed_mod" not in error


def test_preloading_reads_the_files_imports_without_running_it_and_can_be_turned_off(tmp_path, monkeypatch):
    lib, work = _project(tmp_path)
    assert top_level_imports(work / "marks.py") == [
        ("json", []), ("os", []), ("torch", []), ("installed_mod", []), ("refuses_cuda", ["IMPORT_PID"]),
        ("local_helper", []), ("dstune", [])]
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.chdir(tmp_path)
    assert [module for module, _ in preloadable(work / "marks.py")] == [
        "json", "os", "torch", "installed_mod", "refuses_cuda"]
    assert preload_env(work / "marks.py")
    monkeypatch.setenv("DSTUNE_PRELOAD", "off")
    assert preload_env(work / "marks.py") == {}


KILLS_ITSELF = """
import os
import signal

import torch

import dstune


def _loss(model, x):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would, in the middle of a step


@dstune.workload(batch_size=4)
def killed(ctx):
    model = torch.nn.Linear(8, 2)
    return dstune.Workload(model=model, optimizer=lambda p, **kw: torch.optim.SGD(p, lr=0.1, **kw),
                           batch=lambda n, device: torch.randn(n, 8, device=device), loss=_loss)
"""


def test_a_trial_killed_by_sigkill_is_a_crash_unless_the_kernels_out_of_memory_killer_sent_it(tmp_path, trials):
    """GPT-2 on this 24 GiB CPU machine: its default trial reached 23 GiB and the kernel's OOM killer ended it;
    dstune said "crash: trial process killed by SIGKILL", with no word of memory."""
    workload = tmp_path / "killed.py"
    workload.write_text(KILLS_ITSELF)
    outcome, _ = trials.run(workload, "killed")
    assert outcome.status == "crash" and outcome.error == "trial process killed by SIGKILL"
    assert isinstance(oom_kills(), int)  # Linux counts the OOM killer's kills: the other half of the evidence
    outcome = classify_exit(-9, tmp_path / "no-result.json", 97.0, "", oom_killed=True)
    assert outcome.status == "oom" and outcome.signal == "SIGKILL"
    assert outcome.error.startswith("trial process killed by SIGKILL from the kernel's out-of-memory killer after "
                                    "97 s: the host (")
    assert "ran out of memory. Give trials a smaller micro-batch or a --memory-budget" in outcome.error
