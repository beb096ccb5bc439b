"""A loss that is NaN in fp32 eager already: the workload, not any knob, produces it."""

import torch
from torch import nn

import dstune


@dstune.workload(batch_size=8)
def nan_loss(ctx):
    return dstune.Workload(model=nn.Linear(8, 2), optimizer=lambda p, **kw: torch.optim.SGD(p, lr=0.1, **kw),
                           batch=lambda n, d: torch.randn(n, 8, device=d), loss=lambda m, x: m(x).sum() * float("nan"))
