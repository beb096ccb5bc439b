"""Workloads for the numerics guard.

``fragile`` adds and removes a large offset after its last layer: exact in
float32, garbage in bfloat16 (whose spacing near 4096 is 32), so bf16 must be
caught.  ``dropout`` has dropout, so a guard that did not replay the random
state would see a different loss in every fp32 trial.
"""

import torch
import torch.nn.functional as F
from torch import nn

import dstune

OFFSET = 4096.0


class Fragile(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return (self.body(x) * 50 + OFFSET) - OFFSET


def _batch(n, device):
    return torch.randn(n, 32, device=device), torch.randint(0, 4, (n,), device=device)


@dstune.workload(batch_size=16)
def fragile(ctx):
    return dstune.Workload(
        model=Fragile(), batch=_batch,
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]).float(), batch[1]),
    )


@dstune.workload(batch_size=16)
def dropout(ctx):
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 4))
    return dstune.Workload(
        model=model, batch=_batch,
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]).float(), batch[1]),
    )


@dstune.workload(mode="inference", batch_size=16)
def fragile_infer(ctx):
    return dstune.Workload(model=Fragile(), batch=lambda n, device: (torch.randn(n, 32, device=device),))
