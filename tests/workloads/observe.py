"""Test workloads that report, from inside the trial process, what the strategies changed.

The loss function writes what it sees (autocast dtype, thread counts, backend
flags, the model's type, how often a block ran) to the JSON file named by
``DSTUNE_OBSERVE``; tests read it after the trial.
"""

import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import dstune


class Block(nn.Module):
    calls = 0

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        Block.calls += 1
        return x + torch.relu(self.fc(x))


class Net(nn.Module):
    def __init__(self, conv=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1) if conv else None
        self.inp = nn.Linear(32, 32)
        self.blocks = nn.Sequential(Block(32), Block(32), Block(32))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x).mean(dim=(2, 3)).repeat(1, 4)
        return self.head(self.blocks(self.inp(x)))


LOSS_CALLS = 0
OPTIMIZERS = []


def _sgd(params, **kwargs):
    optimizer = torch.optim.SGD(params, lr=0.01, **kwargs)
    OPTIMIZERS.append(optimizer)
    return optimizer


def _conv_layout(model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[0].weight.is_contiguous(memory_format=torch.channels_last) if convs else None


def _observe(model, out, batch):
    path = os.environ.get("DSTUNE_OBSERVE")
    if not path:
        return
    facts = {
        "output_dtype": str(out.dtype),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "autocast_cuda": torch.is_autocast_enabled("cuda") if torch.cuda.is_available() else False,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "model_type": type(model).__name__,
        "block_calls": Block.calls,
        "loss_calls": LOSS_CALLS,
        "batch_rows": int(batch[0].shape[0]),
        "device": str(out.device),
        "conv_channels_last": _conv_layout(model),
        "optimizer_fused": OPTIMIZERS[-1].defaults.get("fused") if OPTIMIZERS else None,
        "optimizer_foreach": OPTIMIZERS[-1].defaults.get("foreach") if OPTIMIZERS else None,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "tunableop_enabled": torch.cuda.tunable.is_enabled() if torch.cuda.is_available() else None,
        "denormal_flushed": bool(torch.tensor([1e-40], dtype=torch.float32)[0] * 1.0 == 0),
    }
    with open(path, "w") as fh:
        json.dump(facts, fh)


def _loss(model, batch):
    global LOSS_CALLS
    LOSS_CALLS += 1
    out = model(batch[0])
    _observe(model, out, batch)
    return F.cross_entropy(out.float(), batch[1])


def _workload(model, shape):
    return dstune.Workload(
        model=model,
        optimizer=_sgd,
        batch=lambda n, device: (torch.randn(n, *shape, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=_loss,
    )


@dstune.workload(batch_size=8)
def observe(ctx):
    return _workload(Net(), (32,))


@dstune.workload(batch_size=8)
def observe_conv(ctx):
    return _workload(Net(conv=True), (3, 8, 8))


@dstune.workload(global_batch_size=16, batch_size=4)
def observe_accum(ctx):
    return _workload(Net(), (32,))


@dstune.workload(global_batch_size=16, batch_size=4)
def observe_conv_accum(ctx):
    return _workload(Net(conv=True), (3, 8, 8))


@dstune.workload(mode="inference", batch_size=8)
def observe_infer(ctx):
    return dstune.Workload(model=Net(), batch=lambda n, device: (torch.randn(n, 32, device=device),))


class PidDataset(torch.utils.data.Dataset):
    """Tiny samples; each records which process made it in the file named by ``DSTUNE_OBSERVE_PIDS``."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        path = os.environ.get("DSTUNE_OBSERVE_PIDS")
        if path:
            with open(path, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        return torch.randn(32), index % 4


@dstune.workload(batch_size=8)
def observe_data(ctx):
    return dstune.Workload(model=Net(), optimizer=_sgd, dataset=PidDataset(),
                           loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]))


class StallingDataset(torch.utils.data.Dataset):
    """256 tiny samples; a process's first sample takes 0.3 s, as opening files or a decoder would.

    Without persistent workers every epoch starts new workers, so every epoch
    begins with that stall: a cost the training pays once per epoch, between
    stretches of fast steps.
    """

    STALL_S = 0.3
    started_in: set[int] = set()

    def __len__(self):
        return 256

    def __getitem__(self, index):
        if os.getpid() not in StallingDataset.started_in:
            StallingDataset.started_in.add(os.getpid())
            time.sleep(self.STALL_S)
        return torch.randn(32), index % 4


@dstune.workload(batch_size=8)
def stalling_data(ctx):
    return dstune.Workload(model=Net(), optimizer=_sgd, dataset=StallingDataset(),
                           loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]))


class RaggedDataset(torch.utils.data.Dataset):
    """Token sequences of 8 to 15 tokens, padded to the longest of their batch: the batches change shape."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.randint(0, 16, (8 + index % 8,))


def _pad(samples):
    return torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)


@dstune.workload(batch_size=4)
def ragged_data(ctx):
    embed = nn.Sequential(nn.Embedding(16, 32), Net())
    return dstune.Workload(model=embed, optimizer=_sgd, dataset=RaggedDataset(), collate_fn=_pad,
                           loss=lambda model, ids: model(ids).float().pow(2).mean())
