"""CPU threads: the intra-op and inter-op thread pools.

``None`` means PyTorch's own default.  On the CPU the intra-op pool sets the
speed of every op; on the GPU it decides how fast the host feeds the device.
DataLoader workers are the ``data_loader`` plugin's.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note


def _thread_choices(n: int) -> tuple[Any, ...]:
    return tuple([None] + sorted({1, max(1, n // 2), n}))


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    n = max(1, ctx.cpu_count)
    return [
        Knob("intra_op_threads", choices=_thread_choices(n), default=None, checklist=None,
             help="torch.set_num_threads (None: PyTorch's default)", relieves="host"),
        Knob("interop_threads", choices=(None, 1, 2), default=None, checklist=None,
             help="torch.set_num_interop_threads (None: PyTorch's default)", relieves="host"),
    ]


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    import torch

    if config.get("intra_op_threads") is not None:
        torch.set_num_threads(int(config["intra_op_threads"]))
    if config.get("interop_threads") is not None:
        torch.set_num_interop_threads(int(config["interop_threads"]))


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    return callback_or_note(config, {"intra_op_threads": None, "interop_threads": None}, target,
                            "call torch.set_num_threads / torch.set_num_interop_threads at start-up")
