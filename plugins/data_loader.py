"""DataLoader settings for ``dataset=`` workloads: workers, pinned memory, prefetching, persistent workers.

When the host prepares batches (decoding, augmentation), these decide
whether the GPU waits: worker processes run the dataset in parallel,
``prefetch_factor`` batches per worker are kept ready, persistent workers are
not restarted every epoch, and pinned host memory lets the copy to the GPU
run asynchronously.  Prefetching and persistence need workers; pinning needs
CUDA.  None of this applies to ``batch=`` workloads, whose batches are made
once on the device.

The checklist seed differs by device.  On a GPU host the training process
mostly waits on the GPU, so the seed gives the loader every core (as
Lightning's advice to raise ``num_workers`` to the CPU count does): on an
H100 with 16 cores an augmenting loader ran twice as fast with 16 workers as
with the customary 4 (2,369 against 1,186 samples/s, ``benchmarks/README.md``).  On the CPU the
workers take cores from the model's own threads, so the seed stays at 4.
"""

from __future__ import annotations

from typing import Any

from dstune import Knob, TuneContext, hookimpl
from dstune.export import ExportPart

WORKERS = "loader_workers"
PIN = "pin_memory"
PREFETCH = "prefetch_factor"
PERSISTENT = "persistent_workers"
PYTORCH_PREFETCH = 2  # DataLoader's own default once there are workers


def _has_dataset(ctx: TuneContext) -> bool:
    return ctx.has_dataset


def _with_workers(config: dict[str, Any]) -> bool:
    return bool(config.get(WORKERS, 0))


@hookimpl
def dstune_knobs(ctx: TuneContext) -> list[Knob]:
    n = max(1, ctx.cpu_count)
    workers = tuple(sorted({0, 1, 2, 4, 8, n} & set(range(n + 1))))
    seed = max(workers) if ctx.is_cuda else min(4, max(workers))
    return [
        Knob(WORKERS, choices=workers, default=0, checklist=seed, applies=_has_dataset,
             help="DataLoader num_workers (0: batches made in the training process)", relieves="host"),
        Knob(PIN, choices=(False, True), default=False, checklist=True,
             applies=lambda c: c.has_dataset and c.is_cuda, help="DataLoader pin_memory (async host-to-GPU copies)",
             relieves="host"),
        Knob(PREFETCH, choices=(2, 4, 8), default=PYTORCH_PREFETCH, checklist=PYTORCH_PREFETCH, applies=_has_dataset,
             active=_with_workers, help="batches each worker keeps ready (needs loader_workers > 0)", relieves="host"),
        Knob(PERSISTENT, choices=(False, True), default=False, checklist=True, applies=_has_dataset,
             active=_with_workers, help="keep workers alive between epochs (needs loader_workers > 0)",
             relieves="host"),
    ]


@hookimpl
def dstune_validate(config: dict[str, Any], ctx: TuneContext) -> str | None:
    if config.get(WORKERS, 0):
        return None
    if config.get(PREFETCH, PYTORCH_PREFETCH) != PYTORCH_PREFETCH:
        return f"prefetch_factor={config[PREFETCH]} needs loader_workers > 0"
    if config.get(PERSISTENT):
        return "persistent_workers=True needs loader_workers > 0"
    return None


@hookimpl
def dstune_loader_kwargs(config: dict[str, Any], ctx: TuneContext) -> dict[str, Any] | None:
    if WORKERS not in config:
        return None
    kwargs: dict[str, Any] = {"num_workers": int(config[WORKERS])}
    if config.get(PIN) and ctx.is_cuda:
        kwargs["pin_memory"] = True
    if kwargs["num_workers"] > 0:
        kwargs["prefetch_factor"] = int(config.get(PREFETCH, PYTORCH_PREFETCH))
        kwargs["persistent_workers"] = bool(config.get(PERSISTENT, False))
    return kwargs


@hookimpl
def dstune_export(config: dict[str, Any], target: str, ctx: TuneContext | None) -> ExportPart | None:
    present = {k: config[k] for k in (WORKERS, PIN, PREFETCH, PERSISTENT) if k in config}
    if not present:
        return None
    if target == "transformers":
        arguments = {"dataloader_num_workers": present.get(WORKERS, 0), "dataloader_pin_memory": present.get(PIN, False)}
        if present.get(WORKERS):
            arguments |= {"dataloader_persistent_workers": present.get(PERSISTENT, False),
                          "dataloader_prefetch_factor": present.get(PREFETCH, PYTORCH_PREFETCH)}
        return ExportPart(arguments, handled=tuple(present))
    if target == "lightning":  # the callback's loader_kwargs hold them, for the DataLoader the user builds
        return ExportPart(callback=present, handled=tuple(present))
    loader = {"num_workers": WORKERS, "pin_memory": PIN, "prefetch_factor": PREFETCH,
              "persistent_workers": PERSISTENT}
    wanted = ", ".join(f"{arg}={present[knob]!r}" for arg, knob in loader.items()
                       if knob in present and (knob != PREFETCH or present.get(WORKERS)))
    return ExportPart(handled=tuple(present), notes=(
        f"loader settings: {target} takes them from your DataLoader; build it with {wanted}",))
