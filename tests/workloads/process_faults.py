"""A workload whose trial process dies in the ways a process can, one per micro-batch size.

batch_size  8: segmentation fault (reads address 0)          -> crash (SIGSEGV)
batch_size 16: os._exit(3), no cleanup, no traceback          -> crash (exit code 3)
batch_size 64: writes 8 MB to stdout and stderr, then raises  -> crash, only the stderr tail kept
other sizes: trains normally                                  -> ok
"""

import ctypes
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import dstune

FLOOD_LINE = "flood " * 170 + "\n"  # about 1 KB


def _loss(model, batch):
    n = batch[0].shape[0]
    if n == 8:
        ctypes.string_at(0)
    if n == 16:
        os._exit(3)
    if n == 64:
        for _ in range(8 * 1024):
            sys.stdout.write(FLOOD_LINE)
            sys.stderr.write(FLOOD_LINE)
        raise RuntimeError("failed after flooding its output")
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(batch_size=32)
def process_faults(ctx):
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 16, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
