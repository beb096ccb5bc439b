"""Data-parallel trials on the CPU: each trial one job of two gloo ranks, started by PyTorch's elastic launcher.

The same code runs NCCL ranks on GPUs (tests/test_gpu.py runs it on two GPUs when a machine has them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dstune.context import TuneContext
from dstune.knobs import default_config
from dstune.plugin_calls import applicable_knobs
from dstune.plugin_manager import plugin_manager
from dstune.run.options import RunOptions, trial_spec
from dstune.run.plan import probe
from dstune.trial.launch import run_in_subprocess
from dstune.trial.records import TrialOutcome

from .conftest import FAST, WORKLOADS, db_rows, run_cli

DP = WORKLOADS / "data_parallel.py"
MiB = 1024 * 1024
_probed: dict[str, dict[str, Any]] = {}


def run_job(workload: str, tmp_path: Path, timeout_s: float = 120.0, env: dict[str, str] | None = None,
            **overrides: Any) -> tuple[TrialOutcome, dict[int, dict[str, Any]]]:
    """One data-parallel trial of two ranks, as `dstune run --world-size 2` runs it; each rank's observations."""
    options = RunOptions(workload_file=DP, workload_name=workload, world_size=2, measure=FAST)
    if workload not in _probed:
        _probed[workload] = probe(options)
    info = _probed[workload]
    ctx = TuneContext.from_dict(info["ctx"])
    assert ctx.data_parallel and ctx.world_size == 2
    config = default_config(applicable_knobs(plugin_manager().pm, ctx))
    config.update(overrides)
    observe = tmp_path / "observe.json"
    outcome = run_in_subprocess(trial_spec(options, info["ctx"], config), timeout_s=timeout_s,
                                env={"DSTUNE_OBSERVE": str(observe), **(env or {})})
    ranks = {}
    for rank in (0, 1):
        path = Path(f"{observe}.rank{rank}")
        if path.exists():
            ranks[rank] = json.loads(path.read_text())
    return outcome, ranks


@pytest.mark.slow
def test_a_ddp_trial_is_one_job_of_two_ranks_with_the_tuned_ddp_settings(tmp_path):
    outcome, ranks = run_job("dp_net", tmp_path, batch_size=4, ddp_bucket_cap_mb=50,
                             ddp_gradient_as_bucket_view=True, ddp_static_graph=True)
    assert outcome.status == "ok", outcome.error or outcome.stderr_tail
    assert sorted(ranks) == [0, 1]
    for rank, seen in ranks.items():
        assert (seen["rank"], seen["world_size"], seen["backend"]) == (rank, 2, "gloo")
        assert seen["model_type"] == "DistributedDataParallel" and seen["static_graph"] is True
        assert seen["bucket_bytes_cap"] == 50 * MiB
        assert (seen["nvls"], seen["multicast_off"]) == ("0", "1")  # NVLink multicast off in every rank
        assert seen["batch_rows"] == 4  # each rank's 16 of the global 32, in micro-batches of 4
        # Accumulation all-reduces in its last micro-step only (DDP's no_sync for the three before).
        assert seen["recent_syncs"][-4:] == [False, False, False, True]
    metrics = outcome.metrics
    assert (metrics["world_size"], metrics["micro_batch"], metrics["accumulation"]) == (2, 4, 4)
    # The job's throughput is set by its slowest rank: twice that rank's samples/s.
    assert len(metrics["rank_samples_per_s"]) == 2
    assert metrics["samples_per_s"] == pytest.approx(2 * min(metrics["rank_samples_per_s"]))
    assert metrics["peak_memory_bytes"] > 0


@pytest.mark.slow
def test_an_fsdp_trial_shards_every_block_with_the_tuned_mixed_precision(tmp_path):
    kept, ranks = run_job("dp_net", tmp_path, batch_size=16, dp_wrapper="fsdp",
                          fsdp_reshard_after_forward=False, fsdp_mixed_precision="bf16-reduce-fp32")
    assert kept.status == "ok", kept.error or kept.stderr_tail
    for seen in ranks.values():
        assert seen["model_type"] == "FSDPSequential" and seen["fsdp_modules"] == 5  # four blocks and the root
        assert seen["param_kinds"] == ["Parameter:bfloat16"]  # gathered for backward, in the policy's bf16
        assert seen["batch_rows"] == 16
    assert kept.metrics["accumulation"] == 1 and kept.metrics["samples_per_s"] > 0
    resharded, ranks = run_job("dp_net", tmp_path, batch_size=16, dp_wrapper="fsdp")
    assert resharded.status == "ok", resharded.error or resharded.stderr_tail
    assert all(seen["param_kinds"] == ["DTensor:float32"] for seen in ranks.values())  # sharded again, fp32


@pytest.mark.slow
@pytest.mark.parametrize("micro, status, says", [
    (2, "oom", "rank 1 of 2"),
    (4, "crash", "ValueError: rank 1's own bug"),
    (8, "timeout", "no result after 12 s"),
])
def test_a_failing_rank_fails_the_job_as_what_it_is_and_leaves_no_process(tmp_path, micro, status, says):
    """Rank 1 runs out of memory, raises, or hangs while rank 0 waits for it in the gradients' all-reduce."""
    marker = f"dstune-dp-{tmp_path.name}"
    outcome, _ = run_job("dp_faults", tmp_path, timeout_s=12, env={"DSTUNE_TEST_MARKER": marker}, batch_size=micro)
    assert outcome.status == status, (outcome.error, outcome.stderr_tail[-2000:])
    assert says in (outcome.error or "")
    if status != "timeout":
        assert outcome.error.startswith("rank 1 of 2")  # the cause, not rank 0's broken collective after it
    deadline = time.monotonic() + 30  # a busy machine may take a moment to reap the killed ranks
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"ranks outlived their job: {left}"


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                status = (entry / "status").read_text()
                if "zombie" not in status and marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_world_size_needs_a_data_parallel_workload(tmp_path):
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--world-size", "2",
                     "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "--world-size 2: workload 'observe'" in said and "data_parallel=True" in said


@pytest.mark.slow
def test_dstune_run_tunes_a_data_parallel_workload_and_apply_runs_it_under_torchrun(tmp_path):
    db = tmp_path / "dp.db"
    result = run_cli("run", str(DP), "--workload", "dp_net", "--world-size", "2", "--db", str(db), "--trials", "3",
                     "--budget", "3m", "--only", "dp_wrapper,batch_size", "--check-repeats", "2",
                     "--window-time", "0.05", "--windows", "3", "--max-warmup", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = db_rows(db, "select status, json_extract(metrics, '$.world_size'), json_extract(config, '$.dp_wrapper') "
                       "from dstune_trials")
    assert len(rows) >= 3 and all(r[0] in ("ok", "pruned") for r in rows), rows
    assert {r[1] for r in rows if r[0] == "ok"} == {2}
    assert {r[2] for r in rows} <= {"ddp", "fsdp"}
    [(status, options)] = db_rows(db, "select status, json_extract(options, '$.world_size') from dstune_iterations")
    assert (status, options) == ("completed", 2)

    exported = run_cli("export", "dp_net", "--db", str(db), "--format", "transformers", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    said = " ".join(exported.stderr.split())
    assert "launch: torchrun --standalone --nproc-per-node 2" in said
    arguments = json.loads(exported.stdout)
    assert "ddp_bucket_cap_mb" in arguments or arguments.get("fsdp") is True

    # Production: each rank of a torchrun job applies the promoted (or kept) configuration, wrapped as tuned.
    script = tmp_path / "train.py"
    script.write_text(
        f"import json, sys, torch, torch.distributed as dist\nsys.path.insert(0, {str(WORKLOADS)!r})\n"
        "import atexit, os, dstune\nfrom data_parallel import dp_net\n"
        # Registered before dstune's, so it runs after it at exit: is the group dstune joined left by then?
        f"atexit.register(lambda: open(f'{tmp_path}/left{{os.environ[\"RANK\"]}}', 'w').write("
        "str(not dist.is_initialized())))\n"
        f"cfg = dstune.best('dp_net', db={str(db)!r})\nrun = dstune.apply(dp_net, cfg)\n"
        "x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))\nloss = run.step((x, y))\n"
        "inner = getattr(run.model, '_orig_mod', run.model)\n"
        f"open(f'{tmp_path}/rank{{dist.get_rank()}}.json', 'w').write(json.dumps({{'rank': dist.get_rank(), "
        "'wrapper': cfg.config['dp_wrapper'], 'model': type(inner).__name__, 'loss': float(loss)}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    printed = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]  # a file each: two
    # ranks printing at once can interleave their lines
    assert sorted(p["rank"] for p in printed) == [0, 1]
    # dstune left the process group it joined before the interpreter went down: a gloo group left to the
    # interpreter's teardown killed a rank with SIGABRT in one busy-suite run (pytorch/pytorch#190489).
    assert [(tmp_path / f"left{rank}").read_text() for rank in (0, 1)] == ["True", "True"]
    for p in printed:
        wanted = "DistributedDataParallel" if p["wrapper"] == "ddp" else "FSDP"
        assert p["model"].startswith(wanted) and p["loss"] > 0


def test_a_world_size_that_does_not_share_the_global_batch_evenly_is_refused():
    from dstune.errors import UsageError
    from dstune.plugin_calls import device_context
    from dstune.trial.workload_file import select_workload

    definition = select_workload(DP, "dp_net")  # global_batch_size=32
    with pytest.raises(UsageError, match=r"--world-size 3 does not divide workload 'dp_net'.s global_batch_size=32"):
        device_context(definition, 3)
    assert device_context(definition, 2).rank_batch_size == 16


def test_apply_outside_torchrun_names_the_launch_it_needs(monkeypatch):
    import dstune
    from dstune.best_config import BestConfig
    from dstune.errors import UsageError
    from dstune.trial.workload_file import select_workload

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = TuneContext(workload="dp_net", global_batch_size=32, data_parallel=True, world_size=2)
    cfg = BestConfig("dp_net", {"dp_wrapper": "fsdp"}, context=json.loads(ctx.to_json()))
    with pytest.raises(UsageError, match=r"tuned as a data-parallel job of 2 ranks, but this process was not started "
                                         r"by torchrun\. Start it with `torchrun --nproc-per-node 2 SCRIPT\.py`"):
        dstune.apply(select_workload(DP, "dp_net").fn, cfg)


def test_gpus_are_cut_into_one_group_per_data_parallel_trial():
    from dstune.devices.slots import resolve_slots
    from dstune.errors import UsageError

    slots = resolve_slots(("0", "1", "2", "3"), world_size=2)
    assert [slot.gpu for slot in slots] == ["0,1", "2,3"]  # each trial's CUDA_VISIBLE_DEVICES
    assert [slot.env for slot in slots] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert all(len(slot.group) == 1 for slot in slots)  # the second GPU of each group is locked with the first
    with pytest.raises(UsageError, match=r"--gpus 0,1,2 gives 3 GPU\(s\), which --world-size 2 cannot cut into "
                                         r"groups of 2"):
        resolve_slots(("0", "1", "2"), world_size=2)


def test_each_trainer_export_names_the_launch_and_the_wrappers_settings(tmp_path):
    import warnings

    import dstune.export as export
    from dstune.best_config import BestConfig
    from dstune.export import DstuneExportWarning

    ctx = json.loads(TuneContext(workload="dp_net", global_batch_size=32, data_parallel=True, world_size=2,
                                 bf16_supported=True).to_json())
    ddp = BestConfig("dp_net", {"dp_wrapper": "ddp", "ddp_bucket_cap_mb": 50, "ddp_gradient_as_bucket_view": True,
                                "ddp_static_graph": True, "batch_size": 4}, context=ctx)
    fsdp = BestConfig("dp_net", {"dp_wrapper": "fsdp", "fsdp_reshard_after_forward": False, "batch_size": 4},
                      context=ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = export.transformers(ddp)
        hf_fsdp = export.transformers(fsdp)
        pl = export.lightning(ddp)
        acc = export.accelerate(fsdp)
    assert hf.launch == "torchrun --standalone --nproc-per-node 2 YOUR_SCRIPT.py"
    assert hf["ddp_bucket_cap_mb"] == 50 and hf["ddp_static_graph"] is True
    assert hf["per_device_train_batch_size"] == 4 and hf["gradient_accumulation_steps"] == 4  # each rank's 16
    assert hf_fsdp["fsdp"] is True and hf_fsdp["fsdp_config"] == {"version": 2, "reshard_after_forward": False}
    assert pl["strategy"] == "ddp" and acc.launch.startswith("accelerate launch --num-processes 2")
    said = [str(w.message) for w in caught if issubclass(w.category, DstuneExportWarning)]
    assert any("ddp_gradient_as_bucket_view=True" in s for s in said)  # TrainingArguments has no such argument
    assert any("DDPStrategy(bucket_cap_mb=50, gradient_as_bucket_view=True, static_graph=True)" in s for s in said)
    assert any("FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=False" in s for s in said)
    from transformers import TrainingArguments

    for exported in (hf, hf_fsdp):  # what Trainer users pass on, as they would
        TrainingArguments(output_dir=str(tmp_path), **exported)
