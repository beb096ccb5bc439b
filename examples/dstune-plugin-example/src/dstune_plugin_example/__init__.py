"""An example third-party dstune strategy: TunableOp GEMM tuning on CUDA, denormal flushing on the CPU.

Both knobs set process-wide state, so both use ``dstune_configure_process``,
which runs in each fresh trial process before CUDA starts and before the
workload is imported.  Both export (``dstune_export``): to Lightning's
callback, which runs that same hook, and for Transformers and Accelerate to
a warning that says how to set them by hand.  TunableOp is configured through its environment
variables for that reason: they are read when CUDA initialises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart, callback_or_note

__version__ = "0.2.0"

TUNABLEOP = "tunableop"
FLUSH_DENORMAL = "flush_denormal"
TUNING_BUDGET_MS = "30"  # per GEMM shape; keeps the tuning inside a trial's warm-up


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    return [
        Knob(TUNABLEOP, choices=("off", "tune"), default="off", checklist="off",
             applies=lambda c: c.is_cuda,
             help="TunableOp: time the BLAS solutions of each GEMM shape on first use, keep the fastest"),
        Knob(FLUSH_DENORMAL, choices=(False, True), default=False, checklist=False,
             applies=lambda c: not c.is_cuda,
             help="torch.set_flush_denormal: treat denormal floats as zero on the CPU"),
    ]


@hookimpl
def dstune_configure_process(config: dict[str, Any], ctx: TuneContext) -> None:
    if config.get(TUNABLEOP) == "tune":
        os.environ["PYTORCH_TUNABLEOP_ENABLED"] = "1"
        os.environ["PYTORCH_TUNABLEOP_TUNING"] = "1"
        os.environ.setdefault("PYTORCH_TUNABLEOP_MAX_TUNING_DURATION_MS", TUNING_BUDGET_MS)
        # Results go to dstune's cache, not the working directory (%d: the device index).
        cache = Path(os.environ.get("DSTUNE_CACHE_DIR", Path.home() / ".cache" / "dstune")) / "tunableop"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PYTORCH_TUNABLEOP_FILENAME", str(cache / "results%d.csv"))
    if config.get(FLUSH_DENORMAL):
        import torch

        if not torch.set_flush_denormal(True):
            raise RuntimeError("this CPU cannot flush denormals (needs SSE3); leave flush_denormal off")


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    return callback_or_note(config, {TUNABLEOP: "off", FLUSH_DENORMAL: False}, target,
                            "for tunableop export PYTORCH_TUNABLEOP_ENABLED=1 PYTORCH_TUNABLEOP_TUNING=1 before "
                            "the process starts; for flush_denormal call torch.set_flush_denormal(True)")
