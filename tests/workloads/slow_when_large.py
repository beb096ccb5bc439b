"""A training workload whose micro-batches of 4 and more never finish a step (their batch takes an hour to load),
for the memory probe's time limit: the points at 1 and 2 come back at once, the one at 4 is killed at its time."""

import time

import torch
from torch import nn

import dstune


@dstune.workload(global_batch_size=8, batch_size=2)
def slow_when_large(ctx):
    def batch(n, device):
        if n >= 4:
            time.sleep(3600)
        return torch.randn(n, 64, device=device)

    return dstune.Workload(
        model=nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1)),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=batch,
        loss=lambda model, x: model(x).square().mean(),
    )
