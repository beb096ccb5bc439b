"""A data-parallel trial: one ``torch.distributed`` job of ``ctx.world_size`` ranks, launched and judged as one.

Why a job and not N trials: what data-parallel training costs is the ranks
together (gradient buckets all-reduced, FSDP's gathers and scatters), and the
slowest rank sets everyone's step time.  So the trial process of a
``@dstune.workload(data_parallel=True)`` workload becomes the job's launcher:

- it starts the ranks through PyTorch's own elastic launcher
  (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun``
  runs), standalone on this host, with no restarts; each rank is ``python -m
  dstune.trial.rank SPEC RESULT`` with ``RANK``, ``LOCAL_RANK`` and
  ``WORLD_SIZE`` set, one GPU each (NCCL), or a CPU process (gloo);
- each rank measures the configuration as any trial does, agreeing with the
  others on when warm-up ends and how many steps a window has (a rank that
  stopped early would leave the rest waiting in a collective), and writes
  ``RESULT.rank<N>``;
- the launcher judges the job from those files and from how each rank
  ended: all ok is ok, with the slowest rank's samples/s times the world size
  as the job's throughput and the largest rank's peak as its memory; a rank
  out of memory makes the job ``oom`` (its peers' broken collectives are a
  consequence, not the cause); a rank's error or signal makes it ``crash``.

A rank that hangs in a collective is ended by the trial's timeout: the
launcher's process group is killed, its agent stops every rank it started,
and each rank also dies with the launcher (``PR_SET_PDEATHSIG``), so none is
left behind even when the agent itself is killed.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from .records import MEMORY, TrialSpec

# A rank's worst ending decides the job's: out of memory before numerics before the workload's own error, and
# any of those before a pruning that every rank agreed on.
SEVERITY = ("oom", "numerics", "usage_error", "crash", "pruned")
MAX_KEYS = ("peak_memory_bytes", "peak_allocated", "peak_reserved", "peak_rss", "step_time_cv", "first_step_s")
LAUNCHER_ENV = "DSTUNE_JOB_LAUNCHER"
# NVLink multicast can take a shared host's GPUs out of service: never on in a trial, whatever the knobs say.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def rank_result_path(result_path: str | Path, rank: int) -> Path:
    return Path(f"{result_path}.rank{rank}")


def run_job(spec: TrialSpec, spec_path: str, result_path: str) -> dict[str, Any]:
    """Launch ``spec`` as one job of ``world_size`` ranks on this host; the job's result, judged from the ranks'."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    world = int(spec.ctx.get("world_size") or 1)
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the ranks inherit this environment (SAFE_ENV included)
    # Each rank's share of the cores, as torchrun gives ranks one thread each: N ranks of PyTorch's default (a
    # thread per core) oversubscribe the host, and each parallel region waits for descheduled threads. The
    # threads knob still sets its own count in each rank.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(spec.ctx.get("cpu_count") or 1))))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=f"dstune-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    endings: dict[int, str] = {}
    try:
        elastic_launch(config, sys.executable)("-m", "dstune.trial.rank", spec_path, result_path)
    except ChildFailedError as exc:
        for rank, failure in exc.failures.items():
            endings[rank] = (f"killed by {failure.signal_name()}" if failure.exitcode < 0
                             else f"exited with code {failure.exitcode}")
    results: dict[int, dict[str, Any] | None] = {}
    written: dict[int, float] = {}
    for rank in range(world):
        path = rank_result_path(result_path, rank)
        results[rank] = json.loads(path.read_text()) if path.exists() else None
        written[rank] = path.stat().st_mtime if path.exists() else float("inf")
    judged = judge(results, endings, world, written)
    if judged["status"] == "ok" and spec.kind == MEMORY:
        return {"status": "ok", "points": largest_points([r.get("points") or [] for r in results.values() if r])}
    return judged


def judge(results: dict[int, dict[str, Any] | None], endings: dict[int, str], world: int,
          written: dict[int, float] | None = None) -> dict[str, Any]:
    """The job's result from each rank's (None: the rank wrote none), how the failed ranks ended, and when each
    wrote its result (``written``): of failures alike, the first is the cause, since a rank whose peer died
    fails next in the collective it was waiting in."""
    when = written or {}
    for status in SEVERITY:
        failed = sorted((rank for rank, result in results.items() if result and result.get("status") == status),
                        key=lambda rank: (when.get(rank, 0.0), rank))
        if not failed:
            continue
        first = results[failed[0]] or {}
        metrics = dict(first.get("metrics") or {})
        if status == "pruned" and len(failed) == world:
            metrics = combine([results[r].get("metrics") or {} for r in failed], world)  # type: ignore[union-attr]
        others = [r for r in results if r != failed[0] and (results[r] or {}).get("status") != "ok"]
        after = f" (then rank {', '.join(map(str, sorted(others)))} failed too)" if others and status != "pruned" else ""
        return {"status": status, "error": f"rank {failed[0]} of {world}{after}: {first.get('error') or status}",
                "metrics": {**metrics, "world_size": world, "failed_ranks": sorted(failed)}}
    missing = sorted(rank for rank, result in results.items() if result is None)
    if missing:
        how = "; ".join(f"rank {rank} {endings.get(rank, 'ended without a result')}" for rank in missing)
        return {"status": "crash", "error": f"{len(missing)} of {world} ranks wrote no result: {how}",
                "metrics": {"world_size": world, "failed_ranks": missing}}
    return {"status": "ok", "metrics": combine([r.get("metrics") or {} for r in results.values() if r], world)}


def combine(per_rank: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """One job's metrics from its ranks': the slowest rank's throughput times the ranks, the largest peak."""
    rates = [float(m.get("samples_per_s") or 0.0) for m in per_rank]
    slowest = min(range(len(rates)), key=rates.__getitem__)
    metrics = dict(per_rank[slowest])
    for key in MAX_KEYS:
        values = [m[key] for m in per_rank if m.get(key) is not None]
        if values:
            metrics[key] = max(values)
    metrics["samples_per_s"] = rates[slowest] * world
    if metrics.get("samples_per_step"):
        metrics["samples_per_step"] = metrics["samples_per_step"] * world
    metrics.update(world_size=world, rank_samples_per_s=rates, slowest_rank=slowest)
    return metrics


def largest_points(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The memory probe's points of a job: each point's largest peak over the ranks (a rank out of memory makes
    the point out of memory), since every rank must fit."""
    merged = []
    for points in zip(*per_rank):
        point = dict(points[0])
        oom = next((p["oom"] for p in points if "oom" in p), None)
        if oom is not None:
            merged.append({k: v for k, v in point.items() if k not in ("allocated", "reserved")} | {"oom": oom})
            continue
        point["allocated"] = {part: max(p["allocated"][part] for p in points) for part in point["allocated"]}
        point["reserved"] = max(p["reserved"] for p in points)
        merged.append(point)
    return merged


# -- inside a rank ---------------------------------------------------------------------------------------------


def rank_context(ctx: Any) -> Any:
    """``ctx`` with this process's rank, from the variables torchrun and the elastic agent set."""
    return ctx.with_updates(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                            world_size=int(os.environ.get("WORLD_SIZE", str(ctx.world_size))))


def join_process_group(ctx: Any) -> None:
    """Join the job's process group (NCCL on GPUs, gloo on the CPU), on this rank's GPU.

    A group joined here is left when the interpreter exits.  A script that
    ends without ``destroy_process_group`` (a user's torchrun script after
    ``dstune.apply``) otherwise tears gloo's worker threads down with the
    interpreter, and a rank can die of ``terminate called without an active
    exception`` (SIGABRT) after its work is done (pytorch/pytorch#190489).
    A group the script made itself is the script's to leave.
    """
    import atexit

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if ctx.is_cuda:
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group("nccl" if ctx.is_cuda else "gloo",
                            device_id=torch.device("cuda", ctx.local_rank) if ctx.is_cuda else None)
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    """The ranks of the process group this process is in (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _reduce(value: float, op: str) -> float:
    import torch
    import torch.distributed as dist

    if world() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return float(tensor.item())


def agree_all(flag: bool) -> bool:
    """True when every rank says True: a warm-up ends only when every rank's has."""
    return _reduce(1.0 if flag else 0.0, "min") > 0.5


def agree_any(flag: bool) -> bool:
    """True when any rank says True: one hopeless rank makes the job hopeless."""
    return _reduce(1.0 if flag else 0.0, "max") > 0.5


def agree_max(value: int) -> int:
    """The largest of the ranks' values: every rank then runs as many steps."""
    return int(_reduce(float(value), "max"))


def gradient_sync(model: Any, enabled: bool) -> None:
    """Tell a DDP or FSDP2 model whether this backward pass all-reduces gradients (only an accumulation's last)."""
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    if hasattr(inner, "require_backward_grad_sync"):  # DistributedDataParallel: what no_sync() sets
        if getattr(inner, "static_graph", False) and not getattr(inner, "_dstune_graph_recorded", False):
            # static_graph records the graph in the first backward pass, which must all-reduce (PyTorch's
            # reducer asserts otherwise, with no_sync() as with this flag).
            enabled = inner._dstune_graph_recorded = True
        inner.require_backward_grad_sync = enabled
    elif hasattr(inner, "set_requires_gradient_sync"):  # FSDP2's FSDPModule
        inner.set_requires_gradient_sync(enabled)


def exit_rank(code: int) -> None:
    """End a rank at once, its result written: gloo's teardown can abort a process ("terminate called without
    an active exception") after everything it was asked for is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
