"""ResNet-50 training on synthetic ImageNet-sized batches, global batch fixed at 256.

The example runs micro-batches of 64 with 4-step accumulation, as a team unsure
of its memory would; dstune tunes the micro-batch (the global batch, and so
the training, stays the same), precision, cuDNN, checkpointing and compile.

    dstune run examples/resnet50.py --budget 10m
"""

import torch
import torch.nn.functional as F
import torchvision

import dstune


@dstune.workload(global_batch_size=256, batch_size=64)
def resnet50(ctx):
    return dstune.Workload(
        model=torchvision.models.resnet50(),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.1, momentum=0.9, **kw),
        batch=lambda n, device: (torch.randn(n, 3, 224, 224, device=device),
                                 torch.randint(0, 1000, (n,), device=device)),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
    )
