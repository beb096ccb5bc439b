"""A host-paced inference step whose time grows with its batch: larger batches serve more samples a second
and answer each one later, the trade a latency limit (``--max-latency``) decides."""

import time

import torch
from torch import nn

import dstune

BASE_S = 0.003  # every step waits 3 ms ...
PER_SAMPLE_S = 0.002  # ... and 2 ms more for each sample of its batch


def _forward(model, batch):
    out = model(batch[0])
    time.sleep(BASE_S + PER_SAMPLE_S * batch[0].shape[0])
    return out


@dstune.workload(mode="inference", batch_size=32)
def serving(ctx):
    # One intra-op thread: on a 2-core machine, a second one spin-waiting after each matmul made the step's
    # sleep wake up to 11 ms late, and the latencies this workload exists to show with it.
    torch.set_num_threads(1)
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
        batch=lambda n, device: (torch.randn(n, 32, device=device),),
        forward=_forward,
    )
