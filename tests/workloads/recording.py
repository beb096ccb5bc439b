"""A training step whose second and third steps are several times slower than the rest.

That is how CUDA graphs (``torch.compile(mode="reduce-overhead")``) warm up:
the first step compiles, the next ones record the graphs, and from then on
every step replays them, far faster.  On the H200 such a ResNet-50 trial
was pruned on its recording steps although it ran faster than the best.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune

RECORD_S, REPLAY_S = 0.20, 0.01
_steps = 0


def _loss(model, batch):
    global _steps
    _steps += 1
    time.sleep(RECORD_S if _steps in (2, 3) else REPLAY_S)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(batch_size=8)
def recording(ctx):
    torch.set_num_threads(1)
    return dstune.Workload(
        model=nn.Linear(32, 4),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 32, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
