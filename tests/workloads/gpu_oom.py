"""A workload whose default batch does not fit any GPU: a real CUDA out-of-memory error."""

import torch
from torch import nn

import dstune


@dstune.workload(batch_size=4)
def gpu_oom(ctx):
    model = nn.Linear(1024, 1024)
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        # 4 x 2**36 floats: a terabyte per batch.
        batch=lambda n, device: torch.empty(n, 2**36, device=device),
        loss=lambda model, x: model(x[:, :1024]).sum(),
    )
