"""A host-paced training step (a small MLP plus a fixed 10 ms wait, as a data pipeline would impose).

``DSTUNE_TEST_SLOWDOWN=0.15`` makes every step about 15% longer (the wait and the forward
pass grow by 15%; they are nearly all of the step): the injected
slow-down that the regression check must catch.  With ``DSTUNE_TEST_SLOW_AFTER=FILE`` as well, only the
processes after the first to train are slowed: each appends its pid to FILE at its second step, so the
default's trial (under ``--trials 1``, and ``--memory-model off``, whose probe would train first) runs at full
pace and the check's rounds after it slower, as when another job starts on the host between a trial and its
check.  A process that calls the loss only once is not training: on a GPU the probe traces one loss call to find
the model's attention calls, and counting it took the trial's full-pace turn (H200, 2026-12-02).
"""

import functools
import itertools
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune

PACE_S = 0.010
SLOWDOWN = float(os.environ.get("DSTUNE_TEST_SLOWDOWN", "0"))
_calls = itertools.count()


def _this_process_slowdown() -> float:
    """0 for a process's first loss call (a probe's one traced call is not training), then :func:`_trainer_slowdown`."""
    return _trainer_slowdown() if next(_calls) else 0.0


@functools.cache  # once per process: its second step registers it
def _trainer_slowdown() -> float:
    """SLOWDOWN, or with DSTUNE_TEST_SLOW_AFTER, 0 in the first process to train and SLOWDOWN in later ones."""
    starts = os.environ.get("DSTUNE_TEST_SLOW_AFTER")
    if not starts:
        return SLOWDOWN
    with open(starts, "a+") as f:
        f.seek(0)
        earlier = len(f.read().split())
        f.write(f"{os.getpid()}\n")
    return SLOWDOWN if earlier else 0.0


def _loss(model, batch):
    started = time.perf_counter()
    loss = F.cross_entropy(model(batch[0]), batch[1])
    # Hold every step to (pace + compute) * (1 + slow-down).
    compute = time.perf_counter() - started
    time.sleep(PACE_S + (PACE_S + compute) * _this_process_slowdown())
    return loss


@dstune.workload(batch_size=8)
def paced(ctx):
    # One intra-op thread, as serving.py: on a 2-core machine a second one spin-waiting after each matmul made
    # the paced sleep wake up late, and a quiet CI run's check rounds of this workload ranged over 30% (381 to
    # 513 samples/s), more than the slow-down the regression test injects.
    torch.set_num_threads(1)
    return dstune.Workload(
        model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=lambda n, device: (torch.randn(n, 32, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )
