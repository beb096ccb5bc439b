"""CPU threads: intra-op and inter-op thread pools, and DataLoader worker processes.

``None`` means PyTorch's own default.  On the CPU the intra-op pool sets the
speed of every op; on the GPU it decides how fast the host feeds the device.
Loader workers apply only to ``dataset=`` workloads.
"""

from __future__ import annotations

from typing import Any

import torch

from dstune import Knob, TuneContext, hookimpl


def _thread_choices(n: int) -> tuple[Any, ...]:
    return tuple([None] + sorted({1, max(1, n // 2), n}))


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    n = max(1, ctx.cpu_count)
    workers = tuple(sorted({0, 1, 2, 4, 8} | {n}))
    workers = tuple(w for w in workers if w <= max(n, 1) or w == 0)
    return [
        Knob("intra_op_threads", choices=_thread_choices(n), default=None, checklist=None,
             help="torch.set_num_threads (None: PyTorch's default)"),
        Knob("interop_threads", choices=(None, 1, 2), default=None, checklist=None,
             help="torch.set_num_interop_threads (None: PyTorch's default)"),
        Knob("loader_workers", choices=workers, default=0, checklist=min(4, max(workers)),
             help="DataLoader num_workers", applies=lambda c: c.has_dataset),
    ]


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    if config.get("intra_op_threads") is not None:
        torch.set_num_threads(int(config["intra_op_threads"]))
    if config.get("interop_threads") is not None:
        torch.set_num_interop_threads(int(config["interop_threads"]))


@hookimpl
def dstune_loader_kwargs(config: dict[str, Any], ctx: TuneContext) -> dict[str, Any] | None:
    if "loader_workers" not in config:
        return None
    return {"num_workers": int(config["loader_workers"])}
