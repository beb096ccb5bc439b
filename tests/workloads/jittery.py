"""A step whose time alternates every half second between 3 ms and 30 ms, as on a machine another job shares.

The timed windows then disagree by far more than a quiet machine allows, on any machine: what the run's
warning about a busy machine is tested on.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune


def _loss(model, batch):
    time.sleep(0.030 if int(time.monotonic() * 2) % 2 else 0.003)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(batch_size=8)
def jittery(ctx):
    return dstune.Workload(
        model=nn.Linear(16, 4),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 16, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
