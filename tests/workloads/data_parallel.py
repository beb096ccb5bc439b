"""Data-parallel test workloads: each trial is one job of ranks (gloo on the CPU, NCCL on GPUs).

``dp_net`` trains a small residual MLP and, when ``DSTUNE_OBSERVE`` names a
file, each rank writes what it saw (its rank, the wrapper around the model,
whether gradients were all-reduced, how many samples it saw per step) to
that file with ``.rank<N>`` appended.

``dp_faults`` fails on rank 1 only, by micro-batch (the global batch is 32 over
2 ranks, so each rank's share is 16):

- micro-batch 2: rank 1 raises torch.OutOfMemoryError           -> oom
- micro-batch 4: rank 1 raises an error of the workload's own   -> crash
- micro-batch 8: rank 1 hangs before its first collective       -> timeout (rank 0 waits in it)
- micro-batch 16: trains                                        -> ok
"""

import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import dstune


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


def _net(width=64):
    return nn.Sequential(nn.Linear(32, width), nn.Sequential(*(Block(width) for _ in range(4))), nn.Linear(width, 4))


def _batch(n, device):
    return torch.randn(n, 32, device=device), torch.randint(0, 4, (n,), device=device)


SYNCS = []  # whether each micro-step's backward all-reduced (DDP), newest last


def _observe(model, batch):
    path = os.environ.get("DSTUNE_OBSERVE")
    if not path:
        return
    rank = dist.get_rank() if dist.is_initialized() else -1
    inner = getattr(model, "_orig_mod", model)
    SYNCS.append(getattr(inner, "require_backward_grad_sync", None))
    facts = {
        "recent_syncs": SYNCS[-8:],
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "model_type": type(inner).__name__,
        "grad_sync": getattr(inner, "require_backward_grad_sync", None),
        "bucket_bytes_cap": getattr(inner, "bucket_bytes_cap", None),
        "static_graph": getattr(inner, "static_graph", None),
        "fsdp_modules": sum(type(m).__name__.startswith("FSDP") for m in inner.modules()),
        # After the forward pass: sharded DTensors when FSDP reshards after it, the gathered parameters (in the
        # mixed-precision policy's dtype) when it keeps them for backward.
        "param_kinds": sorted({f"{type(p).__name__}:{str(p.dtype).removeprefix('torch.')}"
                               for p in inner.parameters()}),
        "batch_rows": int(batch[0].shape[0]),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "nvls": os.environ.get("NCCL_NVLS_ENABLE"),
        "multicast_off": os.environ.get("TORCH_SYMM_MEM_DISABLE_MULTICAST"),
    }
    with open(f"{path}.rank{rank}", "w") as fh:
        json.dump(facts, fh)


def _loss(model, batch):
    out = model(batch[0])
    _observe(model, batch)
    return F.cross_entropy(out.float(), batch[1])


@dstune.workload(global_batch_size=32, batch_size=4, data_parallel=True)
def dp_net(ctx):
    return dstune.Workload(
        model=_net(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=_batch,
        loss=_loss,
    )


def _faulty_loss(model, batch):
    n = batch[0].shape[0]
    if dist.get_rank() == 1:
        if n == 2:
            raise torch.OutOfMemoryError("simulated on rank 1: tried to allocate 80.00 GiB")
        if n == 4:
            raise ValueError("rank 1's own bug")
        if n == 8:
            time.sleep(600)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(global_batch_size=32, batch_size=16, data_parallel=True)
def dp_faults(ctx):
    return dstune.Workload(
        model=_net(16),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=_batch,
        loss=_faulty_loss,
    )
