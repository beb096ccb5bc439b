"""A training workload whose memory is known by construction, for the memory model's CPU tests.

Eight blocks of elementwise work on sequences of 256 x 1024 floats: each block
keeps a handful of activations of 1 MiB per sample for the backward pass, so
a sample needs about 40 MiB, a micro-batch of 16 about 640 MiB, and the
weights (a LayerNorm and two scales per block) almost nothing.  The
arithmetic is elementwise, so a step takes milliseconds on two cores: the
memory, not the compute, is what grows with the micro-batch.  Checkpointing
every block keeps only each block's input; every other block, about half.
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


@dstune.workload(global_batch_size=64, batch_size=4)
def memory_hungry(ctx):
    return dstune.Workload(
        model=Stack(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=lambda n, device: torch.randn(n, SEQ, WIDTH, device=device),
        loss=lambda model, x: model(x).square().mean(),
    )
