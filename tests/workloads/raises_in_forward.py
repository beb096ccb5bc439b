"""A model whose forward raises, whatever the knobs: a workload that fails as written."""

import torch
from torch import nn

import dstune


class Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)
    def forward(self, x):
        raise ValueError("shapes do not line up: expected 16 features")

@dstune.workload(batch_size=8)
def raises_in_forward(ctx):
    return dstune.Workload(model=Bad(), optimizer=lambda p, **kw: torch.optim.SGD(p, lr=0.1, **kw),
                           batch=lambda n, d: torch.randn(n, 8, device=d), loss=lambda m, x: m(x).sum())
