"""A host-paced inference step whose time grows with its batch: larger batches serve more samples a second
and answer each one later, the trade a latency limit (``--max-latency``) decides."""

import time

import torch
from torch import nn

import dstune

BASE_S = 0.002  # every step waits 2 ms ...
PER_SAMPLE_S = 0.0002  # ... and 0.2 ms more for each sample of its batch


def _forward(model, batch):
    out = model(batch[0])
    time.sleep(BASE_S + PER_SAMPLE_S * batch[0].shape[0])
    return out


@dstune.workload(mode="inference", batch_size=32)
def serving(ctx):
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
        batch=lambda n, device: (torch.randn(n, 32, device=device),),
        forward=_forward,
    )
