"""A small residual MLP classifier: tunes in a few minutes on two CPU cores.

    dstune run examples/quickstart.py --trials 12 --budget 150s
"""

import torch
import torch.nn.functional as F
from torch import nn

import dstune

FEATURES, HIDDEN, CLASSES = 256, 512, 10


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * 2)
        self.fc2 = nn.Linear(width * 2, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATURES, HIDDEN)
        self.blocks = nn.Sequential(*(Block(HIDDEN) for _ in range(4)))
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


@dstune.workload(batch_size=64)
def quickstart(ctx):
    return dstune.Workload(
        model=ResidualMLP(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=lambda n, device: (torch.randn(n, FEATURES, device=device),
                                 torch.randint(0, CLASSES, (n,), device=device)),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
    )
