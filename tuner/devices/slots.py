"""The GPUs one dstune process runs trials on: ``--gpus 0,1,2,3`` makes one trial slot per GPU.

Each trial process of a slot sees only that GPU (``CUDA_VISIBLE_DEVICES``),
so the workload's ``cuda:0`` is the slot's GPU and trials on different
GPUs never share one.  The process holds every slot's device lock for the
whole iteration (:mod:`dstune.devices.lock`), so nothing else tunes on them.
Without ``--gpus`` there is one slot: the GPU the process was given.

A data-parallel trial (``--world-size N``) takes a group of N GPUs: the
slots are ``--gpus`` cut into groups of N, each trial sees its group, and the
process holds the lock of every GPU in every group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from dstune.errors import UsageError

from .lock import Device, hold_device, resolve_device


@dataclass(frozen=True)
class Slot:
    """One GPU trials run on, one trial at a time; ``gpu`` is what its trials get as CUDA_VISIBLE_DEVICES."""

    gpu: str | None
    device: Device
    group: tuple[Device, ...] = ()  # a data-parallel slot's other GPUs, locked with the first

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.gpu} if self.gpu is not None else {}

    @property
    def label(self) -> str | None:
        """The GPU as recorded with a trial: the slot's, else the one the process inherited."""
        return self.gpu if self.gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES")


def parse_gpus(value: str | Sequence[str] | None, where: str = "--gpus") -> tuple[str, ...]:
    """``"0,1"`` or ``["0", "1"]`` to ``("0", "1")``; ``all`` is every GPU NVML sees; duplicates are refused."""
    if value is None:
        return ()
    items = [part.strip() for chunk in ([value] if isinstance(value, str) else value) for part in str(chunk).split(",")]
    if not items or any(not item for item in items):
        raise UsageError(f"{where} {value!r} has an empty entry. Give GPU indices or UUIDs separated by commas, "
                         "e.g. --gpus 0,1, or --gpus all.")
    if items == ["all"]:
        return tuple(str(i) for i in range(_gpu_count()))
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise UsageError(f"{where} {','.join(items)} names GPU {', '.join(repeated)} more than once. "
                         "Give each GPU once: a GPU runs one trial at a time.")
    return tuple(items)


def _gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001 - no NVIDIA driver
        return 0


def resolve_slots(gpus: Sequence[str], warn: Callable[[str], None] = lambda text: None,
                  world_size: int = 1) -> list[Slot]:
    """One slot per GPU in ``gpus``, or per group of ``world_size`` GPUs (one slot for the inherited GPUs when
    empty); the same GPU twice is refused."""
    if not gpus:
        return [Slot(None, resolve_device())]
    if world_size > 1:
        if len(gpus) % world_size:
            raise UsageError(f"--gpus {','.join(gpus)} gives {len(gpus)} GPU(s), which --world-size {world_size} "
                             f"cannot cut into groups of {world_size}: a data-parallel trial takes one GPU per rank. "
                             f"Give a multiple of {world_size} GPUs.")
        groups = [gpus[i:i + world_size] for i in range(0, len(gpus), world_size)]
        slots = [Slot(",".join(group), resolve_device(group[0]), tuple(resolve_device(g) for g in group[1:]))
                 for group in groups]
        devices = [device for slot in slots for device in (slot.device, *slot.group)]
        if len({device.key for device in devices}) < len(devices) and any(d.nvml_index is not None for d in devices):
            raise UsageError(f"--gpus {','.join(gpus)} names the same GPU twice. Give each GPU once.")
        return slots
    slots = [Slot(gpu, resolve_device(gpu)) for gpu in gpus]
    if all(slot.device.nvml_index is None for slot in slots):
        if len(slots) > 1:
            warn(f"[warning] this host has no NVIDIA GPU: the {len(slots)} slots of --gpus run trials side by "
                 "side on the same CPUs, so their timings disturb each other")
        return slots
    keys: dict[str, str] = {}
    for slot in slots:
        if slot.device.key in keys:
            raise UsageError(f"--gpus {','.join(gpus)}: {keys[slot.device.key]} and {slot.gpu} are the same GPU "
                             f"({slot.device.key}). Give each GPU once.")
        keys[slot.device.key] = str(slot.gpu)
    return slots


@contextlib.contextmanager
def hold_slots(slots: Sequence[Slot], what: str, timeout_s: float | None,
               on_wait: Callable[[str], None] = lambda text: None) -> Iterator[None]:
    """Hold the lock of every slot's device (each once: CPU slots share the host's lock) inside the block."""
    with contextlib.ExitStack() as stack:
        held: set[str] = set()
        for device in (device for slot in slots for device in (slot.device, *slot.group)):
            if device.key not in held:
                held.add(device.key)
                stack.enter_context(hold_device(device, what, timeout_s, on_wait))
        yield
