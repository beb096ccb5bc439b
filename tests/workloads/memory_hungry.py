"""A training workload whose memory is known by construction, for the memory model's CPU tests.

Eight blocks of elementwise work on sequences of 256 x 1024 floats: each block
keeps a handful of activations of 1 MiB per sample for the backward pass, so
a sample needs about 40 MiB, a micro-batch of 16 about 640 MiB, the global
batch of 32 about 1.2 GiB, and the weights (a LayerNorm and two scales per
block) almost nothing.  The arithmetic is elementwise: the memory, not the
compute, is what grows with the micro-batch.  Most of a step's time is the
kernel zeroing fresh pages (the tests make glibc return every large block, so
that the peak RSS is the tensors' peak): about 85 ms per sample on one core,
which is why the global batch is 32, not 64.  Checkpointing every block keeps
only each block's input; every other block, about half.
"""

import torch
from torch import nn

import dstune

SEQ, WIDTH = 256, 1024


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.a = nn.Parameter(torch.ones(WIDTH))
        self.b = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + torch.tanh(y * self.a) * torch.sigmoid(y * self.b)


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@dstune.workload(global_batch_size=32, batch_size=4)
def memory_hungry(ctx):
    return dstune.Workload(
        model=Stack(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=lambda n, device: torch.randn(n, SEQ, WIDTH, device=device),
        loss=lambda model, x: model(x).square().mean(),
    )
