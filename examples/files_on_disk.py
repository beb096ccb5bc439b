"""Train on files read from disk with the configuration dstune tuned: your own loop, your own data.

    dstune run examples/files_on_disk.py --budget 2m   # tune: the workload below reads the same files
    python examples/files_on_disk.py --epochs 3        # train with the configuration dstune applied

The first use writes 1,024 small sample files (one ``.pt`` each, a feature
vector and its label) under ``./files-on-disk-data`` (or ``$FILES_ON_DISK_DIR``);
after that both commands read them as a real dataset is read: file by file,
in DataLoader workers where the tuned configuration has some.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dstune

FEATURES, CLASSES, SAMPLES, HELD_OUT = 64, 4, 1024, 128


def data_dir() -> Path:
    return Path(os.environ.get("FILES_ON_DISK_DIR", "files-on-disk-data")).resolve()


def write_files(folder: Path) -> None:
    """Sample files whose label is a fixed function of the features, so training has something to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    rule = torch.randn(FEATURES, CLASSES, generator=generator)
    for index in range(SAMPLES):
        x = torch.randn(FEATURES, generator=generator)
        torch.save({"x": x, "y": int((x @ rule).argmax())}, folder / f"sample-{index:05d}.pt")


class SampleFiles(torch.utils.data.Dataset):
    """One sample per file, read when asked for, as an image folder is."""

    def __init__(self, folder: Path, held_out: bool = False) -> None:
        if not folder.is_dir() or len(list(folder.glob("sample-*.pt"))) < SAMPLES:
            write_files(folder)
        files = sorted(folder.glob("sample-*.pt"))
        self.files = files[-HELD_OUT:] if held_out else files[:-HELD_OUT]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = torch.load(self.files[index])
        return sample["x"], sample["y"]


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, CLASSES))


def loss_of(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]).float(), batch[1])


@dstune.workload(global_batch_size=64, batch_size=64)
def files_on_disk(ctx):
    return dstune.Workload(
        model=make_model(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-3, **kw),
        dataset=SampleFiles(data_dir()),
        loss=loss_of,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--db", help="the dstune store (default: as `dstune run` finds it)")
    args = parser.parse_args()
    try:
        tuned = dstune.best("files_on_disk", db=args.db)
        print(f"training with the configuration applied after tuning: {tuned.config}")
    except dstune.UsageError as exc:
        print(f"no tuned configuration ({exc}); training with the defaults")
        tuned = {}
    composed = dstune.apply(files_on_disk, tuned)  # before anything touches CUDA
    train = composed.loader(SampleFiles(data_dir()))  # global batches, the tuned workers and pinning
    held_out = composed.loader(SampleFiles(data_dir(), held_out=True), shuffle=False)
    print(f"micro-batch {composed.plan.micro_batch} x {composed.plan.accumulation} accumulated, "
          f"{train.num_workers} loader workers, on {composed.device}")
    for epoch in range(1, args.epochs + 1):
        composed.model.train()
        losses = [composed.step(batch).item() for batch in train]
        composed.model.eval()
        right = 0
        with torch.no_grad(), composed.autocast():
            for x, y in held_out:
                right += int((composed.model(x.to(composed.device)).argmax(-1).cpu() == y).sum())
        print(f"epoch {epoch}: mean loss {sum(losses) / len(losses):.4f}, held-out accuracy "
              f"{right / HELD_OUT:.1%}", flush=True)


if __name__ == "__main__":
    main()
