"""A workload whose own batch (64) never fits, on the CPU or a GPU; 32 samples take 8 MiB."""

import torch
import torch.nn.functional as F

import dstune


def batch(n, device):
    # Scratch memory doubling with every two samples: 8 MiB at 32 samples, a tebibyte at 64, which neither
    # the CPU allocator nor any GPU can give.
    scratch = torch.empty(n, 2 ** min(n // 2, 40), device=device)
    return scratch[:, :16].normal_(), torch.randint(0, 4, (n,), device=device)


@dstune.workload(batch_size=64)
def too_big_default(ctx):
    return dstune.Workload(
        model=torch.nn.Linear(16, 4),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.01, **kw),
        batch=batch,
        loss=lambda model, b: F.cross_entropy(model(b[0]), b[1]),
    )
