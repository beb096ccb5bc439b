"""A workload written as a user would, not for dstune: torchvision's ConvNeXt-T (depthwise 7x7 convolutions,
LayerNorm, GELU: not ResNet's batch-normalised 3x3s) on synthetic ImageNet-sized batches, a fixed global batch of
256 run as micro-batches of 32, AdamW with label smoothing, as its paper trains it. Used to try dstune on a vision
model nobody tuned it for; needs torchvision.

    dstune run benchmarks/unseen/convnext_tiny.py --budget 4m
"""
import torch
import torch.nn.functional as F
import torchvision

import dstune


@dstune.workload(global_batch_size=256, batch_size=32)
def convnext_tiny(ctx):
    return dstune.Workload(
        model=torchvision.models.convnext_tiny(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=4e-3, weight_decay=0.05, **kw),
        batch=lambda n, device: (torch.randn(n, 3, 224, 224, device=device),
                                 torch.randint(0, 1000, (n,), device=device)),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1], label_smoothing=0.1),
    )
