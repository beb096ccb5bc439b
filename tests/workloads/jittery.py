"""A step that turns slow for a second every other second, as on a machine another job shares.

The timed windows then disagree by far more than a quiet machine allows, on any machine: what the run's
warning about a busy machine is tested on.  The first steps are all fast (3 ms), so the warm-up sizes the
windows by fast steps (0.25 s of them); from then on every other second's steps take 60 ms, and six windows
(1.5 s) take in at least one slow phase, a whole second of it, while others stay fast.  (When the warm-up's steps mixed both phases, it
sized windows so short that all six fitted in one fast phase, and one CI run's windows varied by less than the
25% that the warning needs.)
"""

import itertools
import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune

FAST_STEPS = 30  # the warm-up's steps, and a few more
_steps = itertools.count()


def _loss(model, batch):
    slow = next(_steps) >= FAST_STEPS and int(time.monotonic()) % 2
    time.sleep(0.060 if slow else 0.003)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(batch_size=8)
def jittery(ctx):
    return dstune.Workload(
        model=nn.Linear(16, 4),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 16, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
