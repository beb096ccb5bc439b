"""A workload that fails differently at each micro-batch size, to show that failure is data.

batch_size  8: raises torch.OutOfMemoryError          -> oom
batch_size 16: os.abort() kills the interpreter        -> crash (SIGABRT)
batch_size 64: the loss is NaN                         -> numerics
batch_size 128: hangs, after starting a child process  -> timeout (group killed, child too)
others: trains normally                                -> ok
"""

import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune


def _loss(model, batch):
    n = batch[0].shape[0]
    if n == 8:
        raise torch.OutOfMemoryError("simulated: tried to allocate 80.00 GiB")
    if n == 16:
        os.abort()
    if n == 128:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        marker = os.environ.get("DSTUNE_CHILD_PID_FILE")
        if marker:
            with open(marker, "w") as fh:
                fh.write(str(child.pid))
        time.sleep(600)
    loss = F.cross_entropy(model(batch[0]), batch[1])
    if n == 64:
        loss = loss * float("nan")
    return loss


@dstune.workload(batch_size=32)
def faults(ctx):
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 16, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
