"""A paced training step with gradient accumulation: eight micro-batches of 4 make one step of 32.

Each micro-step waits 10 ms, as a data pipeline would impose, so its time is
the wait plus a little compute on any machine, busy or not.  For the
measurement tests: timed by its parts, it costs about what a step of one
micro-batch costs to measure; timed by whole steps, eight times as much.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune

PACE_S = 0.010


def _loss(model, batch):
    time.sleep(PACE_S)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(global_batch_size=32, batch_size=4)
def paced_accumulating(ctx):
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 32, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
